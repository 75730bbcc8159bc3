"""One gallery interface, several stores (issues 13, 21): the same answers from the in-process
store, the local file store, Milvus Lite and a real Milvus server (the session's ``milvus_server``);
filters, idempotent and all-or-nothing writes, the Eq. 6 blocks as filtered k-NN, and each kind
of bad input."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from ssft_deploy.affinity import topk_affinity
from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.features import Features
from ssft_deploy.gallery import Gallery, GalleryBinding, open_gallery
from ssft_deploy.transfer import SSTN
from tests.test_gallery import people
from tests.test_transfer import stand_in_transfer

pytest.importorskip("faiss", reason="the local store's k-NN needs faiss (pip install faiss-cpu)")
DIMS = (12, 8)
SERVER = pytest.param("milvus-server", marks=pytest.mark.milvus_server)
STORES = ["memory", "local", "milvus-lite", SERVER]


def make_store(kind, tmp_path, dims=DIMS, server=None):
    if kind == "memory":
        return Gallery(*dims)
    if kind == "local":
        return open_gallery(tmp_path / "g.gallery", dims)
    pytest.importorskip("pymilvus", reason="Milvus needs pip install 'pymilvus[milvus-lite]'")
    if kind == "milvus-server":
        return open_gallery(server.uri, dims, collection=f"t{uuid.uuid4().hex[:16]}")
    return open_gallery(f"milvus:{tmp_path / 'g.db'}", dims)


def close_store(s):
    """Close; a server collection is dropped (the server lives for the whole session)."""
    if getattr(s, "uri", "").startswith("http"):
        s._client.drop_collection(s.collection)
    s.close()


def fill(store):
    pids = np.arange(30) % 12
    store.add(people(pids, "rgb", seed=0), pids=pids, camids=pids % 3, entry_ids=np.arange(30),
              timestamps=np.arange(30.0), meta=[{"frame": int(i)} for i in range(30)])
    store.add(people([1, 2, 3], "ir", seed=1), pids=[1, 2, -1], camids=3,
              entry_ids=[100, 101, 102], timestamps=[5.0, 15.0, 25.0], tracks=[7, 7, 8])
    return store


def server_of(request, kind):
    return request.getfixturevalue("milvus_server") if kind == "milvus-server" else None


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    s = fill(make_store(request.param, tmp_path, server=server_of(request, request.param)))
    yield s
    close_store(s)


@pytest.mark.milvus_server
def test_same_queries_same_ranking_across_stores(request, tmp_path):
    kinds = ["memory", "local", "milvus-lite", "milvus-server"]
    stores = {k: fill(make_store(k, tmp_path / k, server=server_of(request, k)))
              for k in kinds if (tmp_path / k).mkdir() or True}
    sstn = SSTN(stand_in_transfer, k=2)
    q = Features.concat([people([3, 4, 5, 6], "ir", seed=2), people([1], "rgb", seed=3)])
    for mode, opts in [("shared", {}), ("single-query", {}), ("all-queries", {}),
                       ("single-query", {"shortlist": 8}), ("all-queries", {"shortlist": 8}),
                       ("shared", {"since": 5, "until": 20})]:
        ref = None
        for name, s in stores.items():
            res = s.search(q, top=6, transfer=sstn, mode=mode, **opts)
            got = [(r.pids.tolist(), r.entry_ids.tolist()) for r in res]
            dist = np.concatenate([r.distances for r in res])
            if ref is None:
                ref = (got, dist)
            assert got == ref[0], (mode, opts, name)
            np.testing.assert_allclose(dist, ref[1], atol=1e-5)
    for s in stores.values():
        close_store(s)


def test_modality_and_time_window(store):
    feats, cols = store.entries("ir")
    assert sorted(cols["ids"].tolist()) == [100, 101, 102] and (feats.modality == 1).all()
    _, cols = store.entries("rgb", since=10, until=20)
    assert sorted(cols["ids"].tolist()) == list(range(10, 20))
    res = store.search(people([4], "ir", seed=4), top=50, since=10, until=20)[0]
    assert set(res.entry_ids.tolist()) <= set(range(10, 20)) and len(res.pids) == len(
        set(np.arange(10, 20) % 12))
    # an unknown identity (-1) is its own candidate, never merged with another
    res = store.search(people([3], "rgb", seed=5), top=5)[0]
    assert sorted(res.entry_ids.tolist()) == [100, 101, 102] and -1 in res.pids.tolist()
    assert store.meta([3, 999]) == [{"frame": 3}, None]


def test_writes_are_idempotent_by_entry_id(store):
    n = len(store)
    f = people([5], "rgb", seed=9)
    for _ in range(3):
        store.add(f, pids=[55], camids=2, entry_ids=[7], timestamps=1000.0)
    assert len(store) == n
    feats, cols = store.entries("rgb", since=999, until=1001)
    assert cols["ids"].tolist() == [7] and cols["pids"].tolist() == [55]
    np.testing.assert_allclose(feats.shared, f.shared)


def test_a_bad_batch_writes_nothing(store):
    n = len(store)
    good = people([1, 2, 3], "rgb", seed=6)
    bad_specific = good.specific.copy()
    bad_specific[2] = 0.0                                  # a zero row: refused, whole batch
    with pytest.raises(InputError):
        store.add(Features(good.shared, bad_specific, 0), pids=[1, 2, 3], camids=1)
    with pytest.raises(InputError):
        store.add(good, pids=[1, 2, 2**64 - 1], camids=1)
    with pytest.raises(InputError):
        store.add(good, pids=[1, 2, 3], camids=1, entry_ids=[200, 201, 200])
    assert len(store) == n


def test_eq6_blocks_are_filtered_knn(store):
    feats, cols = store.entries()                         # RGB then IR, as topk_affinity sees them
    k = 3
    idx, w = topk_affinity(feats.shared, feats.specific, feats.modality, k=k, method="dense")
    got_i, got_w = store.neighbour_lists(cols["ids"], k, (0, 1), (None, None))
    np.testing.assert_array_equal(got_i, cols["ids"][idx])
    np.testing.assert_allclose(got_w, w, atol=1e-6)
    top = store.knn(feats.shared[:2], "shared", "ir", 2)
    assert top.shape == (2, 2) and set(top.ravel().tolist()) <= {100, 101, 102}


def test_bad_input_is_refused(store):
    with pytest.raises(InputError):
        store.add(people([1], "rgb", seed=1, ds=5), pids=[1], camids=1)     # dims
    with pytest.raises(InputError):
        store.add(Features(np.full((1, 12), 1 + 1j), np.ones((1, 8)), 0), pids=[1], camids=1)
    with pytest.raises(InputError):
        store.add(Features(np.full((1, 12), np.nan), np.ones((1, 8)), 0), pids=[1], camids=1)
    with pytest.raises(InputError):
        store.search(people([1], "ir", seed=1, ds=5))
    with pytest.raises(InputError):
        store.knn(np.full((1, 12), np.nan), "shared", "rgb", 2)
    with pytest.raises(InputError):
        store.search(people([1], "ir", seed=1), shortlist=0)


def test_unreachable_server_is_a_gallery_error_after_bounded_retries():
    pytest.importorskip("pymilvus", reason="the Milvus client needs pymilvus")
    uri = "http://127.0.0.1:9"                            # discard port: nothing listens
    t0 = time.monotonic()
    with pytest.raises(GalleryError, match="127.0.0.1:9") as err:
        open_gallery(uri, DIMS, timeout_s=2.0)
    assert time.monotonic() - t0 < 30                     # bounded, not a hang
    tries = int(str(err.value).split(" after ")[1].split(" tries")[0])
    assert tries >= 2                                     # it retried (with backoff)


def test_milvus_collection_of_another_bundle_is_refused(tmp_path):
    pytest.importorskip("pymilvus", reason="Milvus Lite needs pip install 'pymilvus[milvus-lite]'")
    uri = f"milvus:{tmp_path / 'g.db'}"
    with open_gallery(uri, GalleryBinding(*DIMS, "a" * 64)) as g:
        g.add(people([1], "rgb", seed=0), pids=[1], camids=1)
    with pytest.raises(GalleryError, match="dims"):
        open_gallery(uri, (16, 8))
    with pytest.raises(GalleryError, match="another model"):
        open_gallery(uri, GalleryBinding(*DIMS, "b" * 64))
    with open_gallery(uri, GalleryBinding(*DIMS, "a" * 64)) as g:
        assert len(g) == 1


def test_milvus_foreign_collection_is_refused(tmp_path):
    pymilvus = pytest.importorskip("pymilvus", reason="Milvus Lite needs pymilvus[milvus-lite]")
    path = str(tmp_path / "f.db")
    client = pymilvus.MilvusClient(path)
    client.create_collection("ssft_gallery", dimension=12)   # someone else's collection
    client.close()
    with pytest.raises(GalleryError, match="not created by ssft-deploy"):
        open_gallery(f"milvus:{path}", DIMS)


def test_uri_forms(tmp_path):
    with pytest.raises(GalleryError):
        open_gallery("milvus:/tmp/no-suffix", DIMS)
    with pytest.raises(GalleryError):
        open_gallery("ftp://host/g", DIMS)
    with pytest.raises(GalleryError):
        open_gallery(tmp_path, DIMS)                       # a folder is not a gallery file
