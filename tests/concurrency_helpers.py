"""What the concurrency suite shares (issue 20 item 9): one deterministic history of writes, the
searches readers mix in, their serial answers per gallery state, and the process-wide state that
must read the same afterwards. Public gallery API only (open_gallery / Gallery methods), so it
holds for any store behind that API."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ssft_deploy.features import Features
from ssft_deploy.transfer import RollingAuxiliary

MODES = ("shared", "single-query", "all-queries", "rolling")
WINDOW = (20.0, 80.0)
TOP, SHORTLIST = 6, 5
READS_PER_OP = 4  # reads the writer lets finish between two operations


def feats(rng: np.random.Generator, n: int, dims: tuple[int, int], modality: Any) -> Features:
    return Features(rng.standard_normal((n, dims[0])).astype(np.float32),
                    rng.standard_normal((n, dims[1])).astype(np.float32), modality)


def history(dims: tuple[int, int], seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """The writer's operations, in order: state j is the gallery after the first j of them
    (state 0: after the first add). Adds (fresh ids, an upsert of existing ids, timestamps inside
    and outside the search window) and removes (by entry id, by identity)."""
    rng = np.random.default_rng(seed)

    def add(ids: list[int] | np.ndarray, ts: np.ndarray | None = None) -> tuple[str, dict]:
        ids = np.asarray(ids, np.int64)
        n = len(ids)
        return "add", {"features": feats(rng, n, dims, ids % 2), "pids": ids % 17,
                       "camids": ids % 3, "entry_ids": ids,
                       "timestamps": rng.uniform(0, 100, n) if ts is None else ts}

    return [add(np.arange(60)),
            add(np.concatenate([[5, 6], np.arange(100, 112)])),   # 5 and 6: replaced
            ("remove", {"entry_ids": [3, 7, 100]}),
            add(np.arange(300, 310), ts=rng.uniform(30, 60, 10)),
            ("remove", {"pids": [2]})]


def apply(gallery: Any, op: tuple[str, dict[str, Any]]) -> None:
    kind, args = op
    if kind == "add":
        gallery.add(**args)
    else:
        gallery.remove(**args)


class Reads:
    """The reads a reader mixes in, each ``name -> fn(gallery) -> answer``: every search mode,
    with and without a shortlist and a time window, one Eq. 6 block (``knn``) and a snapshot
    (``entries``)."""

    def __init__(self, dims: tuple[int, int], sstn: Any, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.query = feats(rng, 6, dims, [0, 1, 0, 1, 0, 1])
        self.aux = feats(rng, 8, dims, [0, 1] * 4)
        self.sstn = sstn
        self.fns: dict[str, Callable[[Any], Any]] = {}
        for mode in MODES:  # each mode with and without both a shortlist and a window
            for shortlist, window in ((None, None), (SHORTLIST, WINDOW)):
                name = f"{mode}/shortlist={shortlist}/window={window}"
                self.fns[name] = self._search(mode, shortlist, window)
        for shortlist, window in ((SHORTLIST, None), (None, WINDOW)):  # and each alone
            self.fns[f"single-query/shortlist={shortlist}/window={window}"] = self._search(
                "single-query", shortlist, window)
        self.fns["knn"] = lambda g: g.knn(self.query.shared, "shared", "ir", 4)
        self.fns["entries"] = lambda g: g.entries(since=WINDOW[0])

    def _search(self, mode: str, shortlist: int | None, window: tuple | None):
        def run(g: Any) -> Any:
            aux = None
            if mode == "rolling":  # a fresh set each time: its content is part of the answer
                aux = RollingAuxiliary(20)
                aux.add(self.aux)
            since, until = window or (None, None)
            return g.search(self.query, TOP, transfer=None if mode == "shared" else self.sstn,
                            mode=mode, auxiliary=aux, shortlist=shortlist, since=since,
                            until=until)
        return run


def serial_answers(make: Callable[[], Any], ops: list, reads: Reads) -> list[dict[str, Any]]:
    """Every read's answer in every state, one call at a time on a fresh store from ``make``."""
    g = make()
    out = []
    try:
        for op in ops:
            apply(g, op)
            out.append({name: fn(g) for name, fn in reads.fns.items()})
    finally:
        g.close()
    return out


def same(a: Any, b: Any) -> bool:
    """Equal answers: ids, identities and cameras exactly, float distances / features to float32
    rounding (a BLAS product may round the same pair differently in another batch)."""
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Features):
        return same((a.shared, a.specific, a.modality), (b.shared, b.specific, b.modality))
    if hasattr(a, "entry_ids"):
        return (np.array_equal(a.entry_ids, b.entry_ids) and np.array_equal(a.pids, b.pids)
                and np.array_equal(a.camids, b.camids)
                and np.allclose(a.distances, b.distances, rtol=1e-5, atol=1e-6))
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        return a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=1e-7)
    return np.array_equal(a, b)


class Progress:
    """The writer's position (``committed``: ops finished; ``started``: ops begun) and the
    readers' count of finished reads, through any two-int array and a semaphore (threads or
    processes). A read that began after ``committed`` = c and ended before ``started`` = s
    read one of the states c - 1 .. s - 1 (state j follows op j)."""

    def __init__(self, pos: Any, reads_done: Any) -> None:
        self.pos, self.reads_done = pos, reads_done

    def run_writer(self, gallery: Any, ops: list, reads_per_op: int) -> None:
        """Apply ``ops`` in order, letting ``reads_per_op`` reads finish between two of them
        (paced by the readers, not by sleeping)."""
        for j, op in enumerate(ops, 1):
            if j <= self.pos[0]:  # applied before the readers started
                continue
            self.pos[1] = j
            apply(gallery, op)
            self.pos[0] = j
            if j < len(ops):
                for _ in range(reads_per_op):
                    if not self.reads_done.acquire(timeout=60):
                        raise TimeoutError("readers stopped reading")

    def read(self, gallery: Any, name: str, fn: Callable[[Any], Any]) -> tuple:
        lo = self.pos[0]
        try:
            answer = fn(gallery)
        finally:
            self.reads_done.release()
        return name, lo, self.pos[1], answer


def run_readers(gallery: Any, reads: Reads, progress: Progress, threads: int, n_ops: int,
                extra: Callable[[], None] | None = None, max_reads: int = 400) -> tuple:
    """Reader threads, each cycling through every read (from its own starting point) until the
    writer has committed all ``n_ops``; ``extra`` (an extraction) runs between reads. Returns
    the threads, the results (name, committed before, started after, answer) and errors."""
    names = list(reads.fns)
    results: list[tuple] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def reader(t: int) -> None:
        try:
            for i in range(max_reads):
                if progress.pos[0] == n_ops:
                    return
                name = names[(i + 7 * t) % len(names)]
                got = progress.read(gallery, name, reads.fns[name])
                with lock:
                    results.append(got)
                if extra is not None:
                    extra()
            raise AssertionError(f"the writer did not finish within {max_reads} reads")
        except BaseException as exc:  # noqa: BLE001 (the test reports it)
            errors.append(exc)
            for _ in range(READS_PER_OP * n_ops):  # let the writer finish instead of waiting
                progress.reads_done.release()

    pool = [threading.Thread(target=reader, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    return pool, results, errors


def check_linearizable(results: list[tuple], serial: list[dict[str, Any]]) -> dict[str, int]:
    """Each answer equals the serial answer of a state the gallery was in during that read
    (states lo - 1 .. hi - 1, clipped to the history); returns reads per state seen."""
    per_state: dict[str, int] = {}
    for name, lo, hi, answer in results:
        states = range(max(lo, 1) - 1, max(hi, 1))
        match = [j for j in states if same(answer, serial[j][name])]
        assert match, f"{name}: answer matches none of the states {list(states)} it overlapped"
        per_state[str(match[0])] = per_state.get(str(match[0]), 0) + 1
    return per_state


def process_state() -> dict[str, Any]:
    """Process-wide settings a search must leave as it found them: the BLAS libraries' thread
    counts (threadpoolctl), faiss's OpenMP threads, the interpreter's switch interval."""
    from threadpoolctl import threadpool_info

    state: dict[str, Any] = {"blas": sorted((d["filepath"], d["num_threads"])
                                            for d in threadpool_info())}
    try:
        import faiss
    except ImportError:
        pass
    else:
        state["faiss_omp"] = faiss.omp_get_max_threads()
    state["switch_interval"] = sys.getswitchinterval()
    return state

