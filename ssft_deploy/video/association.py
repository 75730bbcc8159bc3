"""Cross-modality association of ended tracklets -> events.

A tracklet of the gallery modality enters the gallery when its track ends (its identity id was
given when the track started). A tracklet of the other modality is searched when it ends: the
gallery (plus, with ``include_live``, the gallery-modality tracks not yet associated: still in
view or just ended, so a person seen by both cameras at once is found before the RGB track ends) ranked by the runtime's search in
``mode`` (default ``rolling``: recent queries form the transfer's auxiliary set, Fig. 4; the
query's samples join that set afterwards). The event's ``identity`` is the best match's, or
``"unknown"`` when no match lies within ``max_distance`` (Euclidean distance between unit
features, 0..2; the user sets it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from ssft_deploy.features import Features, modality_code
from ssft_deploy.gallery import Gallery
from ssft_deploy.video.tracklets import Tracklet


class Associator:
    """Gallery of ended gallery-modality tracklets; events for ended query tracklets."""

    def __init__(self, runtime, gallery_modality: str = "rgb", mode: str = "rolling",
                 top: int = 5, max_distance: float = 1.0, include_live: bool = True,
                 live_tracklets: Callable[[], Iterable[Tracklet]] | None = None) -> None:
        self.runtime = runtime
        self.gallery_code = modality_code(gallery_modality)
        self.gallery_modality = ("rgb", "ir")[self.gallery_code]
        self.mode, self.top, self.max_distance = mode, int(top), float(max_distance)
        self.include_live = include_live
        self.live_tracklets = live_tracklets or (lambda: ())
        dims = runtime.bundle.dims
        self.gallery = Gallery(dims["shared"], dims["specific"])
        self.tracklets: dict[int, Tracklet] = {}      # identity id -> gallery tracklet
        self.lock = threading.Lock()
        self._next_identity = 0

    def new_identity(self) -> int:
        with self.lock:
            self._next_identity += 1
            return self._next_identity

    def is_gallery(self, t: Tracklet) -> bool:
        return modality_code(t.modality) == self.gallery_code

    def end(self, t: Tracklet) -> dict | None:
        """Handle an ended tracklet (its samples settled): gallery add, or a search -> event."""
        if self.is_gallery(t):
            f = t.feature()
            if f is not None:
                self._add(self.gallery, t, f)
                with self.lock:
                    self.tracklets[t.identity] = t
            return None
        return self.search(t)

    @staticmethod
    def _add(gallery: Gallery, t: Tracklet, f: Features) -> None:
        gallery.add(f, [t.identity], [t.camera_index], [t.track],
                    meta=[{"camera": t.camera, "track": t.track}])

    def _search_gallery(self) -> tuple[Gallery, dict[int, Tracklet]]:
        """The gallery, plus the live gallery-modality tracklets that have features."""
        with self.lock:
            known = dict(self.tracklets)
        live = {} if not self.include_live else {
            t.identity: t for t in self.live_tracklets()
            if self.is_gallery(t) and t.identity not in known}
        live_feats = {i: t.feature() for i, t in live.items()}
        live_feats = {i: f for i, f in live_feats.items() if f is not None}
        if not live_feats:
            return self.gallery, known
        g = Gallery(*self.gallery.dims) if self.gallery.dims else Gallery()
        if len(self.gallery):
            feats, cols = self.gallery.entries()
            g.add(feats, cols["pids"], cols["camids"], cols["tracks"],
                  meta=self.gallery.meta(cols["ids"]))
        for i, f in live_feats.items():
            self._add(g, live[i], f)
        return g, {**known, **{i: live[i] for i in live_feats}}

    def search(self, t: Tracklet) -> dict:
        """The event of a query tracklet (see the module docstring)."""
        event = {**_span(t), "identity": "unknown", "matches": []}
        query = t.feature()
        if query is None:
            event["reason"] = "no usable crops (all filtered or failed)"
            return event
        gallery, owners = self._search_gallery()
        if len(gallery) == 0:
            event["reason"] = f"the {self.gallery_modality} gallery is still empty"
            return event
        hit = self.runtime.search(query, top=self.top, mode=self.mode, gallery=gallery)[0]
        if self.mode == "rolling":
            samples = t.sample_features()
            if samples is not None:
                self.runtime.rolling.add(samples)
        for pid, dist in zip(hit.pids.tolist(), hit.distances.tolist()):
            g = owners[int(pid)]
            event["matches"].append({"identity": int(pid), "camera": g.camera,
                                     "track": g.track, "distance": round(float(dist), 5),
                                     "live": not g.ended})
        best = event["matches"][0] if event["matches"] else None
        if best is not None and best["distance"] <= self.max_distance:
            event["identity"] = best["identity"]
        elif best is not None:
            event["reason"] = f"best distance {best['distance']:.3f} > {self.max_distance:g}"
        return event

    def provisional(self, t: Tracklet) -> int | None:
        """A cheap guess for a live query tracklet (shared features, no transfer, no rolling
        update): the best identity within ``max_distance``, or None."""
        query = t.feature()
        if query is None:
            return None
        gallery, _ = self._search_gallery()
        if len(gallery) == 0:
            return None
        hit = gallery.search(query, top=1, mode="shared")[0]
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

