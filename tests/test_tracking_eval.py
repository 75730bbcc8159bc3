"""The evaluator wiring (benchmarks/tracking_eval.py, TrackEval's metrics) on a hand-made pair
whose MOTA, IDF1 and tracks per person are worked out by hand, and on a perfect hypothesis."""

from __future__ import annotations

import pytest

from benchmarks.tracking_eval import evaluate, tracks_per_person

A, B, FAR = (10, 10, 20, 50), (100, 10, 20, 50), (300, 300, 20, 50)


def pair():
    """Two people, 10 frames. Person 1 is tracked as 10 then 11 (an id switch at frame 5),
    person 2 as 12 but missed on frame 9; track 13 is one false box on frame 0."""
    truth = {f: [(1, A), (2, B)] for f in range(10)}
    hyp = {f: [(10 if f < 5 else 11, A)] + ([(12, B)] if f < 9 else []) for f in range(10)}
    hyp[0].append((13, FAR))
    return truth, hyp


def test_known_mota_idf1_and_tracks_per_person():
    truth, hyp = pair()
    m = evaluate(truth, hyp)
    # 20 truth boxes: TP 19, FN 1, FP 1, one switch -> MOTA = 1 - (1 + 1 + 1) / 20
    assert (m["TP"], m["FN"], m["FP"], m["IDSW"]) == (19, 1, 1, 1)
    assert m["MOTA"] == pytest.approx(0.85)
    # identity matching: 1 <-> 10 (5 boxes), 2 <-> 12 (9): IDTP 14, IDFN 6, IDFP 6
    assert m["IDTP"] == 14 and m["IDF1"] == pytest.approx(28 / 40)
    assert m["per_person"] == {"1": [10, 11], "2": [12]} and m["false_tracks"] == 1
    assert m["tracks_per_person"] == pytest.approx(1.5)
    assert 0 < m["HOTA"] < 1


def test_perfect_hypothesis_scores_one():
    truth, _ = pair()
    hyp = {f: [(p + 40, b) for p, b in rows] for f, rows in truth.items()}
    m = evaluate(truth, hyp)
    assert m["MOTA"] == m["IDF1"] == m["HOTA"] == pytest.approx(1.0)
    assert m["tracks_per_person"] == 1.0 and m["false_tracks"] == 0


def test_a_track_mostly_off_truth_is_false():
    truth = {f: [(1, A)] for f in range(4)}
    hyp = {0: [(5, A)], 1: [(5, FAR)], 2: [(5, FAR)], 3: [(5, FAR)]}
    t = tracks_per_person(truth, hyp)
    assert t["false_tracks"] == 1 and t["per_person"] == {"1": []}
    assert t["tracks_per_person"] is None
