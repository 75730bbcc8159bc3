"""Two-stage search for galleries far larger than one SSTN graph.

Stage one: each query's ``M`` nearest entries per gallery modality block, by the field Eq. 6 uses
for that pair (shared features across modalities, specific ones within one), from the store's
index. Stage two runs the SSTN on a subgraph only:

* single-query (Eq. 22): per query, rows ``[q; S; B]`` with S the shortlist and B the entries
  that S's own neighbour lists reach. q keeps itself (weight k) and its top-k of S per block; an
  entry of S keeps its Eq. 8 neighbour list within the gallery (cached per gallery version) plus
  the query edge ``k * A^{g,q}``; an entry of B only contributes its degree (its Eq. 8 weights
  plus its query edge). The transfer is one propagation step (Eq. 10), so ``T_q`` and ``T_g`` for
  g in S equal those of the full graph whenever stage one finds the true top-k: the distances of
  shortlisted entries are exact, and only entries outside every shortlist go unranked.
* all-queries / rolling: the transductive SSTN over ``[queries; auxiliary; S + their
  neighbours]`` (exact on that subgraph, an approximation of the full graph).
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from ssft_deploy.affinity.common import d_from_cos, unit
from ssft_deploy.affinity.dense import top_by_score
from ssft_deploy.affinity.single_query import query_gallery_affinity
from ssft_deploy.features import Features
from ssft_deploy.gallery.base import GalleryStore, Window, fetch_ordered
from ssft_deploy.gallery.table import Entries
from ssft_deploy.transfer import SINGLE_QUERY_ROWS, SSTN, l2_distances


def shortlists(store: GalleryStore, q: Features, mods: tuple[int, ...], window: Window,
               m: int) -> list[np.ndarray]:
    """Stage one: per query, the entry ids of its M nearest entries of each block."""
    out: list[list[np.ndarray]] = [[] for _ in range(len(q))]
    for qm in (0, 1):
        rows = np.flatnonzero(q.modality == qm)
        for b in mods if rows.size else ():
            field = "specific" if b == qm else "shared"
            found = store._knn(unit(getattr(q, field)[rows]), field, b, window, m,
                               shortlist=True)
            for r, ids in zip(rows, found):
                out[r].append(ids[ids >= 0])
    return [np.concatenate(parts) if parts else np.zeros(0, np.int64) for parts in out]


def distances(store: GalleryStore, q: Features, mods: tuple[int, ...], window: Window, m: int,
              mode: str, transfer: SSTN | None, aux: Features | None) -> list:
    """Per query (distances, columns) over the entries stage two ranks."""
    short = shortlists(store, q, mods, window, m)
    if mode == "single-query":
        return _single_query(store, q, short, mods, window, transfer)
    if mode == "shared":
        e = fetch_ordered(store, np.unique(np.concatenate(short)))
        out = []
        for i, s in enumerate(short):
            sub = e.take(np.searchsorted(e.cols["ids"], s))
            out.append((l2_distances(q.shared[i:i + 1], sub.cols["shared"])[0], sub.public()))
        return out
    union = np.unique(np.concatenate(short))
    nbr, nbr_w = store.neighbour_lists(union, transfer.k, mods, window)
    sub = fetch_ordered(store, np.union1d(union, nbr))
    dist = transfer.auxiliary_distances(q, sub.features(), aux) if len(sub) else \
        np.zeros((len(q), 0), np.float32)
    if store.pins_snapshot:
        return [(d, sub.public()) for d in dist]
    keep = ~np.isin(sub.cols["ids"], vanished(union, nbr, nbr_w, transfer.k))
    ranked = sub.take(np.flatnonzero(keep)).public()
    return [(d[keep], ranked) for d in dist]


def _single_query(store: GalleryStore, q: Features, short: list[np.ndarray],
                  mods: tuple[int, ...], window: Window, transfer: SSTN) -> list:
    k = transfer.k
    s_all = np.unique(np.concatenate(short))
    s_idx, s_w = store.neighbour_lists(s_all, k, mods, window)
    b_all = np.setdiff1d(s_idx, s_all)
    b_idx, b_w = store.neighbour_lists(b_all, k, mods, window, weights_only=True)
    gone = np.zeros(0, np.int64) if store.pins_snapshot else np.concatenate(
        [vanished(s_all, s_idx, s_w, k), vanished(b_all, b_idx, b_w, k)])
    nodes = np.concatenate([s_all, b_all])
    order = np.argsort(nodes)
    nodes_sorted = nodes[order]
    e = fetch_ordered(store, nodes_sorted)
    z_all = transfer.pad(e.features())
    nl_idx = np.concatenate([s_idx, np.repeat(b_all[:, None], 2 * k, axis=1)])[order]
    nl_w = np.concatenate([s_w, b_w])[order]
    z_q = transfer.pad(q)
    blocks = [_block(q.take([i]), z_q[i], s, e, z_all, nodes_sorted, nl_idx, nl_w, k)
              for i, s in enumerate(short)]
    t_blocks = _run_blocks(transfer, [b[:3] for b in blocks])
    out = []
    for (_, _, _, pos), t in zip(blocks, t_blocks):
        t = unit(t, np.float64)
        cos = t[1:1 + len(pos)] @ t[0]
        keep = ~np.isin(nodes_sorted[pos], gone)     # removed since stage one: not ranked
        sub = e.take(pos[keep])
        out.append((np.sqrt(np.maximum(2.0 - 2.0 * cos[keep], 0.0)).astype(np.float32),
                    sub.public()))
    return out


SELF_TIE = float(d_from_cos(np.float64(1.0 - 1e-5)))  # float32 cosines this close to 1 may tie


def vanished(ids: np.ndarray, idx: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Entries of ``ids`` that a later request of this search no longer found: each entry's own
    same-modality list (the first k columns, searched with its own feature) holds the entry
    itself (weight 1) while it exists, unless k others tie with it there (near-duplicates: kept,
    as it cannot be told). An entry missing from its list was removed (or replaced) by another
    client after the request that returned it."""
    if not len(ids):
        return ids
    first, wk = idx[:, :k], w[:, :k]
    found = ((first == ids[:, None]) & (wk > 0)).any(axis=1)
    crowded = wk.min(axis=1) >= SELF_TIE
    return ids[~found & ~crowded]


def _block(q: Features, z_q: np.ndarray, s: np.ndarray, e: Entries, z_all: np.ndarray,
           nodes: np.ndarray, nl_idx: np.ndarray, nl_w: np.ndarray, k: int):
    """One query's subgraph: z [n, D], idx / w [n, width] local, and S's rows in ``e``."""
    s_pos = np.searchsorted(nodes, s)
    reach = np.setdiff1d(nl_idx[s_pos], s)
    b_pos = np.searchsorted(nodes, reach)
    pos = np.concatenate([s_pos, b_pos])
    n_s, n = len(s_pos), 1 + len(pos)
    a_gq = query_gallery_affinity(q, e.take(pos).features())[0]     # A^{q,g} of Eq. 6
    s_mod = e.cols["modality"][s_pos]
    blocks = [np.flatnonzero(s_mod == b) for b in (0, 1)]
    blocks = [b for b in blocks if b.size]
    width = max(2 * k + 1, 1 + sum(min(k, b.size) for b in blocks))
    idx = np.repeat(np.arange(n, dtype=np.int64)[:, None], width, axis=1)
    w = np.zeros((n, width), np.float32)
    w[0, 0], col = k, 1                                           # k * d(P_q, P_q) = k
    for b in blocks:
        kk = min(k, b.size)
        d_top, g_top = top_by_score(a_gq[None, b], b[None, :], kk)
        idx[0, col:col + kk], w[0, col:col + kk] = g_top[0] + 1, d_top[0]
        col += kk
    # S rows: own Eq. 8 lists mapped to local rows, then the query edge
    ids, sorter = nodes[pos], np.argsort(nodes[pos])
    idx[1:1 + n_s, :2 * k] = sorter[np.searchsorted(ids, nl_idx[s_pos], sorter=sorter)] + 1
    w[1:1 + n_s, :2 * k] = nl_w[s_pos]
    idx[1:1 + n_s, 2 * k], w[1:1 + n_s, 2 * k] = 0, k * a_gq[:n_s]
    # B rows: only their degree matters to S's rows (Eq. 10's D^-1/2 on the neighbour side)
    w[1 + n_s:, 0] = nl_w[b_pos].sum(axis=1) + k * a_gq[n_s:]
    z = np.concatenate([z_q[None], z_all[pos]])
    return z, idx, w, s_pos


def _run_blocks(transfer: SSTN, blocks: list) -> list[np.ndarray]:
    """Transfer independent blocks, packed block-diagonally into calls within the engine's row
    limit; a single block beyond it goes to the SSTN's fallback (or EngineLimitError)."""
    limit = min(transfer.max_rows or SINGLE_QUERY_ROWS, SINGLE_QUERY_ROWS)
    out: list[np.ndarray] = []
    i = 0
    while i < len(blocks):
        j, rows = i, 0
        while j < len(blocks) and (j == i or rows + len(blocks[j][0]) <= limit):
            rows += len(blocks[j][0])
            j += 1
        offs = np.cumsum([0] + [len(b[0]) for b in blocks[i:j]])
        z = np.concatenate([b[0] for b in blocks[i:j]])
        idx = np.concatenate([b[1] + o for b, o in zip(blocks[i:j], offs)])
        w = np.concatenate([b[2] for b in blocks[i:j]])
        fn = transfer._transfer_for(rows, "two-stage single-query transfer") \
            if rows > limit else None
        t = transfer.run(z, idx, w, fn)
        out += [t[a:b] for a, b in pairwise(offs)]
        i = j
    return out
