"""fp16 graphs: precision is set in the graph (TensorRT 11 builds strongly typed networks only).

The converter casts weights and activations to fp16, keeps float32 graph inputs/outputs
(``keep_io_types``) so every variant has the same I/O, and leaves in float32 the parts where fp16
loses accuracy: normalisations (the folded BNNeck / ``Feat^t`` affine), reductions (GeM's pow and
mean, the ReduceSum of the propagation's degrees and neighbour sum), and the degree normalisation
of Eq. 10 (sqrt / reciprocal / division), and a convolution that computes by cancellation (a
folded BN with a large offset, ``export.conditioning``) with every convolution upstream of it.
The affinity scores are computed outside the graphs, in float32, by ``ssft_deploy.affinity``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from export.conditioning import float32_convs
from export.onnx_graphs import FOLDED_BN_PREFIX

# Ops kept in float32 (see module docstring).
FP32_OPS = (
    "BatchNormalization", "LayerNormalization", "InstanceNormalization", "LpNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMax", "GlobalAveragePool",
    "Pow", "Sqrt", "Reciprocal", "Div", "Softmax", "Exp", "Log", "Where", "Greater", "Clip",
    "GatherND", "Gather", "Expand", "ConstantOfShape",
)


# In the transfer graph only the W projection (and its ReLU) runs in fp16: the rest is the
# propagation's degree normalisation and neighbour sum (Eq. 10), kept in float32.
TRANSFER_FP16_OPS = ("MatMul", "Gemm", "Relu")


def fp32_nodes(model: onnx.ModelProto, fp16_only: tuple[str, ...] | None = None) -> list[str]:
    """Nodes kept in float32 beyond :data:`FP32_OPS`: folded BN affines, and with ``fp16_only``
    every node whose op is not listed there."""
    return [n.name for n in model.graph.node if n.name.startswith(FOLDED_BN_PREFIX)
            or (fp16_only is not None and n.op_type not in fp16_only)]


def _float32_edge(graph: onnx.GraphProto, vi: onnx.ValueInfoProto, output: bool) -> onnx.NodeProto:
    """Retype graph input/output ``vi`` to float32; the Cast that bridges it to the fp16 inside."""
    vi.type.tensor_type.elem_type = TensorProto.FLOAT
    inner = f"{vi.name}__fp16"
    for node in graph.node:
        node.input[:] = [inner if n == vi.name else n for n in node.input]
        if output:
            node.output[:] = [inner if n == vi.name else n for n in node.output]
    src, dst, to = (inner, vi.name, TensorProto.FLOAT) if output else \
        (vi.name, inner, TensorProto.FLOAT16)
    return helper.make_node("Cast", [src], [dst], to=to, name=f"io_cast_{vi.name}")


def float32_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give fp16 graph inputs/outputs back their float32 type with a Cast beside each."""
    graph = model.graph

    def fp16(vi: onnx.ValueInfoProto) -> bool:
        return vi.type.tensor_type.elem_type == TensorProto.FLOAT16

    casts_in = [_float32_edge(graph, vi, output=False) for vi in graph.input if fp16(vi)]
    casts_out = [_float32_edge(graph, vi, output=True) for vi in graph.output if fp16(vi)]
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def drop_cast_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove ``x(fp32) -> Cast(fp16) -> Cast(fp32)`` chains (they only lose precision)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(graph.input) + list(graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast":
            return None
        return next(a.i for a in node.attribute if a.name == "to")

    for node in graph.node:
        first = producer.get(node.input[0]) if node.input else None
        if (cast_to(node) == TensorProto.FLOAT and first is not None
                and cast_to(first) == TensorProto.FLOAT16
                and (types.get(first.input[0]) == TensorProto.FLOAT
                     or cast_to(producer.get(first.input[0])) == TensorProto.FLOAT)):
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = first.input[0]
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if n.op_type != "Cast" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(keep)
    return model


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike,
                 fp16_only: tuple[str, ...] | None = None,
                 fp32_names: Sequence[str] | None = None,
                 images: np.ndarray | None = None) -> Path:
    """Write an fp16 copy of the ONNX graph ``src`` to ``dst`` (float32 I/O, see module doc).

    ``fp16_only`` restricts fp16 to these op types (used for the transfer graph).
    ``fp32_names``: more nodes kept in float32 (default: the convolutions that compute by
    cancellation on ``images`` and those upstream of them,
    :func:`export.conditioning.float32_convs`; ``images`` default to random ones).
    """
    import onnxslim
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    if fp32_names is None:
        fp32_names = float32_convs(model, images)
    # keep_io_types=True trips onnxconverter-common when a graph output comes from a node kept
    # in fp32 ("downstream node of the second cast node should be graph output"), so the I/O is
    # restored to float32 here instead, and the redundant fp16 round trips removed.
    with warnings.catch_warnings():
        # "float32 number ... will be truncated": weights below fp16's range, clamped on purpose
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(
            model, keep_io_types=False, op_block_list=list(FP32_OPS),
            node_block_list=fp32_nodes(model, fp16_only) + list(fp32_names), disable_shape_infer=False)
    half = drop_cast_round_trips(float32_io(half))
    del half.graph.value_info[:]  # the converter leaves stale dtypes there; infer them afresh
    half = onnx.shape_inference.infer_shapes(half, strict_mode=True)
    half = onnxslim.slim(half)  # drops the Identity nodes left by the round-trip removal
    onnx.checker.check_model(half, full_check=True)
    dst = Path(dst)
    onnx.save(half, str(dst))
    return dst
