"""Gallery entries as columns: shared and specific vectors, modality, identity, camera, track,
entry id, timestamp (seconds) and a JSON meta value per entry.

A table is a snapshot: it never changes once made. ``append`` still costs O(rows added), not
O(table): the columns are views of buffers with spare capacity, and the new rows go past the
end of every existing view (a snapshot sees only its own rows); ``gen`` names the row positions
(the same across appends, new after a removal) for indexes that follow the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ssft_deploy.features import Features

COLUMNS = {"shared": np.float32, "specific": np.float32, "modality": np.int64, "pids": np.int64,
           "camids": np.int64, "tracks": np.int64, "ids": np.int64, "ts": np.float64}
PUBLIC = ("pids", "camids", "tracks", "ids", "ts")  # the columns ``entries`` hands out


@dataclass
class Entries:
    """Rows of a gallery (every column the same length as ``meta``)."""

    cols: dict[str, np.ndarray]
    meta: list[Any]
    gen: int = field(default=0, compare=False)
    _buf: _Buffers | None = field(default=None, repr=False, compare=False)
    _order: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, ds: int, dp: int) -> Entries:
        shapes = {"shared": (0, ds), "specific": (0, dp)}
        return cls({k: np.zeros(shapes.get(k, (0,)), t) for k, t in COLUMNS.items()}, [])

    def __len__(self) -> int:
        return len(self.meta)

    def take(self, index: np.ndarray | slice) -> Entries:
        if isinstance(index, np.ndarray) and index.dtype == bool:
            index = np.flatnonzero(index)
        meta = self.meta[index] if isinstance(index, slice) else [self.meta[i] for i in index]
        return Entries({k: v[index] for k, v in self.cols.items()}, meta)

    @classmethod
    def concat(cls, parts: Sequence[Entries]) -> Entries:
        return cls({k: np.concatenate([p.cols[k] for p in parts]) for k in COLUMNS},
                   [m for p in parts for m in p.meta])

    def order(self) -> np.ndarray:
        """Row positions sorted by entry id (computed once per snapshot)."""
        if self._order is None:
            self._order = np.argsort(self.cols["ids"], kind="stable")
        return self._order

    def append(self, new: Entries, adopt: bool = False) -> Entries:
        """This table plus ``new``'s rows (same ``gen``); amortised O(len(new)) when this is the
        latest table of its buffers. ``adopt``: an empty table may take ``new``'s arrays as they
        are (nobody else holds them; a first load then costs no copy)."""
        n, b = len(self), len(new)
        if adopt and n == 0:
            return Entries(dict(new.cols), list(new.meta), self.gen)
        buf = self._buf
        if buf is None or buf.used != n or buf.capacity < n + b:
            # 25% spare rows: amortised O(1) copies per row
            buf = _Buffers(self.cols, n, n + b + (n + b) // 4)
        for k, v in new.cols.items():
            buf.cols[k][n:n + b] = v
        buf.used = n + b
        order = None
        if self._order is not None:  # merge the new ids into the sorted order
            ids, new_order = self.cols["ids"], np.argsort(new.cols["ids"], kind="stable")
            at = np.searchsorted(ids[self._order], new.cols["ids"][new_order], side="right")
            order = np.insert(self._order, at, n + new_order)
        return Entries({k: v[:n + b] for k, v in buf.cols.items()}, self.meta + list(new.meta),
                       self.gen, buf, order)

    def features(self) -> Features:
        return Features(self.cols["shared"], self.cols["specific"], self.cols["modality"])

    def public(self) -> dict[str, np.ndarray]:
        return {k: self.cols[k] for k in PUBLIC}

    def mask(self, modalities: Iterable[int], window: tuple[float | None, float | None]
             ) -> np.ndarray:
        """Rows of the given modalities inside ``since <= ts < until``."""
        keep = np.isin(self.cols["modality"], list(modalities))
        since, until = window
        if since is not None:
            keep &= self.cols["ts"] >= since
        if until is not None:
            keep &= self.cols["ts"] < until
        return keep


class _Buffers:
    """Column buffers with spare rows; ``used`` rows are taken (by the latest table)."""

    def __init__(self, cols: dict[str, np.ndarray], used: int, capacity: int) -> None:
        self.cols = {}
        for k, v in cols.items():
            a = np.empty((capacity, *v.shape[1:]), COLUMNS[k])
            a[:used] = v[:used]
            self.cols[k] = a
        self.used, self.capacity = used, capacity
