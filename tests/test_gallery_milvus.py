"""The Milvus store's protocol (issue 21), counted on a client stub over Milvus Lite and checked
on the session's real server: a two-stage search is three search requests and nothing else,
writes never alter the collection or flush, a client reads its own writes at once, and a search
survives entries removed while it runs."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from ssft_deploy.gallery import Gallery, open_gallery
from tests.test_gallery import people

pytest.importorskip("faiss", reason="the reference store's k-NN needs faiss (pip install faiss-cpu)")
pytest.importorskip("pymilvus", reason="Milvus needs pip install 'pymilvus[milvus-lite]'")
DIMS = (12, 8)
KINDS = ["lite", pytest.param("server", marks=pytest.mark.milvus_server)]


class Counting:
    """The pymilvus client, every method call recorded by name (``hook``: runs after one); the
    connection it hands out (``_get_connection``: requests the store builds itself) and that
    connection's gRPC stub (``_stub``: requests the store sends itself, ``Search`` recorded as
    "search") too."""

    def __init__(self, client, calls=None, parent=None):
        self._real, self.calls, self.hook = client, [] if calls is None else calls, None
        self._parent = parent       # a connection's hook is its client's

    def __getattr__(self, name):
        fn = getattr(self._real, name)
        if name == "_get_connection":
            return lambda *a, **k: Counting(fn(*a, **k), self.calls, self._parent or self)
        if name == "_stub":
            return Counting(fn, self.calls, self._parent or self)
        if not callable(fn) or name.startswith("_"):
            return fn

        def call(*args, **kwargs):
            self.calls.append(name.lower())
            out = fn(*args, **kwargs)
            hook = (self._parent or self).hook
            if hook:
                hook(name.lower(), kwargs)
            return out
        return call


@pytest.fixture(params=KINDS)
def opened(request, tmp_path):
    """Open (another handle on) one fresh collection: ``opened()``."""
    if request.param == "server":
        uri = request.getfixturevalue("milvus_server").uri
        name = f"t{uuid.uuid4().hex[:16]}"
        handles = []

        def make():
            handles.append(open_gallery(uri, DIMS, collection=name))
            return handles[-1]
        yield make
        handles[0]._client.drop_collection(name)
        for h in handles:
            h.close()
    else:
        handles = []

        def make():
            handles.append(open_gallery(f"milvus:{tmp_path / 'g.db'}", DIMS))
            return handles[-1]
        yield make
        for h in handles:
            h.close()


def fill(g, n=160):
    """n RGB entries (more than the default shortlist of 100) and 10 IR ones."""
    pids = np.arange(n) % 40
    g.add(people(pids, "rgb", seed=0, noise=0.5), pids=pids, camids=pids % 3,
          entry_ids=np.arange(n))
    g.add(people(np.arange(10), "ir", seed=1, noise=0.5), pids=np.arange(10), camids=3,
          entry_ids=np.arange(1000, 1010))
    return g


def counted(g):
    g._client = Counting(g._client)
    return g._client


def test_two_stage_search_is_three_requests(opened):
    from benchmarks.gallery_scale import stand_in_sstn

    g = fill(opened())
    ref = fill(Gallery(*DIMS))
    client = counted(g)
    sstn = stand_in_sstn(*DIMS)
    q = people([3], "ir", seed=2, noise=0.5)
    got = g.search(q, top=5, transfer=sstn, mode="single-query")     # two-stage by default
    # stage one, the shortlist's neighbour lists, their neighbours' lists: no get, no flush,
    # no describe, no version read, no stream of the collection
    assert client.calls == ["search"] * 3
    want = ref.search(q, top=5, transfer=sstn, mode="single-query", shortlist=100)
    np.testing.assert_array_equal(got[0].entry_ids, want[0].entry_ids)
    np.testing.assert_allclose(got[0].distances, want[0].distances, atol=1e-5)
    client.calls.clear()
    g.search(q, top=5, mode="shared")
    assert client.calls == ["search"]


def test_writes_never_alter_or_flush_and_are_read_at_once(opened):
    g = fill(opened())
    client = counted(g)
    v = g.version
    g.add(people([7], "ir", seed=3), pids=[77], camids=4, entry_ids=[500])
    hit = g.search(people([7], "rgb", seed=3), top=1, mode="shared")[0]
    assert hit.entry_ids.tolist() == [500]                # this client's write, no flush
    assert g.version != v
    v = g.version
    assert g.remove(pids=[77, 1]) == 1 + 4 + 1               # 77, four RGB and one IR pid 1
    assert g.version != v and len(g) == 160 + 10 + 1 - 6
    assert "flush" not in client.calls and "alter_collection_properties" not in client.calls
    assert client.calls.count("upsert") == 2 and client.calls.count("delete") == 1
    again = g.search(people([7], "rgb", seed=3), top=1, mode="shared")[0]
    assert 500 not in again.entry_ids.tolist()


def test_entries_removed_during_a_search_fail_nothing(opened):
    """Another client removes stage one's best entries between stage one and the neighbour
    lists: the search still answers (its rows came whole with stage one's hits), and ranks only
    entries that still exist (the removed ones miss themselves in their own neighbour lists)."""
    from benchmarks.gallery_scale import stand_in_sstn

    g, other = fill(opened()), opened()
    client = counted(g)
    q = people([3], "ir", seed=2, noise=0.5)
    first = g.search(q, top=3, mode="shared")[0].entry_ids.tolist()

    def remove_after_stage_one(name, kwargs):
        if name == "search" and client.calls.count("search") == 1:
            other.remove(entry_ids=first)
    client.hook = remove_after_stage_one
    client.calls.clear()
    res = g.search(q, top=10, transfer=stand_in_sstn(*DIMS), mode="single-query")[0]
    assert client.calls == ["search"] * 3 and len(res.entry_ids)
    assert not set(first) & set(res.entry_ids.tolist())   # dropped from this search's ranking
    client.hook = None
    after = g.search(q, top=10, mode="shared")[0].entry_ids.tolist()
    assert not set(first) & set(after)                    # the removal landed


def test_meta_beyond_a_row_is_refused_whole(opened):
    """Meta travels as JSON text in a VARCHAR column (65535 bytes): a larger value is an
    InputError naming the entry, and nothing of the batch is written."""
    from ssft_deploy.errors import InputError

    g = fill(opened())
    n = len(g)
    with pytest.raises(InputError, match="meta of entry 1 "):
        g.add(people([1, 2], "rgb", seed=5), pids=[1, 2], camids=0,
              meta=[{"ok": 1}, {"big": "x" * 70_000}])
    assert len(g) == n
    ids = g.add(people([1], "rgb", seed=5), pids=[1], camids=0, meta=[{"frame": [1, "é"]}])
    assert g.meta(ids) == [{"frame": [1, "é"]}]


def test_search_without_pymilvus_internals_answers_the_same(opened, monkeypatch):
    """Where the installed pymilvus lacks the internals the fast search path uses, searches go
    through ``MilvusClient.search`` and answer the same."""
    from benchmarks.gallery_scale import stand_in_sstn

    g = fill(opened())
    q, sstn = people([3], "ir", seed=2, noise=0.5), stand_in_sstn(*DIMS)
    fast = g.search(q, top=5, transfer=sstn, mode="single-query")[0]

    monkeypatch.delattr("pymilvus.client.call_context._api_level_md")   # an older pymilvus
    client = counted(g)
    slow = g.search(q, top=5, transfer=sstn, mode="single-query")[0]
    assert client.calls == ["search"] * 3              # MilvusClient.search, three times
    np.testing.assert_array_equal(slow.entry_ids, fast.entry_ids)
    np.testing.assert_allclose(slow.distances, fast.distances, atol=1e-6)
