"""Gallery and k-NN edge cases (issue 10 item 4): an emptied modality, a starved approximate
index, and the single-query cache keyed by the gallery's version."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.affinity import topk_affinity
from ssft_deploy.gallery import Gallery
from ssft_deploy.transfer import SSTN
from tests.test_gallery import assert_same_entries, people
from tests.test_transfer import stand_in_transfer

faiss = pytest.importorskip("faiss", reason="the k-NN method needs faiss (pip install faiss-cpu)")


def test_save_after_a_modality_is_emptied_round_trips(tmp_path):
    g = Gallery()
    g.add(people([1, 2, 3], "rgb", seed=0), pids=[1, 2, 3], camids=1)
    g.add(people([4, 5], "ir", seed=1), pids=[4, 5], camids=3)
    assert g.remove(pids=[4, 5]) == 2                     # every IR entry
    g.save(tmp_path / "g.bin")
    loaded = Gallery.load(tmp_path / "g.bin")
    assert len(loaded) == 3
    assert_same_entries(g, loaded)
    assert len(loaded.entries("ir")[0]) == 0
    assert list(loaded.add(people([6], "ir", seed=2), pids=[6], camids=3)) == [5]


def test_starved_ivf_index_pads_missing_neighbours():
    rng = np.random.default_rng(0)
    n, d = 400, 16
    shared, specific = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    modality = np.repeat([0, 1], n // 2)
    k = 8
    # 100 lists over 200 points, one probed: most queries find fewer than k + slack points
    idx, w = topk_affinity(shared, specific, modality, k=k, method="knn", index="ivf",
                           nlist=100, nprobe=1)
    starved = 0
    for i in range(n):
        for half in (slice(0, k), slice(k, 2 * k)):
            real = idx[i, half][w[i, half] > 0]
            assert len(real) == len(set(real.tolist())), f"row {i} repeats a weighted neighbour"
            pad = w[i, half] == 0
            assert (idx[i, half][pad] == i).all()         # padding is (i, 0)
            starved += int(pad.sum())
    assert starved > 0                                    # the index really was starved


def test_single_query_cache_follows_the_gallery_version(monkeypatch):
    g = Gallery()
    g.add(people([1, 2, 3, 4], "rgb", seed=0), pids=[1, 2, 3, 4], camids=1)
    sstn = SSTN(stand_in_transfer, k=2)
    calls = []
    real = sstn.neighbours
    monkeypatch.setattr(sstn, "neighbours", lambda f: calls.append(len(f)) or real(f))
    # no per-call hashing of the gallery arrays: the key is the gallery's version
    monkeypatch.setattr("hashlib.blake2b", None, raising=False)
    query = people([2], "ir", seed=5)
    first = g.search(query, top=3, transfer=sstn, mode="single-query")
    again = g.search(query, top=3, transfer=sstn, mode="single-query")
    assert calls == [4] and list(first[0].pids) == list(again[0].pids)
    v = g.version
    g.add(people([5], "rgb", seed=1), pids=[5], camids=1)
    assert g.version != v
    g.search(query, top=3, transfer=sstn, mode="single-query")
    assert calls == [4, 5]
    g.remove(pids=[5])
    g.search(query, top=3, transfer=sstn, mode="single-query")
    assert calls == [4, 5, 4]
    other = Gallery()                                      # another gallery never shares the cache
    other.add(people([1, 2, 3, 4], "rgb", seed=9), pids=[1, 2, 3, 4], camids=1)
    other.search(query, top=3, transfer=sstn, mode="single-query")
    assert calls == [4, 5, 4, 4]
