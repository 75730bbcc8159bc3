"""Neighbour lists of the single-query graph of Eq. 22, many queries at once.

For a query q and gallery G the graph has rows ``[q; G]`` and
``A = [[k * A^{q,q}, T(A^{q,G}, k)], [k * A^{G,q}, T(A^{G,G}, k)]]``: the query keeps itself with
weight ``k * d(P_q, P_q) = k`` plus its top-k gallery samples per gallery modality block (by shared
features for the other modality, by specific ones for its own, as in Eq. 6; a cross-modality
gallery has one block, which is Eq. 22 exactly); each gallery row keeps its own Eq. 8 neighbours
within the gallery plus the query with weight ``k * A^{g,q}``. Queries are stacked as independent
blocks of one block-diagonal graph, so one ``transfer_fn`` call serves many queries and the
gallery's own neighbour lists are computed once.
"""

from __future__ import annotations

import numpy as np

from ssft_deploy.affinity.common import d_from_cos, unit
from ssft_deploy.affinity.dense import top_by_score
from ssft_deploy.features import Features


def query_gallery_affinity(query: Features, gallery: Features) -> np.ndarray:
    """``A^{q,g}`` of Eq. 6 for every pair -> float64 [Q, G]: d of specific features when q and g
    share a modality, of shared features otherwise."""
    same = query.modality[:, None] == gallery.modality[None, :]
    cos = np.where(same, unit(query.specific, np.float64) @ unit(gallery.specific, np.float64).T,
                   unit(query.shared, np.float64) @ unit(gallery.shared, np.float64).T)
    return d_from_cos(cos)


class SingleQueryGraph:
    """The query-independent part of Eq. 22 for one gallery: its neighbour lists and where each
    gallery row takes the query edge (a padding slot when it has one, else an extra column)."""

    def __init__(self, gallery: Features, idx_g: np.ndarray, w_g: np.ndarray, k: int) -> None:
        self.gallery, self.k = gallery, k
        n = len(gallery)
        self.idx_g, self.w_g = idx_g, w_g
        pad = (w_g == 0) & (idx_g == np.arange(n)[:, None])
        has_pad = pad.any(axis=1)
        self.width_g = 2 * k if has_pad.all() else 2 * k + 1
        self.q_slot = np.where(has_pad, pad.argmax(axis=1), 2 * k)  # column of the query edge
        self.blocks = [np.flatnonzero(gallery.modality == m) for m in (0, 1)]
        self.blocks = [b for b in self.blocks if b.size]
        width_q = 1 + sum(min(k, b.size) for b in self.blocks)
        self.width = max(self.width_g, width_q)

    def build(self, d_qg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Neighbour lists of ``c`` query graphs stacked block-diagonally: rows ``t*(G+1)`` is
        query t, rows ``t*(G+1)+1+g`` its copy of gallery sample g. d_qg: [c, G] from
        ``query_gallery_affinity``. Returns idx int64 / w float32 of [c*(G+1), width]."""
        c, n = d_qg.shape
        k, width, size = self.k, self.width, n + 1
        offset = (np.arange(c, dtype=np.int64) * size)[:, None, None]
        idx = np.broadcast_to(np.arange(size, dtype=np.int64)[None, :, None],
                              (c, size, width)) + offset
        idx = idx.copy()
        w = np.zeros((c, size, width), np.float32)
        # query rows: itself with k * d(P_q, P_q) = k, then top-k per gallery block
        w[:, 0, 0] = k
        col = 1
        for block in self.blocks:
            kk = min(k, block.size)
            d_top, g_top = top_by_score(d_qg[:, block], block[None, :], kk)
            idx[:, 0, col:col + kk] = g_top + 1 + offset[:, :, 0]
            w[:, 0, col:col + kk] = d_top
            col += kk
        # gallery rows: own neighbours within the gallery, shifted by 1, plus k * A^{g,q}
        idx[:, 1:, :2 * k] = self.idx_g[None] + 1 + offset
        w[:, 1:, :2 * k] = self.w_g[None]
        rows = np.arange(n)
        idx[:, 1 + rows, self.q_slot] = offset[:, :, 0]
        w[:, 1 + rows, self.q_slot] = (k * d_qg).astype(np.float32)
        return idx.reshape(c * size, width), w.reshape(c * size, width)
