"""What a gallery file's records hold, both ways: writes as records, records as checked writes.

Record kinds: ``base`` (the whole table: binding, next entry id, every column, meta), ``add``
(an upsert by entry id), ``remove`` (entry ids) and ``bind`` (the binding, once a model hash is
recorded). Everything read is validated like an ``add`` argument (entry ids, identities, dims,
next id) before it reaches the table: a crafted or damaged file is a GalleryError at open, not a
raw error at the next search or add. Format 1/2 files (one body) read as one ``base``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssft_deploy.errors import GalleryError
from ssft_deploy.gallery import fileio
from ssft_deploy.gallery.binding import GalleryBinding
from ssft_deploy.gallery.ids import MAX_ENTRY_ID, UNKNOWN
from ssft_deploy.gallery.table import COLUMNS, Entries

FORMAT = "ssft-gallery/3"
LEGACY = ("ssft-gallery/1", "ssft-gallery/2")  # format 1/2 files, still read


@dataclass
class Op:
    """One write: ``kind`` with its table / entries / ids / binding and the next entry id."""

    kind: str
    next_id: int = 0
    entries: Entries | None = None  # base: the table (None: no binding yet); add: the rows
    ids: np.ndarray | None = None    # remove
    binding: GalleryBinding | None = None  # base, bind
    owned: bool = False  # the arrays are the gallery's own (read from a file), not a caller's


def encode(op: Op) -> list[Any]:
    """The record pieces of ``op`` (see ``fileio.record``)."""
    header: dict[str, Any] = {"kind": op.kind, "next_id": op.next_id}
    arrays: list[np.ndarray] = []
    if op.kind in ("base", "bind"):
        header["binding"] = None if op.binding is None else op.binding.to_dict()
    if op.kind == "base":
        header["format"] = FORMAT
    if op.entries is not None:
        header["names"] = list(COLUMNS)
        header["meta"] = op.entries.meta
        arrays = [op.entries.cols[k] for k in COLUMNS]
    if op.kind == "remove":
        header["names"], arrays = ["ids"], [op.ids]
    return fileio.record(header, arrays)


def decode(path: Path, header: dict[str, Any], payload: memoryview,
           binding: GalleryBinding | None) -> Op:
    """The checked write a record holds; ``binding``: the gallery's so far (None before the
    base record, or when it recorded none)."""
    try:
        kind = header["kind"]
        next_id = _next_id(path, header["next_id"])
        if kind == "base" and header.get("format") != FORMAT:
            raise GalleryError(f"gallery {path} has format {header.get('format')!r}, expected "
                               f"{FORMAT!r} (a newer ssft-deploy wrote it? upgrade)")
        if kind in ("base", "bind"):
            binding = None if header["binding"] is None else GalleryBinding.from_dict(
                header["binding"], f"gallery {path}")
            if kind == "bind":
                return Op("bind", next_id, binding=binding)
        specs = {s["name"]: s for s in header["arrays"]}
        if kind == "remove":
            return Op("remove", next_id, ids=fileio.array(path, payload, specs["ids"],
                                                          np.dtype(np.int64)))
        if kind not in ("base", "add"):
            raise GalleryError(f"gallery {path} holds a record of unknown kind {kind!r} "
                               "(written by a newer ssft-deploy? upgrade)")
        if binding is None:
            if kind == "add" or specs:
                raise GalleryError(f"gallery {path} holds entries but no feature dims")
            return Op("base", next_id, None, binding=None)
        if set(specs) != set(COLUMNS):
            raise GalleryError(f"gallery {path} lacks columns {sorted(set(COLUMNS) - set(specs))}")
        cols = {k: fileio.array(path, payload, specs[k], np.dtype(t)) for k, t in COLUMNS.items()}
        entries = checked(path, Entries(cols, list(header["meta"])), binding)
        return Op(kind, max(next_id, _after(entries)), entries, binding=binding, owned=True)
    except GalleryError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GalleryError(f"gallery {path} has a malformed header: {exc}") from exc


def _next_id(path: Path, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_ENTRY_ID:
        raise GalleryError(f"gallery {path} records next entry id {v!r}, outside [0, 2**62]")
    return v


def _after(e: Entries) -> int:
    return int(e.cols["ids"].max()) + 1 if len(e) else 0


def checked(path: Path, e: Entries, binding: GalleryBinding) -> Entries:
    """``e`` if its columns agree with each other and with ``binding`` and its values are what
    ``add`` accepts, else GalleryError naming the problem."""
    n = len(e.meta)
    ds, dp = binding.dims
    c = e.cols
    if c["shared"].shape != (n, ds) or c["specific"].shape != (n, dp):
        raise GalleryError(f"gallery {path} records dims {binding.dims} but stores vectors of "
                           f"{c['shared'].shape[1:]} / {c['specific'].shape[1:]} for {n} "
                           "entries: the file is damaged or crafted")
    if any(c[k].shape != (n,) for k in COLUMNS if k not in ("shared", "specific")):
        raise GalleryError(f"gallery {path} has columns of different lengths")
    if n and (c["ids"].min() < 0 or c["ids"].max() >= MAX_ENTRY_ID):
        raise GalleryError(f"gallery {path} holds entry ids outside [0, 2**62)")
    if len(np.unique(c["ids"])) != n:
        raise GalleryError(f"gallery {path} holds repeated entry ids")
    if n and c["pids"].min() < UNKNOWN:
        raise GalleryError(f"gallery {path} holds identities below {UNKNOWN} "
                           f"({int(c['pids'].min())})")
    if not np.isin(c["modality"], (0, 1)).all() or not np.isfinite(c["ts"]).all() or \
            not (np.isfinite(c["shared"]).all() and np.isfinite(c["specific"]).all()):
        raise GalleryError(f"gallery {path} holds modalities other than 0/1 or non-finite values")
    return e


def legacy(path: Path, header: dict[str, Any], payload: memoryview) -> Op:
    """The one body of a format 1/2 file as a ``base`` write."""
    try:
        fmt = header.get("format")
        if fmt == LEGACY[0]:
            binding, table = _read_v1(path, header, payload)
        elif fmt == LEGACY[1]:
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
        next_id = _next_id(path, header["next_id"])
    except GalleryError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GalleryError(f"gallery {path} has a malformed header: {exc}") from exc
    if table is not None:
        table = checked(path, table, binding)
        next_id = max(next_id, _after(table))
    return Op("base", next_id, table, binding=binding)


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
