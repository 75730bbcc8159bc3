"""Reduced-precision variants of a MobileNetV2-like graph (issue 23: the demo's MobileNetV2 model
failed every fp16 / int8 / bf16 gate). Two causes, each reproduced on a toy graph built here:

- ReLU6 exports as ``Clip``, which int8 quantisation used to leave unfolded: the convolution
  before it was quantised over its signed range (here [-40, 6]) instead of [0, 6];
- a folded BN that computes by cancellation (ImageNet MobileNetV2's ``features[2]`` expansion:
  a folded bias of ~1150 for outputs of rms ~2): any rounding of it or of what feeds it is
  multiplied by that ratio, so it and everything upstream stay float32
  (``export/conditioning.py``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import conditioning, parity, quantize
from export.precision import convert_fp16

OLD_QUANT_OPS = ("Conv", "MatMul", "Gemm", "Relu")  # before ReLU6 (Clip) was folded


def _conv(name, x, w, b, group=1, pad=0):
    k = w.shape[-1]
    return helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], name=name,
                            group=group, kernel_shape=[k, k], pads=[pad] * 4), [
        numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
        numpy_helper.from_array(b.astype(np.float32), f"{name}_b")]


def _relu6(x):
    return helper.make_node("Clip", [x, "zero", "six"], [f"{x}_r6"], name=f"{x}_relu6")


def mobilenet_like(cancelling: bool = True) -> onnx.ModelProto:
    """stem 3x3 conv + ReLU6 -> depthwise 3x3 + ReLU6 (half its channels far below 0, as ReLU6
    nets have) -> 1x1 linear projection (channel 0 sits at 5.5 +- ~0.01) -> 1x1 expansion + ReLU6
    (with ``cancelling``, channel 0 computes 1000 * (x0 - 5.5) + 1: a folded bias of -5499)
    -> spatial mean."""
    rng = np.random.default_rng(0)
    nodes, inits = [], [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                        numpy_helper.from_array(np.array(6, np.float32), "six")]

    def add(node_inits):
        nodes.append(node_inits[0])
        inits.extend(node_inits[1])

    add(_conv("stem", "images", rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0.5, 0.2, 8),
              pad=1))
    nodes.append(_relu6("stem"))
    dw_b = np.where(np.arange(8) % 2 == 0, -20.0, 0.5)
    add(_conv("dw", "stem_r6", rng.normal(0, 0.4, (8, 1, 3, 3)), dw_b, group=8, pad=1))
    nodes.append(_relu6("dw"))
    pw = rng.normal(0, 0.3, (4, 8, 1, 1))
    pw[0] *= 0.01
    add(_conv("proj", "dw_r6", pw, np.array([5.5, 0.0, 0.2, -0.1])))
    ew = rng.normal(0, 0.5, (16, 4, 1, 1))
    eb = rng.normal(0.5, 0.2, 16)
    if cancelling:
        ew[0] = 0.0
        ew[0, 0] = 1000.0
        eb[0] = 1.0 - 1000.0 * 5.5
    add(_conv("expand", "proj", ew, eb))
    nodes.append(_relu6("expand"))
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    inits.append(axes)
    nodes.append(helper.make_node("ReduceMean", ["expand_r6", "axes"], ["feat"], keepdims=0,
                                  name="pool"))
    graph = helper.make_graph(
        nodes, "mobilenet_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, 8, 8])],
        [helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["B", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _run(path, images: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(
        None, {"images": images})[0]


def _err(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean (1 - cosine) of the feature rows, centred on the reference's mean as a BNNeck
    centres the pooled features before retrieval."""
    mean = ref.mean(0)
    return float(1.0 - parity.row_cos(ref - mean, got - mean).mean())


@pytest.fixture
def toy(tmp_path):
    src = tmp_path / "toy.onnx"
    onnx.save(mobilenet_like(), str(src))
    images = _images(64, 1)
    return src, images, _run(src, images)


def test_the_cancelling_convolution_and_what_feeds_it_are_found(toy):
    src, _, _ = toy
    ratios = conditioning.cancellation_ratios(onnx.load(str(src)), _images(32, 2))
    assert ratios["expand"] > 2 * conditioning.CANCELLATION_RATIO, ratios
    assert max(r for n, r in ratios.items() if n != "expand") < 10, ratios
    # the calibration images or, without them, random ones find the same nodes
    for images in (_images(32, 2), None):
        assert conditioning.float32_convs(src, images) == ["stem", "dw", "proj", "expand"]
    clean = mobilenet_like(cancelling=False)
    assert conditioning.float32_convs(clean) == []


def test_fp16_keeps_the_cancelling_path_in_float32(toy, tmp_path):
    src, images, ref = toy
    new = convert_fp16(src, tmp_path / "new.onnx")
    old = convert_fp16(src, tmp_path / "old.onnx", fp32_names=[])  # the placement before
    err_new, err_old = _err(ref, _run(new, images)), _err(ref, _run(old, images))
    assert err_new < 1e-6, (err_new, err_old)
    assert err_old > 100 * err_new, (err_new, err_old)
    kept = {n.name for n in onnx.load(str(new)).graph.node if n.op_type == "Conv"}
    assert {"stem", "dw", "proj", "expand"} <= kept


@pytest.mark.parametrize("activations", ["u8", "s8"])
def test_int8_folds_relu6_and_keeps_the_cancelling_path_in_float(toy, tmp_path, monkeypatch,
                                                                 activations):
    src, images, ref = toy
    calib = _images(64, 3)
    new = quantize.quantize_int8(src, tmp_path / "new.onnx", calib, activations=activations)
    graph = onnx.load(str(new)).graph
    float_convs = {n.name for n in graph.node if n.op_type == "Conv"
                   and not any(i.endswith("_DequantizeLinear_Output") for i in n.input[1:2])}
    assert {"stem", "dw", "proj", "expand"} <= float_convs
    monkeypatch.setattr(quantize, "QUANT_OPS", OLD_QUANT_OPS)
    old = quantize.quantize_int8(src, tmp_path / "old.onnx", calib, activations=activations,
                                 float_nodes=[])
    err_new, err_old = _err(ref, _run(new, images)), _err(ref, _run(old, images))
    assert err_new < 0.05 * err_old, (err_new, err_old)


def _scale_of(path, tensor: str) -> float:
    """The scale of the QuantizeLinear that quantises ``tensor``."""
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return next(float(inits[n.input[1]]) for n in m.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] == tensor)


def test_int8_relu6_range_is_folded_into_the_convolution(tmp_path, monkeypatch):
    """Without the cancelling conv only the ReLU6 (Clip) placement differs: the depthwise
    output is quantised over ReLU6's [0, 6] (u8: the Clip node goes), not over its signed range
    (down to about -25 here, as in MobileNetV2's depthwise layers): 4x finer steps."""
    src = tmp_path / "clean.onnx"
    onnx.save(mobilenet_like(cancelling=False), str(src))
    calib = _images(64, 3)
    new = quantize.quantize_int8(src, tmp_path / "new.onnx", calib, activations="u8")
    assert not any(n.op_type == "Clip" for n in onnx.load(str(new)).graph.node)
    monkeypatch.setattr(quantize, "QUANT_OPS", OLD_QUANT_OPS)
    old = quantize.quantize_int8(src, tmp_path / "old.onnx", calib, activations="u8")
    assert any(n.op_type == "Clip" for n in onnx.load(str(old)).graph.node)
    # u8 folds the Clip away: the convolution writes (and quantises) its output
    step_new, step_old = _scale_of(new, "dw_r6"), _scale_of(old, "dw")
    assert step_new <= 6.0 / 255 * 1.001, step_new
    assert step_old > 3 * step_new, (step_new, step_old)


def test_resnet_exports_keep_every_layer_in_reduced_precision(exported):
    """The ResNet-18 test bundle: nothing computes by cancellation, nothing is kept float32."""
    man = __import__("json").loads((exported["bundle"] / "manifest.json").read_text())
    for variant in ("fp16", "int8"):
        for g in ("extractor_rgb", "extractor_ir"):
            assert man["variants"][variant][g]["float32_nodes"] == []
