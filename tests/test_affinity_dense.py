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


def test_row_major_order_matches_lexsort() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    rows = rng.integers(0, 40, n)
    cols = rng.permutation(n) % 700             # unique (row, col) is not required for order
    s = np.round(rng.standard_normal(n), 1).astype(np.float32)  # many exact ties
    s[:50] = 0.0
    s[50:100] = -0.0                            # equal to +0.0: ties broken by column
    ref = np.lexsort((cols, -s, rows))
    got = dense.row_major_order(rows, s, cols, 40, 700)
    key = list(zip(rows[got], -s[got], cols[got]))
    assert key == list(zip(rows[ref], -s[ref], cols[ref]))
    # too many bits for one uint64 key: the lexsort fallback
    np.testing.assert_array_equal(dense.row_major_order(rows, s, cols, 1 << 31, 1 << 20),
                                  np.lexsort((cols, -s, rows)))


def _near_tie_inputs(n: int = 600, dim: int = 24, seed: int = 11):
    """Features where many rows have a float32-unresolvable tie at the k-th place: clusters of
    copies perturbed by ~1e-7 (far below float32 score resolution)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n // 6, dim))
    x = np.repeat(base, 6, axis=0) + 1e-7 * rng.standard_normal((n, dim))
    return x.astype(np.float32)


def test_checked_selection_equals_full_refinement(monkeypatch: pytest.MonkeyPatch) -> None:
    from ssft_deploy.affinity import common

    for tied, x in ((True, _near_tie_inputs()),
                    (False, np.random.default_rng(3).standard_normal((600, 24)))):
        u64 = common.unit(x, np.float64)
        u32 = u64.astype(np.float32)
        cand, scores = dense.candidates(u32, u32, 8, with_scores=True)
        np.testing.assert_array_equal(scores, np.take_along_axis(u32 @ u32.T, cand, axis=1))
        full_i, full_d = common.refine(u64, u64, cand, 4)
        seen: list[int] = []
        real = common.refine

        def counting(q, base, c, k, real=real, seen=seen):
            if c.shape[1] > k:
                seen.append(len(q))   # rows re-ranked over all candidates
            return real(q, base, c, k)

        monkeypatch.setattr(common, "refine", counting)
        got_i, got_d = common.refine_checked(u64, u64, cand, scores, 4)
        monkeypatch.setattr(common, "refine", real)
        np.testing.assert_array_equal(got_i, full_i)
        np.testing.assert_array_equal(got_d, full_d)
        near = int(((scores[:, 3] - scores[:, 4]) <= common.tie_margin(24)).sum())
        assert seen == ([near] if near else [])
        # copies tie at the k-th place on every row; random rows are mostly clear and skip the
        # float64 re-ranking of all candidates
        assert near == len(x) if tied else near < len(x) // 10


def test_float32_tie_at_kth_place_is_settled_in_float64() -> None:
    from ssft_deploy.affinity import common, topk_affinity

    # b (index 2) is a one-ulp nudge of a (index 1) towards q: exactly closer to q, but their
    # float32 scores tie, and a float32 ranking would keep the smaller index, a.
    rng = np.random.default_rng(2)
    q = rng.standard_normal(16).astype(np.float32)
    a = rng.standard_normal(16).astype(np.float32)
    b = a.copy()
    b[8] = np.nextafter(b[8], np.float32(np.inf) * np.sign(q[8]))
    specific = np.stack([q, a, b, -q])
    u64 = common.unit(specific, np.float64)
    u32 = u64.astype(np.float32)
    assert (u64 @ u64[0])[2] > (u64 @ u64[0])[1] and (u32 @ u32[0])[1] >= (u32 @ u32[0])[2]
    idx, _ = topk_affinity(specific, specific, np.zeros(4, np.int64), k=2, method="dense")
    assert list(idx[0, :2]) == [0, 2]


@pytest.mark.skipif(__import__("importlib").util.find_spec("faiss") is None,
                    reason="faiss-cpu is not installed")
def test_dense_checked_and_knn_full_refinement_identical_on_near_ties() -> None:
    from ssft_deploy.affinity import topk_affinity

    shared, specific = _near_tie_inputs(seed=1), _near_tie_inputs(seed=2)
    modality = (np.arange(600) % 3 == 0).astype(np.int64)
    i_dense, w_dense = topk_affinity(shared, specific, modality, k=4, method="dense")
    i_knn, w_knn = topk_affinity(shared, specific, modality, k=4, method="knn")
    np.testing.assert_array_equal(i_dense, i_knn)
    np.testing.assert_array_equal(w_dense, w_knn)


@pytest.mark.parametrize("kind", ["random", "rounded", "zeros"])
def test_column_selection_equals_row_selection_of_the_transpose(kind: str) -> None:
    rng = np.random.default_rng(13)
    tile = rng.standard_normal((901, 37)).astype(np.float32)
    if kind == "rounded":
        tile = np.round(tile)
    elif kind == "zeros":
        tile[:] = 0
    for c in (1, 8):
        got = dense.tile_top_cols(tile, c)
        ref = dense.tile_top(np.ascontiguousarray(tile.T), c)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])
        sel = dense.select_cols(tile, c)    # column slices on the worker threads
        np.testing.assert_array_equal(sel[1], ref[1])


@pytest.mark.parametrize("kind", ["rounded", "duplicates"])
def test_joint_blocks_equal_the_plain_products(kind: str) -> None:
    from ssft_deploy.affinity import joint

    rng = np.random.default_rng(17)
    x = np.round(rng.standard_normal((130, 6))).astype(np.float32)  # exact scores, many ties
    y = np.round(rng.standard_normal((75, 6))).astype(np.float32)
    if kind == "duplicates":
        x[65:] = x[:65]
    for block in (7, 50, 130):          # 19, 3 and 1 row blocks
        i, s = joint.self_candidates(x, 9, block=block)
        np.testing.assert_array_equal(i, brute(x, x, 9))
        np.testing.assert_array_equal(s, np.take_along_axis(x @ x.T, i, axis=1))
    for col_block in (11, 75):
        (i_xy, _), (i_yx, _) = joint.pair_candidates(x, y, 9, 5, col_block=col_block)
        np.testing.assert_array_equal(i_xy, brute(x, y, 9))
        np.testing.assert_array_equal(i_yx, brute(y, x, 5))


def test_joint_path_gives_the_plain_path_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    from ssft_deploy.affinity import joint, topk_affinity

    rng = np.random.default_rng(19)
    shared = rng.standard_normal((900, 24)).astype(np.float32)
    specific = rng.standard_normal((900, 20)).astype(np.float32)
    specific[450:600] = specific[:150]                 # exact duplicates across row blocks
    modality = (rng.random(900) < 0.6).astype(np.int64)
    monkeypatch.setattr(joint.self_candidates, "__defaults__", (128,))  # several row blocks
    got = topk_affinity(shared, specific, modality, k=4, method="dense")
    ref = topk_affinity(shared, specific, modality, k=4, method="dense", col_block=8192)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_joint_products_run_on_single_threaded_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tile's product runs on its worker thread with BLAS held to one thread (BLAS's own
    threads would spin and take the cores from the selections); the limit is lifted after."""
    from threadpoolctl import threadpool_info

    from ssft_deploy.affinity import dense as dense_mod
    from ssft_deploy.affinity import joint

    def blas_threads() -> set[int]:  # numpy's BLAS (faiss may have loaded its own)
        return {d["num_threads"] for d in threadpool_info()
                if d["user_api"] == "blas" and "numpy" in d["filepath"]}

    before = blas_threads()
    seen: list[set[int]] = []
    real = dense_mod.tile_top

    def spy(tile, c, group=None):
        seen.append(blas_threads())
        return real(tile, c, group)

    monkeypatch.setattr(dense_mod, "tile_top", spy)
    x = np.random.default_rng(23).standard_normal((300, 16)).astype(np.float32)
    i, _ = joint.self_candidates(x, 5, block=100)
    np.testing.assert_array_equal(i, brute(x, x, 5))
    assert seen and all(s == {1} for s in seen) and blas_threads() == before
