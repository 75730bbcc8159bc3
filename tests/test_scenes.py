"""The scripted scenes of examples/scenes.py: deterministic, and their truth is consistent with
what is drawn (people where the boxes are, nowhere else) and with what each scene claims."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.tracking_eval import iou_xywh
from examples.scenes import CROP, KINDS, MIN_VISIBLE, SIZE, make_scene


@pytest.fixture(scope="module", params=[(k, m) for k in KINDS for m in ("rgb", "ir")],
                ids=lambda p: "_".join(p))
def scene(request):
    return make_scene(*request.param)


def spans(scene, person):
    """Runs of consecutive frames where ``person`` has a truth box."""
    frames = sorted(f for f, rows in scene.truth.items() if any(p == person for p, _ in rows))
    out, start = [], frames[0]
    for a, b in itertools.pairwise(frames):
        if b != a + 1:
            out.append((start, a))
            start = b
    return out + [(start, frames[-1])]


def test_truth_matches_the_pixels(scene):
    w, h = SIZE
    empty = scene.frames[0].astype(np.int16)          # a lead-in frame: background only
    assert scene.truth and 0 not in scene.truth
    for f, rows in scene.truth.items():
        frame = scene.frames[f].astype(np.int16)
        ids = [p for p, _ in rows]
        assert len(ids) == len(set(ids))
        mask = np.zeros((h, w), bool)
        for _, (x, y, bw, bh) in rows:
            assert 0 <= x and x + bw <= w and 0 <= y and y + bh <= h and bw >= MIN_VISIBLE
            mask[y:y + bh, x:x + bw] = True
        diff = np.abs(frame - empty).max(axis=2) > 25   # noise alone stays under 17
        for _, (x, y, bw, bh) in rows:
            if bw == CROP[1]:                             # wholly in view: a body is drawn
                assert diff[y:y + bh, x:x + bw].mean() > 0.2, (f, rows)
        assert not diff[~mask].any(), f                   # nobody outside the boxes


def test_scenes_are_deterministic():
    a, b = make_scene("cross"), make_scene("cross")
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames)) and a.truth == b.truth


def test_each_scene_does_what_it_says():
    cross = make_scene("cross")
    p1, p2 = cross.people()
    overlap = [iou_xywh([dict(r)[p1]], [dict(r)[p2]])[0, 0] for r in cross.truth.values()
               if len(r) == 2]
    assert max(overlap) > 0.3                         # they pass through each other
    still = make_scene("still")
    xs = [dict(still.truth[f])[still.people()[0]][0] for f in range(10 + 25, 10 + 65)]
    assert max(xs) == min(xs)                         # 4 s without moving
    reenter = make_scene("reenter")
    (_, e0), (s1, _) = spans(reenter, reenter.people()[0])
    assert s1 - e0 > 31                               # longer out of view than lost_frames
    assert len(spans(reenter, reenter.people()[1])) == 1
    hand = make_scene("handover")
    first, _, second = (spans(hand, p) for p in hand.people())
    assert len(first) == len(second) == 1 and second[0][0] - first[0][1] > 31
