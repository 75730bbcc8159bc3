"""The Milvus store: Milvus Lite (``milvus:PATH.db``, embedded, one process) or a Milvus
standalone / distributed server (``http(s)://host:19530``), through the same pymilvus client.

One collection per gallery: ``id`` (primary key), ``shared`` and ``specific`` vector fields
(COSINE), ``modality``, ``pid`` (-1 unknown), ``camid``, ``track``, ``ts`` and ``meta`` (JSON).
The collection's properties record the bundle binding (refused when another bundle's) and a
version token renewed after every write (the searchers' caches key on it). Writes are upserts by
entry id (idempotent) in one request per batch, which Milvus applies entirely or not at all;
a row is written whole, so a search never sees half an entry.

A search that follows this client's own writes first flushes them (``flush``: the rows leave
the growing segment, which Milvus Lite searches by a slow brute-force path, for sealed, indexed
segments); at 10k entries that made each search request 4-6x faster here (docs/galleries.md).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np

from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.gallery.base import SHORTLIST_PROBE_FRACTION, GalleryStore, Window
from ssft_deploy.gallery.binding import GalleryBinding
from ssft_deploy.gallery.rwlock import ReadWriteLock
from ssft_deploy.gallery.table import Entries

FORMAT = "ssft-milvus/1"
INDEXES = {"flat": ("FLAT", {}), "ivf": ("IVF_FLAT", {"nlist": 1024}),
           "hnsw": ("HNSW", {"M": 16, "efConstruction": 128}), "auto": ("AUTOINDEX", {})}
FIELDS = {"pids": "pid", "camids": "camid", "tracks": "track", "ids": "id", "ts": "ts",
          "modality": "modality", "shared": "shared", "specific": "specific"}
CHUNK = 1024          # queries / ids per request
MAX_BATCH_BYTES = 48 << 20  # one upsert request stays under gRPC's 64 MiB message limit


def connect(uri: str, token: str | None, timeout_s: float) -> Any:
    """A MilvusClient, retried with exponential backoff for at most ``timeout_s`` seconds;
    GalleryError naming the URI when it cannot be reached."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise GalleryError("a Milvus gallery needs pymilvus: pip install 'pymilvus[milvus-lite]'"
                           ) from exc
    start, delay, tries = time.monotonic(), 0.25, 0
    while True:
        tries += 1
        try:
            client = MilvusClient(uri=uri, token=token or "", timeout=max(1.0, timeout_s / 4))
            client.list_collections()
            return client
        except Exception as exc:
            left = timeout_s - (time.monotonic() - start)
            if left <= delay:
                raise GalleryError(f"cannot reach Milvus at {uri} after {tries} tries in "
                                   f"{time.monotonic() - start:.1f} s: {exc}; check the address, "
                                   "the token and that the server is running") from exc
            time.sleep(delay)
            delay = min(delay * 2, 4.0)


class MilvusGallery(GalleryStore):
    """A gallery in a Milvus collection (see the module docstring)."""

    def __init__(self, uri: str, binding: GalleryBinding, *, client_uri: str | None = None,
                 collection: str = "ssft_gallery", token: str | None = None,
                 index: str = "flat", nprobe: int = 16, shortlist_nprobe: int | None = None,
                 timeout_s: float = 10.0) -> None:
        if index not in INDEXES:
            raise InputError(f"unknown Milvus index {index!r}: use one of {', '.join(INDEXES)}")
        super().__init__(binding, uri)
        self.collection, self.nprobe = collection, int(nprobe)
        self._unflushed = False
        self._search = threading.local()  # rows fetched by this thread's current search
        self._rw = ReadWriteLock()  # searches share it, writes through this object exclude
        self.shortlist_nprobe = shortlist_nprobe or max(self.nprobe, int(np.ceil(
            SHORTLIST_PROBE_FRACTION * INDEXES["ivf"][1]["nlist"])))
        self._client = connect(client_uri or uri, token, timeout_s)
        try:
            if self._client.has_collection(collection):
                self._check_collection()
            else:
                self._create(index)
            self._client.load_collection(collection)
        except GalleryError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise GalleryError(f"Milvus at {uri}: cannot open collection {collection}: {exc}"
                               ) from exc

    # -- schema ----------------------------------------------------------------------------------
    def _create(self, index: str) -> None:
        from pymilvus import DataType

        c, (ds, dp) = self._client, self._binding.dims
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("shared", DataType.FLOAT_VECTOR, dim=ds)
        schema.add_field("specific", DataType.FLOAT_VECTOR, dim=dp)
        for name in ("modality", "pid", "camid", "track"):
            schema.add_field(name, DataType.INT64)
        schema.add_field("ts", DataType.DOUBLE)
        schema.add_field("meta", DataType.JSON)
        kind, params = INDEXES[index]
        ip = c.prepare_index_params()
        for field in ("shared", "specific"):
            ip.add_index(field, index_type=kind, metric_type="COSINE", params=params)
        c.create_collection(self.collection, schema=schema, index_params=ip,
                            consistency_level="Strong",
                            properties={"ssft.format": FORMAT, "ssft.version": _token(),
                                        "ssft.binding": json.dumps(self._binding.to_dict())})

    def _properties(self) -> dict[str, str]:
        return self._client.describe_collection(self.collection).get("properties") or {}

    def _check_collection(self) -> None:
        props = self._properties()
        where = f"Milvus collection {self.collection} at {self.uri}"
        if props.get("ssft.format") != FORMAT or "ssft.binding" not in props:
            raise GalleryError(f"{where} was not created by ssft-deploy ({FORMAT}); use another "
                               "collection name")
        try:
            recorded = GalleryBinding.from_dict(json.loads(props["ssft.binding"]), where)
        except ValueError as exc:
            raise GalleryError(f"{where} records a malformed binding: {exc}") from exc
        self._binding = recorded.check(self._binding, where)

    # -- primitives ------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise GalleryError(f"Milvus at {self.uri} failed to {what}: {exc}") from exc

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[None]:
        """One search: this client's writes flushed first (module docstring); rows fetched once
        per search (a shortlist's neighbours are also the next level's entries). Writes through
        this object wait until it ends (``self._rw``), so it reads one state throughout."""
        with self._rw.read():
            if self._unflushed:
                self._call("flush", self._client.flush, self.collection)
                self._unflushed = False
            if getattr(self._search, "rows", None) is not None:
                yield
                return
            self._search.rows = {}
            try:
                yield
            finally:
                self._search.rows = None

    def _bump(self) -> None:
        self._unflushed = True
        self._call("record a new version", self._client.alter_collection_properties,
                   self.collection, properties={"ssft.version": _token()})

    def _version(self) -> Hashable:
        return self.uri, self.collection, self._properties().get("ssft.version")

    def __len__(self) -> int:
        res = self._call("count", self._client.query, self.collection, filter="",
                         output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def _write(self, entries: Entries, assign_ids: bool) -> np.ndarray:
        n = len(entries)
        if assign_ids:  # random 63-bit ids: unique across writers without coordination
            entries.cols["ids"] = np.frombuffer(secrets.token_bytes(8 * n), np.uint64).astype(
                np.int64) & np.int64(0x7FFF_FFFF_FFFF_FFFF)
        size = entries.cols["shared"].nbytes + entries.cols["specific"].nbytes + 64 * n
        if size > MAX_BATCH_BYTES:
            raise InputError(f"a batch of {n} entries ({size >> 20} MiB) exceeds one Milvus "
                             f"request ({MAX_BATCH_BYTES >> 20} MiB): add it in smaller batches "
                             "(each batch is written all or nothing)")
        c = entries.cols
        rows = [{"id": int(c["ids"][i]), "shared": c["shared"][i], "specific": c["specific"][i],
                 "modality": int(c["modality"][i]), "pid": int(c["pids"][i]),
                 "camid": int(c["camids"][i]), "track": int(c["tracks"][i]),
                 "ts": float(c["ts"][i]), "meta": {"v": entries.meta[i]}} for i in range(n)]
        if rows:
            with self._rw.write():
                self._call("write a batch", self._client.upsert, self.collection, rows)
                self._bump()
        return c["ids"].copy()

    def _delete(self, sel: dict[str, np.ndarray]) -> int:
        expr = " or ".join(f"{FIELDS[k]} in {v.tolist()}" for k, v in sel.items() if v.size)
        if not expr:
            return 0
        with self._rw.write():
            hit = self._query(expr, ["id"])
            if not hit:
                return 0
            ids = [r["id"] for r in hit]
            for s in range(0, len(ids), CHUNK):
                self._call("delete", self._client.delete, self.collection, ids=ids[s:s + CHUNK])
            self._bump()
        return len(ids)

    def _query(self, expr: str, fields: list[str]) -> list[dict]:
        it = self._call("query", self._client.query_iterator, self.collection, batch_size=4096,
                        filter=expr, output_fields=fields)
        rows: list[dict] = []
        try:
            while batch := self._call("query", it.next):
                rows += batch
        finally:
            it.close()
        return rows

    def _select(self, modalities: tuple[int, ...], window: Window) -> tuple[Entries, Hashable]:
        with self._rw.read():  # the query's batches and the version of one state
            key = (self._version(), modalities, window)
            return self._entries(self._query(_filter(modalities, window), _ALL)), key

    def _fetch(self, ids: np.ndarray) -> Entries:
        cache = getattr(self._search, "rows", None)
        ids = ids.tolist()
        todo = ids if cache is None else [i for i in ids if i not in cache]
        rows: list[dict] = []
        with self._rw.read():
            for s in range(0, len(todo), CHUNK):
                rows += self._call("fetch entries", self._client.get, self.collection,
                                   ids=todo[s:s + CHUNK], output_fields=_ALL)
        if cache is None:
            return self._entries(rows)
        cache.update((r["id"], r) for r in rows)
        return self._entries([cache[i] for i in ids if i in cache])

    def _knn(self, q: np.ndarray, field: str, modality: int, window: Window, limit: int,
             shortlist: bool = False) -> np.ndarray:
        out = np.full((len(q), limit), -1, np.int64)
        expr = _filter((modality,), window)
        params = {"metric_type": "COSINE", "params": {
            "nprobe": self.shortlist_nprobe if shortlist else self.nprobe,
            "ef": max(64, 8 * limit) if shortlist else 64}}
        with self._rw.read():  # every chunk of queries against one state
            for s in range(0, len(q), CHUNK):
                res = self._call("search", self._client.search, self.collection,
                                 data=list(q[s:s + CHUNK]), anns_field=field, filter=expr,
                                 limit=limit, search_params=params, output_fields=[])
                for i, hits in enumerate(res):
                    found = [h["id"] for h in hits]
                    out[s + i, :len(found)] = found
        return out

    def _entries(self, rows: list[dict]) -> Entries:
        e = Entries.empty(*self._binding.dims)
        if not rows:
            return e
        cols = {k: np.asarray([r[f] for r in rows], e.cols[k].dtype) for k, f in FIELDS.items()}
        for k in ("shared", "specific"):
            cols[k] = cols[k].reshape(len(rows), -1)
        return Entries(cols, [(r.get("meta") or {}).get("v") for r in rows])

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a dead connection is not an error
                client.close()


_ALL = ["id", "shared", "specific", "modality", "pid", "camid", "track", "ts", "meta"]


def _filter(modalities: tuple[int, ...], window: Window) -> str:
    parts = [f"modality in {list(modalities)}"]
    if window[0] is not None:
        parts.append(f"ts >= {window[0]!r}")
    if window[1] is not None:
        parts.append(f"ts < {window[1]!r}")
    return " and ".join(parts)


def _token() -> str:
    return secrets.token_hex(8)
