"""Dense method: blocked matmul of unit vectors + partial selection, numpy only.

Memory is bounded by one ``row_block x col_block`` tile of scores (``TILE_ELEMS`` by default) plus
the running candidates, never an N x N matrix beyond that. Tiles are as large as that allows:
with two BLAS threads on a busy machine, every sgemm call pays a thread hand-off, and 1k x 1k
tiles ran at half the speed of one large product.

Selection in a tile costs about two passes over it: columns are dealt into interleaved groups of up
to ``GROUP`` columns (group g = columns g, g + n_g, g + 2 n_g, ...) whose maxima come from
contiguous, vectorised ``np.maximum`` passes; ``t``, the c-th largest group maximum of a row, is reached by at least c
scores (one per group), so every score among the row's c best is ``>= t``. Only the entries
``>= t`` (typically a little over c) are then ranked exactly by (descending score, ascending
column), so the result is exact, ties included.
"""

from __future__ import annotations

import numpy as np

from ssft_deploy.affinity.common import parallel_map, workers

COL_BLOCK = 8192
TILE_ELEMS = 1 << 24   # scores per tile (64 MiB): large sgemm calls, bounded memory
SELECT_ELEMS = 1 << 20  # scores per selection pass (4 MiB), so its passes stay in cache
SELECT_ROWS = 256      # fewest rows per selection pass (fewer Python-level calls on narrow tiles)
GROUP = 16             # most columns per interleaved group (the wide tiles' best here)


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


def row_major_order(rows: np.ndarray, s: np.ndarray, cols: np.ndarray, nr: int, nb: int
                    ) -> np.ndarray:
    """Permutation sorting entries by row, then descending score, then column: one sort of a
    packed uint64 key (an order-preserving bit pattern of the float32 score) where it fits, else
    ``np.lexsort`` (several times slower)."""
    col_bits, row_bits = max(1, int(nb - 1).bit_length()), max(1, int(nr - 1).bit_length())
    if row_bits + 32 + col_bits > 64:
        return np.lexsort((cols, -s, rows))
    bits = (np.asarray(s, np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 -> +0.0
    # float order -> unsigned order, then flipped so larger scores come first
    up = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
    key = rows.astype(np.uint64) << np.uint64(32 + col_bits)
    key |= (~up).astype(np.uint64) << np.uint64(col_bits)
    key |= cols.astype(np.uint64)
    return np.argsort(key)


def group_size(n: int, c: int) -> int:
    """Members per interleaved group for selecting c of n: ~sqrt(n / c), within [4, GROUP]."""
    return int(min(GROUP, max(4, np.sqrt(n / max(c, 1)))))


def tile_top(tile: np.ndarray, c: int, group: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Best c (scores, local columns) per row of a C-contiguous score tile, exact; see the module
    docstring. ``group`` defaults to ``group_size(columns, c)``."""
    nr, nb = tile.shape
    group = group or group_size(nb, c)
    ng = nb // group
    if ng <= 2 * c:  # narrow tile: grouping would not prune much
        return top_by_score(tile, np.arange(nb, dtype=np.int64)[None], min(c, nb))
    body = ng * group
    groups = tile[:, :body].reshape(nr, group, ng)
    # group maxima as contiguous elementwise passes (numpy's reduce over the middle axis of
    # this view does not vectorise and costs twice as much)
    gmax = np.maximum(groups[:, 0], groups[:, 1])
    for j in range(2, group):
        np.maximum(gmax, groups[:, j], out=gmax)
    t = np.partition(gmax, ng - c, axis=1)[:, ng - c]
    # the groups reaching t (c per row unless maxima tie), gathered whole: [selected, group]
    g_rows, g = np.nonzero(gmax >= t[:, None])
    vals = groups[g_rows, :, g]
    sel, member = np.nonzero(vals >= t[g_rows, None])
    rows, cols, s = g_rows[sel], g[sel] + ng * member, vals[sel, member]
    if body < nb:  # columns outside every group
        t_rows, t_cols = np.nonzero(tile[:, body:] >= t[:, None])
        rows = np.concatenate([rows, t_rows])
        cols = np.concatenate([cols, t_cols + body])
        s = np.concatenate([s, tile[t_rows, t_cols + body]])
    return _best_per_row(rows, cols, s, nr, nb, c)


def tile_top_cols(tile: np.ndarray, c: int, group: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``tile_top`` of the transposed tile without transposing it: best c (scores, local rows)
    per column, as ``[columns, c]``. Groups are row slabs here, so their maxima are contiguous
    passes too (a symmetric or mirrored block is selected from the one tile computed)."""
    nr, nb = tile.shape
    group = group or group_size(nr, c)
    ng = nr // group
    if ng <= 2 * c:
        return top_by_score(np.ascontiguousarray(tile.T), np.arange(nr, dtype=np.int64)[None],
                            min(c, nr))
    body = ng * group
    slabs = tile[:body].reshape(group, ng, nb)            # group g = rows g, g + ng, ...
    gmax = np.maximum(slabs[0], slabs[1])
    for j in range(2, group):
        np.maximum(gmax, slabs[j], out=gmax)
    gmax = np.ascontiguousarray(gmax.T)                    # [nb, ng], small
    t = np.partition(gmax, ng - c, axis=1)[:, ng - c]
    g_cols, g = np.nonzero(gmax >= t[:, None])
    vals = slabs[:, g, g_cols].T                           # [selected, group]
    sel, member = np.nonzero(vals >= t[g_cols, None])
    cols, rows, s = g_cols[sel], g[sel] + ng * member, vals[sel, member]
    if body < nr:  # rows outside every group
        t_rows, t_cols = np.nonzero(tile[body:] >= t[None, :])
        cols = np.concatenate([cols, t_cols])
        rows = np.concatenate([rows, t_rows + body])
        s = np.concatenate([s, tile[t_rows + body, t_cols]])
    return _best_per_row(cols, rows, s, nb, nr, c)


def _best_per_row(rows: np.ndarray, cols: np.ndarray, s: np.ndarray, nr: int, nb: int, c: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    # entries that reach their row's threshold (>= c per row): the best c by (-score, column)
    order = row_major_order(rows, s, cols, nr, nb)
    counts = np.bincount(rows, minlength=nr)
    pick = order[(np.cumsum(counts) - counts)[:, None] + np.arange(c)]
    return s[pick], cols[pick].astype(np.int64, copy=False)


def select_rows(tile: np.ndarray, c: int, parallel: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """``tile_top`` over row slices that stay in cache: on the worker threads (at least one slice
    per worker), or in this thread with ``parallel=False`` (inside a worker's own task)."""
    return _sliced(tile_top, tile, c, 0, parallel)


def select_cols(tile: np.ndarray, c: int, parallel: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """``tile_top_cols`` over column slices, as :func:`select_rows`: per column of the tile, its
    best c rows."""
    return _sliced(tile_top_cols, tile, c, 1, parallel)


def _sliced(fn, tile: np.ndarray, c: int, axis: int, parallel: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    n, width = tile.shape[axis], tile.shape[1 - axis]
    step = max(SELECT_ROWS, SELECT_ELEMS // max(width, 1))
    if parallel:
        step = max(1, min(step, -(-n // workers())))

    def part(s0: int) -> tuple[np.ndarray, np.ndarray]:
        return fn(tile[s0:s0 + step] if axis == 0 else tile[:, s0:s0 + step], c)

    starts = range(0, n, step)
    sel = parallel_map(part, starts) if parallel else [part(s0) for s0 in starts]
    return np.concatenate([p[0] for p in sel]), np.concatenate([p[1] for p in sel])


def merge(parts: list[tuple[np.ndarray, np.ndarray]], c: int) -> tuple[np.ndarray, np.ndarray]:
    """Best c of each row over several (scores, columns) candidate lists of the same rows."""
    if len(parts) == 1:
        return parts[0]
    s = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    return top_by_score(s, i, min(c, s.shape[1]))


def candidates(q: np.ndarray, base: np.ndarray, c: int, row_block: int | None = None,
               col_block: int = COL_BLOCK, with_scores: bool = False):
    """Indices [nq, c] of the c largest inner products q_i . base_j per row (unit vectors), in
    (descending score, ascending index) order; with ``with_scores`` also their float32 scores.
    ``row_block`` defaults to as many rows as fit in ``TILE_ELEMS`` scores next to
    ``col_block`` columns."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    nq, nb = q.shape[0], base.shape[0]
    col_block = min(col_block, nb)
    if row_block is None:
        row_block = max(SELECT_ROWS, TILE_ELEMS // col_block)
    row_block = min(row_block, nq)
    out = np.empty((nq, c), np.int64)
    out_s = np.empty((nq, c), np.float32)
    flat = np.empty(row_block * col_block, np.float32)  # reused tile memory
    for r0 in range(0, nq, row_block):
        qb = q[r0:r0 + row_block]
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for c0 in range(0, nb, col_block):
            bt = base[c0:c0 + col_block]
            tile = flat[:qb.shape[0] * bt.shape[0]].reshape(qb.shape[0], bt.shape[0])
            np.matmul(qb, bt.T, out=tile)  # one large sgemm: small ones waste BLAS threads
            s, i = select_rows(tile, min(c, bt.shape[0]))
            parts.append((s, i + c0))
            if len(parts) > 1:  # running merge keeps memory at one tile plus [rows, 2c]
                parts = [merge(parts, c)]
        out_s[r0:r0 + row_block], out[r0:r0 + row_block] = parts[0]
    return (out, out_s) if with_scores else out
