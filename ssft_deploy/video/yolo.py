"""A YOLO-family person detector (the user's ONNX export) through the package's engine layer.

Exports that work (one image input ``[1|-1, 3, H|-1, W|-1]`` float32 or float16, RGB 0-1,
letterboxed with grey 114; the first output is read):

=============  =====================================================  ===================
layout         output                                                 from
=============  =====================================================  ===================
``v8``         ``[1, 4+nc, N]``: cx, cy, w, h, nc class scores         Ultralytics YOLOv8 /
                                                                      YOLO11 ``yolo export
                                                                      format=onnx``
``v5``         ``[1, N, 5+nc]``: cx, cy, w, h, objectness, nc scores   YOLOv5 / YOLOv7
                                                                      ``export.py --include
                                                                      onnx`` (no ``--nms``)
``end2end``    ``[1, K, 6]``: x1, y1, x2, y2, score, class             YOLOv10, Ultralytics
                                                                      ``nms=True``
=============  =====================================================  ===================

``layout="auto"`` reads it from the output shape: channels first (``dim1 < dim2``) is ``v8``;
rows of 6 with at most 1000 rows is ``end2end``; other rows are ``v5``. A one-class ``v5``
model with <= 1000 rows looks like ``end2end``: pass ``layout="v5"`` then. Exports with the
NMS as separate outputs (``num_dets, boxes, scores, classes``, e.g. TensorRT EfficientNMS
plugins) are not supported. Class ``person_class`` (0 in COCO) is kept; boxes go through
OpenCV's NMS (``v8``/``v5``) and are mapped back to frame pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ssft_deploy.engines.base import Engine
from ssft_deploy.errors import EngineError, InputError
from ssft_deploy.video.detectors import Detections

LAYOUTS = ("auto", "v8", "v5", "end2end")


def open_model(path: str | Path, backend: str = "auto",
               intra_op_threads: int | None = None) -> Engine:
    """An engine for a single graph file (``.onnx``; ``.plan`` / ``.engine`` for TensorRT)."""
    from ssft_deploy.engines.registry import BACKENDS

    path = Path(path)
    if not path.is_file():
        raise InputError(f"detector model {path} does not exist")
    fmt = "tensorrt" if path.suffix in (".plan", ".engine") else "onnx"
    if backend != "auto" and backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose from {['auto', *BACKENDS]}")
    names = list(BACKENDS) if backend == "auto" else [backend]
    reasons = {}
    for name in names:
        cls = BACKENDS[name]
        reason = (cls.unavailable_reason() if fmt in cls.formats
                  else f"runs {cls.formats}, not {fmt}")
        if reason is None:
            kwargs = {} if fmt == "tensorrt" else {"intra_op_threads": intra_op_threads}
            return cls(path, **kwargs)
        reasons[name] = reason
    raise EngineError(f"no backend can run {path} here: {reasons}")


class OnnxPersonDetector:
    """``detector(frame_bgr, index) -> Detections`` over a YOLO-family export (see module doc).

    ``input_size`` (h, w) is needed only when the graph's input size is dynamic (default 640)."""

    def __init__(self, path: str | Path, backend: str = "auto", layout: str = "auto",
                 conf: float = 0.25, iou: float = 0.45, person_class: int = 0,
                 input_size: tuple[int, int] = (640, 640),
                 intra_op_threads: int | None = None) -> None:
        if layout not in LAYOUTS:
            raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.engine = open_model(path, backend, intra_op_threads)
        if len(self.engine.inputs) != 1:
            raise InputError(f"{path}: a detector needs one image input, this graph has "
                             f"{list(self.engine.inputs)}")
        (self.input_name, spec), = self.engine.inputs.items()
        if len(spec.shape) != 4 or spec.shape[1] not in (3, -1):
            raise InputError(f"{path}: input {self.input_name!r} is {list(spec.shape)}, "
                             "expected [1, 3, H, W]")
        h, w = spec.shape[2:]
        self.size = (h if h > 0 else int(input_size[0]), w if w > 0 else int(input_size[1]))
        self.dtype = np.dtype(spec.dtype)
        self.layout, self.conf, self.iou = layout, float(conf), float(iou)
        self.person_class = int(person_class)
        self.path = str(path)
        self._check_graph()

    def _check_graph(self) -> None:
        """Refuse a graph without a detector's output up front (e.g. a ReID extractor given by
        mistake): its first output's rank, then one run on a blank frame must decode."""
        name, spec = next(iter(self.engine.outputs.items()))
        try:
            if len(spec.shape) != 3:
                raise EngineError(f"output {name!r} is {list(spec.shape)}, not a YOLO-family "
                                  "[1, ., .] layout")
            blank = np.zeros((1, 3, *self.size), self.dtype)
            self.decode(next(iter(self.engine.run({self.input_name: blank}).values())))
        except (EngineError, InputError) as exc:
            raise InputError(f"{self.path} is not a detector graph: {exc}") from exc

    def letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        """Frame -> model input ``[1,3,H,W]``, scale and (x, y) padding of the letterbox."""
        fh, fw = frame.shape[:2]
        h, w = self.size
        r = min(h / fh, w / fw)
        nh, nw = max(1, round(fh * r)), max(1, round(fw * r))
        py, px = (h - nh) / 2, (w - nw) / 2
        canvas = np.full((h, w, 3), 114, np.uint8)
        top, left = round(py - 0.1), round(px - 0.1)
        canvas[top:top + nh, left:left + nw] = cv2.resize(frame, (nw, nh),
                                                          interpolation=cv2.INTER_LINEAR)
        x = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(x, self.dtype) / self.dtype.type(255), r, left, top

    def _layout(self, out: np.ndarray) -> str:
        if self.layout != "auto":
            return self.layout
        if out.shape[1] < out.shape[2]:
            return "v8"
        return "end2end" if out.shape[2] == 6 and out.shape[1] <= 1000 else "v5"

    def decode(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Raw output -> (xyxy in model pixels, person scores, whether NMS is still needed)."""
        out = np.asarray(out, np.float32)
        if out.ndim != 3 or out.shape[0] != 1:
            raise EngineError(f"{self.path}: output shape {list(out.shape)} is not a "
                              "YOLO-family [1, ., .] layout")
        layout = self._layout(out)
        rows = out[0].T if layout == "v8" else out[0]
        if layout == "end2end":
            if rows.shape[1] != 6:
                raise EngineError(f"{self.path}: end2end rows must be 6 wide, got {rows.shape}")
            keep = np.round(rows[:, 5]) == self.person_class
            return rows[keep, :4], rows[keep, 4], False
        first = 4 if layout == "v8" else 5
        if rows.shape[1] <= first + self.person_class:
            raise EngineError(f"{self.path}: {layout} rows of {rows.shape[1]} values have no "
                              f"class {self.person_class}")
        scores = rows[:, first + self.person_class]
        if layout == "v5":
            scores = scores * rows[:, 4]
        c, wh = rows[:, :2], rows[:, 2:4]
        return np.concatenate([c - wh / 2, c + wh / 2], axis=1), scores, True

    def __call__(self, frame: np.ndarray, index: int = 0) -> Detections:
        x, r, left, top = self.letterbox(frame)
        out = self.engine.run({self.input_name: x})
        xyxy, scores, nms = self.decode(next(iter(out.values())))
        keep = scores >= self.conf
        xyxy, scores = xyxy[keep], scores[keep]
        if nms and len(scores):
            wh = xyxy[:, 2:] - xyxy[:, :2]
            idx = cv2.dnn.NMSBoxes(np.concatenate([xyxy[:, :2], wh], 1).tolist(),
                                   scores.tolist(), self.conf, self.iou)
            idx = np.asarray(idx, np.int64).reshape(-1)
            xyxy, scores = xyxy[idx], scores[idx]
        if not len(scores):
            return Detections.empty()
        xyxy = (xyxy - np.array([left, top, left, top], np.float32)) / r
        fh, fw = frame.shape[:2]
        xyxy = np.clip(xyxy, 0, [fw, fh, fw, fh]).astype(np.float32)
        return Detections(xyxy, np.clip(scores, 0, 1).astype(np.float32))

    def close(self) -> None:
        self.engine.close()
