"""The gallery: known people's features, per modality, searchable and persisted crash-safely.

File format (``ssft-gallery/1``): ``MAGIC (8 bytes) | sha256(body) (32 bytes) | body`` with
``body = header length (8 bytes, little endian) | header JSON | raw array bytes``. Arrays are read
with ``np.frombuffer`` by the dtype and shape named in the header (no pickle). ``save`` writes a
temporary file in the same folder, fsyncs it, and ``os.replace``s it over the target, so a crash
leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.features import Features, modality_code
from ssft_deploy.transfer import SSTN, RollingAuxiliary, l2_distances

FORMAT = "ssft-gallery/1"
MAGIC = b"SSFTGAL\x01"
MODES = ("shared", "single-query", "all-queries", "rolling")
_COLUMNS = {"shared": np.float32, "specific": np.float32, "pids": np.int64,
            "camids": np.int64, "tracks": np.int64, "ids": np.int64}


@dataclass
class SearchResult:
    """Ranked identities for one query: the best entry of each identity, closest first."""

    pids: np.ndarray
    distances: np.ndarray
    camids: np.ndarray
    entry_ids: np.ndarray

    def to_dict(self) -> dict[str, list]:
        return {"pids": self.pids.tolist(), "distances": self.distances.tolist(),
                "camids": self.camids.tolist(), "entry_ids": self.entry_ids.tolist()}


def _ints(name: str, x: Any, n: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 0:
        a = np.full(n, a)
    if a.shape != (n,) or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name} must be {n} integers, got shape {a.shape} dtype {a.dtype}")
    return a.astype(np.int64)


class _Store:
    """Columns of one modality (entries in insertion order)."""

    def __init__(self, ds: int, dp: int) -> None:
        self.cols = {name: np.zeros((0, ds) if name == "shared" else (0, dp) if name == "specific"
                                    else (0,), dtype) for name, dtype in _COLUMNS.items()}
        self.meta: list[Any] = []

    def __len__(self) -> int:
        return len(self.cols["ids"])

    def append(self, cols: dict[str, np.ndarray], meta: list[Any]) -> None:
        self.cols = {k: np.concatenate([self.cols[k], cols[k]]) for k in self.cols}
        self.meta = self.meta + meta

    def keep(self, mask: np.ndarray) -> None:
        self.cols = {k: v[mask] for k, v in self.cols.items()}
        self.meta = [m for m, keep in zip(self.meta, mask) if keep]


class Gallery:
    """Features of known identities, kept per modality. Thread-safe: mutations and snapshots
    hold a lock; searches run on a consistent snapshot without blocking writers for long."""

    def __init__(self, shared_dim: int | None = None, specific_dim: int | None = None) -> None:
        self._lock = threading.RLock()
        self._dims = None if shared_dim is None else (int(shared_dim), int(specific_dim or 0))
        self._stores: dict[int, _Store] = {}
        self._next_id = 0
        self._uid = uuid.uuid4().hex  # cache keys of two galleries never collide
        self._version = 0

    # -- contents -------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._stores.values())

    @property
    def dims(self) -> tuple[int, int] | None:
        return self._dims

    @property
    def version(self) -> int:
        """Bumped by every add / remove that changes the contents (caches key on it)."""
        with self._lock:
            return self._version

    def add(self, features: Features, pids: Any, camids: Any, tracks: Any = None,
            meta: Sequence[Any] | None = None) -> np.ndarray:
        """Add entries; returns their new entry ids. ``tracks``: optional int per entry (-1 when
        absent); ``meta``: optional JSON-serialisable value per entry."""
        if not isinstance(features, Features):
            raise InputError("Gallery.add expects a Features object")
        n = len(features)
        pids, camids = _ints("pids", pids, n), _ints("camids", camids, n)
        tracks = _ints("tracks", -1 if tracks is None else tracks, n)
        meta = [None] * n if meta is None else list(meta)
        if len(meta) != n:
            raise InputError(f"meta must have {n} items, got {len(meta)}")
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise InputError(f"meta must be JSON-serialisable: {exc}") from exc
        with self._lock:
            if self._dims is None:
                self._dims = features.dims
            if features.dims != self._dims:
                raise InputError(f"features of dims {features.dims} for a gallery of {self._dims}")
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            self._next_id += n
            for m in (0, 1):
                rows = features.modality == m
                if not rows.any():
                    continue
                store = self._stores.setdefault(m, _Store(*self._dims))
                store.append({"shared": features.shared[rows], "specific": features.specific[rows],
                              "pids": pids[rows], "camids": camids[rows],
                              "tracks": tracks[rows], "ids": ids[rows]},
                             [x for x, r in zip(meta, rows) if r])
            self._version += 1
            return ids

    def remove(self, pids: Any = None, camids: Any = None, entry_ids: Any = None) -> int:
        """Remove entries matching any of the given identities, cameras or entry ids; returns
        how many were removed."""
        if pids is None and camids is None and entry_ids is None:
            raise InputError("Gallery.remove needs pids, camids or entry_ids")
        sel = {name: None if v is None else np.atleast_1d(np.asarray(v, np.int64))
               for name, v in (("pids", pids), ("camids", camids), ("ids", entry_ids))}
        removed = 0
        with self._lock:
            for store in self._stores.values():
                drop = np.zeros(len(store), bool)
                for name, values in sel.items():
                    if values is not None:
                        drop |= np.isin(store.cols[name], values)
                removed += int(drop.sum())
                store.keep(~drop)
            self._version += bool(removed)
        return removed

    def entries(self, modality: int | str | None = None) -> tuple[Features, dict[str, np.ndarray]]:
        """A consistent snapshot: Features and columns (pids, camids, tracks, ids) of one modality
        or of all (RGB entries first)."""
        feats, cols, _ = self._snapshot(modality)
        return feats, cols

    def _snapshot(self, modality: int | str | None
                  ) -> tuple[Features, dict[str, np.ndarray], tuple[str, int, int | None]]:
        """entries() plus the cache key of that snapshot (gallery, version, modality)."""
        with self._lock:
            key = (self._uid, self._version, None if modality is None else modality_code(modality))
            ms = (0, 1) if modality is None else (modality_code(modality),)
            stores = [(m, self._stores[m]) for m in ms if m in self._stores]
            if self._dims is None:
                raise GalleryError("the gallery is empty")
            if not stores:
                return Features.empty(*self._dims), {k: np.zeros(0, np.int64) for k in
                                                     ("pids", "camids", "tracks", "ids")}, key
            cat = {k: np.concatenate([s.cols[k] for _, s in stores]) for k in _COLUMNS}
            mod = np.concatenate([np.full(len(s), m, np.int64) for m, s in stores])
        feats = Features(cat.pop("shared"), cat.pop("specific"), mod)
        return feats, cat, key

    def meta(self, entry_ids: Any) -> list[Any]:
        """The meta values of the given entry ids (None where absent)."""
        with self._lock:
            table = {int(i): m for s in self._stores.values()
                     for i, m in zip(s.cols["ids"], s.meta)}
        return [table.get(int(i)) for i in np.atleast_1d(entry_ids)]

    # -- search ---------------------------------------------------------------------------------
    def search(self, query: Features, top: int = 10, transfer: SSTN | None = None,
               mode: str = "shared", auxiliary: RollingAuxiliary | Features | None = None,
               cross_modality: bool = True) -> list[SearchResult]:
        """Ranked identities for each query. ``mode``: "shared" (shared features only, no
        transfer), "single-query" (Eq. 22), "all-queries" (the queries, plus ``auxiliary`` if
        given, are the auxiliary set) or "rolling" (``auxiliary`` is a RollingAuxiliary: its
        snapshot is the auxiliary set, then the queries are added to it). With
        ``cross_modality`` a query searches the other modality's entries only."""
        if mode not in MODES:
            raise InputError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
        if mode != "shared" and transfer is None:
            raise InputError(f"search mode {mode!r} needs a transfer stage (an SSTN)")
        if mode == "rolling" and not isinstance(auxiliary, RollingAuxiliary):
            raise InputError("search mode 'rolling' needs auxiliary=RollingAuxiliary(...)")
        if not isinstance(query, Features):
            raise InputError("Gallery.search expects a Features object")
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise InputError(f"top must be a positive integer, got {top!r}")
        aux = auxiliary.snapshot() if isinstance(auxiliary, RollingAuxiliary) else auxiliary
        results: list[SearchResult | None] = [None] * len(query)
        groups = [(m, np.flatnonzero(query.modality == m)) for m in (0, 1)] if cross_modality \
            else [(None, np.arange(len(query)))]
        for m, rows in groups:
            if rows.size == 0:
                continue
            feats, cols, key = self._snapshot(None if m is None else 1 - m)
            q = query.take(rows)
            if len(feats) == 0:
                dist = np.zeros((len(q), 0), np.float32)
            elif mode == "shared":
                dist = l2_distances(q.shared, feats.shared)
            elif mode == "single-query":
                dist = transfer.single_query_distances(q, feats, cache_key=key)
            else:
                dist = transfer.auxiliary_distances(q, feats, aux)
            for r, d in zip(rows, dist):
                results[r] = _rank(d, cols, top)
        if mode == "rolling":
            auxiliary.add(query)
        return results  # type: ignore[return-value]

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file, fsync, os.replace) with a sha256 checksum."""
        path = Path(path)
        with self._lock:
            arrays, specs, offset = [], [], 0
            for m, store in sorted(self._stores.items()):
                for name in _COLUMNS:
                    a = np.ascontiguousarray(store.cols[name])
                    specs.append({"modality": m, "name": name, "dtype": a.dtype.str,
                                  "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes})
                    arrays.append(a)
                    offset += a.nbytes
            header = json.dumps({"format": FORMAT, "dims": self._dims, "next_id": self._next_id,
                                 "arrays": specs, "meta": {str(m): s.meta for m, s in
                                                           self._stores.items()}}).encode()
        digest = hashlib.sha256()
        head = len(header).to_bytes(8, "little") + header
        digest.update(head)
        arrays = [a.reshape(-1).view(np.uint8) for a in arrays]  # flat bytes, empty ones too
        for a in arrays:
            digest.update(a)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + digest.digest() + head)
                for a in arrays:
                    f.write(a)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Gallery:
        """Read a gallery written by ``save``. A missing, foreign, truncated or corrupt file
        raises GalleryError (never an empty gallery)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise GalleryError(f"cannot read gallery {path}: {exc}") from exc
        if data[:len(MAGIC)] != MAGIC:
            raise GalleryError(f"{path} is not an ssft-deploy gallery file ({FORMAT})")
        body = memoryview(data)[len(MAGIC) + 32:]
        if len(data) < len(MAGIC) + 40 or hashlib.sha256(body).digest() != \
                data[len(MAGIC):len(MAGIC) + 32]:
            raise GalleryError(f"gallery {path} is truncated or corrupt (checksum mismatch)")
        try:
            n_head = int.from_bytes(body[:8], "little")
            header = json.loads(bytes(body[8:8 + n_head]))
            payload = body[8 + n_head:]
            if header.get("format") != FORMAT:
                raise GalleryError(f"gallery {path} has format {header.get('format')!r}, "
                                   f"expected {FORMAT!r}")
            gallery = cls(*header["dims"]) if header["dims"] else cls()
            gallery._next_id = int(header["next_id"])
            for spec in header["arrays"]:
                m, name = int(spec["modality"]), spec["name"]
                dtype = np.dtype(spec["dtype"])
                if name not in _COLUMNS or dtype != np.dtype(_COLUMNS[name]) or m not in (0, 1):
                    raise GalleryError(f"gallery {path} holds an unexpected array {spec}")
                end = spec["offset"] + spec["nbytes"]
                if end > len(payload):
                    raise GalleryError(f"gallery {path} is truncated")
                a = np.frombuffer(payload[spec["offset"]:end], dtype).reshape(spec["shape"])
                store = gallery._stores.setdefault(m, _Store(*gallery._dims))
                store.cols[name] = a.copy()
            for m, store in gallery._stores.items():
                store.meta = list(header["meta"][str(m)])
                if len({len(v) for v in store.cols.values()} | {len(store.meta)}) != 1:
                    raise GalleryError(f"gallery {path} has columns of different lengths")
        except GalleryError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise GalleryError(f"gallery {path} has a malformed header: {exc}") from exc
        return gallery


def _rank(dist: np.ndarray, cols: dict[str, np.ndarray], top: int) -> SearchResult:
    """Identities by their closest entry (stable: equal distances keep entry order)."""
    order = np.argsort(dist, kind="stable")
    _, first = np.unique(cols["pids"][order], return_index=True)
    best = order[np.sort(first)][:top]
    return SearchResult(cols["pids"][best], dist[best].astype(np.float32), cols["camids"][best],
                        cols["ids"][best])
