"""Cross-modality association of ended tracklets -> events.

A tracklet of the gallery modality enters the gallery when its track ends (its identity id was
given when the track started; it is the entry id, so a later write replaces the entry). A
tracklet of the other modality is searched when it ends: the gallery (with ``include_live``, the
gallery-modality tracks not yet ended, or ended and queued, are upserted into it first as their
features change, so a person seen by both cameras at once is found before the RGB track ends)
ranked by the runtime's search in ``mode`` (default ``rolling``: recent queries form the
transfer's auxiliary set, Fig. 4; the query's samples, not its mean, join that set afterwards).
The one live gallery is searched in place: a copy per event had a new cache key every time.
The event's ``identity`` is the best match's, or ``"unknown"`` when no match lies within
``max_distance`` (Euclidean distance between unit features, 0..2; the user sets it).

The gallery is bounded: an entry not updated for ``max_age_s`` seconds leaves it, and beyond
``max_size`` entries the least recently updated leave first (with their tracklets).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

from ssft_deploy.errors import InputError
from ssft_deploy.features import Features, modality_code
from ssft_deploy.gallery import Gallery
from ssft_deploy.video.tracklets import Tracklet

# Each gallery write copies the table (2048 + 2048-d features: 16 KB a row, 82 MB at 5000) and
# every search runs the transfer over all entries; a person crossing from one modality's cameras
# to the other's is seen again within minutes.
DEFAULT_MAX_SIZE = 5000       # entries (one per gallery-modality track)
DEFAULT_MAX_AGE_S = 1800.0    # seconds since an entry was last updated


class Associator:
    """Gallery of gallery-modality tracklets (ended, and live ones); events for ended query
    tracklets."""

    def __init__(self, runtime, gallery_modality: str = "rgb", mode: str = "rolling",
                 top: int = 5, max_distance: float = 1.0, include_live: bool = True,
                 live_tracklets: Callable[[], Iterable[Tracklet]] | None = None,
                 max_size: int = DEFAULT_MAX_SIZE, max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.time) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise InputError(f"gallery max size must be a positive integer, got {max_size!r}")
        if not (isinstance(max_age_s, (int, float)) and math.isfinite(max_age_s)
                and max_age_s > 0):
            raise InputError(f"gallery max age must be a positive number of seconds, got "
                             f"{max_age_s!r}")
        self.runtime = runtime
        self.gallery_code = modality_code(gallery_modality)
        self.gallery_modality = ("rgb", "ir")[self.gallery_code]
        self.mode, self.top, self.max_distance = mode, int(top), float(max_distance)
        self.include_live = include_live
        self.live_tracklets = live_tracklets or (lambda: ())
        self.max_size, self.max_age_s, self.clock = max_size, float(max_age_s), clock
        dims = runtime.bundle.dims
        binding = getattr(runtime, "binding", None)
        self.gallery = Gallery(dims["shared"], dims["specific"],
                               binding.model_hash if binding is not None else None)
        self.tracklets: dict[int, Tracklet] = {}      # identity id -> gallery tracklet
        self._updated: dict[int, float] = {}          # identity -> last write, oldest first
        self._written: dict[int, int] = {}            # identity -> extracted samples written
        self.lock = threading.RLock()
        self._next_identity = 0
        self._forgotten: set[int] = set()             # dropped at the next prune

    def new_identity(self) -> int:
        with self.lock:
            self._next_identity += 1
            return self._next_identity

    def forget(self, identity: int) -> None:
        """Drop ``identity``'s entry at the next prune (its track was stitched into an earlier
        one, whose id it now has); pruning is the associating thread's, see :meth:`_sync`."""
        with self.lock:
            self._forgotten.add(int(identity))

    def is_gallery(self, t: Tracklet) -> bool:
        return modality_code(t.modality) == self.gallery_code

    def end(self, t: Tracklet) -> dict | None:
        """Handle an ended tracklet (its samples settled): gallery add, or a search -> event;
        then its sample features are released (the gallery holds what is still needed)."""
        try:
            if self.is_gallery(t):
                with self.lock:
                    self._put([t])
                    self._prune()
                return None
            return self.search(t)
        finally:
            with self.lock:
                t.release()

    def _put(self, tracklets: list[Tracklet]) -> None:
        """Write each tracklet's current feature as the entry of its identity (replacing an
        older one) in one gallery write (each write copies the table); tracklets without a
        feature are skipped. Call with the lock held."""
        done = []
        for t in tracklets:
            n = len(t.extracted())      # counted first: a sample settling meanwhile is rewritten
            f = t.feature()
            if f is not None:
                done.append((t, f, n))
        if not done:
            return
        now = self.clock()
        ids = [t.identity for t, _, _ in done]
        self.gallery.add(Features.concat([f for _, f, _ in done]), ids,
                         [t.camera_index for t, _, _ in done], [t.track for t, _, _ in done],
                         meta=[{"camera": t.camera, "track": t.track} for t, _, _ in done],
                         entry_ids=ids, timestamps=now)
        for t, _, n in done:
            self.tracklets[t.identity] = t
            self._updated.pop(t.identity, None)
            self._updated[t.identity] = now
            self._written[t.identity] = n

    def _prune(self) -> None:
        """Drop entries older than ``max_age_s`` and the oldest beyond ``max_size``."""
        cut = self.clock() - self.max_age_s
        drop = [i for i, ts in self._updated.items() if ts < cut or i in self._forgotten]
        self._forgotten.clear()
        extra = len(self._updated) - len(drop) - self.max_size
        if extra > 0:
            aged = set(drop)
            drop += [i for i in self._updated if i not in aged][:extra]
        if not drop:
            return
        self.gallery.remove(entry_ids=drop)
        for i in drop:
            self._updated.pop(i, None)
            self._written.pop(i, None)
            self.tracklets.pop(i, None)

    def _sync(self, prune: bool = True) -> None:
        """Upsert the live gallery-modality tracklets whose features changed, then prune (only
        the associating thread prunes, so its searches never meet a gallery emptied under
        them)."""
        live = [t for t in self.live_tracklets() if self.is_gallery(t)] \
            if self.include_live else []
        with self.lock:
            self._put([t for t in live if t.identity is not None
                       and len(t.extracted()) != self._written.get(t.identity, 0)])
            if prune:
                self._prune()

    def search(self, t: Tracklet) -> dict:
        """The event of a query tracklet (see the module docstring)."""
        event = {**_span(t), "identity": "unknown", "matches": []}
        query = t.feature()
        if query is None:
            event["reason"] = "no usable crops (all filtered or failed)"
            return event
        self._sync()
        if len(self.gallery) == 0:
            event["reason"] = f"the {self.gallery_modality} gallery is still empty"
            return event
        hit = self._rank(query, t)
        with self.lock:
            owners = dict(self.tracklets)
        for pid, dist in zip(hit.pids.tolist(), hit.distances.tolist()):
            g = owners.get(int(pid))
            if g is None:       # pruned since (a gallery at its size bound)
                continue
            event["matches"].append({"identity": int(pid), "camera": g.camera,
                                     "track": g.track, "distance": round(float(dist), 5),
                                     "live": not g.ended})
        best = event["matches"][0] if event["matches"] else None
        if best is not None and best["distance"] <= self.max_distance:
            event["identity"] = best["identity"]
        elif best is not None:
            event["reason"] = f"best distance {best['distance']:.3f} > {self.max_distance:g}"
        return event

    def _rank(self, query: Features, t: Tracklet):
        """The query's ranking in the live gallery; in ``rolling`` mode the rolling set is the
        auxiliary set, and the query's samples (not its mean) join it afterwards."""
        if self.mode != "rolling":
            return self.runtime.search(query, top=self.top, mode=self.mode,
                                       gallery=self.gallery)[0]
        rt = self.runtime
        # "all-queries" over the rolling snapshot is exactly "rolling" without its add.
        hit = self.gallery.search(query, self.top, transfer=rt.sstn, mode="all-queries",
                                  auxiliary=rt.rolling.snapshot())[0]
        samples = t.sample_features()
        if samples is not None:
            rt.rolling.add(samples)
        return hit

    def provisional(self, t: Tracklet) -> int | None:
        """A cheap guess for a live query tracklet (shared features, no transfer, no rolling
        update): the best identity within ``max_distance``, or None."""
        query = t.feature()
        if query is None:
            return None
        self._sync(prune=False)
        if len(self.gallery) == 0:
            return None
        hit = self.gallery.search(query, top=1, mode="shared")[0]
        if len(hit.pids) and float(hit.distances[0]) <= self.max_distance:
            return int(hit.pids[0])
        return None

    def owner(self, identity: int) -> Tracklet | None:
        with self.lock:
            return self.tracklets.get(identity)


def _span(t: Tracklet) -> dict:
    s = t.summary()
    return {"camera": t.camera, "modality": t.modality, "track": t.track,
            "start_frame": s["start_frame"], "end_frame": s["end_frame"],
            "start_time": round(float(s["start_time"]), 3),
            "end_time": round(float(s["end_time"]), 3), "samples": s["samples"]}

