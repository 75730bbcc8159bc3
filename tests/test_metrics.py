"""eval_sysu / eval_regdb on hand-made distance matrices whose metrics are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.errors import InputError
from ssft_deploy.metrics import eval_regdb, eval_sysu


def _loop_reference(dist, q_pids, g_pids, q_cams, g_cams, dedup):
    """Straightforward per-query loop (the reference code's rules, valid-query averages)."""
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda j: (dist[i, j], j))
        order = [j for j in order if not (q_cams[i] == 3 and g_cams[j] == 2)]
        match = np.array([g_pids[j] == q_pids[i] for j in order])
        if not match.any():
            continue
        if dedup:
            seen = []
            for j in order:
                if g_pids[j] not in seen:
                    seen.append(g_pids[j])
            rank = seen.index(q_pids[i]) + 1
        else:
            rank = int(np.argmax(match)) + 1
        cmcs.append(rank)
        hits = np.cumsum(match)
        pos = np.arange(1, len(match) + 1)
        aps.append((hits / pos)[match].mean())
        inps.append(match.sum() / pos[match][-1])
    return np.array(cmcs), np.mean(aps), np.mean(inps)


def test_sysu_by_hand_cam_rule_dedup_and_absent():
    # gallery: pid, camera
    g_pids = np.array([1, 2, 2, 1, 3])
    g_cams = np.array([2, 1, 4, 5, 1])
    q_pids = np.array([1, 1, 7])
    q_cams = np.array([3, 6, 3])
    dist = np.array([
        [0.1, 0.2, 0.3, 0.4, 0.5],  # cam 3: gallery 0 (cam 2) removed -> 2, 2, 1, 3
        [0.3, 0.1, 0.2, 0.4, 0.5],  # cam 6: 2, 2, 1, 1, 3 (nothing removed)
        [0.1, 0.2, 0.3, 0.4, 0.5],  # identity 7 is absent: skipped
    ])
    cmc, mAP, mINP = eval_sysu(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    # query 0: kept list pids 2,2,1,3 -> identities 2,1,3: rank 2. AP = 1/3; INP = 1/3.
    # query 1: list 2,2,1,1,3 -> identities 2,1,3: rank 2 (image-level it would be 3).
    #          AP = (1/3 + 2/4) / 2 = 5/12; INP = 2/4.
    np.testing.assert_allclose(cmc, [0.0, 1.0, 1.0])
    assert mAP == pytest.approx((1 / 3 + 5 / 12) / 2)
    assert mINP == pytest.approx((1 / 3 + 1 / 2) / 2)
    # without the cam-3 / cam-2 rule query 0 would be rank 1: check the rule matters
    cmc6, _, _ = eval_sysu(dist, q_pids, g_pids, np.array([6, 6, 6]), g_cams, max_rank=3)
    np.testing.assert_allclose(cmc6, [0.5, 1.0, 1.0])


def test_regdb_image_level_cmc_and_ties():
    g_pids = np.array([5, 4, 4, 5])
    q_pids = np.array([4, 5])
    # all-equal distances: the stable sort keeps gallery order 5, 4, 4, 5
    dist = np.zeros((2, 4))
    cmc, mAP, mINP = eval_regdb(dist, q_pids, g_pids, max_rank=4)
    # query pid 4: hits at 2, 3 -> rank 2, AP = (1/2 + 2/3)/2, INP = 2/3
    # query pid 5: hits at 1, 4 -> rank 1, AP = (1 + 2/4)/2, INP = 2/4
    np.testing.assert_allclose(cmc, [0.5, 1.0, 1.0, 1.0])
    assert mAP == pytest.approx(((1 / 2 + 2 / 3) / 2 + (1 + 1 / 2) / 2) / 2)
    assert mINP == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_max_rank_beyond_gallery_pads_with_last_value():
    dist = np.array([[0.1, 0.2, 0.5]])
    cmc, mAP, _ = eval_regdb(dist, [9], [1, 2, 9], max_rank=6)
    np.testing.assert_allclose(cmc, [0, 0, 1, 1, 1, 1])
    assert mAP == pytest.approx(1 / 3)
    # SYSU de-dup: 2 identities in the gallery, max_rank 5
    cmc, _, _ = eval_sysu(np.array([[0.1, 0.2, 0.3]]), [2], [1, 1, 2], [6], [1, 4, 5], max_rank=5)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1, 1])


def test_random_against_loop_reference():
    rng = np.random.default_rng(3)
    q, g = 40, 30
    dist = np.round(rng.random((q, g)), 1)  # coarse values: many ties
    q_pids, g_pids = rng.integers(0, 8, q), rng.integers(0, 6, g)
    q_cams, g_cams = rng.choice([3, 6], q), rng.choice([1, 2, 4, 5], g)
    for dedup, fn in ((True, eval_sysu), (False, None)):
        ranks, ap, inp = _loop_reference(dist, q_pids, g_pids, q_cams, g_cams, dedup)
        if fn is None:  # RegDB: no camera rule
            ranks, ap, inp = _loop_reference(dist, q_pids, g_pids, np.zeros(q), g_cams, dedup)
            cmc, mAP, mINP = eval_regdb(dist, q_pids, g_pids, max_rank=g)
        else:
            cmc, mAP, mINP = fn(dist, q_pids, g_pids, q_cams, g_cams, max_rank=g)
        expect = [(ranks <= r).mean() for r in range(1, g + 1)]
        np.testing.assert_allclose(cmc, expect)
        assert mAP == pytest.approx(ap) and mINP == pytest.approx(inp)


def test_bad_inputs_are_input_errors():
    with pytest.raises(InputError, match="q_pids"):
        eval_regdb(np.zeros((2, 3)), [1], [1, 2, 3])
    with pytest.raises(InputError, match="finite"):
        eval_regdb(np.array([[np.nan]]), [1], [1])
    with pytest.raises(InputError, match="no query"):
        eval_regdb(np.zeros((1, 2)), [7], [1, 2])


def test_sysu_scale_shapes():
    rng = np.random.default_rng(0)
    g_pids = np.repeat(np.arange(96), 32)[:3010]
    q_pids = rng.integers(0, 96, 3803)
    dist = rng.random((3803, 3010)).astype(np.float32)
    cmc, mAP, _ = eval_sysu(dist, q_pids, g_pids, rng.choice([3, 6], 3803),
                            rng.choice([1, 2, 4, 5], 3010))
    assert 0.0 < cmc[0] < 0.1 and 0.0 < mAP < 0.2  # random distances: near chance
