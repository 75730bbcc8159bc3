"""dense.candidates: the grouped selection against a brute-force (-score, index) ranking."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.affinity import dense


def brute(q: np.ndarray, base: np.ndarray, c: int) -> np.ndarray:
    s = q @ base.T
    cols = np.broadcast_to(np.arange(base.shape[0]), s.shape)
    return np.stack([np.lexsort((cols[i], -s[i]))[:c] for i in range(len(q))])


@pytest.mark.parametrize("kind", ["random", "rounded", "duplicates", "zeros"])
@pytest.mark.parametrize("c", [1, 8])
def test_grouped_selection_is_exact_with_ties(kind: str, c: int) -> None:
    rng = np.random.default_rng(c)
    q = rng.standard_normal((40, 6)).astype(np.float32)
    # 901 columns: 56 groups of 16 (c=1) or 90 of 10 (c=8), plus columns outside every group
    base = rng.standard_normal((901, 6)).astype(np.float32)
    if kind == "rounded":   # many exactly equal scores, also at the top-c boundary
        base = np.round(base)
    elif kind == "duplicates":
        base[500:900] = base[:400]
    elif kind == "zeros":   # every score ties
        base[:] = 0
    ref = brute(q, base, c)
    for row_block, col_block in [(None, 8192), (7, 300), (16, 901)]:
        got = dense.candidates(q, base, c, row_block=row_block, col_block=col_block)
        np.testing.assert_array_equal(got, ref)


def test_tile_top_returns_scores_in_order() -> None:
    rng = np.random.default_rng(3)
    tile = rng.standard_normal((9, 700)).astype(np.float32)
    s, i = dense.tile_top(tile, 5)
    np.testing.assert_array_equal(i, brute(tile, np.eye(700, dtype=np.float32), 5))
    np.testing.assert_array_equal(s, np.take_along_axis(tile, i, axis=1))


def test_worker_threads_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from ssft_deploy.affinity import common, topk_affinity

    rng = np.random.default_rng(5)
    shared = np.round(rng.standard_normal((700, 6))).astype(np.float32)  # ties everywhere
    specific = np.round(rng.standard_normal((700, 5))).astype(np.float32)
    modality = (rng.random(700) < 0.7).astype(np.int64)
    out = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        assert common.workers() == int(threads)
        out[threads] = topk_affinity(shared, specific, modality, k=4, method="dense")
    np.testing.assert_array_equal(out["1"][0], out["3"][0])
    np.testing.assert_array_equal(out["1"][1], out["3"][1])
