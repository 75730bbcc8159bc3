"""The dense method's blocks of Eq. 6 from fewer products.

Two of the four blocks are products of a set with itself (``P_R P_R^T``, ``P_I P_I^T``) and two
are transposes of each other (``H_R H_I^T`` and ``H_I H_R^T``). So the symmetric blocks are built
from the tiles on and above the diagonal only, each off-diagonal tile selected along its rows and
along its columns (``dense.tile_top_cols``, no transposed copy), and both cross blocks come from one
product. With two row blocks a symmetric block costs 3/4 of its product, with three 2/3.

Candidates are the exact top ``c`` of the float32 scores by (descending score, ascending index),
as ``dense.candidates`` returns them; a score read from the mirrored tile may differ from the
other product's in its last bits, which ``common.refine_checked``'s error bound already covers,
so the final neighbour lists are the same.
"""

from __future__ import annotations

import numpy as np

from ssft_deploy.affinity.common import parallel_map, single_threaded_blas, workers
from ssft_deploy.affinity.dense import TILE_ELEMS, merge, select_cols, select_rows

# Rows per block of a symmetric product: 3803 rows split in four (10 tiles, 5/8 of the flops),
# enough tiles to share among the worker threads, each still a full-speed sgemm call.
SYM_BLOCK = 1024
# Columns per tile of a cross product (a 301 x 3803 block splits in four tasks).
PAIR_BLOCK = 1024

Found = tuple[np.ndarray, np.ndarray]  # (indices [n, c] int64, float32 scores [n, c])


def self_candidates(x: np.ndarray, c: int, block: int = SYM_BLOCK) -> Found:
    """Best c columns of ``x x^T`` per row (unit rows), from the upper-triangular tiles."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    edges = block_edges(len(x), block)
    return _joint(x, x, c, c, edges, edges, symmetric=True)[0]


def pair_candidates(a: np.ndarray, b: np.ndarray, c_ab: int, c_ba: int,
                    col_block: int = PAIR_BLOCK) -> tuple[Found, Found]:
    """Best ``c_ab`` columns of ``a b^T`` per row of a and best ``c_ba`` columns of ``b a^T`` per
    row of b, from the one product ``a b^T``."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    col_block = max(1, min(col_block, len(b)))
    row_block = max(1, TILE_ELEMS // col_block)
    return _joint(a, b, c_ab, c_ba, block_edges(len(a), row_block), block_edges(len(b), col_block),
                  symmetric=False)


def block_edges(n: int, block: int) -> list[tuple[int, int]]:
    """``[start, end)`` of the equal row blocks (at most ``block`` rows) a product is tiled by."""
    nblk = max(1, -(-n // block))
    size = -(-n // nblk)  # equal blocks, not one short remainder
    return [(s, min(n, s + size)) for s in range(0, n, size)] or [(0, 0)]


def _joint(a: np.ndarray, b: np.ndarray, c_ab: int, c_ba: int, a_edges: list, b_edges: list,
           symmetric: bool) -> tuple[Found, Found]:
    # One task per tile: its product on a single BLAS thread, then its selections, all on one
    # worker thread. BLAS's own threads would otherwise keep spinning after each product and
    # take the cores from the selection passes that follow it.
    tiles = [(i, j) for i in range(len(a_edges)) for j in range(len(b_edges))
             if not (symmetric and j < i)]  # below the diagonal: mirrors, selected by column

    def task(ij: tuple[int, int]):
        i, j = ij
        (a0, a1), (b0, b1) = a_edges[i], b_edges[j]
        tile = a[a0:a1] @ b[b0:b1].T
        rows = _offset(select_rows(tile, min(c_ab, b1 - b0), parallel=False), b0)
        if symmetric and i == j:
            return rows, None
        return rows, _offset(select_cols(tile, min(c_ba, a1 - a0), parallel=False), a0)

    acc_a: list[list] = [[] for _ in a_edges]
    acc_b: list[list] = acc_a if symmetric else [[] for _ in b_edges]
    step = 4 * workers()  # tiles in flight: memory stays at a few tiles plus [rows, 2c] per block
    with single_threaded_blas():
        for s in range(0, len(tiles), step):
            batch = tiles[s:s + step]
            for (i, j), (rows, cols) in zip(batch, parallel_map(task, batch)):
                _add(acc_a[i], rows, c_ab)
                if cols is not None:
                    _add(acc_b[j], cols, c_ba)
    out_a = _collect(acc_a, c_ab)
    return out_a, out_a if symmetric else _collect(acc_b, c_ba)


def _add(acc: list, found: tuple[np.ndarray, np.ndarray], c: int) -> None:
    acc.append(found)
    if len(acc) > 1:  # running merge
        acc[:] = [merge(acc, c)]


def _offset(found: tuple[np.ndarray, np.ndarray], offset: int) -> tuple[np.ndarray, np.ndarray]:
    return found[0], found[1] + offset


def _collect(acc: list[list], c: int) -> Found:
    merged = [merge(parts, c) for parts in acc]
    return (np.concatenate([m[1] for m in merged]), np.concatenate([m[0] for m in merged]))
