"""Detectors: YOLO-family ONNX layouts (tiny generated graphs, no weights), motion, MOT files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ssft_deploy.errors import EngineError, InputError
from ssft_deploy.video.detectors import MotDetections, MotionDetector, make_detector, read_mot
from ssft_deploy.video.yolo import OnnxPersonDetector

# Candidates in model pixels (64x64 input) as (cx, cy, w, h): a person, a near-duplicate of it
# (NMS removes it), a box of class 1 (not a person) and a person below the score threshold.
CANDS = [(32, 32, 16, 32), (33, 32, 16, 32), (12, 20, 8, 16), (50, 40, 8, 16)]
PERSON = [0.9, 0.8, 0.05, 0.1]
OTHER = [0.0, 0.0, 0.95, 0.0]
FRAME = np.zeros((128, 64, 3), np.uint8)   # letterbox: scale 0.5, 16 px left and right
# The first candidate in frame pixels: ((32-8-16)/0.5, (32-16)/0.5, (32+8-16)/0.5, (32+16)/0.5)
EXPECTED = [16, 32, 48, 96]


def graph(path, table: np.ndarray, size=(64, 64), dtype=TensorProto.FLOAT):
    """images -> table + 0 * mean(images): the output depends on the input, the values are fixed."""
    h, w = size
    const = numpy_helper.from_array(table.astype(np.float32), "table")
    nodes = [helper.make_node("Cast", ["images"], ["x32"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x32"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"]),
             helper.make_node("Add", ["table", "z"], ["output0"])]
    g = helper.make_graph(nodes, "yolo", [helper.make_tensor_value_info("images", dtype,
                                                                       [1, 3, h, w])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT,
                                                         list(table.shape))],
                          [const, numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def v8_table():
    rows = [[*c, p, o] for c, p, o in zip(CANDS, PERSON, OTHER)]
    rows += [[0, 0, 1, 1, 0, 0]] * 6                       # padding anchors: N=10 > 6 channels
    return np.asarray(rows, np.float32).T[None]            # [1, 4+2, 10]


def v5_table():
    rows = [[*c, 1.0, p, o] for c, p, o in zip(CANDS, PERSON, OTHER)]
    rows += [[0, 0, 1, 1, 0.0, 0, 0]] * 6
    return np.asarray(rows, np.float32)[None]              # [1, 10, 5+2]


def e2e_table():
    rows = [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, max(p, o), int(o > p)]
            for (cx, cy, w, h), p, o in zip(CANDS[:1] + CANDS[2:], PERSON[:1] + PERSON[2:],
                                            OTHER[:1] + OTHER[2:])]
    rows += [[0, 0, 1, 1, 0.0, 0]] * 7                     # unused slots of K=10
    return np.asarray(rows, np.float32)[None]              # [1, 10, 6]


@pytest.mark.parametrize("table, layout", [(v8_table, "v8"), (v5_table, "v5"),
                                           (e2e_table, "end2end")])
def test_yolo_layouts_decode_to_frame_pixels(tmp_path, table, layout):
    path = graph(tmp_path / f"{layout}.onnx", table())
    for given in ("auto", layout):
        det = OnnxPersonDetector(path, backend="ort-cpu", layout=given, conf=0.25)
        out = det(FRAME, 0)
        assert len(out) == 1, (layout, out)
        np.testing.assert_allclose(out.xyxy[0], EXPECTED, atol=1e-3)
        assert out.scores[0] == pytest.approx(0.9)


def test_yolo_fp16_dynamic_input_and_make_detector(tmp_path):
    path = graph(tmp_path / "dyn.onnx", v8_table(), size=("h", "w"), dtype=TensorProto.FLOAT16)
    det = make_detector(f"onnx:{path}", ["a", "b"], backend="ort-cpu", input_size=(64, 64))
    assert det["a"] is det["b"] and det["a"].size == (64, 64)
    np.testing.assert_allclose(det["a"](FRAME, 0).xyxy[0], EXPECTED, atol=0.1)


def test_yolo_bad_models_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        OnnxPersonDetector(tmp_path / "none.onnx")
    with pytest.raises(InputError, match="layout"):
        OnnxPersonDetector(graph(tmp_path / "a.onnx", v8_table()), layout="v9")
    flat = graph(tmp_path / "flat.onnx", np.zeros((1, 10), np.float32))
    with pytest.raises(InputError, match="not a detector graph.*YOLO-family"):
        OnnxPersonDetector(flat, backend="ort-cpu")       # refused up front, not per frame
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(EngineError):
        OnnxPersonDetector(tmp_path / "junk.onnx", backend="ort-cpu")


def test_motion_detector_finds_a_walker_and_splits_people_side_by_side():
    det = MotionDetector(warmup=3)
    rng = np.random.default_rng(0)
    bg = np.full((120, 200, 3), 60, np.uint8)
    for i in range(6):
        assert len(det(bg + rng.integers(0, 3, bg.shape, dtype=np.uint8), i)) == 0
    one = bg.copy()
    one[20:100, 30:70] = 200                         # a 80x40 person
    out = det(one, 6)
    assert len(out) == 1
    np.testing.assert_allclose(out.xyxy[0], [30, 20, 70, 100], atol=2)
    two = bg.copy()
    two[20:100, 100:180] = 200                       # two people touching: 80x80
    out = det(two, 7)
    assert len(out) == 2 and np.all(out.xyxy[:, 2] - out.xyxy[:, 0] < 45)


def test_motion_detector_joins_a_person_cut_in_two():
    det = MotionDetector(warmup=2)
    bg = np.full((120, 200), 60, np.uint8)
    for i in range(4):
        det(np.dstack([bg] * 3), i)
    f = bg.copy()
    f[20:55, 30:60] = 200                            # torso
    f[62:100, 32:58] = 200                           # legs, after a background-coloured belt
    out = det(np.dstack([f] * 3), 4)
    assert len(out) == 1
    np.testing.assert_allclose(out.xyxy[0], [30, 20, 60, 100], atol=2)


def test_mot_detections_and_errors(tmp_path):
    f = tmp_path / "d.txt"
    f.write_text("1,5,10,20,30,60,0.9,-1,-1,-1\n1,6,0,0,10,10,1.5\n3,5,11,21,30,60\n")
    det = MotDetections(f)
    out = det(FRAME, 0)
    np.testing.assert_allclose(out.xyxy, [[10, 20, 40, 80], [0, 0, 10, 10]])
    np.testing.assert_allclose(out.scores, [0.9, 1.0])          # clipped
    assert len(det(FRAME, 1)) == 0 and len(det(FRAME, 2)) == 1
    f.write_text("1,5,10,20,30,60\nnot,a,line\n")
    with pytest.raises(InputError, match="d.txt:2"):
        read_mot(f)
    f.write_text("1,5,10,20,nan,60\n")
    with pytest.raises(InputError, match="finite"):
        read_mot(f)
    with pytest.raises(InputError, match="one file for 2 cameras"):
        make_detector(f"mot:{f}", ["a", "b"])
    with pytest.raises(InputError, match="no b.txt"):
        (tmp_path / "a.txt").write_text("")
        make_detector(f"mot:{tmp_path}", ["a", "b"])
    with pytest.raises(InputError, match="unknown detector"):
        make_detector("yolo", ["a"])
