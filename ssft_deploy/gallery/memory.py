"""The in-process store: columns in numpy, faiss for k-NN, persisted to one checksummed file.

Thread-safe: mutations and snapshots hold a lock; searches run on a consistent snapshot. Faiss
indexes (exact ``flat``; ``ivf`` beyond ``IVF_MIN_ROWS`` rows with ``index="auto"``) are built
lazily per (version, modality, field), over its rows in time order, and reused until the next
write; a time window is one id range of that index (a faiss ``IDSelector``), searched exactly.

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

from ssft_deploy.affinity import knn as faiss_knn
from ssft_deploy.affinity.common import unit
from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.gallery import fileio
from ssft_deploy.gallery.base import SHORTLIST_PROBE_FRACTION, GalleryStore, Window
from ssft_deploy.gallery.binding import GalleryBinding
from ssft_deploy.gallery.table import COLUMNS, Entries

FORMAT = "ssft-gallery/2"
OLD_FORMAT = "ssft-gallery/1"  # per-modality arrays, no binding, no timestamps (still readable)
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
        self._aux: dict[Hashable, Any] = {}  # per-version faiss indexes and id lookups
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

    def _replace(self, table: Entries) -> None:
        self._t, self._ver, self._aux = table, self._ver + 1, {}

    def _write(self, entries: Entries, assign_ids: bool) -> np.ndarray:
        with self._lock:
            t = self._table()
            if assign_ids:
                entries.cols["ids"] = np.arange(self._next_id, self._next_id + len(entries),
                                                dtype=np.int64)
            if len(entries):
                self._next_id = max(self._next_id, int(entries.cols["ids"].max()) + 1)
            keep = ~np.isin(t.cols["ids"], entries.cols["ids"])  # idempotent by entry id
            self._replace(Entries.concat([t.take(keep), entries]))
            return entries.cols["ids"].copy()

    def _delete(self, sel: dict[str, np.ndarray]) -> int:
        with self._lock:
            t = self._table()
            drop = np.zeros(len(t), bool)
            for name, values in sel.items():
                drop |= np.isin(t.cols[name], values)
            if drop.any():
                self._replace(t.take(~drop))
            return int(drop.sum())

    def _select(self, modalities: tuple[int, ...], window: Window) -> tuple[Entries, Hashable]:
        t, ver = self._view()
        return t.take(t.mask(modalities, window)), (self._uid, ver, modalities, window)

    def _cached(self, key: Hashable, ver: int, make: Any) -> Any:
        """A per-version derived object (index, id order), kept while ``ver`` is current."""
        with self._lock:
            obj = self._aux.get((ver, key))
        if obj is None:
            obj = make()
            with self._lock:
                if self._ver == ver:
                    self._aux[(ver, key)] = obj
        return obj

    def _fetch(self, ids: np.ndarray) -> Entries:
        t, ver = self._view()
        order = self._cached("order", ver, lambda: np.argsort(t.cols["ids"], kind="stable"))
        pos = np.searchsorted(t.cols["ids"], ids, sorter=order)
        pos = order[pos.clip(max=max(len(order) - 1, 0))] if len(order) else pos
        hit = (t.cols["ids"][pos] == ids) if len(order) else np.zeros(len(ids), bool)
        return t.take(pos[hit])

    def _knn(self, q: np.ndarray, field: str, modality: int, window: Window, limit: int,
             shortlist: bool = False) -> np.ndarray:
        t, ver = self._view()
        ix, rows, ts = self._faiss_index(t, ver, modality, field)
        # index rows are in time order, so a window is one id range of the cached index
        lo, hi = 0, rows.size
        if window[0] is not None:
            lo = int(np.searchsorted(ts, window[0], "left"))
        if window[1] is not None:
            hi = max(lo, int(np.searchsorted(ts, window[1], "left")))
        out = np.full((len(q), limit), -1, np.int64)
        if hi == lo:
            return out
        among = None if (lo, hi) == (0, rows.size) else (lo, hi)
        found = faiss_knn.search(ix, q, min(limit, hi - lo), among=among,
                                 **self._search_params(ix, limit, shortlist))
        out[:, :found.shape[1]] = np.where(found >= 0, t.cols["ids"][rows][found.clip(min=0)],
                                           -1)
        return out

    def _search_params(self, ix: Any, limit: int, shortlist: bool) -> dict[str, int]:
        if not shortlist:
            return {"nprobe": self.nprobe, "ef_search": self.ef_search}
        nlist = getattr(ix, "nlist", 1)
        return {"nprobe": self.shortlist_nprobe or max(
                    self.nprobe, int(np.ceil(SHORTLIST_PROBE_FRACTION * nlist))),
                "ef_search": self.shortlist_ef_search or max(self.ef_search, 8 * limit)}

    def _faiss_index(self, t: Entries, ver: int, modality: int, field: str
                     ) -> tuple[Any, np.ndarray, np.ndarray]:
        """The cached index of one (modality, field), its table rows and their timestamps, in
        time order (search settings travel with each call: ``faiss_knn.search``)."""
        def make() -> tuple[Any, np.ndarray, np.ndarray]:
            rows = np.flatnonzero(t.cols["modality"] == modality)
            rows = rows[np.argsort(t.cols["ts"][rows], kind="stable")]
            kind = self.index
            if kind == "auto":
                kind = "ivf" if rows.size >= IVF_MIN_ROWS else "flat"
            ix = faiss_knn.build_index(unit(t.cols[field][rows]), kind) if rows.size else None
            return ix, rows, t.cols["ts"][rows]

        return self._cached(("index", modality, field), ver, make)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write atomically and durably (see ``fileio``), with the bundle binding; GalleryError
        for a folder, device, missing parent or unwritable target."""
        with self._lock:
            header, arrays = self._serialise()
        fileio.write(path, header, arrays)

    def _serialise(self) -> tuple[dict[str, Any], list[np.ndarray]]:
        t = self._table() if self._binding is not None else None
        specs, arrays, offset = [], [], 0
        for name in COLUMNS if t is not None else ():
            a = np.ascontiguousarray(t.cols[name])
            specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape),
                          "offset": offset, "nbytes": a.nbytes})
            arrays.append(a)
            offset += a.nbytes
        header = {"format": FORMAT, "next_id": self._next_id, "arrays": specs,
                  "binding": None if self._binding is None else self._binding.to_dict(),
                  "meta": [] if t is None else t.meta}
        return header, arrays

    @classmethod
    def load(cls, path: str | os.PathLike, binding: GalleryBinding | None = None,
             **options: Any) -> Gallery:
        """Read a gallery written by ``save``; with ``binding`` (a bundle's), refuse one built
        by another bundle. A missing, foreign, truncated or corrupt file raises GalleryError."""
        gallery = cls(uri=str(path), **options)
        gallery._load(Path(path))
        if binding is not None:
            gallery.bind(binding)
        return gallery

    def _load(self, path: Path) -> os.stat_result:
        header, payload, st = fileio.read(path)
        try:
            fmt = header.get("format")
            if fmt == OLD_FORMAT:
                binding, table = _read_v1(path, header, payload)
            elif fmt == FORMAT:
                binding = None if header["binding"] is None else GalleryBinding.from_dict(
                    header["binding"], f"gallery {path}")
                cols = {s["name"]: fileio.array(path, payload, s, np.dtype(COLUMNS[s["name"]]))
                        for s in header["arrays"] if s["name"] in COLUMNS}
                table = None if binding is None else Entries(cols, list(header["meta"]))
                if table is not None and set(cols) != set(COLUMNS):
                    raise GalleryError(f"gallery {path} lacks columns "
                                       f"{sorted(set(COLUMNS) - set(cols))}")
            else:
                raise GalleryError(f"gallery {path} has format {fmt!r}, expected {FORMAT!r}")
            if table is not None and len({len(v) for v in table.cols.values()} |
                                         {len(table.meta)}) != 1:
                raise GalleryError(f"gallery {path} has columns of different lengths")
            next_id = int(header["next_id"])
        except GalleryError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise GalleryError(f"gallery {path} has a malformed header: {exc}") from exc
        with self._lock:
            self._binding = binding if binding is not None else self._binding
            self._next_id = next_id
            if table is not None:
                self._replace(table)
        return st


def _read_v1(path: Path, header: dict, payload: memoryview
             ) -> tuple[GalleryBinding | None, Entries | None]:
    """A ``ssft-gallery/1`` file (per-modality arrays) as one table with timestamps 0."""
    if not header["dims"]:
        return None, None
    binding = GalleryBinding(*(int(v) for v in header["dims"]))
    parts = []
    for m in (0, 1):
        specs = {s["name"]: s for s in header["arrays"] if int(s["modality"]) == m}
        if not specs:
            continue
        cols = {n: fileio.array(path, payload, specs[n], np.dtype(COLUMNS[n]))
                for n in ("shared", "specific", "pids", "camids", "tracks", "ids")}
        n = len(cols["ids"])
        cols.update(modality=np.full(n, m, np.int64), ts=np.zeros(n))
        parts.append(Entries(cols, list(header["meta"][str(m)])))
    return binding, Entries.concat(parts) if parts else Entries.empty(*binding.dims)
