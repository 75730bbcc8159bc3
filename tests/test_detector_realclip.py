"""``ssdlite`` on real footage: OpenCV's vtest.avi against boxes drawn by hand on 24 frames
(tests/data/vtest_boxes.json; benchmarks/detector_recall.py has the matching rules and writes
docs/results/detector_recall.json).

The clip (8 MB, Apache-2.0 AND BSD-3-Clause) is not committed: ``make clip-setup`` (a step of
``make test``) fetches it from Debian's opencv-doc into .data/. Under ``make test``
(``SSFT_REQUIRE_CLIP=1``) a missing clip fails, unless the set-up recorded why it could not fetch
it (.data/UNAVAILABLE): then, and outside ``make test``, the test skips with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks.detector_recall import evaluate, load_labels, score_frame
from ssft_deploy.video import ssdlite

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / ".data" / "vtest.avi"


def _clip() -> Path:
    if CLIP.is_file():
        return CLIP
    why = CLIP.parent / "UNAVAILABLE"
    if why.is_file():
        pytest.skip(f"the set-up could not fetch vtest.avi: {why.read_text().strip()}")
    if os.environ.get("SSFT_REQUIRE_CLIP") == "1":
        pytest.fail(f"{CLIP} is missing and the set-up recorded no reason: make clip-setup")
    pytest.skip(f"{CLIP} is missing: make clip-setup")


def test_scoring_rules():
    people = np.array([[0, 0, 10, 40], [50, 0, 60, 40]], float)
    ignore = np.array([[100, 0, 110, 20]], float)
    pred = np.array([[1, 1, 10, 40],       # person 0
                     [0, 0, 10, 38],       # person 0 again: false (one to one)
                     [101, 2, 109, 19],    # on an ignore box: not counted
                     [200, 0, 210, 40]])   # nobody: false
    assert score_frame(pred, people, ignore) == {"people": 2, "found": 1, "boxes": 4,
                                                 "false": 2, "ignored": 1}


def test_labels_are_hand_boxes_on_at_least_20_frames():
    lab = load_labels()
    assert len(lab["frames"]) >= 20 and "Apache-2.0" in lab["licence"]
    for f in lab["frames"].values():
        for x0, y0, x1, y1 in f["people"]:
            assert 0 <= x0 < x1 <= 768 and 0 <= y0 < y1 <= 576 and y1 - y0 >= 50


@pytest.mark.slow
@pytest.mark.skipif(ssdlite.unavailable_reason() is not None,
                    reason=f"{ssdlite.unavailable_reason()}")
def test_ssdlite_recall_and_false_boxes_on_the_labelled_frames(tmp_path, monkeypatch):
    """Measured: recall 0.921 (129 of 140) at IoU 0.5 with 3.0 % false boxes (4 of 133); without
    the majority vote 9.7 % (14 of 144); the full frame alone (no tiles) finds 0.73. The issue's
    targets: recall >= 0.90, false boxes <= 5 %."""
    clip = _clip()
    monkeypatch.setenv("SSFT_CACHE", str(tmp_path / "cache"))
    tiled = evaluate("ssdlite", clip)
    no_vote = evaluate("ssdlite", clip, vote_score=None)
    full = evaluate("ssdlite", clip, tile_scale=0.0)
    assert tiled["frames"] >= 20 and tiled["people"] >= 100
    assert tiled["recall"] >= 0.90, tiled["recall"]
    assert tiled["false_rate"] <= 0.05, tiled["false_rate"]
    assert no_vote["false"] > tiled["false"] + 5                  # the vote is what removes them
    assert full["recall"] < tiled["recall"] - 0.15        # the tiles find the small people
