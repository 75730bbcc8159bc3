"""What every affinity method shares: validation, unit vectors, Eq. 7, and the exact refinement.

Each method only proposes ``c >= k`` candidate columns per row for one modality block (the
largest inner products of unit vectors, since ``d`` of Eq. 7 is monotone in cosine:
``|a^ - b^| = sqrt(2 - 2 cos)``). ``refine`` then recomputes ``d`` for the candidates in float64
and keeps the best ``k`` ordered by (descending d, ascending index). So dense, knn and cuda return
the same neighbours and weights: float32 rounding of a method only matters if it pushes a true
top-k neighbour below ``c`` candidates, which ``slack`` extra candidates guard against.

A method that also returns its float32 scores lets most rows skip the float64 re-ranking of all
``c`` candidates: a float32 score of unit vectors is within ``(D + 3) * 2**-24`` of the exact
cosine (rounding of the unit vectors plus the worst-case error of any summation order), so where
the k-th and (k+1)-th scores of a row differ by more than four times that (:func:`tie_margin`),
the float32 top k *is* the exact top k and only its order is settled in float64 (``d`` of those k,
needed for the weights anyway). Rows with a near-tie at the k-th place go through ``refine``.
Both paths compute ``d`` of a pair with the same float64 code, so results stay identical.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ssft_deploy.errors import InputError
from ssft_deploy.features import Features

# candidates(q_units [nq,D] f32, base_units [nb,D] f32, c) -> int64 [nq, c] local base indices,
# -1 where a method found fewer than c (refine ranks those last; assemble pads them as (i, 0));
# or (indices, float32 scores [nq, c]) ordered by descending score (see refine_checked).
# A method may also offer ``symmetric(x, c)`` (x against itself) and ``pair(a, b, c_ab, c_ba)``
# (both cross blocks from one product); assemble then asks for those blocks through them.
Candidates = Callable[[np.ndarray, np.ndarray, int], Any]

EPS = 1e-12  # same clamp as torch.nn.functional.normalize, so a zero vector maps to 0
SLACK = 4    # extra candidates per half, re-ranked exactly by refine
REFINE_ROWS = 256
MAX_WORKERS = 8

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def workers() -> int:
    """Threads for the numpy passes around the GEMMs: as many as BLAS is given (OMP_NUM_THREADS),
    else the CPU count, at most MAX_WORKERS. numpy releases the GIL in these passes."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    n = int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)
    return max(1, min(n, MAX_WORKERS))


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` on a shared thread pool (in order; serial with one worker).
    ``fn`` must not itself call parallel_map."""
    items = list(items)
    n = workers()
    if n == 1 or len(items) < 2:
        return [fn(x) for x in items]
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != n:
            _pool, _pool_size = ThreadPoolExecutor(n, thread_name_prefix="ssft-affinity"), n
        pool = _pool
    return list(pool.map(fn, items))


class BlasOwner:
    """The one owner of this process's BLAS thread limit: ``with owner:`` holds BLAS at one
    thread. The first entrant saves the libraries' thread counts and limits them, the last to
    leave restores them, so overlapping users (searches on several threads) never leave the
    process limited and none loses the limit while another leaves. The limit is process-wide:
    while any user is inside, every thread's BLAS calls (numpy's) run single-threaded. A count
    someone else changes meanwhile is kept (restored only where it still reads 1).

    Only BLAS libraries whose thread count is process-wide are touched (numpy's OpenBLAS, MKL,
    BLIS); an OpenMP-threaded OpenBLAS (faiss-cpu's own) sets the calling thread's OpenMP
    thread count, which a restore on another thread could not give back (and numpy never calls
    it). Every change is made from one control thread and read back: numpy's OpenBLAS (0.3.31
    here) ignored counts set from some threads (a thread other than the one that had set a
    count first; after the process had started another, every thread but that one), so a limit
    taken on one search thread and restored from another stayed at 1. Where a change does not
    take, searches run without the limit (same results, the speed of the plain path); a restore
    that did not take is retried when the owner is next idle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._libs: list[Any] | None = None
        self._changed: list[tuple[Any, int]] = []   # (library, count to restore)
        self._pending: list[tuple[Any, int]] = []   # restores that did not take yet
        self._requests: queue.SimpleQueue | None = None

    def _controllers(self) -> list[Any]:
        if self._libs is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:  # a host that vendors its own packages: BLAS keeps its threads
                self._libs = []
            else:
                self._libs = [lc for lc in ThreadpoolController().select(
                              user_api="blas").lib_controllers
                              if not _per_thread(lc)]
        return self._libs

    def _set(self, changes: list[tuple[Any, int]]) -> list[int]:
        """Set counts from the control thread (one hand-off); the counts read back."""
        if not changes:
            return []
        if self._requests is None:
            self._requests = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(self._requests,), daemon=True,
                             name="ssft-blas-owner").start()
        done: queue.SimpleQueue = queue.SimpleQueue()
        self._requests.put((changes, done))
        return done.get()

    def __enter__(self) -> BlasOwner:  # noqa: PYI034 (one process-wide instance)
        with self._lock:
            if self._users == 0:
                self._retry()
                held = {id(lc) for lc, _ in self._pending}
                saved = [(lc, lc.get_num_threads()) for lc in self._controllers()
                         if id(lc) not in held]
                saved = [(lc, n) for lc, n in saved if n != 1]
                got = self._set([(lc, 1) for lc, _ in saved])
                self._changed = [ln for ln, g in zip(saved, got) if g == 1]
            self._users += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._pending += [(lc, n) for lc, n in self._changed
                                  if lc.get_num_threads() == 1]
                self._changed = []
                self._retry()

    def _retry(self) -> None:
        got = self._set(self._pending)
        self._pending = [ln for ln, g in zip(self._pending, got) if g == 1]


def _serve(requests: queue.SimpleQueue) -> None:
    while True:
        changes, done = requests.get()
        got = []
        for lc, n in changes:
            try:
                lc.set_num_threads(n)
                got.append(lc.get_num_threads())
            except Exception:  # noqa: BLE001 (a library that cannot be set keeps its threads)
                got.append(-1)
        done.put(got)


def _per_thread(lc: Any) -> bool:
    return lc.internal_api == "openblas" and getattr(lc, "threading_layer", "") == "openmp"


_blas_owner = BlasOwner()


def single_threaded_blas() -> BlasOwner:
    """A context in which BLAS calls run on their caller's thread only, so the worker threads
    can each run their own products: the process-wide :class:`BlasOwner` (see there for what
    other threads see meanwhile); a no-op where threadpoolctl finds no BLAS it can limit."""
    return _blas_owner


def unit(x: np.ndarray, dtype: type = np.float32, block: int = 512) -> np.ndarray:
    """Rows scaled to unit L2 norm, computed in float64 row blocks (zero rows stay zero)."""
    x = np.asarray(x)
    out = np.empty(x.shape, dtype)
    wide = out.dtype == np.float64
    for s in range(0, x.shape[0], block):  # blocks small enough to stay in cache
        if wide:  # work in place in the output
            xb = out[s:s + block]
            xb[...] = x[s:s + block]
        else:
            xb = x[s:s + block].astype(np.float64)
        norm = np.sqrt(np.einsum("...d,...d->...", xb, xb))
        np.divide(xb, np.maximum(norm, EPS)[..., None], out=xb)
        if not wide:
            out[s:s + block] = xb
    return out


def d_from_cos(cos: np.ndarray) -> np.ndarray:
    """Eq. 7 from the cosine of two unit vectors: d = 1 - 0.5 * sqrt(2 - 2 cos)."""
    return 1.0 - 0.5 * np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))


def d_unit(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Eq. 7 for pairs of float64 unit vectors: d(a_i, b_j) as an [na, nb] matrix (small inputs)."""
    return d_from_cos(a @ b.T)


def check_inputs(shared: object, specific: object, modality: object, k: int) -> Features:
    """Validated Features plus a k check (InputError on anything wrong)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return Features(shared, specific, modality)


def refine(q: np.ndarray, base: np.ndarray, cand: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among candidate columns: d in float64, order (-d, index).

    q [nq,D], base [nb,D] float64 unit vectors (``unit(x, np.float64)``); cand [nq,c] local base
    indices, -1 for none. Returns local indices [nq, min(k,c)] and d (float64) of the same shape;
    a slot without a candidate holds index -1 and d = -inf.
    """
    nq, c = cand.shape
    kk = min(k, c)
    out_i = np.empty((nq, kk), np.int64)
    out_d = np.empty((nq, kk), np.float64)

    def block(s: int) -> None:  # rows s..s+REFINE_ROWS, written in place
        ci = cand[s:s + REFINE_ROWS]
        # einsum, not a batched matmul: BLAS may round the same pair differently at different
        # positions, which would break exact ties between identical samples
        d = d_from_cos(np.einsum("bd,bcd->bc", q[s:s + REFINE_ROWS], base[ci.clip(min=0)]))
        d[ci < 0] = -np.inf
        top = _order(d, ci)[:, :kk]
        out_i[s:s + REFINE_ROWS] = np.take_along_axis(ci, top, axis=1)
        out_d[s:s + REFINE_ROWS] = np.take_along_axis(d, top, axis=1)

    parallel_map(block, range(0, nq, REFINE_ROWS))
    return out_i, out_d


def tie_margin(dim: int) -> float:
    """Smallest k-th / (k+1)-th float32 score gap that proves the float32 top k exact: four
    times the float32 error bound of a unit-vector cosine in ``dim`` dimensions (see above)."""
    return 4.0 * (dim + 3) * 2.0 ** -24 * 1.01


def refine_checked(q: np.ndarray, base: np.ndarray, cand: np.ndarray, scores: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """``refine``'s result from candidates already ordered by float32 ``scores`` (descending):
    float64 ``d`` for the first k only, except on rows with a near-tie at the k-th place."""
    if cand.shape[1] <= k:
        return refine(q, base, cand, k)
    near = (scores[:, k - 1] - scores[:, k]) <= tie_margin(q.shape[1])
    out_i, out_d = refine(q, base, cand[:, :k], k)
    if near.any():
        rows = np.flatnonzero(near)
        out_i[rows], out_d[rows] = refine(q[rows], base, cand[rows], k)
    return out_i, out_d


def _order(d: np.ndarray, ci: np.ndarray) -> np.ndarray:
    # Per-row order by descending d, ties by ascending index: sort by index first, then a
    # stable sort by -d keeps the index order among equal d.
    by_index = np.argsort(ci, axis=1, kind="stable")
    d_sorted = np.take_along_axis(d, by_index, axis=1)
    by_d = np.argsort(-d_sorted, axis=1, kind="stable")
    return np.take_along_axis(by_index, by_d, axis=1)


def assemble(feats: Features, k: int, candidates: Candidates, slack: int = SLACK
             ) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 6-8 as neighbour lists: per modality, k same-modality neighbours by specific features
    then k other-modality neighbours by shared features; short halves padded with (i, 0)."""
    n = len(feats)
    idx = np.repeat(np.arange(n, dtype=np.int64)[:, None], 2 * k, axis=1)
    w = np.zeros((n, 2 * k), np.float32)
    groups = {m: feats.of_modality(m) for m in (0, 1)}
    # unit vectors per (kind, modality): float64 for refine, float32 for the candidate search;
    # the four sets on the worker threads, largest first
    keys = sorted(((kind, m) for kind in ("specific", "shared") for m in (0, 1)),
                  key=lambda km: -groups[km[1]].size)

    def to_unit(key: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
        u64 = unit(getattr(feats, key[0])[groups[key[1]]], np.float64)
        return u64, u64.astype(np.float32)

    units = dict(zip(keys, parallel_map(to_unit, keys)))

    pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # cross block computed with its mirror
    for m in (0, 1):
        rows = groups[m]
        if rows.size == 0:
            continue
        for half, (kind, other) in enumerate((("specific", m), ("shared", 1 - m))):
            cols = groups[other]
            if cols.size == 0:
                continue
            c = min(cols.size, k + slack)
            (q64, q), (base64, base) = units[kind, m], units[kind, other]
            if half == 0 and hasattr(candidates, "symmetric"):
                proposed = candidates.symmetric(q, c)
            elif half == 1 and hasattr(candidates, "pair"):
                if m not in pending:
                    mine, pending[other] = candidates.pair(
                        q, base, c, min(rows.size, k + slack))
                    proposed = mine
                else:
                    proposed = pending.pop(m)
            else:
                proposed = candidates(q, base, c)
            if isinstance(proposed, tuple):  # scores too: re-rank only near-tie rows
                loc, d = refine_checked(q64, base64, np.asarray(proposed[0], dtype=np.int64),
                                        np.asarray(proposed[1], dtype=np.float32), k)
            else:
                loc, d = refine(q64, base64, np.asarray(proposed, dtype=np.int64), k)
            kk = loc.shape[1]
            found = loc >= 0  # slots the method could not fill keep the (i, 0) padding
            idx[rows, half * k: half * k + kk] = np.where(found, cols[loc.clip(min=0)],
                                                          rows[:, None])
            w[rows, half * k: half * k + kk] = np.where(found, d, 0.0).astype(np.float32)
    return idx, w
