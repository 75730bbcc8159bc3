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

from ssft_deploy.affinity.dense import COL_BLOCK, TILE_ELEMS, merge, select_cols, select_rows

# Rows per block of a symmetric product: a block of 3803 rows splits in two (3/4 of the flops),
# while the tiles stay large enough for full-speed sgemm calls.
SYM_BLOCK = 2048

Found = tuple[np.ndarray, np.ndarray]  # (indices [n, c] int64, float32 scores [n, c])


def self_candidates(x: np.ndarray, c: int, block: int = SYM_BLOCK) -> Found:
    """Best c columns of ``x x^T`` per row (unit rows), from the upper-triangular tiles."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    edges = _edges(len(x), block)
    return _joint(x, x, c, c, edges, edges, symmetric=True)[0]


def pair_candidates(a: np.ndarray, b: np.ndarray, c_ab: int, c_ba: int,
                    col_block: int = COL_BLOCK) -> tuple[Found, Found]:
    """Best ``c_ab`` columns of ``a b^T`` per row of a and best ``c_ba`` columns of ``b a^T`` per
    row of b, from the one product ``a b^T``."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    col_block = max(1, min(col_block, len(b)))
    row_block = max(1, TILE_ELEMS // col_block)
    return _joint(a, b, c_ab, c_ba, _edges(len(a), row_block), _edges(len(b), col_block),
                  symmetric=False)


def _edges(n: int, block: int) -> list[tuple[int, int]]:
    nblk = max(1, -(-n // block))
    size = -(-n // nblk)  # equal blocks, not one short remainder
    return [(s, min(n, s + size)) for s in range(0, n, size)] or [(0, 0)]


def _joint(a: np.ndarray, b: np.ndarray, c_ab: int, c_ba: int, a_edges: list, b_edges: list,
           symmetric: bool) -> tuple[Found, Found]:
    acc_a: list[list] = [[] for _ in a_edges]
    acc_b: list[list] = [[] for _ in b_edges]

    def add(acc: list, found: tuple[np.ndarray, np.ndarray], offset: int, c: int) -> None:
        acc.append((found[0], found[1] + offset))
        if len(acc) > 1:  # running merge: memory stays at one tile plus [rows, 2c]
            acc[:] = [merge(acc, c)]

    largest = max(e - s for s, e in a_edges) * max(e - s for s, e in b_edges)
    flat = np.empty(largest, np.float32)  # reused tile memory
    for i, (a0, a1) in enumerate(a_edges):
        for j, (b0, b1) in enumerate(b_edges):
            if symmetric and j < i:
                continue  # the mirror of tile (j, i), already selected along its columns
            tile = flat[:(a1 - a0) * (b1 - b0)].reshape(a1 - a0, b1 - b0)
            np.matmul(a[a0:a1], b[b0:b1].T, out=tile)
            add(acc_a[i], select_rows(tile, min(c_ab, b1 - b0)), b0, c_ab)
            if not (symmetric and i == j):
                add((acc_a if symmetric else acc_b)[j], select_cols(tile, min(c_ba, a1 - a0)),
                    a0, c_ba)
    return _collect(acc_a), _collect(acc_b) if not symmetric else _collect(acc_a)


def _collect(acc: list[list]) -> Found:
    s = np.concatenate([p[0][0] for p in acc])
    i = np.concatenate([p[0][1] for p in acc])
    return i, s
