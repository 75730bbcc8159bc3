"""Appearance stitching within a camera: a tracklet that ended and one that started soon after,
nearby and with close extractor features, are one person; they are joined before the event or
gallery entry is written.

ByteTrack matches by box overlap only: after a crossing, an occlusion, a stop the motion detector
stops seeing, or a step out of view, the person comes back under a new track id, and each id would
become its own IR event or gallery entry. The extractor already runs on every track's samples, so
its features (what BoT-SORT / StrongSORT add to the tracker) decide the join here, after the fact.

Latency: an ended tracklet (lost for ``lost_frames``) is held ``window`` more processed frames
before it goes to association, so that a successor starting up to ``lost_frames + window`` frames
after its last box has samples to compare. ``window=0`` turns stitching off (no added latency).
The pairing of ends with starts is one assignment (scipy's ``linear_sum_assignment`` on
``1 - cosine``) over the pairs that pass all three gates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass

import numpy as np

from ssft_deploy.errors import InputError
from ssft_deploy.video.tracklets import Sample, Tracklet


@dataclass(frozen=True)
class StitchConfig:
    """``window``: processed frames an ended tracklet is held (0: off); ``max_gap``: frames
    from the end of one tracklet to the start of the next; ``max_distance``: distance between
    the last box's and the first box's centres, in heights of the last box; ``min_cosine``:
    cosine of the tracklets' features (mean of the shared and the specific cosines);
    ``wait_s``: how long a decision waits for the crops in flight of a candidate that has no
    feature yet (the camera's worker waits)."""

    window: int = 20
    max_gap: int = 60
    max_distance: float = 1.5
    min_cosine: float = 0.75
    wait_s: float = 1.0       # at most this long for a candidate's first feature to arrive

    def __post_init__(self) -> None:
        if min(self.window, self.max_gap, self.max_distance, self.wait_s) < 0:
            raise InputError(f"stitch window, gap, distance and wait must be >= 0, got {self}")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise InputError(f"stitch cosine must be within [-1, 1], got {self.min_cosine}")


def _centre(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.asarray([(x0 + x1) / 2, (y0 + y1) / 2], np.float64)


def _unit(t: Tracklet) -> tuple[np.ndarray, np.ndarray] | None:
    f = t.feature()
    if f is None:
        return None
    s, p = f.shared[0].astype(np.float64), f.specific[0].astype(np.float64)
    return s / max(np.linalg.norm(s), 1e-12), p / max(np.linalg.norm(p), 1e-12)


def cosine(a: Tracklet, b: Tracklet) -> float | None:
    """Mean of the shared and specific cosines of two tracklets' features (None: no feature)."""
    fa, fb = _unit(a), _unit(b)
    if fa is None or fb is None:
        return None
    return float((fa[0] @ fb[0] + fa[1] @ fb[1]) / 2)


def near(a: Tracklet, b: Tracklet, cfg: StitchConfig) -> bool:
    """``b`` started after ``a`` ended, within ``max_gap`` frames and ``max_distance`` box
    heights of where ``a`` was last seen."""
    if b is a or a.last_box is None or b.first_box is None:
        return False
    if not 0 < b.first_frame - a.last_frame <= cfg.max_gap:
        return False
    h = max(a.last_box[3] - a.last_box[1], 1.0)
    return bool(np.linalg.norm(_centre(a.last_box) - _centre(b.first_box)) / h
                <= cfg.max_distance)


def gates(a: Tracklet, b: Tracklet, cfg: StitchConfig) -> float | None:
    """The cosine of ``a`` (ended) and ``b`` (started after it) when the pair passes the time,
    place and appearance gates, else None."""
    if not near(a, b, cfg):
        return None
    c = cosine(a, b)
    return c if c is not None and c >= cfg.min_cosine else None


def _pair(a: Tracklet, b: Tracklet, passed: bool) -> dict:
    h = max(a.last_box[3] - a.last_box[1], 1.0) if a.last_box else 1.0
    d = (float(np.linalg.norm(_centre(a.last_box) - _centre(b.first_box)) / h)
         if a.last_box and b.first_box else None)
    return {"camera": a.camera, "end": a.track, "start": b.track,
            "gap": b.first_frame - a.last_frame, "distance": d, "cosine": cosine(a, b),
            "passed": passed}


def absorb(b: Tracklet, a: Tracklet) -> int | None:
    """Join ``a`` (the earlier) into ``b``: b takes a's samples, start, box count, identity (a
    gallery person keeps the id it was first given) and better picture; a keeps no samples, so
    every crop is still counted once. Returns b's identity when a's replaced it."""
    dropped = b.identity if a.identity is not None and b.identity != a.identity else None
    b.samples = a.samples + b.samples
    b.first_frame, b.first_time, b.first_box = a.first_frame, a.first_time, a.first_box
    b.boxes += a.boxes
    if a.thumb_quality > b.thumb_quality:
        b.thumb, b.thumb_quality = a.thumb, a.thumb_quality
    if a.identity is not None:
        b.identity = a.identity
    b.joined = [*a.joined, a.track, *b.joined]
    a.samples, a.joined_into = [], b.track
    return dropped


class Stitcher:
    """One camera's ended tracklets held for stitching (used by that camera's worker only)."""

    def __init__(self, cfg: StitchConfig = StitchConfig(),
                 forget: Callable[[int], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None,
                 settle: Callable[[Sample], None] | None = None) -> None:
        self.cfg, self.forget = cfg, forget       # forget(identity): a gallery id given up
        self.on_error = on_error                  # a failed decision joins nothing
        self.settle = settle                      # settle(sample) whose future is done
        self.held: list[tuple[Tracklet, int]] = []    # (tracklet, the step its window closes)
        self.joins = 0
        self.trace: list[dict] | None = None   # a list: every pair in time range is noted there

    def step(self, ended: Iterable[Tracklet], live: Iterable[Tracklet], steps: int
             ) -> tuple[list[Tracklet], list[Tracklet]]:
        """Hold the newly ended tracklets; decide those whose window closed at processed frame
        ``steps`` against every later tracklet (live or held). Returns (to associate, joined
        into another)."""
        ended = list(ended)
        if self.cfg.window == 0:
            return ended, []
        self.held += [(t, steps + self.cfg.window) for t in ended]
        due = [t for t, d in self.held if d <= steps]
        if not due:
            return [], []
        self.held = [(t, d) for t, d in self.held if d > steps]
        return self._decide(due, [*live, *(t for t, _ in self.held), *due])

    def flush(self, ended: Iterable[Tracklet]) -> tuple[list[Tracklet], list[Tracklet]]:
        """The camera stopped: decide every held and newly ended tracklet now."""
        ended = list(ended)
        if self.cfg.window == 0:
            return ended, []
        due = [t for t, _ in self.held] + ended
        self.held = []
        return self._decide(due, due)

    def _ready(self, tracklets: Iterable[Tracklet]) -> None:
        """Wait (``wait_s``) for the crops in flight of the tracklets without a feature yet: a
        successor found soon after it started has had no time for its first extraction."""
        waiting = [t for t in tracklets if not t.extracted()]
        futs = [s.future for t in waiting for s in t.samples
                if s.state == "pending" and s.future is not None]
        if not futs:
            return
        wait_futures(futs, self.cfg.wait_s)
        for t in waiting:   # a done future's callback may not have run yet: settle it here
            for s in t.samples:
                if s.state == "pending" and s.future is not None and s.future.done() \
                        and self.settle is not None:
                    self.settle(s)

    def _decide(self, ends: list[Tracklet], starts: list[Tracklet]
                ) -> tuple[list[Tracklet], list[Tracklet]]:
        from scipy.optimize import linear_sum_assignment

        cos = np.full((len(ends), len(starts)), np.nan)
        try:
            self._ready({id(t): t for a in ends for b in starts if near(a, b, self.cfg)
                         for t in (a, b)}.values())
            for i, a in enumerate(ends):
                for j, b in enumerate(starts):
                    c = gates(a, b, self.cfg)
                    if c is not None:
                        cos[i, j] = c
                    if self.trace is not None and 0 < b.first_frame - a.last_frame \
                            <= self.cfg.max_gap:
                        self.trace.append(_pair(a, b, c is not None))
        except Exception as exc:  # noqa: BLE001 - the tracklets go on unjoined, never lost
            if self.on_error is not None:
                self.on_error(exc)
            return ends, []
        pairs: list[tuple[Tracklet, Tracklet]] = []
        if np.isfinite(cos).any():
            cost = np.where(np.isfinite(cos), 1.0 - cos, 1e6)
            rows, cols = linear_sum_assignment(cost)
            pairs = [(ends[i], starts[j]) for i, j in zip(rows, cols) if np.isfinite(cos[i, j])]
        # earliest end first: in a chain a -> b -> c, b has taken a before c takes b
        for a, b in sorted(pairs, key=lambda p: p[0].last_frame):
            dropped = absorb(b, a)
            if dropped is not None and self.forget is not None:
                self.forget(dropped)
        self.joins += len(pairs)
        joined = {id(a) for a, _ in pairs}
        return ([t for t in ends if id(t) not in joined], [t for t in ends if id(t) in joined])
