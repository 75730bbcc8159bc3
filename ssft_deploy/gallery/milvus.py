"""The Milvus store: Milvus Lite (``milvus:PATH.db``, embedded, one process) or a Milvus
standalone / distributed server (``http(s)://host:19530``, 2.3 and later), through the same
pymilvus client and one code path.

Schema (``ssft-milvus/3``): one vector field per collection (Milvus 2.3 allows only one), so an
entry is two rows written in one request: its ``shared`` row (block = modality) and its
``specific`` row (block = 2 + modality), primary keys ``s:ID`` / ``p:ID``. Each row's ``vec`` is
its own feature (zero-padded to the larger dim, which leaves cosines unchanged); its ``feat``
holds both features (float32, base64) and its ``meta`` the entry's meta value (JSON text), so any
row found by a search carries the whole entry (``milvus_rows``). Columns ``eid``, ``pid``,
``camid``, ``track``, ``ts`` serve filters. A row ``version`` (block -1) holds a token renewed in
the same request as every add and right after every remove: caches key on it, and the collection
is never altered after creation (its properties record the format and the bundle binding once).

Writes: an add is one upsert of both rows of every entry and the version row, which Milvus
applies at one timestamp, entirely or not at all, so no read sees half an entry or half a batch;
by entry id it is idempotent (a retried batch replaces itself). A remove is one delete by filter.
Reads: ``Session`` consistency once this client has written (it sees its own writes without a
flush), ``Bounded`` before; ``len`` is ``Strong`` (an exact count across writers). No read
flushes. Two-stage search is the default (``shortlist`` sized by the store) and costs three
search requests: stage one and the shortlist's neighbour lists return whole rows, which the
search keeps (it never fetches by id), the outer level ids and scores only. An entry another
client removes meanwhile misses itself in its own neighbour list and drops out of the ranking
(``twostage.vanished``). Each search request is built by pymilvus and its answer read as numpy
columns (``milvus_search``), rows decoded only when the search uses them.
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

from ssft_deploy.affinity.common import SLACK, d_from_cos, unit
from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.gallery import milvus_search
from ssft_deploy.gallery.base import SHORTLIST_PROBE_FRACTION, GalleryStore, Window, fetch_ordered
from ssft_deploy.gallery.binding import GalleryBinding
from ssft_deploy.gallery.milvus_rows import (
    META_MAX,
    VERSION_KEY,
    feat_length,
    parse,
    to_entries,
    upsert_request,
)
from ssft_deploy.gallery.milvus_rows import OUT as _OUT
from ssft_deploy.gallery.rwlock import ReadWriteLock
from ssft_deploy.gallery.table import Entries

FORMAT = "ssft-milvus/3"
INDEXES = {"flat": ("FLAT", {}), "ivf": ("IVF_FLAT", {"nlist": 1024}),
           "hnsw": ("HNSW", {"M": 16, "efConstruction": 128}), "auto": ("AUTOINDEX", {})}
SELECT = {"pids": "pid", "camids": "camid", "ids": "eid"}  # remove()'s columns
CHUNK = 1024          # queries / ids per request
MAX_BATCH_BYTES = 48 << 20  # one upsert request stays under gRPC's 64 MiB message limit
DEFAULT_SHORTLIST = 100     # two-stage search's M when the caller gives none (at least 4 x top)


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

    pins_snapshot = False  # other clients write between a search's requests

    def __init__(self, uri: str, binding: GalleryBinding, *, client_uri: str | None = None,
                 collection: str = "ssft_gallery", token: str | None = None,
                 index: str = "flat", nprobe: int = 16, shortlist_nprobe: int | None = None,
                 timeout_s: float = 10.0) -> None:
        if index not in INDEXES:
            raise InputError(f"unknown Milvus index {index!r}: use one of {', '.join(INDEXES)}")
        super().__init__(binding, uri)
        self.collection, self.nprobe = collection, int(nprobe)
        self._wrote = False  # Session reads once this client has written, Bounded before
        self._search = threading.local()  # whole rows seen by this thread's current search
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
    @property
    def _width(self) -> int:
        return max(self._binding.dims)

    def _create(self, index: str) -> None:
        from pymilvus import DataType

        c = self._client
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=32)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=self._width)
        for name in ("eid", "block", "pid", "camid", "track"):
            schema.add_field(name, DataType.INT64)
        schema.add_field("ts", DataType.DOUBLE)
        schema.add_field("feat", DataType.VARCHAR, max_length=feat_length(self._binding.dims))
        schema.add_field("meta", DataType.VARCHAR, max_length=META_MAX)
        kind, params = INDEXES[index]
        ip = c.prepare_index_params()
        ip.add_index("vec", index_type=kind, metric_type="COSINE", params=params)
        c.create_collection(self.collection, schema=schema, index_params=ip,
                            consistency_level="Bounded",
                            properties={"ssft.format": FORMAT,
                                        "ssft.binding": json.dumps(self._binding.to_dict())})
        self._bump()

    def _check_collection(self) -> None:
        props = self._client.describe_collection(self.collection).get("properties") or {}
        where = f"Milvus collection {self.collection} at {self.uri}"
        if props.get("ssft.format") != FORMAT or "ssft.binding" not in props:
            found = props.get("ssft.format")
            if found:
                raise GalleryError(f"{where} holds format {found}, this ssft-deploy reads "
                                   f"{FORMAT}: rebuild it, or use another collection name")
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

    def _level(self) -> str:
        return "Session" if self._wrote else "Bounded"

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[None]:
        """One search: every row a request returns is kept for the rest of it (stage one's
        hits and the neighbour lists' hits are the next steps' entries). Writes through this
        object wait until it ends (``self._rw``), so it reads one state throughout; writes by
        other clients are not held back."""
        with self._rw.read():
            if getattr(self._search, "rows", None) is not None:
                yield
                return
            self._search.rows = {}
            try:
                yield
            finally:
                self._search.rows = None

    def _bump(self, entries: Entries | None = None) -> Any:
        """Upsert both rows of every entry and a new version token in one request (built by
        ``milvus_rows``; sent through pymilvus's connection, which records its timestamp for
        this client's Session reads)."""
        entries = entries if entries is not None else Entries.empty(*self._binding.dims)
        req = upsert_request(self.collection, entries, self._width)
        conn = self._client._get_connection()
        # ``schema``: the request is complete, pymilvus need not describe the collection
        self._call("write a batch" if len(entries) else "record a new version", conn.upsert,
                   self.collection, [], upsert_param=req, schema={"fields": []})
        self._wrote = True

    def _version(self) -> Hashable:
        rows = self._call("read the version", self._client.get, self.collection,
                          ids=[VERSION_KEY], output_fields=["meta"],
                          consistency_level=self._level())
        return self.uri, self.collection, rows[0]["meta"] if rows else None

    def __len__(self) -> int:
        res = self._call("count", self._client.query, self.collection, filter="block in [0, 1]",
                         output_fields=["count(*)"], consistency_level="Strong")
        return int(res[0]["count(*)"])

    def _write(self, entries: Entries, assign_ids: bool) -> np.ndarray:
        n = len(entries)
        if assign_ids:  # random 63-bit ids: unique across writers without coordination
            entries.cols["ids"] = np.frombuffer(secrets.token_bytes(8 * n), np.uint64).astype(
                np.int64) & np.int64(0x7FFF_FFFF_FFFF_FFFF)
        c = entries.cols
        size = 2 * (4 * self._width + (c["shared"].nbytes + c["specific"].nbytes) * 4 // 3
                    // max(n, 1) + 200) * n  # per row: vec, both features in base64, the rest
        if size > MAX_BATCH_BYTES:
            raise InputError(f"a batch of {n} entries ({size >> 20} MiB) exceeds one Milvus "
                             f"request ({MAX_BATCH_BYTES >> 20} MiB): add it in smaller batches "
                             "(each batch is written all or nothing)")
        if n:
            with self._rw.write():
                self._bump(entries)
        return c["ids"].copy()

    def _delete(self, sel: dict[str, np.ndarray]) -> int:
        expr = " or ".join(f"{SELECT[k]} in {v.tolist()}" for k, v in sel.items() if v.size)
        if not expr:
            return 0
        with self._rw.write():
            res = self._call("delete", self._client.delete, self.collection,
                             filter=f"block >= 0 and ({expr})")
            self._bump()  # after the delete: no reader caches pre-delete rows under the new token
        if isinstance(res, dict):
            return int(res.get("delete_count", 0)) // 2
        return sum(1 for pk in res if str(pk).startswith("s:"))

    def _select(self, modalities: tuple[int, ...], window: Window) -> tuple[Entries, Hashable]:
        with self._rw.read():  # the version and the query's batches of one state
            return self._select_rows(modalities, window)

    def _select_rows(self, modalities: tuple[int, ...], window: Window
                     ) -> tuple[Entries, Hashable]:
        key = (self._version(), modalities, window)  # first: the rows are at least as new
        it = self._call("query", self._client.query_iterator, self.collection, batch_size=4096,
                        filter=_filter(list(modalities), window), output_fields=_OUT,
                        consistency_level=self._level())
        rows: list[tuple] = []
        try:
            while batch := self._call("query", it.next):
                rows += [self._parse(r) for r in batch]
        finally:
            it.close()
        return self._rows_as_entries(rows), key

    def _fetch(self, ids: np.ndarray) -> Entries:
        cache = getattr(self._search, "rows", None)
        ids = ids.tolist()
        todo = ids if cache is None else [i for i in ids if i not in cache]
        rows: list[tuple] = []
        with self._rw.read():
            for s in range(0, len(todo), CHUNK):
                rows += [self._parse(r) for r in self._call(
                    "fetch entries", self._client.get, self.collection,
                    ids=[f"s:{i}" for i in todo[s:s + CHUNK]], output_fields=_OUT,
                    consistency_level=self._level())]
        if cache is None:
            return self._rows_as_entries(rows)
        cache.update((r[0], r) for r in rows)
        out = []
        for i in ids:
            r = cache.get(i)
            if isinstance(r, dict):           # a search hit not decoded yet
                r = cache[i] = self._parse(r)
            if r is not None:
                out.append(r)
        return self._rows_as_entries(out)

    def _knn(self, q: np.ndarray, field: str, modality: int, window: Window, limit: int,
             shortlist: bool = False) -> np.ndarray:
        with self._rw.read():  # every chunk of queries against one state
            return self._scored(q, field, modality, window, limit, shortlist)[0]

    def _scored(self, q: np.ndarray, field: str, modality: int, window: Window, limit: int,
                shortlist: bool = False, rows: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Entry ids and cosines [nq, limit] (-1 / -inf where fewer); inside a search with
        ``rows``, the hits' whole rows are kept for the rest of it."""
        ids = np.full((len(q), limit), -1, np.int64)
        cos = np.full((len(q), limit), -np.inf)
        kind = 0 if field == "shared" else 2
        cache = getattr(self._search, "rows", None) if rows else None
        params = {"metric_type": "COSINE", "params": {
            "nprobe": self.shortlist_nprobe if shortlist else self.nprobe,
            "ef": max(64, 8 * limit) if shortlist else 64}}
        data = np.zeros((len(q), self._width), np.float32)
        data[:, :q.shape[1]] = q
        for s in range(0, len(q), CHUNK):
            hits = self._call("search", milvus_search.search, self._client, self.collection,
                              data[s:s + CHUNK], _filter([kind + modality], window), limit,
                              params, self._level(), _OUT if cache is not None else ["eid"])
            ids[s:s + CHUNK], cos[s:s + CHUNK] = hits.ids, hits.cos
            if cache is not None:  # kept undecoded: decoded once, if this search needs it
                for j, e in enumerate(hits.flat_ids.tolist()):
                    if e not in cache:
                        cache[e] = hits.row(j)
        return ids, cos

    def neighbour_lists(self, entry_ids: np.ndarray, k: int, modalities: tuple[int, ...],
                        window: Window, weights_only: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        """As the base store's, without its per-version cache: reading the version would cost a
        request of its own on every search, and under writers the cache rarely lives long.
        ``weights_only`` (the outer level of a two-stage search, whose entries only contribute
        their degree): weights from the server's float32 cosines, no rows returned."""
        uniq, inv = np.unique(entry_ids, return_inverse=True)
        if not len(uniq):
            return np.zeros((0, 2 * k), np.int64), np.zeros((0, 2 * k), np.float32)
        make = self._weights if weights_only else self._neighbour_lists
        idx, w = make(uniq, k, modalities, window)
        return idx[inv], w[inv]

    def _weights(self, ids: np.ndarray, k: int, modalities: tuple[int, ...], window: Window
                 ) -> tuple[np.ndarray, np.ndarray]:
        e = fetch_ordered(self, ids)
        idx = np.repeat(ids[:, None], 2 * k, axis=1)
        w = np.zeros((len(ids), 2 * k), np.float32)
        for m in (0, 1):
            rows = np.flatnonzero(e.cols["modality"] == m)
            for half, (field, other) in enumerate((("specific", m), ("shared", 1 - m))):
                if rows.size == 0 or other not in modalities:
                    continue
                cand, cos = self._scored(unit(e.cols[field][rows]), field, other, window,
                                         k + SLACK, rows=False)
                cos[cand == ids[rows, None]] = 1.0          # itself: exact, as refine finds it
                d = np.where(cand >= 0, d_from_cos(cos), -np.inf)
                order = np.lexsort((cand, -d), axis=1)[:, :k]   # refine's order: -d, entry id
                cand, d = np.take_along_axis(cand, order, 1), np.take_along_axis(d, order, 1)
                ok, kk = cand >= 0, order.shape[1]
                idx[rows, half * k:half * k + kk] = np.where(ok, cand, ids[rows, None])
                w[rows, half * k:half * k + kk] = np.where(ok, d, 0.0)
        return idx, w

    def default_shortlist(self, top: int) -> int | None:
        return max(DEFAULT_SHORTLIST, 4 * top)

    def _rows_as_entries(self, rows: list[tuple]) -> Entries:
        return to_entries(rows, self._binding.dims)

    def _parse(self, r: dict) -> tuple:
        return parse(r, self._binding.dims[0])

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a dead connection is not an error
                client.close()


def _filter(blocks: list[int], window: Window) -> str:
    parts = [f"block in {blocks}"]
    if window[0] is not None:
        parts.append(f"ts >= {window[0]!r}")
    if window[1] is not None:
        parts.append(f"ts < {window[1]!r}")
    return " and ".join(parts)
