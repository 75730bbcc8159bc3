"""Dense method: blocked matmul of unit vectors + partial selection, numpy only.

Memory is bounded by one ``row_block x col_block`` tile of scores plus the running candidates
(never an N x N matrix). Within a tile, candidates are chosen with ``argpartition``; running and
tile candidates are merged by (descending score, ascending index), so selection is deterministic.
"""

from __future__ import annotations

import numpy as np

ROW_BLOCK = 1024
COL_BLOCK = 8192


def top_by_score(scores: np.ndarray, cols: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Best c of each row by (descending score, ascending column); cols broadcasts to scores."""
    cols = np.broadcast_to(cols, scores.shape)
    if scores.shape[1] > c:
        # Partition on score, then settle the order (and boundary ties) among c + spare entries
        # so ties at the boundary go to the smaller column.
        part = np.argpartition(-scores, c - 1, axis=1)[:, :c]
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


def candidates(q: np.ndarray, base: np.ndarray, c: int, row_block: int = ROW_BLOCK,
               col_block: int = COL_BLOCK) -> np.ndarray:
    """Indices [nq, c] of the c largest inner products q_i . base_j per row (unit vectors)."""
    nq, nb = q.shape[0], base.shape[0]
    out = np.empty((nq, c), np.int64)
    for r0 in range(0, nq, row_block):
        qb = q[r0:r0 + row_block]
        best_s = np.full((qb.shape[0], 0), -np.inf, np.float32)
        best_i = np.zeros((qb.shape[0], 0), np.int64)
        for c0 in range(0, nb, col_block):
            tile = qb @ base[c0:c0 + col_block].T
            cols = np.arange(c0, c0 + tile.shape[1], dtype=np.int64)[None, :]
            ts, ti = top_by_score(tile, cols, min(c, tile.shape[1]))
            best_s, best_i = top_by_score(np.concatenate([best_s, ts], axis=1),
                                  np.concatenate([best_i, ti], axis=1), min(c, c0 + tile.shape[1]))
        out[r0:r0 + row_block] = best_i
    return out
