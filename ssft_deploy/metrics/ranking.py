"""CMC, mAP and mINP of cross-modality retrieval, vectorised over queries (numpy)."""

from __future__ import annotations

import numpy as np

from ssft_deploy.errors import InputError

_CHUNK_ELEMENTS = 1 << 22  # rows per block so that a block holds ~4M gallery entries


def _vector(name: str, x, n: int) -> np.ndarray:
    a = np.asarray(x).reshape(-1) if np.ndim(x) else np.asarray(x)
    if a.ndim != 1 or a.shape[0] != n:
        raise InputError(f"{name} must be a vector of {n} entries, got shape {np.shape(x)}")
    return a.astype(np.int64, copy=False)


def _distmat(distmat) -> np.ndarray:
    d = np.asarray(distmat)
    if d.ndim != 2 or 0 in d.shape:
        raise InputError(f"distmat must be a non-empty 2-D array [Q, G], got shape {d.shape}")
    if not np.issubdtype(d.dtype, np.number) or not np.isfinite(d).all():
        raise InputError("distmat must hold finite real numbers")
    return d


def _first_identity_rank(order: np.ndarray, keep: np.ndarray, g_codes: np.ndarray,
                         q_codes: np.ndarray) -> np.ndarray:
    """1-based rank of each query's identity in its ranked list with every identity counted once,
    at its first (kept) occurrence: the official SYSU-MM01 CMC rule."""
    q, g = order.shape
    rows = np.arange(q)[:, None]
    pos = np.empty_like(order)
    pos[rows, order] = np.arange(g)  # position of each gallery column in the ranked list
    pos[~keep] = g  # removed entries never come first
    perm = np.argsort(g_codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(g_codes[perm]) != 0])
    first = np.minimum.reduceat(pos[:, perm], starts, axis=1)  # [Q, U] first position per identity
    own = first[np.arange(q), q_codes]
    return (first < own[:, None]).sum(axis=1) + 1


def _evaluate(distmat, q_pids, g_pids, keep_fn, dedup: bool, max_rank: int):
    d = _distmat(distmat)
    nq, ng = d.shape
    q_pids, g_pids = _vector("q_pids", q_pids, nq), _vector("g_pids", g_pids, ng)
    if max_rank < 1:
        raise InputError(f"max_rank must be >= 1, got {max_rank}")
    ids, g_codes = np.unique(g_pids, return_inverse=True)
    q_codes = np.clip(np.searchsorted(ids, q_pids), 0, len(ids) - 1)
    hist = np.zeros(ng + 1, np.int64)  # how many valid queries have their first hit at rank r
    aps, inps = [], []
    step = max(1, _CHUNK_ELEMENTS // ng)
    for s in range(0, nq, step):
        rows = slice(s, min(nq, s + step))
        order = np.argsort(d[rows], axis=1, kind="stable")  # ties: lower gallery index first
        keep_cols = keep_fn(rows)  # [q, G] in gallery order, or None
        keep = np.ones(order.shape, bool) if keep_cols is None else keep_cols
        keep_ranked = np.take_along_axis(keep, order, axis=1)
        match = (g_pids[order] == q_pids[rows, None]) & keep_ranked
        num_rel = match.sum(axis=1)
        valid = num_rel > 0  # a query whose identity is absent (after removal) is skipped
        if not valid.any():
            continue
        match, keep_ranked, num_rel = match[valid], keep_ranked[valid], num_rel[valid]
        kept_pos = np.cumsum(keep_ranked, axis=1)  # 1-based position among the kept entries
        hits = np.cumsum(match, axis=1)
        aps.append((np.where(match, hits / np.maximum(kept_pos, 1), 0.0)).sum(axis=1) / num_rel)
        last = match.shape[1] - 1 - np.argmax(match[:, ::-1], axis=1)
        inps.append(num_rel / kept_pos[np.arange(len(last)), last])
        if dedup:
            rank = _first_identity_rank(order[valid], keep[valid], g_codes, q_codes[rows][valid])
        else:
            rank = kept_pos[np.arange(len(last)), np.argmax(match, axis=1)]
        hist += np.bincount(rank, minlength=ng + 1)
    if not aps:
        raise InputError("no query identity appears in the gallery: nothing to evaluate")
    n_valid = hist.sum()
    # ranks past the gallery size are never reached, so the CMC stays at its last value
    cmc = np.cumsum(np.r_[hist[1:], np.zeros(max(0, max_rank - ng), np.int64)])[:max_rank]
    return cmc / n_valid, float(np.concatenate(aps).mean()), float(np.concatenate(inps).mean())


def eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 20):
    """SYSU-MM01 metrics: ``(cmc [max_rank], mAP, mINP)``; ``distmat [Q, G]``, smaller = closer.

    - A query of camera 3 ignores every gallery image of camera 2 (the two share a room).
    - CMC counts each identity once, at its first position in the ranked list (official rule);
      mAP and mINP use the full ranked list of kept images.
    - Ties in distance are broken by a stable sort: the lower gallery index ranks first (the
      field's code sorts with ``np.argsort``, whose default quicksort may order exact ties either
      way, so compute distances in float64: float32 rounding creates such ties).
    - A query whose identity has no kept gallery image is skipped: it counts in none of CMC, mAP,
      mINP, and every average is over the remaining queries, as the field's code does (its CMC
      adds a zero row for such a query but divides by the valid count: the same). In indoor
      search (gallery cameras 1, 2) 40 of the 96 test identities of the real split have no gallery
      image, so their queries are skipped; in all-search every query has a match.
    - ``max_rank`` larger than the ranked list: the CMC is padded with its last value.
    """
    d = _distmat(distmat)
    q_cam = _vector("q_camids", q_camids, d.shape[0])
    g_cam = _vector("g_camids", g_camids, d.shape[1])

    def keep(rows: slice):
        return ~((q_cam[rows, None] == 3) & (g_cam[None, :] == 2))

    return _evaluate(d, q_pids, g_pids, keep, dedup=True, max_rank=max_rank)


def eval_regdb(distmat, q_pids, g_pids, max_rank: int = 20):
    """RegDB metrics ``(cmc [max_rank], mAP, mINP)``: image-level CMC (the first correct image),
    mAP and mINP over the full ranked list; stable ties, skipped queries and ``max_rank`` as in
    ``eval_sysu`` (no camera removal: the query and gallery modalities differ)."""
    return _evaluate(distmat, q_pids, g_pids, lambda rows: None, dedup=False, max_rank=max_rank)
