"""Tracklets and association under a long live run (issue 19 item 6): expiry in processed frames,
rolling mode adds each sample once, the live gallery is searched without a copy, and the gallery
is bounded in age and size."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from ssft_deploy.gallery import memory
from ssft_deploy.transfer import RollingAuxiliary
from ssft_deploy.video import CameraSpec, Detections, PipelineConfig, VideoPipeline
from ssft_deploy.video.association import Associator
from ssft_deploy.video.tracklets import Sample, Tracklet


def _tracklet(rt, modality, track, n=3, seed=0, identity=None) -> Tracklet:
    ds, dp = rt.bundle.dims["shared"], rt.bundle.dims["specific"]
    rng = np.random.default_rng(seed)
    t = Tracklet("cam1" if modality == "rgb" else "cam3", 0 if modality == "rgb" else 1,
                 modality, track, 0, 0.0)
    for i in range(n):
        t.samples.append(Sample(i, (0, 0, 8, 16), 0.9, "extracted", None,
                                rng.normal(size=ds).astype(np.float32),
                                rng.normal(size=dp).astype(np.float32)))
    t.identity = identity
    return t


def test_a_person_occluded_while_a_live_camera_drops_frames_stays_one_track(tiny_runtime):
    """Expiry counted reader indices while ByteTrack counts processed frames: a live camera
    that dropped frames ended the tracklet early, ByteTrack kept the id, and one person became
    two tracklets of the same track id (their pictures overwrote each other)."""
    box = [[40, 10, 60, 70]]
    state = {"pipe": None}

    def detect(frame, index):
        if index == 3:   # a slow frame: the live camera's queue drops ~50 frames meanwhile
            reader = state["pipe"].cameras[0].reader
            deadline = time.monotonic() + 10
            while reader.stats["frames"] < 60 and time.monotonic() < deadline:
                time.sleep(0.002)
        visible = index < 3 or index >= 66      # absent for a few processed frames
        return Detections(np.asarray(box, np.float32), np.full(1, 0.9, np.float32)) \
            if visible else Detections.empty()

    class Live:
        fps = 25.0

        def __init__(self):
            self.i = 0

        def read(self):
            self.i += 1
            if not 5 < self.i <= 62:
                time.sleep(0.02)             # a real camera's pace, but a burst meanwhile
            return np.full((80, 120, 3), 50, np.uint8)

        def release(self):
            pass

    spec = CameraSpec("cam", "rtsp://cam.local/stream", "rgb")
    cfg = PipelineConfig(every=2, lost_frames=10, frame_queue=1, max_frames=80)
    pipe = VideoPipeline(tiny_runtime, [spec], {"cam": detect}, config=cfg,
                         open_fns={"cam": Live})
    state["pipe"] = pipe
    s = pipe.run()
    cam = s["cameras"]["cam"]
    assert cam["dropped"] >= 40 and cam["error"] is None
    tracks = [(t["track"], t["start_frame"], t["end_frame"]) for t in s["tracks"]]
    assert len(tracks) == 1 and tracks[0][1] <= 2 and tracks[0][2] >= 66, tracks


def test_rolling_mode_adds_each_sample_once_and_not_the_mean(tiny_runtime):
    assoc = Associator(tiny_runtime, "rgb", "rolling")
    g = _tracklet(tiny_runtime, "rgb", 1, seed=1, identity=assoc.new_identity())
    assert assoc.end(g) is None
    q = _tracklet(tiny_runtime, "ir", 7, n=3, seed=2)
    before = len(tiny_runtime.rolling)
    aux = RollingAuxiliary(300)                 # what "rolling" would rank with: a twin set
    if before:
        aux.add(tiny_runtime.rolling.snapshot())
    want = assoc.gallery.search(q.feature(), 5, transfer=tiny_runtime.sstn, mode="rolling",
                                auxiliary=aux)[0]
    samples = q.sample_features()
    event = assoc.end(q)
    assert event["matches"] and len(tiny_runtime.rolling) - before == 3
    assert [m["distance"] for m in event["matches"]] == \
        [round(float(d), 5) for d in want.distances]
    aux = tiny_runtime.rolling.snapshot()
    np.testing.assert_allclose(aux.shared[-3:], samples.shared)


def test_the_live_gallery_is_searched_without_a_copy(tiny_runtime, monkeypatch, caplog):
    """Every IR event used to copy the whole gallery into a new Gallery (a new uid: transfer
    cache misses, and a binding warning per copy)."""
    live = [_tracklet(tiny_runtime, "rgb", 2, seed=3)]
    assoc = Associator(tiny_runtime, "rgb", "single-query", live_tracklets=lambda: live)
    live[0].identity = assoc.new_identity()
    ended = _tracklet(tiny_runtime, "rgb", 1, seed=4, identity=assoc.new_identity())
    ended.ended = True
    assoc.end(ended)
    made = []
    real = memory.Gallery.__init__
    monkeypatch.setattr(memory.Gallery, "__init__",
                        lambda self, *a, **k: made.append(1) or real(self, *a, **k))
    with caplog.at_level(logging.WARNING):
        events = [assoc.end(_tracklet(tiny_runtime, "ir", 10 + i, seed=10 + i))
                  for i in range(3)]
        guess = assoc.provisional(_tracklet(tiny_runtime, "ir", 20, seed=20))
    assert made == [] and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for e in events:                      # the live track is still a candidate
        assert {m["identity"] for m in e["matches"]} == {1, 2}
        assert {m["live"] for m in e["matches"]} == {True, False}
    assert guess in (None, 1, 2)
    assoc.end(live[0])                    # it ends: its final feature replaces the live one
    assert len(assoc.gallery) == 2


def test_the_gallery_is_bounded_in_size_and_age(tiny_runtime):
    now = {"t": 1000.0}
    assoc = Associator(tiny_runtime, "rgb", "shared", max_size=3, max_age_s=60.0,
                       clock=lambda: now["t"])
    for i in range(5):
        now["t"] += 1
        assoc.end(_tracklet(tiny_runtime, "rgb", i, seed=i, identity=assoc.new_identity()))
    assert len(assoc.gallery) == 3 and sorted(assoc.tracklets) == [3, 4, 5]
    _, cols = assoc.gallery.entries()
    assert sorted(cols["pids"].tolist()) == [3, 4, 5]
    now["t"] += 58.5                       # identity 3 (t=1003) is 60.5 s old, 4 is 59.5
    ev = assoc.end(_tracklet(tiny_runtime, "ir", 9, seed=9))
    assert {m["identity"] for m in ev["matches"]} == {4, 5}
    assert sorted(assoc.tracklets) == [4, 5] and len(assoc.gallery) == 2
    now["t"] += 100
    ev = assoc.end(_tracklet(tiny_runtime, "ir", 9, seed=9))
    assert ev["matches"] == [] and "empty" in ev["reason"] and len(assoc.gallery) == 0


@pytest.mark.parametrize("kw", [{"max_size": 0}, {"max_age_s": 0}, {"max_age_s": float("nan")}])
def test_gallery_bounds_must_be_positive(tiny_runtime, kw):
    from ssft_deploy.errors import InputError

    with pytest.raises(InputError):
        Associator(tiny_runtime, **kw)


def test_pipeline_config_and_cli_pass_the_bounds(tiny_runtime):
    cfg = PipelineConfig(gallery_max_size=7, gallery_max_age_s=12.5)
    pipe = VideoPipeline(tiny_runtime, [CameraSpec("a", "x", "rgb")], "motion", config=cfg,
                         open_fns={"a": lambda: None})
    assert (pipe.associator.max_size, pipe.associator.max_age_s) == (7, 12.5)
    d = PipelineConfig()
    assert d.gallery_max_size == 5000 and d.gallery_max_age_s == 1800.0
    from ssft_deploy.video.cli import main

    names = {p.name for p in main.params}
    assert {"gallery_max_size", "gallery_max_age", "overwrite"} <= names


def test_an_associated_tracklet_keeps_no_features(tiny_runtime):
    """A long run keeps every ended tracklet for tracks.json; their sample features (2 x 2048
    floats each with a real bundle) used to stay in memory for the life of the process."""
    assoc = Associator(tiny_runtime, "rgb", "single-query")
    g = _tracklet(tiny_runtime, "rgb", 1, seed=1, identity=assoc.new_identity())
    q = _tracklet(tiny_runtime, "ir", 2, seed=2)
    assoc.end(g)
    assert assoc.end(q)["matches"]
    for t in (g, q):
        assert all(s.shared is None and s.specific is None for s in t.samples)
        assert t.feature() is None and t.summary()["samples"]["extracted"] == 3
    assert len(assoc.gallery) == 1 and assoc.owner(g.identity) is g
