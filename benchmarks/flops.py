"""Count the multiply-add work of an ONNX graph's Conv / Gemm / MatMul nodes (2 FLOPs per MAC).

Shapes come from ONNX shape inference after fixing the dynamic input dimensions, so the count is
for a concrete batch size; elementwise ops, pooling and BN are left out (they are a few percent of
a ResNet and not GEMM-shaped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class GemmShape:
    """One node as the GEMM it amounts to: an [m,k] @ [k,n] product, ``count`` times."""

    op: str
    name: str
    m: int
    n: int
    k: int
    count: int = 1

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.count


def _dims(value_info) -> list[int] | None:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return dims


def graph_gemms(onnx_path: Path, input_dims: dict[str, list[int]]) -> list[GemmShape]:
    """The GEMM-shaped nodes of ``onnx_path`` with every input fixed to ``input_dims[name]``."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    graph = model.graph
    for inp in graph.input:
        if inp.name in input_dims:
            shape = inp.type.tensor_type.shape
            for d, v in zip(shape.dim, input_dims[inp.name]):
                d.Clear()
                d.dim_value = int(v)
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)

    out: list[GemmShape] = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
            if w is None or y is None:
                continue
            # Conv as im2col GEMM: [B*outHW, Cin/g*kHW] @ [Cin/g*kHW, Cout/g], once per group.
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            out.append(GemmShape("Conv", node.name, m=y[0] * int(np.prod(y[2:])),
                                 n=w[0] // group, k=int(np.prod(w[1:])), count=group))
        elif node.op_type in ("Gemm", "MatMul"):
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            if a is None or b is None or len(a) < 2 or len(b) < 2:
                continue
            trans_a = next((a_.i for a_ in node.attribute if a_.name == "transA"), 0)
            trans_b = next((a_.i for a_ in node.attribute if a_.name == "transB"), 0)
            m, k = (a[-1], a[-2]) if trans_a else (a[-2], a[-1])
            n = b[-2] if trans_b else b[-1]
            batch = int(np.prod(a[:-2])) if len(a) > 2 else 1
            out.append(GemmShape(node.op_type, node.name, m=m * batch, n=n, k=k))
    return out


def extractor_flops(onnx_path: Path, input_size: tuple[int, int],
                    batch: int = 1) -> tuple[float, list[GemmShape]]:
    """FLOPs of one extractor call on ``batch`` images of ``input_size`` (h, w), and its GEMMs."""
    h, w = input_size
    gemms = graph_gemms(onnx_path, {"images": [batch, 3, h, w]})
    return sum(g.flops for g in gemms), gemms


def representative_gemm(gemms: list[GemmShape], max_m: int = 8192) -> tuple[int, int, int]:
    """(m, n, k) of the FLOP-weighted median node (half the work is in nodes with a smaller
    ``n * k`` weight matrix), m capped so the probe stays quick."""
    if not gemms:
        return 4096, 256, 2304
    ordered = sorted(gemms, key=lambda s: (s.n * s.k, s.m))
    half, acc = 0.5 * sum(g.flops for g in ordered), 0.0
    for g in ordered:
        acc += g.flops
        if acc >= half:
            return min(g.m, max_m), g.n, g.k
    return min(ordered[-1].m, max_m), ordered[-1].n, ordered[-1].k


def torch_extractor_flops(model, images) -> float:
    """FLOPs of ``model.extract(images)`` counted by torch's FLOP counter (no ONNX graph needed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.extract(images, modality="rgb")
    return float(counter.get_total_flops())
