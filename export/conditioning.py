"""Convolutions that compute by cancellation, found on sample images, kept in float32 with every
convolution upstream of them by the fp16 and int8 variants.

Folding a BatchNorm into the convolution before it puts the BN shift into the bias:
``b' = beta - s * mean``. Where a pre-BN channel has a large offset and a small spread, the folded
convolution computes a value of order 1 as the difference of two terms of order ``s * mean``.
The demo's ImageNet MobileNetV2 has one: ``features[2]``'s expansion convolution, channel 37 at
-73.3 +- 0.07 before its BN (``s`` = 15.7), a folded bias of ~1150 for outputs of rms ~2. Every
rounding of that convolution's weights or input (fp16 2^-11, bf16 2^-8, int8 1/255 of a tensor's
range) is multiplied by that ratio, and so is the error of everything upstream of its input:
keeping it and the three convolutions upstream of it in float32 took the demo model's fp16
minimum extractor cosine from 0.9966 to 0.9999 (the other 82 convolutions in fp16). The ratio
``max |bias| / rms(output)`` finds such a convolution without knowing the architecture: 2130 (RGB)
and 1180 (IR) for that one on 128 calibration images (1100 / 455 on 32 random images), at most 58
for every other convolution of the demo model; none is flagged in the ResNet test bundles.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

#: a convolution whose folded bias is this many times its output's rms computes by cancellation
CANCELLATION_RATIO = 250.0
#: images the ratio is measured on when the export has no calibration set (normalised pixels)
SAMPLE_IMAGES = 32


def _convs_with_bias(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in inits]


def sample_images(model: onnx.ModelProto, n: int = SAMPLE_IMAGES, seed: int = 0) -> np.ndarray:
    """Standard-normal images of the graph's input size (normalised pixels have about that
    spread): enough to find a cancelling convolution when no calibration set is given."""
    dims = model.graph.input[0].type.tensor_type.shape.dim[1:]
    shape = tuple(int(d.dim_value) for d in dims)
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def cancellation_ratios(model: onnx.ModelProto, images: np.ndarray,
                        batch: int = 32) -> dict[str, float]:
    """Conv node name -> ``max |bias| / rms(output)`` on ``images``: the largest folded bias over
    the output's rms over all channels (fp32 graph, ONNX Runtime CPU)."""
    import onnxruntime as ort

    convs = _convs_with_bias(model)
    if not convs:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n.output[0],
                                                                 onnx.TensorProto.FLOAT, None)
                              for n in convs if n.output[0] not in known)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("SSFT_ORT_THREADS") or 0)
    opts.log_severity_level = 3
    # no fusion: every Conv output must exist as computed by the graph
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sq = [0.0] * len(convs)
    count = 0
    for start in range(0, len(images), batch):
        outs = sess.run([n.output[0] for n in convs], {name: images[start:start + batch]})
        for i, y in enumerate(outs):
            y = y.astype(np.float64)
            sq[i] = sq[i] + (y ** 2).sum(axis=(0, *range(2, y.ndim)))
        count += len(outs[0]) * int(np.prod(outs[0].shape[2:]))
    inits = {t.name: t for t in model.graph.initializer}
    ratios = {}
    for i, node in enumerate(convs):
        bias = np.abs(numpy_helper.to_array(inits[node.input[2]]).astype(np.float64))
        # the whole output's rms, not each channel's: a rounding error of |bias| * 2^-11 matters
        # when it is large beside the values the next layer mixes it with (a channel that is
        # ~0 on these images has a large ratio of its own and no effect)
        rms = np.sqrt(sq[i].mean() / max(count, 1))
        ratios[node.name] = float(bias.max() / max(rms, 1e-12))
    return ratios


def upstream_convs(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """``names`` and every Conv node they depend on, in graph order."""
    producer = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    seen: set[str] = set()
    stack = [by_name[n] for n in names]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    return [n.name for n in model.graph.node if n.name in seen and n.op_type == "Conv"]


def float32_convs(src: str | os.PathLike | onnx.ModelProto, images: np.ndarray | None = None,
                  ratio: float = CANCELLATION_RATIO) -> list[str]:
    """Conv nodes of the graph ``src`` that a reduced-precision variant keeps in float32: each
    convolution whose cancellation ratio exceeds ``ratio`` on ``images`` (default:
    :func:`sample_images`) and every convolution upstream of it."""
    model = src if isinstance(src, onnx.ModelProto) else onnx.load(str(src))
    if not _convs_with_bias(model):
        return []
    images = sample_images(model) if images is None else images
    flagged = [n for n, r in cancellation_ratios(model, images).items() if r > ratio]
    return upstream_convs(model, flagged)
