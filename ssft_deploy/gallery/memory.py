"""The in-process store: columns in numpy, faiss for k-NN, persisted to one checksummed file.

Thread-safe: mutations and snapshots hold a lock; searches run on a consistent snapshot. Faiss
indexes (exact ``flat``; ``ivf`` beyond ``IVF_MIN_ROWS`` rows with ``index="auto"``) are built
lazily per (modality, field) and follow the table across writes (``indexes.IndexCache``); a time
window is a faiss ``IDSelector`` over the same index, searched exactly.

One index serves two kinds of search with their own settings: the Eq. 6 neighbour lists of
gallery entries (k + slack nearest entries, ``nprobe`` / ``ef_search``) and two-stage search's
stage one (a query's M nearest, ``shortlist_nprobe`` / ``shortlist_ef_search``). They differ
because gallery entries search among their own kind, while a query comes from another modality
and camera: IVF's cells, trained on the gallery, say little about where a query's true
neighbours lie, so stage one probes half the lists by default (``SHORTLIST_PROBE_FRACTION``;
``benchmarks/gallery_scale.py --sweep`` measures recall against latency). The settings go
with each search call (``affinity.knn.search``), never onto the shared index, so concurrent
searches of either kind never see each other's.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.gallery import fileio
from ssft_deploy.gallery.base import SHORTLIST_PROBE_FRACTION, GalleryStore, Window
from ssft_deploy.gallery.binding import GalleryBinding
from ssft_deploy.gallery.ids import MAX_ENTRY_ID
from ssft_deploy.gallery.indexes import IndexCache
from ssft_deploy.gallery.records import Op, decode, encode, legacy
from ssft_deploy.gallery.table import Entries

INDEXES = ("auto", "flat", "ivf", "hnsw")
IVF_MIN_ROWS = 50_000


class Gallery(GalleryStore):
    """Features of known identities in this process. ``Gallery(shared_dim, specific_dim,
    model_hash)``; dims are taken from the first ``add`` when not given."""

    def __init__(self, shared_dim: int | None = None, specific_dim: int | None = None,
                 model_hash: str | None = None, *, index: str = "auto", nprobe: int = 16,
                 ef_search: int = 64, shortlist_nprobe: int | None = None,
                 shortlist_ef_search: int | None = None, uri: str = "memory") -> None:
        if index not in INDEXES:
            raise InputError(f"unknown gallery index {index!r}: use one of {', '.join(INDEXES)}")
        binding = None if shared_dim is None else GalleryBinding(
            int(shared_dim), int(specific_dim or 0), model_hash)
        super().__init__(binding, uri)
        self._lock = threading.RLock()
        self._t: Entries | None = None if binding is None else Entries.empty(*binding.dims)
        self._next_id = 0
        self._uid = uuid.uuid4().hex  # cache keys of two galleries never collide
        self._ver = 0
        for name, v in (("nprobe", nprobe), ("ef_search", ef_search),
                        ("shortlist_nprobe", shortlist_nprobe),
                        ("shortlist_ef_search", shortlist_ef_search)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                  or v < 1):
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        self.index, self.nprobe, self.ef_search = index, int(nprobe), int(ef_search)
        self.shortlist_nprobe, self.shortlist_ef_search = shortlist_nprobe, shortlist_ef_search
        self._indexes = IndexCache(self.kind_for)  # faiss indexes, kept across writes
        self._records = self._dead = 0  # records since the file's base, rows dropped since
        self._pin = threading.local()  # a search's own snapshot (see _pinned)

    # -- primitives ------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return 0 if self._t is None else len(self._t)

    def _version(self) -> Hashable:
        return self._uid, self._view()[1]

    def _table(self) -> Entries:
        if self._t is None:
            self._t = Entries.empty(*self._binding.dims)
        return self._t

    def _view(self) -> tuple[Entries, int]:
        """The table and version a read sees: the search's pinned snapshot, else the current."""
        pinned = getattr(self._pin, "view", None)
        if pinned is not None:
            return pinned
        with self._lock:
            return self._table(), self._ver

    @contextmanager
    def _pinned(self) -> Iterator[None]:
        """Every read of one search sees the same snapshot, whatever writers do meanwhile."""
        if getattr(self._pin, "view", None) is not None or self._binding is None:
            yield
            return
        with self._lock:
            self._pin.view = (self._table(), self._ver)
        try:
            yield
        finally:
            self._pin.view = None

    # -- writes: every change is an Op, applied here (and first appended to a file by the local
    # store), so a file's records replay into exactly the table its writer had -------------------
    def _write(self, entries: Entries, assign_ids: bool) -> np.ndarray:
        with self._lock:
            self._table()
            if assign_ids:
                if self._next_id + len(entries) > MAX_ENTRY_ID:
                    raise GalleryError(f"gallery {self.uri} has used up its automatic entry ids "
                                       "(the next one would pass 2**62): pass entry_ids")
                entries.cols["ids"] = np.arange(self._next_id, self._next_id + len(entries),
                                                dtype=np.int64)
            next_id = max(self._next_id, int(entries.cols["ids"].max()) + 1) if len(entries) \
                else self._next_id
            self._commit(Op("add", next_id, entries))
            return entries.cols["ids"].copy()

    def _delete(self, sel: dict[str, np.ndarray]) -> int:
        with self._lock:
            t = self._table()
            drop = np.zeros(len(t), bool)
            for name, values in sel.items():
                drop |= np.isin(t.cols[name], values)
            if drop.any():
                self._commit(Op("remove", self._next_id, ids=t.cols["ids"][drop]))
            return int(drop.sum())

    def _commit(self, op: Op) -> None:
        """Make ``op`` durable (nothing to do in memory), then apply it."""
        self._apply(op)

    def _apply(self, op: Op) -> None:
        """Apply one write (the caller holds ``_lock``)."""
        if op.kind in ("base", "bind"):
            self._binding = op.binding if op.binding is not None else self._binding
        if op.kind == "base":
            self._records, self._dead = 1, 0
            if op.entries is not None:
                t = op.entries
                self._publish(Entries(t.cols, t.meta, self._indexes.reset()))
        elif op.kind == "add":
            t = self._table()
            new = op.entries
            ids = new.cols["ids"]
            order = t.order()
            at = np.searchsorted(t.cols["ids"], ids, sorter=order).clip(max=max(len(t) - 1, 0))
            old = order[at][t.cols["ids"][order[at]] == ids] if len(t) else order[:0]
            if old.size:  # replaced entries: removed first (rows move up)
                keep = np.ones(len(t), bool)
                keep[old] = False
                t = t.take(keep)
                t.gen, self._dead = self._indexes.removed(keep), self._dead + old.size
            self._publish(t.append(new, adopt=op.owned))
        elif op.kind == "remove":
            t = self._table()
            keep = ~np.isin(t.cols["ids"], op.ids)
            if not keep.all():
                gen = self._indexes.removed(keep)
                t = t.take(keep)
                t.gen, self._dead = gen, self._dead + int((~keep).sum())
                self._publish(t)
        self._next_id = max(self._next_id, op.next_id)
        self._records += op.kind != "base"

    def _publish(self, table: Entries) -> None:
        self._t, self._ver = table, self._ver + 1

    def _select(self, modalities: tuple[int, ...], window: Window) -> tuple[Entries, Hashable]:
        t, ver = self._view()
        return t.take(t.mask(modalities, window)), (self._uid, ver, modalities, window)

    def _fetch(self, ids: np.ndarray) -> Entries:
        t, _ = self._view()
        order = t.order()
        pos = np.searchsorted(t.cols["ids"], ids, sorter=order)
        pos = order[pos.clip(max=max(len(order) - 1, 0))] if len(order) else pos
        hit = (t.cols["ids"][pos] == ids) if len(order) else np.zeros(len(ids), bool)
        return t.take(pos[hit])

    def _knn(self, q: np.ndarray, field: str, modality: int, window: Window, limit: int,
             shortlist: bool = False) -> np.ndarray:
        t, _ = self._view()
        since, until = window
        keep = None
        if window != (None, None):  # a window is an IDSelector over the same cached index
            def keep(pos: np.ndarray) -> np.ndarray:
                ts = t.cols["ts"][pos]
                return ((ts >= since) if since is not None else True) & \
                    ((ts < until) if until is not None else True)
        pos = self._indexes.search(t, modality, field, q, limit,
                                   lambda ix: self._search_params(ix, limit, shortlist), keep)
        return np.where(pos >= 0, t.cols["ids"][pos.clip(min=0)], -1)

    def _search_params(self, ix: Any, limit: int, shortlist: bool) -> dict[str, int]:
        if not shortlist:
            return {"nprobe": self.nprobe, "ef_search": self.ef_search}
        nlist = getattr(ix, "nlist", 1)
        return {"nprobe": self.shortlist_nprobe or max(
                    self.nprobe, int(np.ceil(SHORTLIST_PROBE_FRACTION * nlist))),
                "ef_search": self.shortlist_ef_search or max(self.ef_search, 8 * limit)}

    # -- persistence -----------------------------------------------------------------------------
    def kind_for(self, rows: int) -> str:
        """The faiss index for a modality block of ``rows`` entries."""
        if self.index != "auto":
            return self.index
        return "ivf" if rows >= IVF_MIN_ROWS else "flat"

    def compact(self) -> None:
        """Rewrite the gallery's file as one snapshot (the local store; nothing to do here)."""

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically and durably (see ``fileio``), with the bundle binding; GalleryError
        for a folder, device, missing parent or unwritable target."""
        with self._lock:
            pieces = encode(self._snapshot())
        fileio.write(path, pieces)

    def _snapshot(self) -> Op:
        t = None if self._binding is None else self._table()
        return Op("base", self._next_id, t, binding=self._binding)

    @classmethod
    def load(cls, path: str | os.PathLike, binding: GalleryBinding | None = None,
             **options: Any) -> Gallery:
        """Read a gallery written by ``save`` (or a local store's file); with ``binding`` (a
        bundle's), refuse one built by another bundle. A missing, foreign, truncated or corrupt
        file raises GalleryError."""
        gallery = cls(uri=str(path), **options)
        fh, _ = fileio.open_read(Path(path))
        with fh, gallery._lock:
            gallery._read_log(Path(path), fh, 0, None)
        if binding is not None:
            gallery.bind(binding)
        return gallery

    def _read_log(self, path: Path, fh: Any, start: int, end: int | None) -> tuple[int, bool]:
        """Apply the whole records of ``fh`` from ``start`` (0: the whole file, from its base)
        to ``end`` (None: its end); returns (end of the last one applied, legacy format)."""
        if end is None:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
        if fileio.kind(fh, path) == 1:
            if start:
                raise GalleryError(f"gallery {path} was replaced by an older ssft-deploy")
            self._apply(legacy(path, *fileio.read_v1(fh, path)))
            return end, True
        first = start < len(fileio.MAGIC)
        pos = len(fileio.MAGIC) if first else start
        for header, payload, stop in fileio.records(fh, path, pos, end):
            op = decode(path, header, payload, self._binding if not first else None)
            if first != (op.kind == "base"):
                raise GalleryError(f"gallery {path} is corrupt (a base record out of place)")
            self._apply(op)
            first, pos = False, stop
        if first:
            raise GalleryError(f"gallery {path} is truncated or corrupt (no whole first record)")
        return pos, False
