"""topk_affinity: dense and knn against a brute-force N x N reference; padding, ties, errors."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.affinity import topk_affinity
from ssft_deploy.errors import InputError


def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


needs_faiss = pytest.mark.skipif(not has_faiss(), reason="faiss-cpu is not installed")


def d_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Eq. 7 straight from the definition: 1 - 0.5 * |a/|a| - b/|b||, float64, N x N."""
    a = a.astype(np.float64) / np.linalg.norm(a.astype(np.float64), axis=1, keepdims=True)
    b = b.astype(np.float64) / np.linalg.norm(b.astype(np.float64), axis=1, keepdims=True)
    return 1.0 - 0.5 * np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)


def brute_force(shared, specific, modality, k):
    """Eq. 6-8 with the full N x N affinity: top-k per row and block, (-d, index) order."""
    n = len(modality)
    d_spec, d_shared = d_matrix(specific, specific), d_matrix(shared, shared)
    idx = np.repeat(np.arange(n)[:, None], 2 * k, axis=1)
    w = np.zeros((n, 2 * k))
    for i in range(n):
        for half, (cols, d) in enumerate(((np.flatnonzero(modality == modality[i]), d_spec),
                                          (np.flatnonzero(modality != modality[i]), d_shared))):
            top = cols[np.lexsort((cols, -d[i, cols]))][:k]
            idx[i, half * k: half * k + top.size] = top
            w[i, half * k: half * k + top.size] = d[i, top]
    return idx, w


def random_inputs(n=150, ds=24, dp=16, p_ir=0.4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, ds)).astype(np.float32),
            rng.standard_normal((n, dp)).astype(np.float32),
            (rng.random(n) < p_ir).astype(np.int64))


@pytest.mark.parametrize("k", [1, 4, 7])
def test_dense_matches_brute_force(k):
    shared, specific, modality = random_inputs(seed=k)
    ref_i, ref_w = brute_force(shared, specific, modality, k)
    # small tiles so row blocks, column blocks and the running merge are all exercised
    idx, w = topk_affinity(shared, specific, modality, k=k, method="dense",
                           row_block=16, col_block=20)
    assert idx.dtype == np.int64 and w.dtype == np.float32 and idx.shape == (150, 2 * k)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(w, ref_w, rtol=0, atol=1e-6)
    # self first with d = 1 (no duplicates here), other-modality half strictly other modality
    assert (idx[:, 0] == np.arange(150)).all() and (w[:, 0] == 1.0).all()
    assert (modality[idx[:, k:]] != modality[:, None]).all()
    assert (np.diff(w[:, :k], axis=1) <= 0).all() and (np.diff(w[:, k:], axis=1) <= 0).all()


@needs_faiss
def test_dense_and_exact_knn_identical():
    shared, specific, modality = random_inputs(n=400, ds=64, dp=48, seed=3)
    i_dense, w_dense = topk_affinity(shared, specific, modality, k=4, method="dense")
    i_knn, w_knn = topk_affinity(shared, specific, modality, k=4, method="knn")
    np.testing.assert_array_equal(i_dense, i_knn)
    np.testing.assert_allclose(w_dense, w_knn, rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", ["dense", pytest.param("knn", marks=needs_faiss)])
def test_padding_when_a_modality_has_fewer_than_k(method):
    shared, specific, _ = random_inputs(n=12, seed=5)
    modality = np.array([0] * 10 + [1] * 2)
    k = 4
    idx, w = topk_affinity(shared, specific, modality, k=k, method=method)
    ref_i, ref_w = brute_force(shared, specific, modality, k)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(w, ref_w, atol=1e-6)
    rows = np.arange(12)
    # IR rows: 2 real same-modality neighbours, then padding (i, 0)
    assert (idx[10:, 2:k] == rows[10:, None]).all() and (w[10:, 2:k] == 0).all()
    assert (w[10:, :2] > 0).all()
    # RGB rows: only 2 IR samples exist for the other-modality half
    assert set(idx[0, k:k + 2]) == {10, 11}
    assert (idx[:10, k + 2:] == rows[:10, None]).all() and (w[:10, k + 2:] == 0).all()


def test_single_modality_pads_the_other_half():
    shared, specific, _ = random_inputs(n=9, seed=6)
    idx, w = topk_affinity(shared, specific, np.ones(9, np.int64), k=3)
    assert (idx[:, 3:] == np.arange(9)[:, None]).all() and (w[:, 3:] == 0).all()
    assert (w[:, :3] > 0).all()


@pytest.mark.parametrize("method", ["dense", pytest.param("knn", marks=needs_faiss)])
def test_ties_go_to_the_smaller_index(method):
    rng = np.random.default_rng(7)
    base = rng.standard_normal((6, 8)).astype(np.float32)
    # rows 0..5 and 6..11 are identical copies (and scaled copies: same direction, same d)
    shared = np.concatenate([base, 3.0 * base])
    specific = np.concatenate([base, 0.5 * base])
    modality = np.zeros(12, np.int64)
    idx, w = topk_affinity(shared, specific, modality, k=3, method=method)
    for i in range(12):
        twin = i % 6
        # the two copies tie at d = 1: the smaller index comes first, whichever row asks
        assert list(idx[i, :2]) == [twin, twin + 6]
        np.testing.assert_allclose(w[i, :2], [1.0, 1.0], atol=1e-7)
        # the third neighbour is again a tied pair: its smaller index is taken
        assert idx[i, 2] < 6


def test_invalid_inputs_raise_input_error():
    shared, specific, modality = random_inputs(n=10)
    with pytest.raises(InputError):
        topk_affinity(shared, specific[:9], modality)
    with pytest.raises(InputError):
        topk_affinity(shared, specific, modality[:9])
    with pytest.raises(InputError):
        topk_affinity(shared, specific, np.full(10, 2))
    bad = shared.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError):
        topk_affinity(bad, specific, modality)
    with pytest.raises(InputError):
        topk_affinity(shared, specific, modality, k=0)
    with pytest.raises(InputError):
        topk_affinity(shared, specific, modality, method="magic")
    with pytest.raises(InputError):
        topk_affinity(shared[0], specific, modality)


@needs_faiss
@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_knn_recall_is_measured(index):
    from ssft_deploy.affinity.knn import measure_recall
    from ssft_deploy.affinity.scale import synthetic

    shared, specific, modality = synthetic(3000, 32, ids=300, seed=1)
    recall = measure_recall(shared, specific, modality, k=4, index=index)
    assert 0.9 <= recall <= 1.0
    # a deliberately starved IVF search loses neighbours, and the measurement shows it
    poor = measure_recall(shared, specific, modality, k=4, index="ivf", nlist=64, nprobe=1)
    assert poor < recall


def test_unknown_method_options_are_input_errors():
    shared, specific, modality = random_inputs(n=10)
    with pytest.raises(InputError):
        topk_affinity(shared, specific, modality, method="dense", nprobe=3)
