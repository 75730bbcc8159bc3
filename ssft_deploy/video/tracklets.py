"""Tracklets: per track, crops sampled every N frames, quality-filtered, extracted, aggregated.

Every sampled crop ends in exactly one state, counted per camera (:class:`Ledger`):
``extracted``; ``filtered`` with a reason (``empty`` zero-area or outside the frame, ``border``
touching the frame edge so the person is truncated, ``small`` under ``min_height`` px, ``aspect``
height / width outside the person range); or ``failed`` with the extractor's message (e.g. the
batcher's queue stayed full). ``pending`` is the number still in flight.

A tracklet's feature (Sec. 3 features, post-BN) is the quality-weighted mean of its samples'
unit-normalised shared and specific features; quality ``q = score * min(1, h / good_height)``
(detector confidence times a size term: small crops carry little detail). The samples' own
features are kept: they join the rolling auxiliary set of the transfer (Fig. 4).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field

import cv2
import numpy as np

from ssft_deploy.errors import QueueFullError, SSFTError
from ssft_deploy.features import Features, modality_code


@dataclass(frozen=True)
class SamplingConfig:
    """Quality filters and picture size (pixels; ``aspect`` is height / width)."""

    min_height: int = 32
    aspect: tuple[float, float] = (1.0, 5.0)
    border: int = 2
    good_height: int = 96
    thumb_height: int = 128


def check_box(xyxy: np.ndarray, frame_w: int, frame_h: int, cfg: SamplingConfig
              ) -> str | None:
    """Why a box is not worth a crop (``empty`` / ``border`` / ``small`` / ``aspect``), or None."""
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    if not np.isfinite([x0, y0, x1, y1]).all():
        return "empty"
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, frame_w), min(y1, frame_h)
    if cx1 - cx0 < 2 or cy1 - cy0 < 2:
        return "empty"
    b = cfg.border
    if x0 < b or y0 < b or x1 > frame_w - b or y1 > frame_h - b:
        return "border"
    h, w = y1 - y0, x1 - x0
    if h < cfg.min_height:
        return "small"
    if not cfg.aspect[0] <= h / w <= cfg.aspect[1]:
        return "aspect"
    return None


class Ledger:
    """Thread-safe counts of what became of every sampled crop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.reasons: Counter = Counter()

    def add(self, state: str, reason: str | None = None) -> None:
        with self.lock:
            self.counts[state] += 1
            if reason:
                self.reasons[f"{state}: {reason}"] += 1

    def move(self, old: str, new: str, reason: str | None = None) -> None:
        with self.lock:
            self.counts[old] -= 1
            self.counts[new] += 1
            if reason:
                self.reasons[f"{new}: {reason}"] += 1

    def snapshot(self) -> dict:
        with self.lock:
            c = {k: self.counts.get(k, 0) for k in ("sampled", "extracted", "filtered", "failed",
                                                      "pending")}
            return {**c, "reasons": dict(self.reasons)}


@dataclass
class Sample:
    frame: int
    box: tuple[float, float, float, float]   # x, y, w, h
    quality: float
    state: str = "pending"
    reason: str | None = None
    shared: np.ndarray | None = None
    specific: np.ndarray | None = None
    future: Future | None = None


@dataclass
class Tracklet:
    """One camera's track: time span, samples, best crop (for pictures) and, for gallery
    tracklets, the identity id given on creation."""

    camera: str
    camera_index: int
    modality: str
    track: int
    first_frame: int
    first_time: float
    last_frame: int = -1
    last_time: float = 0.0
    boxes: int = 0
    samples: list[Sample] = field(default_factory=list)
    thumb: np.ndarray | None = None
    thumb_quality: float = -1.0
    identity: int | None = None
    ended: bool = False
    last_step: int = 0          # the book's processed-frame count when last seen
    released: bool = False      # sample features dropped (see release)
    first_box: tuple[float, float, float, float] | None = None   # xyxy, for stitching
    last_box: tuple[float, float, float, float] | None = None
    joined: list[int] = field(default_factory=list)   # tracks stitched into this one
    joined_into: int | None = None                     # the track this one was stitched into

    def extracted(self) -> list[Sample]:
        return [s for s in self.samples if s.state == "extracted"]

    def release(self) -> None:
        """Drop the samples' features and futures once the tracklet is associated (states,
        boxes and counts stay for ``tracks.json``): a long run keeps every tracklet, and a
        sample's features are 2 x 2048 floats."""
        for s in self.samples:
            s.shared = s.specific = s.future = None
        self.released = True

    def sample_features(self) -> Features | None:
        """The extracted samples' features (rows in sample order), or None (also once
        released)."""
        done = self.extracted()
        if not done or self.released:
            return None
        return Features(np.stack([s.shared for s in done]), np.stack([s.specific for s in done]),
                        modality_code(self.modality))

    def feature(self) -> Features | None:
        """Quality-weighted mean of unit shared / specific features: one row, or None (also
        once released)."""
        done = self.extracted()
        if not done or self.released:
            return None
        q = np.asarray([max(s.quality, 1e-6) for s in done], np.float64)[:, None]

        def mean(rows):
            a = np.stack(rows).astype(np.float64)
            a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
            return ((a * q).sum(0) / q.sum())[None].astype(np.float32)

        return Features(mean([s.shared for s in done]), mean([s.specific for s in done]),
                        modality_code(self.modality))

    def summary(self) -> dict:
        states = Counter(s.state for s in self.samples)
        return {"camera": self.camera, "modality": self.modality, "track": self.track,
                "identity": self.identity, "start_frame": self.first_frame,
                "end_frame": self.last_frame, "start_time": self.first_time,
                "end_time": self.last_time, "boxes": self.boxes,
                "samples": {k: states.get(k, 0) for k in ("extracted", "filtered", "failed",
                                                          "pending")},
                "reasons": dict(Counter(f"{s.state}: {s.reason}" for s in self.samples
                                        if s.reason)),
                "joined": list(self.joined), "joined_into": self.joined_into}


#: ``submit(frame8, boxes_xywh, camera, modality, tags) -> futures``: the extraction strategy.
Submit = Callable[[np.ndarray, list, str, str, list], list[Future]]


class TrackletBook:
    """The tracklets of one camera: update with each frame's tracked boxes, sample due tracks,
    and hand out tracklets whose track was lost for more than ``lost_frames`` processed frames
    (as the tracker counts them: a live camera that drops frames skips reader indices, and
    expiring by those ended tracks the tracker still kept, under the same track id)."""

    def __init__(self, camera: str, camera_index: int, modality: str, submit: Submit,
                 ledger: Ledger, cfg: SamplingConfig = SamplingConfig(), every: int = 5,
                 lost_frames: int = 30, new_identity: Callable[[], int] | None = None) -> None:
        self.camera, self.camera_index, self.modality = camera, camera_index, modality
        self.submit, self.ledger, self.cfg = submit, ledger, cfg
        self.every, self.lost_frames = max(1, int(every)), int(lost_frames)
        self.new_identity = new_identity
        self.live: dict[int, Tracklet] = {}
        self._last_try: dict[int, int] = {}
        self._lock = threading.Lock()
        self.steps = 0              # frames observed (processed), the clock of expiry

    def observe(self, index: int, time_s: float, frame8: np.ndarray, xyxy: np.ndarray,
                scores: np.ndarray, ids: np.ndarray) -> None:
        """Record one frame's tracked boxes and submit the crops that are due."""
        fh, fw = frame8.shape[:2]
        self.steps += 1
        due: list[tuple[Tracklet, Sample]] = []
        for box, score, tid in zip(xyxy, scores, ids):
            tid = int(tid)
            t = self.live.get(tid)
            if t is None:
                t = self.live[tid] = Tracklet(self.camera, self.camera_index, self.modality, tid,
                                              index, time_s)
                if self.new_identity is not None:
                    t.identity = self.new_identity()
            t.last_frame, t.last_time, t.boxes = index, time_s, t.boxes + 1
            t.last_box = tuple(float(v) for v in box)
            if t.first_box is None:
                t.first_box = t.last_box
            t.last_step = self.steps
            last = self._last_try.get(tid)
            if last is not None and index - last < self.every:
                continue
            self._last_try[tid] = index
            self.ledger.add("sampled")
            x0, y0, x1, y1 = (float(v) for v in box)
            h = y1 - y0
            q = float(score) * min(1.0, max(h, 0.0) / self.cfg.good_height)
            sample = Sample(index, (x0, y0, x1 - x0, h), q)
            t.samples.append(sample)
            reason = check_box(box, fw, fh, self.cfg)
            if reason:
                sample.state, sample.reason = "filtered", reason
                self.ledger.add("filtered", reason)
                continue
            self.ledger.add("pending")
            due.append((t, sample))
            if q > t.thumb_quality:
                t.thumb, t.thumb_quality = self._thumb(frame8, sample.box), q
        if due:
            self._submit(frame8, due)

    def _thumb(self, frame8: np.ndarray, box) -> np.ndarray:
        x, y, w, h = (round(v) for v in box)
        crop = frame8[max(y, 0):y + h, max(x, 0):x + w]
        if crop.ndim == 2:
            crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
        th = self.cfg.thumb_height
        return cv2.resize(crop, (max(1, round(crop.shape[1] * th / crop.shape[0])), th))

    def _submit(self, frame8: np.ndarray, due: list[tuple[Tracklet, Sample]]) -> None:
        try:
            futures = self.submit(frame8, [s.box for _, s in due], self.camera, self.modality,
                                  [(t.track, s.frame) for t, s in due])
        except (QueueFullError, SSFTError) as exc:
            for _, s in due:
                self._finish(s, None, exc)
            return
        for (_, s), fut in zip(due, futures):
            s.future = fut
            fut.add_done_callback(lambda f, s=s: self._finish(s, f, None))

    def _finish(self, s: Sample, fut: Future | None, error: BaseException | None) -> None:
        """Settle a pending sample once (the future's callback or :meth:`settle`, first wins)."""
        with self._lock:
            if s.state != "pending":
                return
            if fut is not None:
                error = CancelledError("cancelled") if fut.cancelled() else fut.exception()
            if error is None:
                res = fut.result()
                s.shared, s.specific = np.asarray(res.shared), np.asarray(res.specific)
                s.state = "extracted"
                self.ledger.move("pending", "extracted")
            else:
                s.state, s.reason = "failed", str(error) or type(error).__name__
                self.ledger.move("pending", "failed", type(error).__name__)

    def settle(self, s: Sample) -> None:
        """Settle ``s`` now: from its finished future, else failed (no result in time)."""
        if s.state != "pending":
            return
        if s.future is not None and s.future.done():
            self._finish(s, s.future, None)
        else:
            self._finish(s, None, TimeoutError("no feature before the track was associated"))

    def expire(self) -> list[Tracklet]:
        """Tracklets not seen for more than ``lost_frames`` processed frames (removed from
        ``live``)."""
        gone = [t for t in self.live.values() if self.steps - t.last_step > self.lost_frames]
        return [self._end(t) for t in gone]

    def end_all(self) -> list[Tracklet]:
        return [self._end(t) for t in list(self.live.values())]

    def _end(self, t: Tracklet) -> Tracklet:
        del self.live[t.track]
        self._last_try.pop(t.track, None)
        t.ended = True
        return t
