"""Torch -> ONNX: the extractor per modality and the SSTN transfer graph.

Only the inference path is exported (two-stream extractor with its BNNeck feature blocks; the
SSTN propagation, W, ReLU and ``Feat^t``); classifiers, discriminator, projections and decoders
are never called by these wrappers, so they do not appear in the graphs.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from export.errors import ExportError

EXPORTERS = ("torchscript", "dynamo")
# dynamo: its graphs ran ~1% faster under ORT CPU for ResNet-50 at 288x144 (TorchScript's were
# ~2% faster for ResNet-18 at 128x64, transfer graphs equal) and it is torch's maintained
# exporter; TorchScript stays available with --exporter torchscript.
DEFAULT_EXPORTER = "dynamo"
OPSET = 18
FOLDED_BN_PREFIX = "bnfold_"


class ExtractorGraph(torch.nn.Module):
    """images [B,3,H,W] -> (shared [B,Ds], specific [B,Dp]) for one modality (post-BN)."""

    def __init__(self, model: torch.nn.Module, modality: str) -> None:
        super().__init__()
        if modality not in ("rgb", "ir"):
            raise ExportError(f"modality must be 'rgb' or 'ir', got {modality!r}")
        self.model = model
        self.modality = modality

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared, specific = self.model.extract(images, modality=self.modality)
        return shared, specific


class TransferGraph(torch.nn.Module):
    """(z [N,2Dp+Ds], idx [N,2k] int64, w [N,2k]) -> transferred [N,Dt] (Eq. 10-11)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.model.transfer(z, idx, w)


def extractor_example(input_size: tuple[int, int], batch: int = 3) -> tuple[torch.Tensor]:
    h, w = input_size
    return (torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0)),)


def transfer_width(k: int) -> int:
    """Neighbours per row of the exported transfer graph: the 2k of Eq. 8 plus one, the query
    edge of Eq. 22 on a gallery row (and the query's own edge when the gallery holds both
    modalities). Narrower lists are padded with zero-weight self edges, which change nothing."""
    return 2 * k + 1


def transfer_example(dims: dict[str, int], k: int, n: int = 11) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    width = 2 * dims["specific"] + dims["shared"]
    z = torch.randn(n, width, generator=g)
    idx = torch.randint(0, n, (n, transfer_width(k)), generator=g, dtype=torch.int64)
    w = torch.rand(n, transfer_width(k), generator=g)
    return z, idx, w


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str],
            outputs: list[str], dynamic: dict[str, str], exporter: str) -> None:
    """Run one torch.onnx exporter; ``dynamic`` maps input name -> name of its dynamic axis 0."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}")
    module.eval()
    try:
        _run_exporter(module, args, path, inputs, outputs, dynamic, exporter)
    except Exception as exc:  # exporter internals raise anything; say what to try
        other = next(e for e in EXPORTERS if e != exporter)
        raise ExportError(f"torch.onnx ({exporter}) could not export {path.name}: {exc}; "
                          f"try --exporter {other}") from exc


def _run_exporter(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str],
                  outputs: list[str], dynamic: dict[str, str], exporter: str) -> None:
    # The exporters' progress prints and deprecation warnings would drown the CLI's own output.
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            axes = {a: torch.export.Dim(a, min=1, max=1 << 20) for a in set(dynamic.values())}
            shapes = {n: ({0: axes[dynamic[n]]} if n in dynamic else None) for n in inputs}
            prog = torch.onnx.export(module, args, dynamo=True, input_names=inputs,
                                     output_names=outputs, dynamic_shapes=shapes,
                                     opset_version=OPSET, verbose=False)
            prog.save(str(path), external_data=False)
        else:
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=inputs,
                              output_names=outputs, opset_version=OPSET,
                              dynamic_axes={n: {0: a} for n, a in dynamic.items()}
                              | {n: {0: next(iter(dynamic.values()))} for n in outputs},
                              do_constant_folding=True)


def _value_ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace inference BatchNormalization nodes by a constant Mul + Add.

    The exporters already fold BN that follows a Conv; the BNNeck / ``Feat^t`` BatchNorm1d after
    pooling or a ReLU has nothing to fold into, so it becomes ``x * s + b`` with
    ``s = gamma / sqrt(var + eps)`` and ``b = beta - mean * s``.
    """
    inits = {t.name: t for t in model.graph.initializer}
    ranks = _value_ranks(model)
    nodes = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        if len(node.output) != 1 or any(n not in inits for n in node.input[1:]):
            raise ExportError(f"BatchNormalization {node.name!r} is in training mode or has "
                              "non-constant statistics; export the model in eval mode")
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64)
                                  for n in node.input[1:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        rank = ranks.get(node.input[0])
        if rank is None:
            raise ExportError(f"cannot infer the rank of {node.input[0]!r} to fold {node.name!r}")
        shape = (-1,) + (1,) * (rank - 2)
        base = f"{FOLDED_BN_PREFIX}{len(nodes)}"
        model.graph.initializer.extend([
            numpy_helper.from_array(scale.astype(np.float32).reshape(shape), f"{base}_scale"),
            numpy_helper.from_array(shift.astype(np.float32).reshape(shape), f"{base}_shift")])
        nodes.append(helper.make_node("Mul", [node.input[0], f"{base}_scale"], [f"{base}_mul"],
                                      name=f"{base}_mul"))
        nodes.append(helper.make_node("Add", [f"{base}_mul", f"{base}_shift"],
                                      list(node.output), name=f"{base}_add"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def finish_graph(path: Path) -> onnx.ModelProto:
    """Fold remaining BN, simplify with onnxslim, check; rewrites ``path`` in place."""
    import onnxslim

    model = fold_batchnorm(onnx.load(str(path)))
    model = onnxslim.slim(model)
    if op_counts(model)["BatchNormalization"]:
        raise ExportError(f"{path.name}: BatchNormalization nodes remain after folding")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


def export_extractor(model: Any, modality: str, path: str | os.PathLike,
                     input_size: tuple[int, int], exporter: str = DEFAULT_EXPORTER) -> Path:
    """Export ``extractor_<modality>``: input ``images`` (dynamic B), outputs shared, specific."""
    path = Path(path)
    _export(ExtractorGraph(model, modality), extractor_example(input_size), path, ["images"],
            ["shared", "specific"], {"images": "B"}, exporter)
    finish_graph(path)
    return path


def export_transfer(model: Any, path: str | os.PathLike, dims: dict[str, int], k: int,
                    exporter: str = DEFAULT_EXPORTER) -> Path:
    """Export ``transfer``: inputs z, idx, w (dynamic N), output ``transferred``."""
    path = Path(path)
    _export(TransferGraph(model), transfer_example(dims, k), path, ["z", "idx", "w"],
            ["transferred"], {"z": "N", "idx": "N", "w": "N"}, exporter)
    finish_graph(path)
    return path
