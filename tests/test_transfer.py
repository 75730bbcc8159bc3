"""pad (Eq. 5), propagate (Eq. 10 before W), and the SSTN modes against dense constructions."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ssft_deploy.errors import EngineError, InputError
from ssft_deploy.features import Features
from ssft_deploy.transfer import SSTN, RollingAuxiliary, pad, propagate
from tests.test_affinity import brute_force, d_matrix

DS, DP, DT = 12, 8, 10


def make(n, modality, seed):
    rng = np.random.default_rng(seed)
    mod = np.full(n, modality) if np.isscalar(modality) else np.asarray(modality, np.int64)
    return Features(rng.standard_normal((n, DS)), rng.standard_normal((n, DP)), mod)


def dense_propagate(z, a):
    """D^-1/2 A D^-1/2 z from a dense A, the textbook way."""
    deg = a.sum(axis=1)
    r = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    return (r[:, None] * a * r[None, :]) @ z


def lists_to_dense(idx, w):
    n = idx.shape[0]
    a = np.zeros((n, n))
    np.add.at(a, (np.repeat(np.arange(n), idx.shape[1]), idx.ravel()), w.ravel())
    return a


W_TRANSFER = np.random.default_rng(99).standard_normal((2 * DP + DS, DT))


def stand_in_transfer(z, idx, w):
    """Eq. 10 with a fixed W and ReLU (the torch model / ONNX graph stand-in)."""
    return np.maximum(propagate(z, idx, w) @ W_TRANSFER, 0.0)


def test_pad_layout_eq5_and_parts():
    f = make(5, [0, 1, 1, 0, 1], seed=0)
    z = pad(f.shared, f.specific, f.modality)
    assert z.shape == (5, 2 * DP + DS) and z.dtype == np.float32
    for i in range(5):
        p_r, h, p_i = z[i, :DP], z[i, DP:DP + DS], z[i, DP + DS:]
        np.testing.assert_array_equal(h, f.shared[i])
        np.testing.assert_array_equal(p_r if f.modality[i] == 0 else p_i, f.specific[i])
        assert not (p_i if f.modality[i] == 0 else p_r).any()
    only_shared = pad(f.shared, f.specific, f.modality, parts=("shared",))
    assert not only_shared[:, :DP].any() and not only_shared[:, DP + DS:].any()
    only_spec = pad(f.shared, f.specific, f.modality, parts=("specific",))
    assert not only_spec[:, DP:DP + DS].any()
    np.testing.assert_array_equal(only_shared + only_spec, z)
    with pytest.raises(InputError):
        pad(f.shared, f.specific, f.modality, parts=("colour",))


def test_propagate_matches_dense_matrix():
    rng = np.random.default_rng(1)
    n, k2 = 40, 6
    idx = rng.integers(0, n, (n, k2))
    idx[:, 0] = np.arange(n)
    idx[5, 3] = idx[5, 2]            # a repeated neighbour adds up, as A[i, j] += w
    w = rng.random((n, k2)).astype(np.float32)
    w[7] = 0.0                       # a row with d_i = 0 gives 0
    z = rng.standard_normal((n, 9)).astype(np.float32)
    out = propagate(z, idx, w)
    ref = dense_propagate(z.astype(np.float64), lists_to_dense(idx, w.astype(np.float64)))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert not out[7].any()


def test_propagate_rejects_bad_graphs():
    z = np.zeros((4, 3), np.float32)
    idx = np.zeros((4, 2), np.int64)
    w = np.ones((4, 2), np.float32)
    with pytest.raises(InputError):
        propagate(z, idx + 4, w)
    with pytest.raises(InputError):
        propagate(z, idx, -w)
    with pytest.raises(InputError):
        propagate(z, idx[:3], w[:3])
    with pytest.raises(InputError):
        propagate(z, idx.astype(np.float32), w)


def test_all_queries_is_affinity_pad_transfer():
    f = make(30, np.arange(30) % 3 == 0, seed=2)
    t = SSTN(stand_in_transfer, k=3).all_queries(f)
    ref_i, ref_w = brute_force(f.shared, f.specific, f.modality, 3)
    z = pad(f.shared, f.specific, f.modality).astype(np.float64)
    ref = np.maximum(dense_propagate(z, lists_to_dense(ref_i, ref_w)) @ W_TRANSFER, 0.0)
    np.testing.assert_allclose(t, ref, rtol=1e-4, atol=1e-4)


def eq22_reference(q: Features, gallery: Features, k: int) -> np.ndarray:
    """Distances of one query to the gallery, with the (G+1) x (G+1) affinity of Eq. 22 built
    densely: [[k*A^{q,q}, T(A^{q,G}, k)], [k*A^{G,q}, T(A^{G,G}, k)]]."""
    assert len(q) == 1
    g = len(gallery)
    both = Features.concat([q, gallery])
    d_sh, d_sp = d_matrix(both.shared, both.shared), d_matrix(both.specific, both.specific)
    same = both.modality[:, None] == both.modality[None, :]
    aff = np.where(same, d_sp, d_sh)                      # Eq. 6 for every pair
    a = np.zeros((g + 1, g + 1))
    a[0, 0] = k * aff[0, 0]
    for m in (0, 1):                                      # T(A^{q,G}, k) per gallery block
        cols = 1 + np.flatnonzero(gallery.modality == m)
        top = cols[np.lexsort((cols, -aff[0, cols]))][:k]
        a[0, top] = aff[0, top]
    a[1:, 0] = k * aff[1:, 0]
    gi, gw = brute_force(gallery.shared, gallery.specific, gallery.modality, k)
    a[1:, 1:] = lists_to_dense(gi, gw)                    # T(A^{G,G}, k), Eq. 8
    z = pad(both.shared, both.specific, both.modality).astype(np.float64)
    t = np.maximum(dense_propagate(z, a) @ W_TRANSFER, 0.0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return np.linalg.norm(t[1:] - t[0], axis=1)


@pytest.mark.parametrize("gallery_modality", ["cross", "mixed"])
def test_single_query_matches_dense_eq22(gallery_modality):
    k = 3
    query = make(7, [1, 1, 0, 1, 0, 1, 1], seed=3)
    mod = np.zeros(25, np.int64) if gallery_modality == "cross" else np.arange(25) % 4 == 0
    gallery = make(25, mod, seed=4)
    calls = []

    def fn(z, idx, w):
        calls.append(z.shape[0])
        return stand_in_transfer(z, idx, w)

    # max_rows of 3 graphs per call: the queries are spread over several batched calls
    dist = SSTN(fn, k=k, max_rows=3 * 26).single_query_distances(query, gallery)
    assert dist.shape == (7, 25) and calls == [78, 78, 26]
    for i in range(7):
        ref = eq22_reference(query.take([i]), gallery, k)
        np.testing.assert_allclose(dist[i], ref, rtol=1e-4, atol=1e-4)


def test_auxiliary_distances_use_one_joint_graph():
    query, gallery, aux = make(4, 1, seed=5), make(20, 0, seed=6), make(9, 1, seed=7)
    sstn = SSTN(stand_in_transfer, k=2)
    t = sstn.all_queries(Features.concat([query, aux, gallery]))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    ref = np.linalg.norm(t[:4, None] - t[None, 13:], axis=2)
    np.testing.assert_allclose(sstn.auxiliary_distances(query, gallery, aux), ref, atol=1e-5)
    assert not np.allclose(sstn.auxiliary_distances(query, gallery), ref, atol=1e-3)


def test_bad_transfer_output_is_an_engine_error():
    sstn = SSTN(lambda z, idx, w: z[:-1], k=2)
    with pytest.raises(EngineError):
        sstn.all_queries(make(6, 0, seed=8))
    with pytest.raises(InputError):
        SSTN("not callable")


def test_rolling_auxiliary_keeps_the_most_recent():
    aux = RollingAuxiliary(size=10)
    assert len(aux) == 0 and aux.snapshot() is None
    for s in range(4):
        aux.add(make(4, s % 2, seed=10 + s))
    snap = aux.snapshot()
    assert len(snap) == 10
    # the last 10 of the 16 added rows, oldest first
    expect = Features.concat([make(4, s % 2, seed=10 + s) for s in range(4)]).take(slice(6, None))
    np.testing.assert_array_equal(snap.shared, expect.shared)
    np.testing.assert_array_equal(snap.modality, expect.modality)


def test_rolling_auxiliary_is_thread_safe():
    aux = RollingAuxiliary(size=50)
    batches = [make(3, i % 2, seed=100 + i) for i in range(40)]
    known = {row.tobytes() for b in batches for row in b.shared}

    def worker(part):
        for b in part:
            aux.add(b)
            snap = aux.snapshot()
            assert len(snap) <= 50 and len(snap.shared) == len(snap.modality)

    threads = [threading.Thread(target=worker, args=(batches[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = aux.snapshot()
    assert len(snap) == 50
    rows = [row.tobytes() for row in snap.shared]
    assert len(set(rows)) == 50 and set(rows) <= known


def test_single_query_reuses_the_gallery_graph_until_it_changes(monkeypatch):
    sstn = SSTN(stand_in_transfer, k=2)
    calls = []
    real = sstn.neighbours
    monkeypatch.setattr(sstn, "neighbours", lambda f: calls.append(len(f)) or real(f))
    query, gallery = make(3, 1, seed=11), make(15, 0, seed=12)
    first = sstn.single_query_distances(query, gallery, cache_key=("g", 1))
    np.testing.assert_array_equal(sstn.single_query_distances(query, gallery, ("g", 1)), first)
    assert calls == [15]
    sstn.single_query_distances(query, gallery.take(slice(0, 14)), cache_key=("g", 2))
    assert calls == [15, 14]
    sstn.single_query_distances(query, gallery)           # no key: computed, never cached
    sstn.single_query_distances(query, gallery)
    assert calls == [15, 14, 15, 15]
