"""int8 quantisation settings: each ReLU folds into the quantisation of the convolution output it
reads (range [0, max]), which makes the int8 extractor closer to fp32 than quantising the signed
convolution output (export/quantize.py). The s8 (TensorRT) graph's zero points are checked in
test_export.py::test_int8_qdq_graph_runs_on_ort_cpu."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export import parity, quantize
from export.images import calibration_images, held_out_images
from ssft_deploy.preprocess import Preprocessor

H, W = 64, 32


def _features(path, images: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    out = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(
        None, {"images": images})
    return np.concatenate(out, axis=1)


def _conv_relu_pairs(path) -> dict[str, str]:
    """Convolution output -> output of the ReLU that is its only consumer."""
    g = onnx.load(str(path), load_external_data=False).graph
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return {o: consumers[o][0].output[0] for n in g.node if n.op_type == "Conv"
            for o in n.output if [c.op_type for c in consumers.get(o, [])] == ["Relu"]}


def _zero_points(path) -> dict[str, int]:
    """Quantised tensor -> its zero point (QuantizeLinear nodes)."""
    m = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    return {n.input[0]: int(inits[n.input[2]]) for n in m.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2}


def test_relu_folded_u8_graph_is_closer_to_fp32(exported, tmp_path, monkeypatch):
    torch.set_num_threads(2)
    src = exported["bundle"] / "extractor_rgb.onnx"
    prep = Preprocessor((H, W))
    calib = calibration_images(exported["data"], "rgb", prep, 16)
    images = held_out_images(prep, exported["data"], max_query=8, max_gallery=16).gallery
    with torch.no_grad():
        ref = np.concatenate([t.numpy() for t in exported["model"].extract(
            torch.from_numpy(images), modality="rgb")], axis=1)

    folded = quantize.quantize_int8(src, tmp_path / "folded.onnx", calib, activations="u8")
    # every convolution that only feeds a ReLU now writes the ReLU's output itself, quantised
    # from 0 (u8 zero point 0): the ReLU node is gone
    pairs = _conv_relu_pairs(src)
    assert len(pairs) >= 10
    graph = onnx.load(str(folded), load_external_data=False).graph
    conv_outputs = {o for n in graph.node if n.op_type == "Conv" for o in n.output}
    assert set(pairs.values()) <= conv_outputs
    assert not any(n.op_type == "Relu" and n.output[0] in pairs.values() for n in graph.node)
    zps = _zero_points(folded)
    assert all(zps[r] == 0 for r in pairs.values()), {r: zps.get(r) for r in pairs.values()}

    monkeypatch.setattr(quantize, "QUANT_OPS", ("Conv", "MatMul", "Gemm"))  # the signed ranges
    signed = quantize.quantize_int8(src, tmp_path / "signed.onnx", calib, activations="u8")
    assert any(_zero_points(signed)[c] != 0 for c in pairs)  # signed range: zero point > 0
    err = {name: 1.0 - parity.row_cos(ref, _features(path, images)).mean()
           for name, path in (("folded", folded), ("signed", signed))}
    assert err["folded"] < 0.9 * err["signed"], err

