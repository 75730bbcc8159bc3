"""Boxes carried by optical flow between detections (``--detect-every N``): a person moving a
quarter of their width a frame, detected every 4th or 8th frame, keeps one track that follows
them; the Kalman prediction alone never tracked them (ByteTrack matches by overlap, and two
detections 4 frames apart of a fast walker do not overlap)."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.video.detectors import Detections
from ssft_deploy.video.flow import Prepared, carry
from ssft_deploy.video.tracker import ByteTracker

H, W = 240, 480
RNG = np.random.default_rng(0)
BACKGROUND = (RNG.integers(0, 60, (H, W)) + 100).astype(np.uint8)       # textured, dim
PERSON = RNG.integers(0, 256, (90, 30)).astype(np.uint8)                # textured, bright


def frame(x: int, y: int = 80) -> np.ndarray:
    img = np.ascontiguousarray(np.repeat(BACKGROUND[:, :, None], 3, axis=2))
    x0, x1 = max(x, 0), min(x + 30, W)
    if x1 > x0:
        img[y:y + 90, x0:x1] = PERSON[:, x0 - x:x1 - x, None]
    return img


def box(x: int, y: int = 80) -> np.ndarray:
    return np.array([[x, y, x + 30, y + 90]], np.float32)


def test_carry_moves_a_box_with_its_pixels_and_drops_what_it_cannot_follow():
    moved, ok = carry(Prepared(frame(100)), Prepared(frame(108, 83)), box(100))
    assert ok.all() and np.abs(moved - box(108, 83)).max() < 1.0
    flat = Prepared(np.full((H, W), 128, np.uint8))                      # nothing to follow
    _, ok = carry(flat, flat, box(100))
    assert not ok.any()
    empty, ok = carry(flat, flat, np.zeros((0, 4)))
    assert empty.shape == (0, 4) and ok.shape == (0,)
    _, ok = carry(Prepared(frame(100)), Prepared(frame(100)[:200]), box(100))
    assert not ok.any()                                # another frame size: nothing carried


@pytest.mark.parametrize("stride", [4, 8])
def test_a_fast_walker_detected_on_a_stride_keeps_one_track_that_follows_them(stride):
    speed = 8                                           # px a frame: a quarter of the width
    tracks = {"flow": ByteTracker(detect_every=stride), "kalman": ByteTracker(
        detect_every=stride, flow=False)}
    seen = {k: [] for k in tracks}
    for f in range(48):
        x = 10 + speed * f
        img = frame(x)
        for name, trk in tracks.items():
            if f % stride == 0:
                out = trk.update(Detections(box(x), np.array([0.9], np.float32)), img)
            else:
                out = trk.predict(img)
            seen[name].append((x, *out))
    flow_ids = {int(i) for _, _, _, ids in seen["flow"] for i in ids}
    assert len(flow_ids) == 1

    def followed(name):
        return sum(bool(len(ids)) and abs(xyxy[0, 0] - x) < 3 for x, xyxy, _, ids in seen[name])

    assert followed("flow") >= 40                      # every frame after the confirmation
    assert followed("kalman") < 5                      # measured: 1 (ByteTrack never confirms)


def test_a_flow_tracker_without_frames_is_a_clear_error():
    from ssft_deploy.errors import InputError

    trk = ByteTracker(detect_every=4)
    with pytest.raises(InputError, match="pass each frame"):
        trk.update(Detections(box(10), np.array([0.9], np.float32)))
    with pytest.raises(InputError, match="pass each frame"):
        trk.predict()
    xyxy, _, ids = ByteTracker(detect_every=1).update(     # stride 1: no flow, no frame needed
        Detections(box(10), np.array([0.9], np.float32)))
    assert len(xyxy) == len(ids) == 1
