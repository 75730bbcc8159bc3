"""Faiss indexes that follow a gallery table across writes instead of being rebuilt after each.

One index per (modality, field). An add extends it with the new rows (faiss ``add``: Flat, IVF
with its trained centroids, HNSW); a removal only renumbers its rows, and the removed ones are
left in the index and filtered out of answers (asking faiss for as many more as there are dead
rows) until they are too many, when the index is rebuilt. A search on an older snapshot than
the index filters out the rows past its end the same way. An IVF index is retrained once it
holds 4x the rows it was trained on (its lists would grow unbalanced).

Faiss may not search an index while rows are added to it: each index has a lock held for both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ssft_deploy.affinity import knn as faiss_knn
from ssft_deploy.affinity.common import unit
from ssft_deploy.gallery.table import Entries

MAX_EXTRA = 4096  # rows filtered out of answers (dead or past a snapshot) before a rebuild
RETRAIN_GROWTH = 4


class _Slot:
    def __init__(self, ix: Any, kind: str, rows: np.ndarray, n: int, gen: int) -> None:
        self.ix, self.kind, self.rows, self.n, self.gen = ix, kind, rows, n, gen
        self.trained = int(np.count_nonzero(rows >= 0))
        self.dead = 0
        self.lock = threading.Lock()


class IndexCache:
    """The indexes of one gallery; ``kind_for(rows)`` says which faiss index to build."""

    def __init__(self, kind_for: Callable[[int], str]) -> None:
        self._kind_for = kind_for
        self._lock = threading.Lock()
        self._slots: dict[tuple[int, str], _Slot] = {}
        self.gen = 0

    def reset(self) -> int:
        """Forget every index (a new table); returns the new row generation."""
        with self._lock:
            self._slots, self.gen = {}, self.gen + 1
            return self.gen

    def removed(self, keep: np.ndarray) -> int:
        """Rows ``~keep`` of the latest table were removed (the others move up); returns the new
        generation. Called by the (single) writer before publishing the new table."""
        kept = np.cumsum(keep)
        new_pos = np.where(keep, kept - 1, -1)
        with self._lock:
            self.gen += 1
            for key, s in list(self._slots.items()):
                with s.lock:
                    live = s.rows >= 0
                    rows = np.full_like(s.rows, -1)
                    rows[live] = new_pos[s.rows[live]]
                    s.dead += int(np.count_nonzero(live & (rows < 0)))
                    s.rows, s.n, s.gen = rows, int(kept[s.n - 1]) if s.n else 0, self.gen
                    if s.dead > MAX_EXTRA:
                        del self._slots[key]
            return self.gen

    def search(self, t: Entries, modality: int, field: str, q: np.ndarray, limit: int,
               params: Callable[[Any], dict[str, int]],
               keep: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Table positions [nq, limit] of ``t``'s nearest rows of ``modality`` on ``field``,
        -1 where fewer. ``keep`` (table positions -> bool) restricts the search to those rows,
        exactly, through an ``IDSelector`` on the cached index (no index built per call)."""
        key = (modality, field)
        with self._lock:
            slot = self._slots.get(key)
        if slot is None or slot.gen != t.gen:
            fresh = self._build(t, modality, field)  # outside the lock: may take seconds
            with self._lock:
                slot = self._slots.get(key)
                if t.gen == self.gen and (slot is None or slot.gen < t.gen):
                    self._slots[key] = slot = fresh
                elif slot is None or slot.gen != t.gen:  # a snapshot from before a removal
                    slot = fresh
        with slot.lock:
            n = len(t)
            if slot.n < n:
                self._extend(slot, t, modality, field)
            past = int(np.count_nonzero(slot.rows >= n))
            if past + slot.dead > MAX_EXTRA or slot.kind != self._kind_for(
                    int(np.count_nonzero((slot.rows >= 0) & (slot.rows < n)))):
                self._rebuild(slot, t, modality, field)
                past = 0
            among = None
            if keep is None:
                c = min(limit + past + slot.dead, slot.ix.ntotal)
            else:
                among = (slot.rows >= 0) & (slot.rows < n)
                among[among] = keep(slot.rows[among])
                c = min(limit, int(np.count_nonzero(among)))
            if c == 0:
                return np.full((len(q), limit), -1, np.int64)
            found = faiss_knn.search(slot.ix, q, c, among=among, **params(slot.ix))
            pos = np.where(found >= 0, slot.rows[found.clip(min=0)], -1)
        ok = (pos >= 0) & (pos < n)
        first = np.argsort(~ok, axis=1, kind="stable")[:, :limit]
        out = np.take_along_axis(np.where(ok, pos, -1), first, axis=1)
        if out.shape[1] < limit:
            out = np.pad(out, ((0, 0), (0, limit - out.shape[1])), constant_values=-1)
        return out

    def _build(self, t: Entries, modality: int, field: str) -> _Slot:
        rows = np.flatnonzero(t.cols["modality"] == modality)
        kind = self._kind_for(rows.size)
        ix = faiss_knn.build_index(unit(t.cols[field][rows]), kind) if rows.size else None
        return _Slot(ix if ix is not None else _Empty(), kind, rows, len(t), t.gen)

    def _rebuild(self, slot: _Slot, t: Entries, modality: int, field: str) -> None:
        """Rebuild ``slot`` in place from ``t`` (same generation; the caller holds its lock)."""
        fresh = self._build(t, modality, field)
        slot.ix, slot.kind, slot.rows, slot.n = fresh.ix, fresh.kind, fresh.rows, fresh.n
        slot.trained, slot.dead = fresh.trained, 0

    def _extend(self, slot: _Slot, t: Entries, modality: int, field: str) -> None:
        new = slot.n + np.flatnonzero(t.cols["modality"][slot.n:len(t)] == modality)
        live = int(np.count_nonzero(slot.rows >= 0)) + new.size
        if isinstance(slot.ix, _Empty) or (slot.kind == "ivf" and
                                           live > RETRAIN_GROWTH * max(slot.trained, 1)):
            self._rebuild(slot, t, modality, field)
        elif new.size:
            slot.ix.add(np.ascontiguousarray(unit(t.cols[field][new]), dtype=np.float32))
            slot.rows = np.concatenate([slot.rows, new])
        slot.n = len(t)


class _Empty:
    """The index of a modality with no rows yet."""

    ntotal = 0
