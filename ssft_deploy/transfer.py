"""The SSTN transfer stage around any ``transfer_fn(z, idx, w) -> T`` (numpy in, numpy out).

``pad`` builds Z of Eq. 5, ``propagate`` is the reference of ``D^-1/2 A D^-1/2 Z`` (Eq. 10 before
W and the activation) on neighbour lists, and ``SSTN`` runs the three modes of the runtime:
all queries (Sec. 4.5, transductive), single query (Eq. 22) and a rolling auxiliary set (Fig. 4).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from ssft_deploy.affinity import topk_affinity
from ssft_deploy.affinity.common import unit
from ssft_deploy.affinity.single_query import SingleQueryGraph, query_gallery_affinity
from ssft_deploy.errors import EngineError, EngineLimitError, InputError
from ssft_deploy.features import Features

log = logging.getLogger("ssft_deploy.transfer")
TransferFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
PARTS = ("shared", "specific")
PROPAGATE_ROWS = 4096
# Rows of one single-query transfer call when the engine sets no limit (bounds host memory).
SINGLE_QUERY_ROWS = 8192


def _parts(parts: Sequence[str]) -> tuple[str, ...]:
    parts = tuple(parts)
    if not parts or any(p not in PARTS for p in parts) or len(set(parts)) != len(parts):
        raise InputError(f"parts must be a non-empty subset of {PARTS}, got {parts!r}")
    return parts


def pad(shared: np.ndarray, specific: np.ndarray, modality: np.ndarray,
        parts: Sequence[str] = PARTS) -> np.ndarray:
    """Eq. 5: RGB rows ``[P^R; H; 0]``, IR rows ``[0; H; P^I]`` -> float32 ``[N, 2Dp + Ds]``.

    The layout is fixed; a part left out of ``parts`` (ShT / SpT switches of Table 3) is zero."""
    parts = _parts(parts)
    f = Features(shared, specific, modality)
    ds, dp = f.dims
    z = np.zeros((len(f), 2 * dp + ds), np.float32)
    if "shared" in parts:
        z[:, dp:dp + ds] = f.shared
    if "specific" in parts:
        rgb, ir = f.modality == 0, f.modality == 1
        z[rgb, :dp] = f.specific[rgb]
        z[ir, dp + ds:] = f.specific[ir]
    return z


def check_graph(z: np.ndarray, idx: np.ndarray, w: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float32 z [N,D], int64 idx [N,K] in [0,N), float32 w [N,K] >= 0 (InputError)."""
    z, idx, w = np.asarray(z), np.asarray(idx), np.asarray(w)
    if z.ndim != 2:
        raise InputError(f"z must be [N, D], got shape {z.shape}")
    n = z.shape[0]
    if idx.ndim != 2 or idx.shape[0] != n or w.shape != idx.shape:
        raise InputError(f"idx {idx.shape} and w {w.shape} must both be [N={n}, K]")
    if not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"idx must be integer, got {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise InputError(f"idx holds rows outside [0, {n})")
    w = w.astype(np.float32, copy=False)
    if not np.isfinite(w).all() or (w < 0).any():
        raise InputError("w must be finite and non-negative")
    return z.astype(np.float32, copy=False), idx.astype(np.int64, copy=False), w


def propagate(z: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``D^-1/2 A D^-1/2 z`` with ``A[i, idx[i,j]] += w[i,j]``, ``d_i = sum_j A[i,j]`` (Eq. 10
    before W, sigma); rows (and neighbours) with ``d = 0`` contribute 0. Gather-based, O(N K D)."""
    z, idx, w = check_graph(z, idx, w)
    deg = w.sum(axis=1, dtype=np.float64)
    r = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    coef = (w * r[:, None] * r[idx]).astype(np.float32)
    out = np.zeros_like(z)
    for s in range(0, z.shape[0], PROPAGATE_ROWS):
        e = min(s + PROPAGATE_ROWS, z.shape[0])
        acc = out[s:e]
        for j in range(idx.shape[1]):
            acc += coef[s:e, j, None] * z[idx[s:e, j]]
    return out


def transfer_feeds(engine: object, z: np.ndarray, idx: np.ndarray, w: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """Feeds of a transfer engine: neighbour lists narrower than its graph's fixed width are
    padded with zero-weight self edges (no change to any degree or sum of Eq. 10); wider ones
    raise EngineError (a graph exported before the width held Eq. 22's query edge)."""
    z = np.asarray(z, np.float32)
    idx, w = np.asarray(idx, np.int64), np.asarray(w, np.float32)
    spec = getattr(engine, "inputs", {}).get("idx")
    width = int(spec.shape[1]) if spec is not None and len(spec.shape) == 2 else -1
    if width > 0 and idx.ndim == 2 and idx.shape[1] != width:
        if idx.shape[1] > width:
            raise EngineError(
                f"this bundle's transfer graph takes {width} neighbours per row; this graph has "
                f"{idx.shape[1]} (Eq. 22 over a gallery holding both modalities, or two-stage "
                "search, adds the query edge): re-export the bundle with this version's ssft-export")
        extra = width - idx.shape[1]
        rows = np.arange(idx.shape[0], dtype=np.int64)[:, None]
        idx = np.concatenate([idx, np.repeat(rows, extra, axis=1)], axis=1)
        w = np.concatenate([w, np.zeros((w.shape[0], extra), np.float32)], axis=1)
    return {"z": z, "idx": idx, "w": w}


def l2_distances(a: np.ndarray, b: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Euclidean distances between L2-normalised rows of a [Q,D] and b [G,D] -> [Q,G] (float32;
    evaluation asks for float64, where float32 rounding would create exact ties)."""
    ua, ub = unit(a, np.float64), unit(b, np.float64)
    return np.sqrt(np.maximum(2.0 - 2.0 * (ua @ ub.T), 0.0)).astype(dtype, copy=False)


class RollingAuxiliary:
    """The most recent ``size`` query features, used as the auxiliary set of live queries (Fig. 4:
    accuracy saturates near 300). Thread-safe; ``add`` and ``snapshot`` may race freely."""

    def __init__(self, size: int = 300) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"size must be a positive integer, got {size!r}")
        self.size = size
        self._lock = threading.Lock()
        self._feats: Features | None = None

    def add(self, feats: Features) -> None:
        """Append queries; the oldest fall out beyond ``size``."""
        with self._lock:
            both = feats if self._feats is None else Features.concat([self._feats, feats])
            self._feats = both.take(slice(max(0, len(both) - self.size), None))

    def snapshot(self) -> Features | None:
        """The current auxiliary set (a consistent copy), or None while empty."""
        with self._lock:
            return self._feats

    def clear(self) -> None:
        with self._lock:
            self._feats = None

    def __len__(self) -> int:
        with self._lock:
            return 0 if self._feats is None else len(self._feats)


class SSTN:
    """The runtime shared-specific transfer network around ``transfer_fn(z, idx, w) -> T``.

    ``affinity`` picks the top-k method ("dense" | "knn" | "cuda" | "auto"); ``affinity_options``
    go to it. ``max_rows`` is the most rows ``transfer_fn`` accepts (an engine's ``max_batch``,
    e.g. a TensorRT profile's max; None: any): single-query blocks are batched to fit it, and a
    graph with more rows (all queries over a large set) runs on ``fallback``, an unlimited
    ``transfer_fn`` (ONNX Runtime on the bundle's graph), with a logged reason, or raises
    EngineLimitError when there is none."""

    def __init__(self, transfer_fn: TransferFn, k: int = 4, parts: Sequence[str] = PARTS,
                 affinity: str = "dense", max_rows: int | None = None,
                 fallback: TransferFn | None = None, **affinity_options: object) -> None:
        if not callable(transfer_fn) or (fallback is not None and not callable(fallback)):
            raise InputError("transfer_fn and fallback must be callable as f(z, idx, w)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int)
                                     or max_rows < 1):
            raise InputError(f"max_rows must be a positive integer or None, got {max_rows!r}")
        self.transfer_fn, self.k, self.parts = transfer_fn, k, _parts(parts)
        self.affinity, self.affinity_options = affinity, affinity_options
        self.max_rows, self.fallback = max_rows, fallback
        self._cache_lock = threading.Lock()
        self._gallery_cache: tuple[Hashable, SingleQueryGraph, np.ndarray] | None = None

    def _transfer_for(self, rows: int, what: str) -> TransferFn:
        """The function that takes a graph of ``rows`` rows: ``transfer_fn`` within the limit,
        else ``fallback`` (logged), else EngineLimitError naming the limit and the fix."""
        if self.max_rows is None or rows <= self.max_rows:
            return self.transfer_fn
        reason = (f"{what} needs one transfer call over {rows} rows and the transfer engine "
                  f"accepts at most {self.max_rows}")
        if self.fallback is not None:
            log.warning("%s; running this call on the fallback engine (ONNX Runtime)", reason)
            return self.fallback
        raise EngineLimitError(f"{reason}. Rebuild the engine with a larger profile "
                               f"(ssft-export --trt --max-n {rows} or more), use an ONNX Runtime "
                               "backend, or search fewer rows at once (single-query mode)")

    def neighbours(self, feats: Features) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 6-8 neighbour lists of ``feats`` with this stage's k and method."""
        return topk_affinity(feats.shared, feats.specific, feats.modality, k=self.k,
                             method=self.affinity, **self.affinity_options)

    def pad(self, feats: Features) -> np.ndarray:
        """Eq. 5 with this stage's parts."""
        return pad(feats.shared, feats.specific, feats.modality, self.parts)

    def run(self, z: np.ndarray, idx: np.ndarray, w: np.ndarray,
            fn: TransferFn | None = None) -> np.ndarray:
        """``fn`` (default ``transfer_fn``) with its output checked: float32 [N, Dt]."""
        out = np.asarray((fn or self.transfer_fn)(z, idx, w))
        if out.ndim != 2 or out.shape[0] != z.shape[0]:
            raise EngineError(f"transfer_fn returned shape {out.shape} for {z.shape[0]} rows")
        return out.astype(np.float32, copy=False)

    def all_queries(self, feats: Features) -> np.ndarray:
        """Transductive transfer (Sec. 4.5, "all queries"): one graph over all samples -> T [N,Dt]."""
        if len(feats) == 0:
            raise InputError("no features to transfer")
        fn = self._transfer_for(len(feats), "all-queries transfer")  # before the affinity work
        idx, w = self.neighbours(feats)
        return self.run(self.pad(feats), idx, w, fn)

    def auxiliary_distances(self, query: Features, gallery: Features,
                            auxiliary: Features | None = None, dtype=np.float32) -> np.ndarray:
        """Distances [Q, G] after one transfer over ``[query; auxiliary; gallery]``: the queries
        (plus an optional auxiliary set, e.g. a RollingAuxiliary snapshot) act as auxiliary set."""
        parts = [query] + ([auxiliary] if auxiliary is not None and len(auxiliary) else [])
        t = self.all_queries(Features.concat(parts + [gallery]))
        return l2_distances(t[:len(query)], t[len(t) - len(gallery):], dtype)

    def single_query_distances(self, query: Features, gallery: Features,
                               cache_key: Hashable | None = None, dtype=np.float32
                               ) -> np.ndarray:
        """Eq. 22: each query propagates with the gallery only -> distances [Q, G]. Queries are
        batched as independent blocks of ``G + 1`` rows, as many per ``transfer_fn`` call as
        ``max_rows`` (and SINGLE_QUERY_ROWS) allow; the gallery's neighbour lists and padded
        features are computed once per call, and kept for the next call with the same
        ``cache_key`` (a live gallery passes its version). A gallery too large for one block uses
        ``fallback``."""
        if len(gallery) == 0 or len(query) == 0:
            raise InputError("single-query transfer needs at least one query and one gallery sample")
        size = len(gallery) + 1
        fn = self._transfer_for(size, "single-query transfer (one query + the gallery)")
        limit = self.max_rows if fn is self.transfer_fn else None
        rows = min(limit or SINGLE_QUERY_ROWS, SINGLE_QUERY_ROWS)
        chunk = max(1, rows // size)
        graph, z_g = self._gallery_graph(gallery, cache_key)
        z_q = self.pad(query)
        dist = np.empty((len(query), len(gallery)), dtype)
        for s in range(0, len(query), chunk):
            q = query.take(slice(s, s + chunk))
            c = len(q)
            idx, w = graph.build(query_gallery_affinity(q, gallery))
            z = np.empty((c, size, z_g.shape[1]), np.float32)
            z[:, 0], z[:, 1:] = z_q[s:s + c], z_g[None]
            t = unit(self.run(z.reshape(c * size, -1), idx, w, fn), np.float64).reshape(c, size, -1)
            cos = np.einsum("cd,cgd->cg", t[:, 0], t[:, 1:])
            dist[s:s + c] = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
        return dist

    def _gallery_graph(self, gallery: Features, key: Hashable | None
                       ) -> tuple[SingleQueryGraph, np.ndarray]:
        """Eq. 22's query-independent part, cached for the last ``key`` seen (a gallery's
        identity and version, bumped on every add / remove), so a live gallery that did not change
        is not re-ranked for every query batch; no key, no cache."""
        with self._cache_lock:
            if key is not None and self._gallery_cache is not None and \
                    self._gallery_cache[0] == key:
                return self._gallery_cache[1], self._gallery_cache[2]
        graph = SingleQueryGraph(gallery, *self.neighbours(gallery), self.k)
        z_g = self.pad(gallery)
        if key is not None:
            with self._cache_lock:
                self._gallery_cache = (key, graph, z_g)
        return graph, z_g
