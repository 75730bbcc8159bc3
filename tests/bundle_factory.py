"""Tiny ONNX bundles for the runtime tests, built with onnx.helper (no torch, ms to build).

Extractors: images [B,3,H,W] -> GlobalAveragePool -> [B,3] -> MatMul -> shared [B,Ds] and
specific [B,Dp] (a different weight per modality). Transfer: transferred = z @ Wt +
sum_j(w * idx) (so every input is used). ``reference_*`` compute the same in numpy, and are the
reference of the real parity gate (``export.gate``) that every bundle made here goes through.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.gate import Reference, finalize
from export.images import HeldOut
from ssft_deploy.bundle import MANIFEST_FORMAT, sha256_file, write_manifest
from ssft_deploy.roles import fingerprints

DS, DP, DT, K = 6, 5, 4, 2
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"ws": rng.standard_normal((3, DS)).astype(np.float32),
            "wp": rng.standard_normal((3, DP)).astype(np.float32),
            "wt": rng.standard_normal((2 * DP + DS, DT)).astype(np.float32)}


def extractor_model(h: int, w: int, seed: int) -> onnx.ModelProto:
    wt = weights(seed)
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "ws"], ["shared"]),
        helper.make_node("MatMul", ["flat", "wp"], ["specific"]),
    ]
    graph = helper.make_graph(
        nodes, "extractor",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, h, w])],
        [helper.make_tensor_value_info("shared", TensorProto.FLOAT, ["B", DS]),
         helper.make_tensor_value_info("specific", TensorProto.FLOAT, ["B", DP])],
        [numpy_helper.from_array(wt["ws"], "ws"), numpy_helper.from_array(wt["wp"], "wp")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def transfer_model(seed: int = 7) -> onnx.ModelProto:
    wt = weights(seed)
    nodes = [
        helper.make_node("MatMul", ["z", "wt"], ["zw"]),
        helper.make_node("Cast", ["idx"], ["idxf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["idxf", "w"], ["prod"]),
        helper.make_node("ReduceSum", ["prod", "axes"], ["rsum"], keepdims=1),
        helper.make_node("Add", ["zw", "rsum"], ["transferred"]),
    ]
    return transfer_graph(nodes, [numpy_helper.from_array(wt["wt"], "wt"),
                                  numpy_helper.from_array(np.array([1], np.int64), "axes")])


def transfer_graph(nodes: list, initializers: list) -> onnx.ModelProto:
    """A transfer model with the bundle's I/O (z, idx, w -> transferred) around ``nodes``."""
    graph = helper.make_graph(
        nodes, "transfer",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2 * DP + DS]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 2 * K]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, ["N", 2 * K])],
        [helper.make_tensor_value_info("transferred", TensorProto.FLOAT, ["N", DT])],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


SEEDS = {"extractor_rgb": 1, "extractor_ir": 2}


def reference_extract(images: np.ndarray, graph: str) -> tuple[np.ndarray, np.ndarray]:
    wt = weights(SEEDS[graph])
    flat = images.mean(axis=(2, 3))
    return flat @ wt["ws"], flat @ wt["wp"]


def reference_transfer(z: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    return z @ weights(7)["wt"] + (idx.astype(np.float32) * w).sum(axis=1, keepdims=True)


def numpy_reference() -> Reference:
    """The numpy twin of the tiny graphs as the gate's reference."""
    return Reference(lambda images, modality: reference_extract(images, f"extractor_{modality}"),
                     reference_transfer, name="numpy-tiny")


def held_out(input_size=(16, 8), ids: int = 4, per_id: int = 2, seed: int = 0) -> HeldOut:
    """Random held-out images for the gate: ``ids`` identities, ``per_id`` IR queries and RGB
    gallery images each."""
    rng = np.random.default_rng(seed)
    h, w = input_size
    pids = np.repeat(np.arange(ids, dtype=np.int64), per_id)
    images = [rng.standard_normal((len(pids), 3, h, w)).astype(np.float32) for _ in range(2)]
    return HeldOut(query=images[0], gallery=images[1], q_pids=pids, g_pids=pids.copy(),
                   q_camids=np.full(len(pids), 3, np.int64),
                   g_camids=np.full(len(pids), 1, np.int64), source=f"random (seed {seed})")


def gate(root: Path, variants=None, **kwargs) -> dict:
    """Re-run the real gate on a bundle made here (``export.verify.verify_bundle``)."""
    from export.verify import verify_bundle

    b = json.loads((Path(root) / "manifest.json").read_text())
    size = tuple(b["model"]["input_size"])
    return verify_bundle(root, reference=numpy_reference(), held_out=held_out(size),
                         variants=variants, say=lambda m: None, **kwargs)


def make_bundle(root: Path, input_size=(16, 8), graph_size=None, extra_variants=None,
                gated: bool = True) -> Path:
    """Write a bundle into ``root`` and publish it through the parity gate (numpy reference);
    ``graph_size`` builds the graphs for another (h, w) (the gate then records a failure);
    ``gated=False`` publishes it without the gate (opens only with allow_ungated)."""
    root.mkdir(parents=True, exist_ok=True)
    gh, gw = graph_size or input_size
    files = {}
    for name, seed in SEEDS.items():
        onnx.save(extractor_model(gh, gw, seed), root / f"{name}.onnx")
        files[name] = f"{name}.onnx"
    onnx.save(transfer_model(), root / "transfer.onnx")
    files["transfer"] = "transfer.onnx"
    fp32 = {g: {"file": f, "sha256": sha256_file(root / f), "format": "onnx"}
            for g, f in files.items()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": {"arch": "tiny", "input_size": list(input_size), "mean": MEAN, "std": STD,
                  "shared_dim": DS, "specific_dim": DP, "transfer_dim": DT, "k": K,
                  "transfer_parts": ["shared", "specific"]},
        "variants": {"fp32": fp32, **(extra_variants or {})},
        "versions": {"onnx": onnx.__version__},
        "created": "2025-01-01T00:00:00Z",
    }
    if (gh, gw) == tuple(input_size):  # graphs of another size cannot even run the probe
        manifest["model"]["probe"] = fingerprints({g: root / f for g, f in files.items()},
                                                  manifest["model"])
    if not gated:
        write_manifest(root, manifest)
        return root
    finalize(root, manifest, numpy_reference(), held_out(tuple(input_size)), variants=["fp32"],
             tool="tests.bundle_factory", say=lambda m: None)
    return root
