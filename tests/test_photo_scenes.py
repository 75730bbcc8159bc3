"""Scenes with photographed people (examples/photo_scenes.py): cut-outs from vtest.avi over its
empty background, on the scripted paths, with truth that ``ssdlite`` can be scored on."""

from __future__ import annotations

import numpy as np
import pytest

from examples.photo_scenes import HEIGHTS, make_photo_scene, scan, sprites
from examples.scenes import PATHS
from ssft_deploy.video import ssdlite
from tests.test_detector_realclip import _clip


@pytest.fixture(scope="module")
def cut():
    bg, frames = scan(_clip())
    return bg, sprites(bg, frames)


def test_cutouts_are_single_people_tight_to_their_mask(cut):
    bg, people = cut
    assert bg.shape == (576, 768, 3) and bg.dtype == np.uint8
    assert len(people) >= 8                          # scenes draw up to 3 of them
    for img, alpha in people:
        assert img.shape[:2] == alpha.shape and HEIGHTS[0] - 10 <= alpha.shape[0] <= HEIGHTS[1]
        assert 0 <= alpha.min() and alpha.max() <= 1
        assert alpha[:, :3].mean() < 0.9 or alpha[:, -3:].mean() < 0.9   # a shape, not a box
        assert 0.25 <= (alpha > 0.5).mean() <= 0.9


def test_scenes_follow_the_scripts_and_truth_marks_where_people_are_drawn(cut):
    bg, people = cut
    for kind in PATHS:
        sc = make_photo_scene(kind, bg, people)
        assert set(sc.people()) == {3000 + p for p in PATHS[kind]}
        assert sc.truth and min(sc.truth) >= 10                       # empty lead-in
        for n, rows in sc.truth.items():
            for _, (x, y, w, h) in rows:
                assert 0 <= x and x + w <= 768 and 0 <= y and y + h <= 576 and w >= 8
                drawn = np.abs(sc.frames[n][y:y + h, x:x + w].astype(int) - bg[y:y + h, x:x + w])
                assert drawn.mean() > 8, (kind, n)                   # someone is there
    again = make_photo_scene("cross", bg, people)
    assert all(np.array_equal(a, b) for a, b in zip(again.frames, make_photo_scene(
        "cross", bg, people).frames))                                  # deterministic


@pytest.mark.skipif(ssdlite.unavailable_reason() is not None,
                    reason=f"{ssdlite.unavailable_reason()}")
def test_ssdlite_finds_the_photographed_people(cut, tmp_path, monkeypatch):
    """What the synthetic renders cannot give (no person score above 0.1 there)."""
    from ssft_deploy.video.detectors import make_detector

    monkeypatch.setenv("SSFT_CACHE", str(tmp_path / "cache"))
    bg, people = cut
    sc = make_photo_scene("still", bg, people)
    det = make_detector("ssdlite", ["a"])["a"]
    n = 50                                            # both people in view, apart
    truth = np.array([[x, y, x + w, y + h] for _, (x, y, w, h) in sc.truth[n]], float)
    found = det(sc.frames[n], n).xyxy
    from benchmarks.detector_recall import iou_matrix

    assert len(truth) == 2 and (iou_matrix(truth, found)[0].max(axis=1) >= 0.5).all(), found
