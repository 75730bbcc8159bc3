"""Multi-object tracking through a maintained library, and our extractor as a tracker's ReID model.

The tracker is ByteTrack from Roboflow's ``supervision`` (``pip install 'ssft-deploy[video]'``).
Why: it needs only numpy / scipy / OpenCV-headless and no torch (the runtime's rule), and it is
maintained by a large project. ``boxmot`` was ruled out: it installs torch-based ``timm``,
``opencv-python`` (clashes with ``opencv-python-headless``), pandas, pyarrow, scikit-learn and
downloaders, and its trackers import torch. Roboflow's successor package ``trackers`` (ByteTrack,
OC-SORT, BoT-SORT) also requires ``opencv-python``; its trackers, like ByteTrack, take no
appearance model. ``supervision`` 0.31 dropped ``ByteTrack`` for ``trackers``, so the extra pins
``supervision>=0.30,<0.31``; any object with ``update(xyxy, scores) -> (xyxy, ids)`` can replace
:class:`ByteTracker`.

Trackers that do take an appearance model (boxmot's BoT-SORT, StrongSORT, DeepOC-SORT) call
``model.get_features(xyxy, frame) -> [N, D]``: :class:`BoxmotReID` is that model over a
``ReIDRuntime`` for one camera's modality.
"""

from __future__ import annotations

import warnings

import numpy as np

from ssft_deploy.errors import InputError
from ssft_deploy.video import flow
from ssft_deploy.video.detectors import Detections


def valid_boxes(det: Detections) -> np.ndarray:
    """Mask of boxes with finite coordinates, positive width and height and a finite score."""
    xyxy = det.xyxy
    ok = np.isfinite(xyxy).all(axis=1) & np.isfinite(det.scores)
    return ok & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])


class ByteTracker:
    """``supervision.ByteTrack`` for one camera. ``lost_frames``: frames a lost track is kept
    for re-association (also when our tracklet counts as ended).

    ``detect_every`` N > 1: detections come every N-th frame (:meth:`update`), and
    :meth:`predict` gives the frames between. ByteTrack itself must not see those frames as
    empty: an update without boxes marks every track lost and deletes the tracks born on the
    previous update before they are confirmed, so no one who enters would ever be tracked.
    With ``flow`` (the default; every call then takes its frame) the frames between carry the
    last frame's boxes by optical flow (:mod:`ssft_deploy.video.flow`) and ByteTrack steps on
    every frame with them (people moving two widths between detections are still matched frame
    to frame). With ``flow=False`` (no frames), ByteTrack steps once per detection (its Kalman
    velocity is per N frames, its lost buffer ``ceil(lost_frames / N)`` steps) and the frames
    between get each track's Kalman state moved on by k / N of that velocity."""

    def __init__(self, activation: float = 0.25, lost_frames: int = 30,
                 match_threshold: float = 0.8, min_frames: int = 1,
                 detect_every: int = 1, flow: bool = True) -> None:
        if int(detect_every) < 1:
            raise InputError(f"detect_every must be >= 1, got {detect_every}")
        self.detect_every = int(detect_every)
        self.flow = bool(flow) and self.detect_every > 1
        steps = int(lost_frames) if self.flow else -(-int(lost_frames) // self.detect_every)
        try:
            import supervision as sv
        except ImportError as exc:
            raise InputError("the tracker needs supervision: pip install 'ssft-deploy[video]'"
                             ) from exc
        if not hasattr(sv, "ByteTrack"):
            raise InputError(f"supervision {sv.__version__} has no ByteTrack (removed in 0.31): "
                             "pip install 'supervision>=0.30,<0.31'")
        self._sv = sv
        with warnings.catch_warnings():  # deprecated upstream in favour of `trackers`, see above
            warnings.simplefilter("ignore")
            # frame_rate=30 makes lost_track_buffer a frame count, whatever the camera's rate
            self.tracker = sv.ByteTrack(track_activation_threshold=activation,
                                        lost_track_buffer=steps,
                                        minimum_matching_threshold=match_threshold,
                                        frame_rate=30, minimum_consecutive_frames=min_frames)
        self.lost_frames = int(lost_frames)
        self.invalid = 0   # boxes refused before tracking (NaN, zero or negative area)
        self._shown: list = []     # Kalman: (track, score) output by the last update
        self._since = 0            # Kalman: frames since that update
        self._last: tuple | None = None   # flow: (prepared frame, boxes fed, their scores)

    def update(self, det: Detections, frame: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detections of one frame -> (xyxy [M,4], scores [M], track ids [M]) of tracked boxes.
        ``frame`` (BGR or grey): with ``flow``, what :meth:`predict` carries boxes from."""
        ok = valid_boxes(det)
        self.invalid += int((~ok).sum())
        out = self._step(det.xyxy[ok], det.scores[ok], self._prepare(frame))
        self._since = 0
        return out

    def _prepare(self, frame: np.ndarray | None) -> flow.Prepared | None:
        if not self.flow:
            return None
        if frame is None:
            raise InputError(f"a tracker detecting every {self.detect_every} frames carries "
                             "boxes by optical flow: pass each frame to update / predict "
                             "(or build it with flow=False)")
        return flow.Prepared(frame)

    def _step(self, xyxy: np.ndarray, scores: np.ndarray, prepared: flow.Prepared | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sv_det = self._sv.Detections(xyxy=np.asarray(xyxy, np.float32).reshape(-1, 4),
                                     confidence=np.asarray(scores, np.float32).reshape(-1))
        out = self.tracker.update_with_detections(sv_det)
        ids = np.asarray(out.tracker_id if out.tracker_id is not None else [], np.int64)
        scores = (np.asarray(out.confidence, np.float32) if out.confidence is not None
                  else np.ones(len(ids), np.float32))
        if self.flow:
            # flow carries what ByteTrack was fed, not what it output: a track born on a
            # detection is confirmed on the next frame only if its box is carried there
            self._last = (prepared, sv_det.xyxy, sv_det.confidence)
        else:
            live = {t.external_track_id: t for t in self.tracker.tracked_tracks}
            self._shown = [(live[i], s) for i, s in zip(ids.tolist(), scores.tolist())
                           if i in live]
        return np.asarray(out.xyxy, np.float32).reshape(-1, 4), scores, ids

    def predict(self, frame: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A frame without detections (``detect_every`` > 1): with ``flow``, the last frame's
        boxes carried into ``frame`` by optical flow and tracked; else the tracks of the last
        :meth:`update`, moved on by their Kalman velocity. Same outputs as :meth:`update`."""
        self._since += 1
        cur = self._prepare(frame)
        if cur is not None and self._last is not None:
            prev, boxes, scores = self._last
            moved, ok = flow.carry(prev, cur, boxes)
            return self._step(moved[ok], scores[ok], cur)
        if not self._shown:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        frac = self._since / self.detect_every
        boxes = []
        for track, _ in self._shown:
            cx, cy, a, h = track.mean[:4] + frac * track.mean[4:]   # Kalman state: cx, cy, w/h, h
            h = max(float(h), 1.0)              # a shrinking velocity must not flip the box
            w = max(float(a) * h, 1.0)
            boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        return (np.asarray(boxes, np.float32),
                np.asarray([s for _, s in self._shown], np.float32),
                np.asarray([t.external_track_id for t, _ in self._shown], np.int64))


class BoxmotReID:
    """A boxmot-style appearance model: ``get_features(xyxy [N,4], frame) -> [N, Ds]`` unit
    shared features (the modality-shared part, comparable across cameras) of one modality."""

    def __init__(self, runtime, modality: str, stretch=None) -> None:
        self.runtime, self.modality, self.stretch = runtime, modality, stretch

    def get_features(self, xyxys: np.ndarray, img: np.ndarray) -> np.ndarray:
        xyxys = np.asarray(xyxys, np.float32).reshape(-1, 4)
        ds = self.runtime.bundle.dims["shared"]
        if len(xyxys) == 0:
            return np.zeros((0, ds), np.float32)
        boxes = np.concatenate([xyxys[:, :2], xyxys[:, 2:] - xyxys[:, :2]], axis=1)
        ex = self.runtime.extract_boxes_batch(img, boxes, self.modality, self.stretch)
        out = np.zeros((len(boxes), ds), np.float32)   # a box that cannot be cut stays zero
        f = ex.features.shared
        out[ex.ok_indices] = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        return out
