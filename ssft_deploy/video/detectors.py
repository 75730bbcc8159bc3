"""Person detectors: anything mapping a BGR frame to boxes with scores.

A detector is a callable ``detector(frame_bgr_uint8, frame_index) -> Detections``. Built in:

- :class:`~ssft_deploy.video.ssdlite.SsdliteDetector`: a trained person detector from a PyPI
  package (SSDLite-MobileNetV2), tiled for small people; ``auto`` (the CLI's default) takes it
  when it can run here, else ``motion``.
- :class:`MotionDetector` (zero download, static cameras): OpenCV's MOG2 background
  subtraction, morphology, then shape filters (area, height, aspect) on the foreground blobs;
  blobs wider than a person are split into person-wide columns.
- :class:`~ssft_deploy.video.yolo.OnnxPersonDetector`: a YOLO-family ONNX export of the user's.
- :class:`MotDetections`: boxes read from a MOTChallenge file (``frame,id,x,y,w,h,conf,...``,
  frames from 1; the ids are ignored, the tracker assigns its own).

:func:`make_detector` builds one per camera from a CLI spec (``auto``, ``ssdlite``, ``motion``,
``onnx:PATH``, ``mot:FILE_OR_DIR``).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ssft_deploy.errors import InputError

log = logging.getLogger("ssft_deploy.video")

@dataclass
class Detections:
    """``xyxy [N,4]`` float32 pixel boxes and ``scores [N]`` float32 in [0, 1]."""

    xyxy: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.scores)


Detector = Callable[[np.ndarray, int], Detections]


class MotionDetector:
    """Moving-person proposals for a static camera (one instance per camera: it keeps state).

    ``history`` frames of MOG2 background model; foreground pixels are opened (noise) and
    closed (holes); blobs stacked vertically are joined (:func:`merge_stacked`); each box is kept when its area >= ``min_area`` px, its height >=
    ``min_height`` px and its height / width lies in ``aspect`` (people stand upright). A blob
    flatter than that (people side by side) is split into ``round(w * person_aspect / h)`` equal
    columns (flat blobs under ``2 * min_height`` are dropped as fragments). The score is the
    blob's foreground fill ratio. The first ``warmup`` frames only
    train the background model (no detections) at MOG2's automatic rate; after them it learns
    at ``1 / history`` per frame, so people who stand still stay foreground for a while.
    ``every_frame``: the pipeline runs it on every frame whatever ``detect_every`` (fed every
    N-th frame, its background model fell behind walking people: more and larger blobs, and on
    vtest.avi 2.5x the time per call at N = 5)."""

    every_frame = True

    def __init__(self, history: int = 300, var_threshold: float = 16.0, min_area: int = 400,
                 min_height: int = 24, aspect: tuple[float, float] = (1.2, 5.0),
                 person_aspect: float = 2.0, warmup: int = 5, kernel: int = 3) -> None:
        self.subtractor = cv2.createBackgroundSubtractorMOG2(history, var_threshold,
                                                             detectShadows=False)
        self.min_area, self.min_height = int(min_area), int(min_height)
        self.aspect, self.person_aspect = aspect, float(person_aspect)
        self.warmup, self.seen, self.history = int(warmup), 0, int(history)
        self.kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))

    def __call__(self, frame: np.ndarray, index: int = 0) -> Detections:
        # MOG2's automatic rate is 1/n for the first n < history frames: that would absorb a
        # person standing still within a few frames; after the warm-up, learn at 1/history.
        rate = -1.0 if self.seen < self.warmup else 1.0 / self.history
        mask = self.subtractor.apply(frame, learningRate=rate)
        self.seen += 1
        if self.seen <= self.warmup:
            return Detections.empty()
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self.kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self.kernel, iterations=2)
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        boxes, scores = [], []
        for x, y, w, h, area in merge_stacked(stats[1:].tolist()):
            if area < self.min_area or h < self.min_height:
                continue
            ratio = h / max(w, 1)
            if ratio > self.aspect[1]:
                continue
            parts = 1
            if ratio < self.aspect[0]:
                if h < 2 * self.min_height:   # a flat fragment, not people side by side
                    continue
                parts = max(2, round(w * self.person_aspect / h))
            step = w / parts
            for i in range(parts):
                boxes.append((x + i * step, y, x + (i + 1) * step, y + h))
                scores.append(float(area) / (w * h))
        if not boxes:
            return Detections.empty()
        return Detections(np.asarray(boxes, np.float32), np.clip(np.asarray(scores, np.float32),
                                                                 0, 1))


def merge_stacked(blobs: list[list[int]]) -> list[list[int]]:
    """Join blobs stacked vertically (torso and legs split by a background-coloured band):
    horizontal overlap >= half the narrower one, vertical gap <= 30 % of the taller one.
    ``blobs``: ``[x, y, w, h, area]`` rows."""
    blobs = [list(b) for b in blobs]
    merged = True
    while merged:
        merged = False
        for i in range(len(blobs)):
            for j in range(i + 1, len(blobs)):
                a, b = blobs[i], blobs[j]
                overlap = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
                gap = max(a[1], b[1]) - min(a[1] + a[3], b[1] + b[3])
                if overlap >= 0.5 * min(a[2], b[2]) and gap <= 0.3 * max(a[3], b[3]):
                    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
                    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
                    blobs[i] = [x0, y0, x1 - x0, y1 - y0, a[4] + b[4]]
                    del blobs[j]
                    merged = True
                    break
            if merged:
                break
    return blobs


def read_mot(path: str | Path, min_conf: float = 0.0) -> dict[int, list[tuple[int, tuple, float]]]:
    """MOTChallenge lines -> {frame (from 1): [(id, (x, y, w, h), conf), ...]}; InputError
    naming the line for anything else."""
    out: dict[int, list[tuple[int, tuple, float]]] = defaultdict(list)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read detections file {path}: {exc}") from exc
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(" ", "").split(",")
        try:
            frame, tid = int(float(parts[0])), int(float(parts[1]))
            box = tuple(float(v) for v in parts[2:6])
            conf = float(parts[6]) if len(parts) > 6 else 1.0
        except (ValueError, IndexError) as exc:
            raise InputError(f"{path}:{n}: not a MOTChallenge line "
                             f"'frame,id,x,y,w,h,conf,...': {line!r}") from exc
        if len(box) != 4 or not np.isfinite([*box, conf]).all():
            raise InputError(f"{path}:{n}: a box needs 4 finite numbers x,y,w,h: {line!r}")
        if conf >= min_conf:
            out[frame].append((tid, box, conf))
    return dict(out)


class MotDetections:
    """Detections from a MOTChallenge file; frame ``index`` (from 0) reads file frame index+1.
    Scores above 1 (some files hold raw detector scores) are clipped to 1."""

    def __init__(self, path: str | Path, min_conf: float = 0.0) -> None:
        self.path = Path(path)
        self.by_frame = read_mot(path, min_conf)

    def __call__(self, frame: np.ndarray, index: int = 0) -> Detections:
        rows = self.by_frame.get(index + 1, [])
        if not rows:
            return Detections.empty()
        xywh = np.asarray([b for _, b, _ in rows], np.float32)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return Detections(xyxy, np.clip(np.asarray([c for _, _, c in rows], np.float32), 0, 1))


def _mot_file(path: Path, camera: str, n_cameras: int) -> Path:
    if path.is_dir():
        f = path / f"{camera}.txt"
        if not f.is_file():
            raise InputError(f"mot:{path}: no {f.name} for camera {camera!r} (a folder needs "
                             "one NAME.txt per camera)")
        return f
    if n_cameras > 1:
        raise InputError(f"mot:{path} is one file for {n_cameras} cameras: give a folder with "
                         "one NAME.txt per camera")
    return path


def resolve_detector(spec: str) -> tuple[str, str]:
    """``auto`` -> (``ssdlite`` when it can run here else ``motion``, why); other specs as given."""
    if spec.strip().lower() != "auto":
        return spec, "as asked"
    from ssft_deploy.video.ssdlite import unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        return "ssdlite", "auto: ssdlite is installed"
    return "motion", f"auto: ssdlite unavailable ({reason})"


def _thresholds(value, cameras: list[str]) -> dict[str, float]:
    """One score threshold (float) or ``{camera: threshold}`` (others keep the default)."""
    if isinstance(value, dict):
        unknown = set(value) - set(cameras)
        if unknown:
            raise InputError(f"thresholds for unknown cameras {sorted(unknown)}; cameras are "
                             f"{cameras}")
        return {c: float(v) for c, v in value.items()}
    return {c: float(value) for c in cameras}


def make_detector(spec: str, cameras: list[str], backend: str = "auto",
                  **options: object) -> dict[str, Detector]:
    """A detector per camera from ``auto`` | ``ssdlite`` | ``motion`` | ``onnx:PATH`` |
    ``mot:FILE_OR_DIR``. ``ssdlite`` takes ``threshold`` as a float or ``{camera: float}``;
    its cameras share one engine."""
    resolved, why = resolve_detector(spec)
    if resolved != spec:
        log.info("detector %s (%s)", resolved, why)
    kind, _, arg = resolved.partition(":")
    kind = kind.strip().lower()
    if kind == "motion" and not arg:
        return {c: MotionDetector(**options) for c in cameras}  # type: ignore[arg-type]
    if kind == "ssdlite" and not arg:
        from ssft_deploy.video.ssdlite import THRESHOLD, SsdliteDetector, open_engine

        per_cam = _thresholds(options.pop("threshold", THRESHOLD), cameras)
        # several cameras call the one engine at once: one stream per core, one thread per
        # stream, the cameras are the parallelism (2 threads a call burnt ~60 % more CPU per
        # pass on 2 loaded cores; one stream queued every camera's calls on one core)
        streams = max(1, min(len(cameras), len(os.sched_getaffinity(0))))
        threads = options.pop("intra_op_threads", streams if len(cameras) > 1 else None)
        engine = open_engine(threads, streams)  # type: ignore[arg-type]
        return {c: SsdliteDetector(engine, threshold=per_cam.get(c, THRESHOLD), **options)
                for c in cameras}  # type: ignore[arg-type]
    if kind == "mot" and arg:
        path = Path(arg)
        if not path.exists():
            raise InputError(f"detections {arg!r} do not exist")
        return {c: MotDetections(_mot_file(path, c, len(cameras))) for c in cameras}
    if kind == "onnx" and arg:
        from ssft_deploy.video.yolo import OnnxPersonDetector

        det = OnnxPersonDetector(arg, backend=backend, **options)  # type: ignore[arg-type]
        return {c: det for c in cameras}  # stateless and thread-safe: one session for all
    raise InputError(f"unknown detector {spec!r}: use auto, ssdlite, motion, onnx:PATH or "
                     "mot:FILE_OR_DIR")
