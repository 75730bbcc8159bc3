"""k-NN method: faiss inner-product search on unit vectors, for N far beyond what dense allows.

Exact by default (``IndexFlatIP`` per modality block: the same candidates as dense, computed by
faiss's blocked BLAS search). ``index="ivf"`` (IVF-Flat, ``nlist``/``nprobe``) or ``index="hnsw"``
(``m``/``ef_search``) trade exactness for speed; ``measure_recall`` says how much.
faiss is imported lazily here only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ssft_deploy.affinity.common import Candidates
from ssft_deploy.errors import EngineError, InputError

INDEXES = ("flat", "ivf", "hnsw")


def available() -> bool:
    """True when faiss can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise EngineError("affinity method 'knn' needs faiss: pip install faiss-cpu") from exc
    return faiss


def build_index(base: np.ndarray, index: str = "flat", nlist: int | None = None,
                m: int = 32, ef_construction: int = 80, seed: int = 0) -> Any:
    """A faiss inner-product index over unit vectors ``base`` [nb, D] float32."""
    faiss = _faiss()
    nb, dim = base.shape
    base = np.ascontiguousarray(base, dtype=np.float32)
    if index == "flat":
        ix = faiss.IndexFlatIP(dim)
    elif index == "ivf":
        nlist = nlist or max(1, min(4096, int(np.sqrt(nb))))
        nlist = min(nlist, nb)
        ix = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ix.cp.seed = seed
        train = base
        if nb > 64 * nlist:  # faiss samples at most 256 per list anyway; keep training cheap
            train = base[np.random.default_rng(seed).choice(nb, 64 * nlist, replace=False)]
        ix.train(train)
    elif index == "hnsw":
        ix = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        ix.hnsw.efConstruction = ef_construction
    else:
        raise InputError(f"unknown knn index {index!r}: use one of {', '.join(INDEXES)}")
    ix.add(base)
    return ix


def search(ix: Any, q: np.ndarray, c: int, nprobe: int = 16, ef_search: int = 64,
           among: tuple[int, int] | np.ndarray | None = None) -> np.ndarray:
    """Indices [nq, c] of the c best inner products; a slot the index could not fill (an IVF
    probe that reached fewer than c points) stays -1, which ``assemble`` pads as ``(i, 0)``.

    The settings travel with this call (faiss ``SearchParameters``) and are never written to the
    index, so one cached index serves concurrent searches with different settings. ``among``
    restricts the search to some of the index's ids, a ``(start, stop)`` range or a bool mask
    over all of them, through an ``IDSelector`` on this index; that search is exact (every IVF
    list probed, HNSW's stored vectors scanned flat), as a flat index over those rows would be.
    IVF ids must be ascending within each list (true for indexes filled by ``add``)."""
    faiss = _faiss()
    sel, keep = None, None  # keep: what the selector points into, alive until search returns
    if among is not None:
        if isinstance(among, tuple):
            sel = faiss.IDSelectorRange(int(among[0]), int(among[1]), True)
        else:
            keep = np.packbits(np.asarray(among, bool), bitorder="little")
            sel = faiss.IDSelectorBitmap(len(among), faiss.swig_ptr(keep))
        if hasattr(ix, "hnsw"):
            ix = faiss.downcast_index(ix.storage)
        nprobe = getattr(ix, "nlist", nprobe)
    if hasattr(ix, "nprobe"):
        params = faiss.SearchParametersIVF(nprobe=nprobe, sel=sel)
    elif hasattr(ix, "hnsw"):
        params = faiss.SearchParametersHNSW(efSearch=max(ef_search, c))
    else:
        params = None if sel is None else faiss.SearchParameters(sel=sel)
    _, found = ix.search(np.ascontiguousarray(q, dtype=np.float32), c, params=params)
    del sel, keep
    return found.astype(np.int64)


def candidate_fn(index: str = "flat", nprobe: int = 16, ef_search: int = 64,
                 **build: Any) -> Candidates:
    """The candidates function of ``topk_affinity(method="knn")``."""
    if index not in INDEXES:
        raise InputError(f"unknown knn index {index!r}: use one of {', '.join(INDEXES)}")

    def cand(q: np.ndarray, base: np.ndarray, c: int) -> np.ndarray:
        return search(build_index(base, index, **build), q, c, nprobe=nprobe, ef_search=ef_search)

    return cand


def measure_recall(shared: np.ndarray, specific: np.ndarray, modality: np.ndarray, k: int = 4,
                   **options: Any) -> float:
    """Recall of an approximate knn configuration against exact search: the fraction of true
    (non-padding) neighbour slots of ``topk_affinity(method="dense")`` found in the same row."""
    from ssft_deploy.affinity import topk_affinity

    exact, w_exact = topk_affinity(shared, specific, modality, k=k, method="knn")
    approx, _ = topk_affinity(shared, specific, modality, k=k, method="knn", **options)
    hits = total = 0
    for half in (slice(0, k), slice(k, 2 * k)):
        e, a, real = exact[:, half], approx[:, half], w_exact[:, half] > 0
        hits += int(((e[:, :, None] == a[:, None, :]).any(axis=2) & real).sum())
        total += int(real.sum())
    return hits / total if total else 1.0
