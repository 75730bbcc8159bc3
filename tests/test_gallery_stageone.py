"""Stage one of two-stage search (issue 13, recall): queries search the store's index with their
own, wider settings than the Eq. 6 neighbour lists of gallery entries; Milvus flushes this
client's writes before it searches."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.errors import InputError
from ssft_deploy.features import Features
from ssft_deploy.gallery import Gallery, twostage

pytest.importorskip("faiss", reason="the gallery's k-NN needs faiss (pip install faiss-cpu)")


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scattered(n_ids=400, per_id=5, queries=40, d=32, seed=0):
    """Identities with no structure between them, RGB entries from other cameras than the IR
    queries: the case where IVF's cells say little about a query's neighbours."""
    rng = np.random.default_rng(seed)
    centres, cams = rng.standard_normal((n_ids, d)), rng.standard_normal((4, d))
    pids = np.arange(n_ids * per_id) % n_ids
    g = centres[pids] + cams[rng.integers(0, 2, len(pids))] + 0.8 * rng.standard_normal(
        (len(pids), d))
    qp = rng.integers(0, n_ids, queries)
    q = centres[qp] + cams[rng.integers(2, 4, queries)] + 0.8 * rng.standard_normal((queries, d))
    spec = rng.standard_normal((len(pids), 8))
    gallery = Features(g.astype(np.float32), spec.astype(np.float32), 0)
    query = Features(q.astype(np.float32), rng.standard_normal((queries, 8)).astype(np.float32), 1)
    return gallery, pids, query


def recall(store, gallery, query, m):
    got = twostage.shortlists(store, query, (0,), (None, None), m)
    exact = np.argsort(-(unit(query.shared) @ unit(gallery.shared).T), axis=1)[:, :m]
    return np.mean([len(np.intersect1d(e, s)) / m for e, s in zip(exact, got)])


def test_stage_one_searches_wider_than_the_neighbour_lists():
    gallery, pids, query = scattered()
    g = Gallery(32, 8, index="ivf", nprobe=1)
    g.add(gallery, pids=pids, camids=0, entry_ids=np.arange(len(pids)))
    m = 30
    narrow = g.knn(query.shared, "shared", "rgb", m)   # an Eq. 6 block: nprobe=1
    exact = np.argsort(-(unit(query.shared) @ unit(gallery.shared).T), axis=1)[:, :m]
    narrow_recall = np.mean([len(np.intersect1d(e, s)) / m for e, s in zip(exact, narrow)])
    wide_recall = recall(g, gallery, query, m)          # stage one: 60% of the lists by default
    assert narrow_recall < 0.6
    assert wide_recall > 0.9 > narrow_recall
    g_all = Gallery(32, 8, index="ivf", nprobe=1, shortlist_nprobe=10_000)  # every list: exact
    g_all.add(gallery, pids=pids, camids=0, entry_ids=np.arange(len(pids)))
    assert recall(g_all, gallery, query, m) == 1.0


@pytest.mark.parametrize("opt", ["nprobe", "shortlist_nprobe", "ef_search",
                                 "shortlist_ef_search"])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_search_settings_must_be_positive_integers(opt, bad):
    with pytest.raises(InputError, match=opt):
        Gallery(4, 4, **{opt: bad})


def test_sweep_recall_measurement():
    """The benchmark's recall: exact answers score 1, a half-right answer 0.5, and an entry tied
    with the exact M-th counts under the tolerant recall only."""
    from benchmarks import gallery_sweep

    base = unit(np.random.default_rng(0).standard_normal((300, 16)))
    base = np.concatenate([base, base[:1]])            # row 300 ties row 0 exactly
    q = base[[5, 9]] + 0.01
    exact, mth = gallery_sweep.exact_top(q, base, 10)
    assert (gallery_sweep.recalls(exact, exact, mth, q, base)["recall_at_m"]) == 1.0
    half = exact.copy()
    half[:, 5:] = np.setdiff1d(np.arange(len(base)), exact.ravel())[:5]
    assert gallery_sweep.recalls(half, exact, mth, q, base)["recall_at_m"] == 0.5
    top1, mth1 = gallery_sweep.exact_top(base[:1] + 0.01, base, 1)   # rows 0 and 300 tie
    assert top1[0, 0] == 0                                            # ties by index
    r = gallery_sweep.recalls(np.array([[300]]), top1, mth1, base[:1] + 0.01, base)
    assert r["recall_at_m"] == 0.0 and r["recall_at_m_tol"] == 1.0


def test_sweep_rows_flat_exact_and_ivf_all_lists_exact():
    from benchmarks import gallery_sweep

    gallery, _, query = scattered(n_ids=200, per_id=5, queries=10)
    base, q = unit(gallery.shared), unit(query.shared)
    rows = gallery_sweep.sweep(base, q, 20, [("flat", {}, [{}]),
                                             ("ivf", {"nlist": 16}, [{"nprobe": 1}, {"nprobe": 16}])],
                               spec=unit(gallery.specific), nl_rows=50)
    search = [r for r in rows if not r.get("neighbour_lists")]
    assert search[0]["recall_at_m"] == 1.0 and search[2]["recall_at_m"] == 1.0
    assert search[1]["recall_at_m"] < 1.0
    assert all(r["p99_ms"] >= r["p50_ms"] > 0 and len(r["loadavg"]) == 3 for r in search)
    assert {r["nprobe"] for r in rows if r.get("neighbour_lists")} == {16, 32, 64}
