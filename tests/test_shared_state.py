"""State one caller must not change under another (issue 20 items 1 and 2): faiss search settings
travel with each call instead of living on the shared cached index, and BLAS thread limits taken
by overlapping dense searches are given back when the last one ends."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.test_gallery_stageone import scattered  # RGB entries, IR queries from other cameras

pytest.importorskip("faiss", reason="the gallery's k-NN needs faiss (pip install faiss-cpu)")
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def busy_threads(*jobs):
    """Run each job in a loop on its own thread until the block ends; thread switches every few
    microseconds so a setting one thread writes and another reads races within a few calls."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(job):
        try:
            while not stop.is_set():
                job()
        except BaseException as exc:  # noqa: BLE001 (reported by the test, not lost)
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(j,)) for j in jobs]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(old)
    assert not errors, errors


def recall_at(found, gallery, query, m):
    u = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    exact = np.argsort(-(u(query.shared) @ u(gallery.shared).T), axis=1)[:, :m]
    return float(np.mean([len(np.intersect1d(e, s)) / m for e, s in zip(exact, found)]))


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_stage_one_recall_is_the_same_with_a_concurrent_neighbour_search(index):
    """Eq. 6 neighbour lists (nprobe=1 / efSearch 16) and stage one (60% of the lists / 8 x M)
    search the same cached index; on the old code the neighbour search's setting leaked into
    stage one (recall@30 fell from 0.99 to as low as 0.02)."""
    from ssft_deploy.gallery import Gallery, twostage

    gallery, pids, query = scattered()
    g = Gallery(32, 8, index=index, nprobe=1, ef_search=16)
    g.add(gallery, pids=pids, camids=0, entry_ids=np.arange(len(pids)))
    m = 30
    alone = twostage.shortlists(g, query, (0,), (None, None), m)
    assert recall_at(alone, gallery, query, m) > 0.9
    busy = []
    with busy_threads(lambda: g.knn(query.shared, "shared", "rgb", m)):
        for _ in range(15):
            busy.append(twostage.shortlists(g, query, (0,), (None, None), m))
    recalls = [recall_at(b, gallery, query, m) for b in busy]
    assert min(recalls) == recall_at(alone, gallery, query, m)
    for b in busy:
        for a, s in zip(alone, b):
            np.testing.assert_array_equal(a, s)


def test_a_search_leaves_the_cached_index_settings_alone():
    """The per-call settings never land on the shared index."""
    from ssft_deploy.gallery import Gallery, twostage

    gallery, pids, query = scattered(n_ids=100)
    g = Gallery(32, 8, index="ivf", nprobe=3)
    g.add(gallery, pids=pids, camids=0, entry_ids=np.arange(len(pids)))
    g.knn(query.shared, "shared", "rgb", 5)
    ix = next(iter(g._indexes._slots.values())).ix          # the store's cached index
    before = ix.nprobe
    twostage.shortlists(g, query, (0,), (None, None), 10)   # 60% of the lists, this call only
    assert ix.nprobe == before


def test_windowed_search_reuses_the_cached_index_and_stays_exact(monkeypatch):
    """A time window selects ids of the cached index (faiss IDSelector) instead of building a
    flat index over the window on every call; the answer is the exact top k of the window."""
    from ssft_deploy.affinity import knn
    from ssft_deploy.gallery import Gallery

    gallery, pids, query = scattered(n_ids=100)
    rng = np.random.default_rng(3)
    ts = rng.uniform(0, 100, len(pids))
    for index in ("flat", "ivf", "hnsw"):
        g = Gallery(32, 8, index=index, nprobe=1, ef_search=16)
        g.add(gallery, pids=pids, camids=0, entry_ids=np.arange(len(pids)), timestamps=ts)
        g.knn(query.shared, "shared", "rgb", 5)            # builds the cached index
        builds = []

        def counted(*a, builds=builds, real=knn.build_index, **kw):
            builds.append(1)
            return real(*a, **kw)

        monkeypatch.setattr(knn, "build_index", counted)
        for since, until in ((10.0, 60.0), (None, 30.0), (95.0, None), (40.0, 40.5)):
            got = g.knn(query.shared, "shared", "rgb", 7, since=since, until=until)
            inside = np.flatnonzero((ts >= (since or -np.inf)) & (ts < (until or np.inf)))
            u = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
            cos = u(query.shared) @ u(gallery.shared[inside]).T
            want = np.full((len(query), 7), -1)
            kk = min(7, inside.size)
            want[:, :kk] = inside[np.argsort(-cos, axis=1, kind="stable")[:, :kk]]
            np.testing.assert_array_equal(got, want, err_msg=f"{index} {since} {until}")
        assert builds == [], index
        monkeypatch.undo()


def numpy_blas_threads() -> list[int]:
    """Thread counts of the process-wide BLAS libraries (faiss-cpu's OpenMP OpenBLAS reads the
    calling thread's OpenMP setting instead; ``process_state`` covers that)."""
    from threadpoolctl import threadpool_info

    return [d["num_threads"] for d in threadpool_info()
            if d["user_api"] == "blas" and d.get("threading_layer") != "openmp"]


OVERLAP = textwrap.dedent("""
    import json, sys, threading
    sys.path.insert(0, {root!r})
    import numpy  # its BLAS, loaded before the limit is taken
    from threadpoolctl import threadpool_info
    from ssft_deploy.affinity.common import single_threaded_blas

    def blas():
        return [d["num_threads"] for d in threadpool_info()
                if d["user_api"] == "blas" and d.get("threading_layer") != "openmp"]

    before = blas()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {{}}

    def a():
        with single_threaded_blas():
            a_in.set()
            b_in.wait(10)
            seen["a"] = blas()
        a_out.set()

    def b():
        a_in.wait(10)
        with single_threaded_blas():
            b_in.set()
            a_out.wait(10)
            seen["b, after a left"] = blas()

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({{"before": before, "seen": seen, "after": blas()}}))
""")


def test_overlapping_blas_limits_give_every_thread_back():
    """Two searches' limits overlap (A enters, B enters, A leaves, B leaves). On the old code B
    saved A's limit of 1 and restored it: the process stayed at 1 BLAS thread for good, and B ran
    its products on full BLAS threads once A had left. In a fresh interpreter: once a process
    has started another, OpenBLAS ignores counts set from threads other than the main one."""
    import json
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", OVERLAP.format(root=str(ROOT))], check=False,
                         env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["before"] and max(out["before"]) > 1, out
    assert len(out["seen"]) == 2 and all(set(v) == {1} for v in out["seen"].values()), out
    assert out["after"] == out["before"], out


def test_concurrent_dense_searches_leave_blas_and_faiss_threads_as_they_were():
    """Real searches: two threads run the dense method's joint products (which hold BLAS at one
    thread) over and over; afterwards BLAS and faiss's OpenMP settings read as before."""
    import faiss

    from ssft_deploy.affinity import topk_affinity

    rng = np.random.default_rng(5)
    shared = rng.standard_normal((600, 16)).astype(np.float32)
    specific = rng.standard_normal((600, 8)).astype(np.float32)
    modality = (np.arange(600) % 2).astype(np.int64)
    want = topk_affinity(shared, specific, modality, k=4, method="dense")
    before = (numpy_blas_threads(), faiss.omp_get_max_threads())
    got = []

    def search():
        got.append(topk_affinity(shared, specific, modality, k=4, method="dense"))

    with busy_threads(search, search):
        while len(got) < 12:
            search()
    assert (numpy_blas_threads(), faiss.omp_get_max_threads()) == before
    for idx, w in got:
        np.testing.assert_array_equal(idx, want[0])
        np.testing.assert_array_equal(w, want[1])


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
def test_knn_search_among_a_mask_or_a_range_is_exact(index):
    """``affinity.knn.search(among=...)``: a bool mask (IDSelectorBitmap) or an id range
    (IDSelectorRange) gives the exact top k of those ids on every index kind."""
    from ssft_deploy.affinity import knn

    rng = np.random.default_rng(8)
    base = rng.standard_normal((500, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q = base[:7] + 0.05 * rng.standard_normal((7, 16)).astype(np.float32)
    ix = knn.build_index(base, index, nlist=10) if index == "ivf" else knn.build_index(base, index)
    mask = rng.random(500) < 0.3
    for among, keep in ((mask, np.flatnonzero(mask)), ((120, 260), np.arange(120, 260))):
        got = knn.search(ix, q, 5, nprobe=1, ef_search=8, among=among)
        want = keep[np.argsort(-(q @ base[keep].T), axis=1, kind="stable")[:, :5]]
        np.testing.assert_array_equal(got, want)
