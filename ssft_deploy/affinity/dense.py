"""Dense method: blocked matmul of unit vectors + partial selection, numpy only.

Memory is bounded by one ``row_block x col_block`` tile of scores plus the running candidates
(never an N x N matrix). Selection in a tile costs about one pass over it: columns are dealt into
``GROUP`` interleaved groups (group g = columns g, g + n_g, g + 2 n_g, ...), whose maxima come from
contiguous, vectorised ``np.maximum`` passes. The c best scores of a row all lie in groups whose
maximum reaches the row's c-th largest group maximum ``t`` (c groups reach ``t``, so at least c
scores do), so only those groups' columns are ranked exactly, by (descending score, ascending
column). Rows where more than c groups tie at ``t`` fall back to ranking the whole row, so the
result is exact, ties included.
"""

from __future__ import annotations

import numpy as np

ROW_BLOCK = 1024
COL_BLOCK = 8192
GROUP = 16  # columns per interleaved group; sqrt(n / c) balances the two selection stages


def top_by_score(scores: np.ndarray, cols: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Best c of each row by (descending score, ascending column); cols broadcasts to scores."""
    cols = np.broadcast_to(cols, scores.shape)
    if scores.shape[1] > c:
        # Partition on score, then settle the order (and boundary ties) among c + spare entries
        # so ties at the boundary go to the smaller column.
        part = np.argpartition(scores, scores.shape[1] - c, axis=1)[:, -c:]
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
        keep = scores >= kth  # every entry tied with the c-th best stays a candidate
        if keep.sum(axis=1).max() > c:
            scores = np.where(keep, scores, -np.inf)
        else:
            scores = np.take_along_axis(scores, part, axis=1)
            cols = np.take_along_axis(cols, part, axis=1)
    by_col = np.argsort(cols, axis=1, kind="stable")
    s_sorted = np.take_along_axis(scores, by_col, axis=1)
    order = np.take_along_axis(by_col, np.argsort(-s_sorted, axis=1, kind="stable"), axis=1)[:, :c]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(cols, order, axis=1)


def tile_top(tile: np.ndarray, c: int, group: int = GROUP) -> tuple[np.ndarray, np.ndarray]:
    """Best c (scores, local columns) of each row of a score tile, exact (see module docstring)."""
    nr, nb = tile.shape
    ng = nb // group
    if ng <= 2 * c:  # narrow tile: grouping would not prune much
        return top_by_score(tile, np.arange(nb, dtype=np.int64)[None, :], min(c, nb))
    body = tile[:, :ng * group].reshape(nr, group, ng)
    gmax = body.max(axis=1)                                        # [nr, ng]
    top_g = np.argpartition(gmax, ng - c, axis=1)[:, -c:]          # c groups with the largest max
    t = np.take_along_axis(gmax, top_g, axis=1).min(axis=1, keepdims=True)
    cols = (top_g[:, :, None] + ng * np.arange(group, dtype=np.int64)).reshape(nr, c * group)
    tail = np.arange(ng * group, nb, dtype=np.int64)               # columns outside every group
    cols = np.concatenate([cols, np.broadcast_to(tail, (nr, tail.size))], axis=1)
    s, i = top_by_score(np.take_along_axis(tile, cols, axis=1), cols, c)
    tied = np.flatnonzero((gmax >= t).sum(axis=1) > c)            # rare: exact over the row
    if tied.size:
        s[tied], i[tied] = top_by_score(tile[tied], np.arange(nb, dtype=np.int64)[None, :], c)
    return s, i


def candidates(q: np.ndarray, base: np.ndarray, c: int, row_block: int = ROW_BLOCK,
               col_block: int = COL_BLOCK) -> np.ndarray:
    """Indices [nq, c] of the c largest inner products q_i . base_j per row (unit vectors), in
    (descending score, ascending index) order."""
    nq, nb = q.shape[0], base.shape[0]
    q = np.ascontiguousarray(q, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    out = np.empty((nq, c), np.int64)
    buf = np.empty((min(row_block, nq), min(col_block, nb)), np.float32)  # reused tile memory
    for r0 in range(0, nq, row_block):
        qb = q[r0:r0 + row_block]
        best_s = best_i = None
        for c0 in range(0, nb, col_block):
            bt = base[c0:c0 + col_block]
            tile = buf[:qb.shape[0], :bt.shape[0]]
            np.matmul(qb, bt.T, out=tile)
            ts, ti = tile_top(tile, min(c, tile.shape[1]))
            ti += c0
            if best_s is None:
                best_s, best_i = ts, ti
            else:
                best_s, best_i = top_by_score(np.concatenate([best_s, ts], axis=1),
                                              np.concatenate([best_i, ti], axis=1),
                                              min(c, c0 + tile.shape[1]))
        out[r0:r0 + row_block] = best_i
    return out
