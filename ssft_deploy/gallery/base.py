"""One gallery interface over several stores (in-process, local file, Milvus).

A store implements a handful of primitives (atomic upsert, delete, filtered snapshot, filtered
k-NN on one vector field, fetch by entry id, a version token); everything else lives here: input
validation, the Eq. 6 blocks as filtered k-NN (same-modality neighbours on the specific field,
other-modality ones on the shared field), full search as before, and two-stage search.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssft_deploy.affinity.common import EPS, SLACK, refine, unit
from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.features import Features, modality_code
from ssft_deploy.gallery import ids as idv
from ssft_deploy.gallery.binding import GalleryBinding
from ssft_deploy.gallery.table import Entries
from ssft_deploy.transfer import SSTN, RollingAuxiliary, l2_distances

MODES = ("shared", "single-query", "all-queries", "rolling")
FIELDS = ("shared", "specific")
Window = tuple[float | None, float | None]
SHORTLIST_PROBE_FRACTION = 0.6  # of an IVF index's lists, for stage one (sweep in docs/galleries.md)


@dataclass
class SearchResult:
    """Ranked identities for one query: the best entry of each identity, closest first (an
    entry of unknown identity, pid -1, stands for itself)."""

    pids: np.ndarray
    distances: np.ndarray
    camids: np.ndarray
    entry_ids: np.ndarray

    def to_dict(self) -> dict[str, list]:
        return {"pids": self.pids.tolist(), "distances": self.distances.tolist(),
                "camids": self.camids.tolist(), "entry_ids": self.entry_ids.tolist()}


class GalleryStore(ABC):
    """A gallery of known (or unknown) people's features; see :func:`open_gallery`."""

    # every read of one search sees one state (False: a server store, whose other clients may
    # remove entries between a search's requests; two-stage search then drops them)
    pins_snapshot = True

    def __init__(self, binding: GalleryBinding | None, uri: str) -> None:
        self._binding, self.uri = binding, uri
        self._nl_lock = threading.Lock()
        self._nl_key: Hashable = None
        self._nl: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # -- store primitives ------------------------------------------------------------------------
    @abstractmethod
    def _write(self, entries: Entries, assign_ids: bool) -> np.ndarray:
        """Upsert all rows or none (assigning fresh ids first when asked); returns the ids."""

    @abstractmethod
    def _delete(self, sel: dict[str, np.ndarray]) -> int:
        """Delete rows whose column ``name`` is in ``sel[name]`` for any name; returns how many."""

    @abstractmethod
    def _select(self, modalities: tuple[int, ...], window: Window) -> tuple[Entries, Hashable]:
        """A consistent snapshot of the matching rows and its cache key."""

    @abstractmethod
    def _knn(self, q: np.ndarray, field: str, modality: int, window: Window, limit: int,
             shortlist: bool = False) -> np.ndarray:
        """Entry ids [nq, limit] of the largest cosines of unit rows ``q`` on ``field`` among
        the rows of ``modality`` in ``window``, best first; -1 where there are fewer.
        ``shortlist``: two-stage search's stage one (queries, not gallery entries: the store
        may search its index more widely)."""

    @abstractmethod
    def _fetch(self, ids: np.ndarray) -> Entries:
        """The rows of these entry ids that exist (any order)."""

    @abstractmethod
    def _version(self) -> Hashable:
        """A token that changes with every write (caches key on it)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @contextmanager
    def _pinned(self) -> Iterator[None]:
        """Reads inside see one snapshot where the store can pin one (no-op here)."""
        yield

    def default_shortlist(self, top: int) -> int | None:
        """Two-stage search's M when a search gives none; None: every entry, as a single stage
        (the in-process and local stores; a server store avoids streaming the collection)."""
        return None

    def close(self) -> None:
        """Release the store's connection (no-op for in-process stores)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- binding ---------------------------------------------------------------------------------
    @property
    def binding(self) -> GalleryBinding | None:
        return self._binding

    @property
    def dims(self) -> tuple[int, int] | None:
        return None if self._binding is None else self._binding.dims

    @property
    def version(self) -> Hashable:
        """Changes with every add / remove that changes the contents."""
        return self._version()

    def bind(self, expected: GalleryBinding) -> None:
        """Adopt ``expected`` (a bundle's binding), or GalleryError when this gallery holds
        another bundle's features."""
        self._binding = expected if self._binding is None else \
            self._binding.check(expected, f"gallery {self.uri}")

    # -- writes ----------------------------------------------------------------------------------
    def add(self, features: Features, pids: Any, camids: Any, tracks: Any = None,
            meta: Sequence[Any] | None = None, *, entry_ids: Any = None,
            timestamps: Any = None) -> np.ndarray:
        """Add (or, for existing ``entry_ids``, replace) entries, all or none; returns their
        entry ids. ``pids``: identity per entry (-1 unknown); ``tracks``: track id (-1 none);
        ``timestamps``: seconds (default now); ``meta``: a JSON value per entry."""
        if not isinstance(features, Features):
            raise InputError("Gallery.add expects a Features object")
        n = len(features)
        if self._binding is None:
            self._binding = GalleryBinding(*features.dims)
        if features.dims != self._binding.dims:
            raise InputError(f"features of dims {features.dims} for a gallery of "
                             f"{self._binding.dims} (shared, specific)")
        check_searchable(features)
        meta = [None] * n if meta is None else list(meta)
        if len(meta) != n:
            raise InputError(f"meta must have {n} items, got {len(meta)}")
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise InputError(f"meta must be JSON-serialisable: {exc}") from exc
        cols = {"shared": features.shared, "specific": features.specific,
                "modality": features.modality, "pids": idv.identities(pids, n),
                "camids": idv.int_ids("camids", camids, n),
                "tracks": idv.int_ids("tracks", -1 if tracks is None else tracks, n),
                "ts": idv.timestamps(time.time() if timestamps is None else timestamps, n)}
        if entry_ids is None:
            cols["ids"] = np.zeros(n, np.int64)
        else:
            cols["ids"] = idv.entry_ids(entry_ids, n)
            if len(np.unique(cols["ids"])) != n:
                raise InputError("entry_ids repeat within one batch")
        return self._write(Entries(cols, meta), assign_ids=entry_ids is None)

    def remove(self, pids: Any = None, camids: Any = None, entry_ids: Any = None) -> int:
        """Remove entries matching any of the given identities, cameras or entry ids; returns
        how many were removed."""
        if pids is None and camids is None and entry_ids is None:
            raise InputError("Gallery.remove needs pids, camids or entry_ids")
        sel = {name: idv.int_ids(name, v) for name, v in
               (("pids", pids), ("camids", camids), ("ids", entry_ids)) if v is not None}
        return self._delete(sel)

    # -- reads -----------------------------------------------------------------------------------
    def entries(self, modality: int | str | None = None, since: float | None = None,
                until: float | None = None) -> tuple[Features, dict[str, np.ndarray]]:
        """A consistent snapshot: Features and columns (pids, camids, tracks, ids, ts) of one
        modality or of all (RGB entries first), optionally within ``since <= ts < until``."""
        if self._binding is None:
            raise GalleryError("the gallery is empty")
        mods = (0, 1) if modality is None else (modality_code(modality),)
        e, _ = self._select(mods, idv.window(since, until))
        e = e.take(np.argsort(e.cols["modality"], kind="stable"))
        return e.features(), e.public()

    def meta(self, entry_ids: Any) -> list[Any]:
        """The meta values of the given entry ids (None where absent)."""
        want = idv.int_ids("entry_ids", entry_ids)
        e = self._fetch(np.unique(want))
        table = dict(zip(e.cols["ids"].tolist(), e.meta))
        return [table.get(int(i)) for i in want]

    def knn(self, vectors: Any, field: str, modality: int | str, k: int,
            since: float | None = None, until: float | None = None) -> np.ndarray:
        """Entry ids [nq, k] of the k entries of ``modality`` closest in cosine to ``vectors`` on
        ``field`` ("shared" | "specific"), best first, -1 where fewer: one Eq. 6 block."""
        if field not in FIELDS:
            raise InputError(f"field must be one of {FIELDS}, got {field!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(vectors)
        dim = self.dims[FIELDS.index(field)] if self.dims else None
        if q.ndim != 2 or q.shape[1] != dim:
            raise InputError(f"vectors must be [N, {dim}] for field {field!r}, got {q.shape}")
        q = Features(q, q[:, :1], 0).shared  # the same checks (real, finite) as any feature
        return self._knn(unit(q), field, modality_code(modality), idv.window(since, until),
                         int(k))

    def neighbour_lists(self, entry_ids: np.ndarray, k: int, modalities: tuple[int, ...],
                        window: Window, weights_only: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 8 neighbour lists of these entries within the gallery rows of ``modalities`` in
        ``window``: entry ids [n, 2k] (k same-modality by specific, k other-modality by shared,
        padding = the entry itself) and weights [n, 2k]. Cached per gallery version.
        ``weights_only``: the caller uses the weights only (a server store then needs no rows)."""
        key = (self._version(), tuple(modalities), window, k)
        with self._nl_lock:
            if self._nl_key != key:
                self._nl_key, self._nl = key, {}
            cache = self._nl
        todo = np.array([i for i in entry_ids.tolist() if i not in cache], np.int64)
        if todo.size:
            idx, w = self._neighbour_lists(todo, k, modalities, window)
            with self._nl_lock:
                cache.update(zip(todo.tolist(), zip(idx, w)))
        rows = [cache[i] for i in entry_ids.tolist()]
        if not rows:
            return np.zeros((0, 2 * k), np.int64), np.zeros((0, 2 * k), np.float32)
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

    def _neighbour_lists(self, ids: np.ndarray, k: int, modalities: tuple[int, ...],
                         window: Window) -> tuple[np.ndarray, np.ndarray]:
        e = fetch_ordered(self, ids)
        idx = np.repeat(ids[:, None], 2 * k, axis=1)
        w = np.zeros((len(ids), 2 * k), np.float32)
        for m in (0, 1):
            rows = np.flatnonzero(e.cols["modality"] == m)
            for half, (field, other) in enumerate((("specific", m), ("shared", 1 - m))):
                if rows.size == 0 or other not in modalities:
                    continue
                q64 = unit(e.cols[field][rows], np.float64)
                cand = self._knn(q64.astype(np.float32), field, other, window, k + SLACK)
                found = np.unique(cand[cand >= 0])
                base = fetch_ordered(self, found)
                local = np.where(cand >= 0, np.searchsorted(found, cand), -1)
                loc, d = refine(q64, unit(base.cols[field], np.float64), local, k)
                ok = loc >= 0  # exact d and order (-d, entry id) over the candidates
                kk = loc.shape[1]
                idx[rows, half * k:half * k + kk] = np.where(ok, found[loc.clip(min=0)] if
                                                             found.size else 0, ids[rows, None])
                w[rows, half * k:half * k + kk] = np.where(ok, d, 0.0)
        return idx, w

    # -- search ----------------------------------------------------------------------------------
    def search(self, query: Features, top: int = 10, transfer: SSTN | None = None,
               mode: str = "shared", auxiliary: RollingAuxiliary | Features | None = None,
               cross_modality: bool = True, *, shortlist: int | str | None = None,
               since: float | None = None, until: float | None = None) -> list[SearchResult]:
        """Ranked identities for each query. ``mode``: "shared" (shared features only, no
        transfer), "single-query" (Eq. 22), "all-queries" (the queries, plus ``auxiliary`` if
        given, are the auxiliary set) or "rolling" (``auxiliary`` is a RollingAuxiliary: its
        snapshot is the auxiliary set, then the queries are added to it). With
        ``cross_modality`` a query searches the other modality's entries only; ``since`` /
        ``until`` keep entries with ``since <= ts < until``. ``shortlist=M``: two-stage search
        (each query's M nearest entries per modality block by the Eq. 6 field, then the SSTN
        exactly on their subgraph; only shortlisted entries are ranked); "all": every entry, as
        a single stage; None: the store's default (``default_shortlist``)."""
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
        if shortlist is None:
            shortlist = self.default_shortlist(top)
        elif shortlist == "all":
            shortlist = None
        if shortlist is not None and (isinstance(shortlist, bool) or not isinstance(
                shortlist, (int, np.integer)) or shortlist < 1):
            raise InputError(f"shortlist must be a positive integer or 'all', got {shortlist!r}")
        if self.dims is not None and len(query) and query.dims != self.dims:
            raise InputError(f"query features of dims {query.dims} for a gallery of {self.dims}")
        window = idv.window(since, until)
        aux = auxiliary.snapshot() if isinstance(auxiliary, RollingAuxiliary) else auxiliary
        results: list[SearchResult | None] = [None] * len(query)
        groups = [(m, np.flatnonzero(query.modality == m)) for m in (0, 1)] if cross_modality \
            else [(None, np.arange(len(query)))]
        with self._pinned():
            for m, rows in groups:
                if rows.size == 0:
                    continue
                mods = (0, 1) if m is None else (1 - m,)
                q = query.take(rows)
                if shortlist is None:
                    ranked = self._full(q, mods, window, mode, transfer, aux)
                else:
                    from ssft_deploy.gallery import twostage

                    ranked = twostage.distances(self, q, mods, window, int(shortlist), mode,
                                                transfer, aux)
                for r, (d, cols) in zip(rows, ranked):
                    results[r] = rank(d, cols, top)
        if mode == "rolling":
            auxiliary.add(query)
        return results  # type: ignore[return-value]

    def _full(self, q: Features, mods: tuple[int, ...], window: Window, mode: str,
              transfer: SSTN | None, aux: Features | None) -> list:
        e, key = self._select(mods, window)
        feats, cols = e.features(), e.public()
        if len(feats) == 0:
            dist = np.zeros((len(q), 0), np.float32)
        elif mode == "shared":
            dist = l2_distances(q.shared, feats.shared)
        elif mode == "single-query":
            dist = transfer.single_query_distances(q, feats, cache_key=key)
        else:
            dist = transfer.auxiliary_distances(q, feats, aux)
        return [(d, cols) for d in dist]


def check_searchable(features: Features) -> None:
    """InputError naming the first row of ``features`` that search cannot scale to unit length:
    all zeros or denormal (its norm is below the ``unit`` clamp, so it would match everything
    alike). The gallery refuses to store such rows; a server refuses them as queries."""
    for field in FIELDS:
        x = getattr(features, field)
        weak = np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64)) < EPS
        if weak.any():
            raise InputError(f"{field} feature row {int(np.argmax(weak))} is all zeros or "
                             f"denormal (norm below {EPS:g}: a broken extractor output cannot "
                             "be searched)")


def fetch_ordered(store: GalleryStore, ids: np.ndarray) -> Entries:
    """The rows of ``ids`` in that order; GalleryError if one vanished (a concurrent remove)."""
    e = store._fetch(ids)
    order = np.argsort(e.cols["ids"], kind="stable")
    pos = np.searchsorted(e.cols["ids"], ids, sorter=order)
    pos = order[pos.clip(max=max(len(order) - 1, 0))] if len(order) else pos
    if len(ids) and (len(e) == 0 or (e.cols["ids"][pos] != ids).any()):
        raise GalleryError("gallery entries were removed during the search; search again")
    return e.take(pos)


def rank(dist: np.ndarray, cols: dict[str, np.ndarray], top: int) -> SearchResult:
    """Identities by their closest entry (stable: equal distances keep entry order); each entry
    of unknown identity (-1) is its own candidate."""
    order = np.argsort(dist, kind="stable")
    pids = cols["pids"][order]
    keys = np.where(pids == idv.UNKNOWN, -2 - np.arange(len(pids)), pids)
    _, first = np.unique(keys, return_index=True)
    best = order[np.sort(first)][:top]
    return SearchResult(cols["pids"][best], dist[best].astype(np.float32), cols["camids"][best],
                        cols["ids"][best])
