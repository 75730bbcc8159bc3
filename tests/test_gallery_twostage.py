"""Two-stage search (issue 13 item 2): stage two is the exact SSTN on the shortlist's subgraph,
and the neighbour lists it needs are cached per gallery version."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.gallery import Gallery
from ssft_deploy.transfer import SSTN
from tests.test_gallery import people
from tests.test_transfer import stand_in_transfer

pytest.importorskip("faiss", reason="the gallery's k-NN needs faiss (pip install faiss-cpu)")


@pytest.fixture
def gallery():
    g = Gallery(12, 8)
    pids = np.arange(80) % 25
    g.add(people(pids, "rgb", seed=0, noise=0.5), pids=pids, camids=pids % 4)
    g.add(people(np.arange(20), "ir", seed=1, noise=0.5), pids=np.arange(20), camids=3)
    return g


def full_distances(g, q, sstn):
    rgb, cols = g.entries("rgb")
    return sstn.single_query_distances(q, rgb), cols["ids"]


@pytest.mark.parametrize("m", [5, 20, 80])
def test_shortlisted_distances_equal_the_full_sstn(gallery, m):
    sstn = SSTN(stand_in_transfer, k=3)
    q = people([3, 7, 11, 19], "ir", seed=2, noise=0.5)
    full, ids = full_distances(gallery, q, sstn)
    res = gallery.search(q, top=100, transfer=sstn, mode="single-query", shortlist=m)
    for r, d in zip(res, full):
        assert len(r.entry_ids) <= m
        for e, dist in zip(r.entry_ids, r.distances):   # exact, entry by entry
            assert dist == pytest.approx(d[ids == e][0], abs=1e-5)
    if m == 80:                                          # the whole block: today's ranking
        ref = gallery.search(q, top=100, transfer=sstn, mode="single-query")
        assert [r.pids.tolist() for r in res] == [r.pids.tolist() for r in ref]


def test_small_transfer_calls_pack_whole_blocks(gallery):
    calls = []

    def fn(z, idx, w):
        calls.append(len(z))
        return stand_in_transfer(z, idx, w)

    q = people([3, 7, 11], "ir", seed=2, noise=0.5)
    big = SSTN(stand_in_transfer, k=3)
    small = SSTN(fn, k=3, max_rows=60)
    a = gallery.search(q, top=10, transfer=big, mode="single-query", shortlist=10)
    b = gallery.search(q, top=10, transfer=small, mode="single-query", shortlist=10)
    assert [r.pids.tolist() for r in a] == [r.pids.tolist() for r in b]
    assert len(calls) >= 2 and max(calls) <= 60            # split to fit the engine's limit


def test_neighbour_lists_cached_per_version(gallery, monkeypatch):
    sstn = SSTN(stand_in_transfer, k=3)
    real = Gallery._neighbour_lists
    seen = []
    monkeypatch.setattr(Gallery, "_neighbour_lists",
                        lambda self, ids, *a: seen.append(len(ids)) or real(self, ids, *a))
    q = people([3], "ir", seed=2, noise=0.5)
    gallery.search(q, top=5, transfer=sstn, mode="single-query", shortlist=10)
    first = len(seen)
    assert first >= 1
    gallery.search(q, top=5, transfer=sstn, mode="single-query", shortlist=10)
    assert len(seen) == first                             # same version: all cached
    gallery.add(people([1], "rgb", seed=8), pids=[1], camids=1)
    gallery.search(q, top=5, transfer=sstn, mode="single-query", shortlist=10)
    assert len(seen) > first                              # a write invalidates


def test_all_queries_two_stage_ranks_the_subgraph(gallery):
    sstn = SSTN(stand_in_transfer, k=3)
    q = people([3, 7], "ir", seed=2, noise=0.5)
    res = gallery.search(q, top=5, transfer=sstn, mode="all-queries", shortlist=10)
    full = gallery.search(q, top=5, transfer=sstn, mode="all-queries")
    assert [len(r.pids) for r in res] == [5, 5]
    assert [r.pids[0] for r in res] == [r.pids[0] for r in full]


def test_vanished_reads_an_entry_missing_from_its_own_list():
    """An entry whose own same-modality list (first k columns) lacks it is gone, unless k
    near-duplicates fill that list (then it cannot be told and stays); padding (the entry
    itself at weight 0) is no sign of life."""
    from ssft_deploy.gallery.twostage import vanished

    k = 2
    ids = np.array([10, 11, 12, 13])
    idx = np.array([[10, 5, 7, 8],       # itself first: present
                    [5, 6, 7, 8],        # missing, its list holds weaker entries: gone
                    [5, 6, 7, 8],        # missing, but k entries tie at ~1: kept
                    [13, 13, 7, 8]])     # only padding (itself, weight 0): gone
    w = np.array([[1.0, 0.6, 0.5, 0.4],
                  [0.9, 0.6, 0.5, 0.4],
                  [0.9999999, 0.9999999, 0.5, 0.4],
                  [0.0, 0.0, 0.5, 0.4]])
    assert vanished(ids, idx, w, k).tolist() == [11, 13]
    assert vanished(ids[:0], idx[:0], w[:0], k).tolist() == []
