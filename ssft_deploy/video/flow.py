"""Boxes carried from one frame to the next by sparse optical flow (OpenCV's pyramidal
Lucas-Kanade), for the frames between detections (``--detect-every N``).

Why: a person walking across a 768x576 camera at 10 frames/s moves about a quarter of their
width a frame, so between detections 8 frames apart they move two widths. ByteTrack, which
matches by overlap, then never links two detections of one person (the first match of a new
track has no velocity), and a Kalman extrapolation from two detections lags behind them: on the
photographed-people scenes IDF1 fell from 0.92 (every frame) to 0.10 at stride 8. Flow follows
the pixels of each box frame by frame for about a millisecond, so the tracker sees every frame.
"""

from __future__ import annotations

import cv2
import numpy as np

GRID = (4, 6)              # points per box, columns x rows, over its inner part
INNER = (0.2, 0.1)         # fraction of the width / height left out on each side (background)
SCALE = 0.5                # flow on a half-size frame: a quarter of the pixels, same answer
FB_ERROR = 0.5             # px at SCALE: forward-backward error above which a point is dropped
MIN_POINTS = 0.3           # fraction of a box's points that must be trusted to carry it
LK = {"winSize": (11, 11), "maxLevel": 2,      # at SCALE: as 21 px and 3 levels at full size
      "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)}


class Prepared:
    """One frame ready for flow (its half-size grey image), made once and used both as the
    frame boxes are carried into and the frame they are carried from next."""

    def __init__(self, frame: np.ndarray) -> None:
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        self.size = grey.shape[:2]
        self.image = cv2.resize(grey, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_AREA)


def _points(xyxy: np.ndarray) -> np.ndarray:
    """``[len(xyxy) * cols * rows, 1, 2]`` float32 grid points over each box's inner part."""
    cols, rows = GRID
    fx = np.linspace(INNER[0], 1 - INNER[0], cols)
    fy = np.linspace(INNER[1], 1 - INNER[1], rows)
    gx, gy = np.meshgrid(fx, fy)
    w = (xyxy[:, 2] - xyxy[:, 0])[:, None]
    h = (xyxy[:, 3] - xyxy[:, 1])[:, None]
    px = xyxy[:, :1] + w * gx.ravel()[None]
    py = xyxy[:, 1:2] + h * gy.ravel()[None]
    return np.stack([px, py], axis=2).reshape(-1, 1, 2).astype(np.float32)


def carry(prev: Prepared, cur: Prepared, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of frame ``prev`` -> (the boxes moved to frame ``cur`` by the median flow of
    their trusted points, mask of the boxes carried). A box keeps its size; one with too few
    trusted points (occluded, left the frame, textureless) is not carried."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    if not len(xyxy) or prev.size != cur.size:    # a camera that changed resolution: no flow
        return xyxy, np.zeros(len(xyxy), bool)
    p0 = _points(xyxy) * SCALE
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev.image, cur.image, p0, None, **LK)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(cur.image, prev.image, p1, None, **LK)
    fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
    good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < FB_ERROR)
    per = GRID[0] * GRID[1]
    good = good.reshape(len(xyxy), per)
    move = (p1 - p0).reshape(len(xyxy), per, 2) / SCALE
    out, ok = xyxy.copy(), good.mean(axis=1) >= MIN_POINTS
    for i in np.flatnonzero(ok):
        dx, dy = np.median(move[i][good[i]], axis=0)
        out[i] += np.array([dx, dy, dx, dy], np.float32)
    h, w = cur.size
    inside = (out[:, 2] > 0) & (out[:, 0] < w) & (out[:, 3] > 0) & (out[:, 1] < h)
    return out, ok & inside
