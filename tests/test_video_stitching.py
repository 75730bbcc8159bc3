"""Appearance stitching (issue 22 item 3): a split track is joined, two different people are
not (features far apart, too far away, too late), the assignment pairs ends with their own
starts, and ``tracks.json`` records the join."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssft_deploy.errors import InputError
from ssft_deploy.video import CameraSpec, Detections, PipelineConfig, VideoPipeline
from ssft_deploy.video.stitching import StitchConfig, Stitcher, gates
from ssft_deploy.video.tracklets import Sample, Tracklet
from tests.test_video_pipeline import Frames

CFG = StitchConfig(window=5, max_gap=20, max_distance=1.5, min_cosine=0.9)


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def tracklet(track, first, last, box0, box1, feat, identity=None):
    t = Tracklet("cam", 0, "rgb", track, first, first / 10, last, last / 10, boxes=last - first + 1,
                 identity=identity)
    t.first_box, t.last_box = tuple(map(float, box0)), tuple(map(float, box1))
    for f in range(first, last + 1, 4):
        s = Sample(f, (0, 0, 1, 1), 1.0, "extracted")
        s.shared, s.specific = unit(feat), unit(feat[::-1])
        t.samples.append(s)
    return t


BOX = (100, 20, 130, 100)          # 80 px tall
NEAR = (110, 20, 140, 100)         # 10 px to the right
FAR = (300, 20, 330, 100)          # 2.5 heights away
ME, OTHER = [1, 0.2, 0.1, 0.3], [0.1, 1, -0.5, 0.2]
# cosine 1 / sqrt(1 + 0.4 ** 2) = 0.93 to ME: within CFG's 0.9, but less alike than ME to ME
TWIN = list(unit(ME) + 0.4 * unit([-0.2, 1, 0, 0]))


def decide(a, b, cfg=CFG):
    """a ends at step 1 and is decided when its window closes; b is live."""
    st = Stitcher(cfg)
    assert st.step([a], [b], 1) == ([], [])          # held, nothing decided yet
    return st.step([], [b], 1 + cfg.window)


def test_split_track_is_joined():
    a = tracklet(1, 0, 20, BOX, BOX, ME, identity=7)
    b = tracklet(2, 26, 40, NEAR, NEAR, ME, identity=9)
    n_samples = len(a.samples) + len(b.samples)
    forgotten = []
    st = Stitcher(CFG, forget=forgotten.append)
    st.step([a], [b], 1)
    emit, joined = st.step([], [b], 1 + CFG.window)
    assert emit == [] and joined == [a]
    assert a.joined_into == 2 and b.joined == [1] and a.samples == []
    assert len(b.samples) == n_samples and b.first_frame == 0 and b.first_box == a.first_box
    assert b.identity == 7 and forgotten == [9]     # the gallery person keeps the first id
    assert a.summary()["joined_into"] == 2 and b.summary()["joined"] == [1]


@pytest.mark.parametrize("why, b", [
    ("features far apart", tracklet(2, 26, 40, NEAR, NEAR, OTHER)),
    ("too far away", tracklet(2, 26, 40, FAR, FAR, ME)),
    ("too late", tracklet(2, 45, 60, NEAR, NEAR, ME)),
    ("started before the end", tracklet(2, 15, 40, NEAR, NEAR, ME)),
])
def test_different_people_are_not_joined(why, b):
    a = tracklet(1, 0, 20, BOX, BOX, ME)
    emit, joined = decide(a, b)
    assert emit == [a] and joined == [], why
    assert a.joined_into is None and b.joined == []


def test_no_feature_no_join():
    a = tracklet(1, 0, 20, BOX, BOX, ME)
    b = tracklet(2, 26, 40, NEAR, NEAR, ME)
    b.samples = []
    assert decide(a, b) == ([a], [])


def test_window_zero_is_off():
    a = tracklet(1, 0, 20, BOX, BOX, ME)
    b = tracklet(2, 26, 40, NEAR, NEAR, ME)
    assert Stitcher(StitchConfig(window=0)).step([a], [b], 1) == ([a], [])


def test_assignment_pairs_each_end_with_its_own_start():
    # two similar people cross: every pair passes the gates and each end is nearer the other's
    # start; the assignment on the cosines still pairs each with its own
    a1 = tracklet(1, 0, 20, (100, 20, 130, 100), (100, 20, 130, 100), ME)
    a2 = tracklet(2, 0, 20, (130, 20, 160, 100), (130, 20, 160, 100), TWIN)
    b1 = tracklet(3, 24, 40, (128, 20, 158, 100), (128, 20, 158, 100), ME)
    b2 = tracklet(4, 24, 40, (102, 20, 132, 100), (102, 20, 132, 100), TWIN)
    assert all(gates(a, b, CFG) for a in (a1, a2) for b in (b1, b2))
    st = Stitcher(CFG)
    st.step([a1, a2], [b1, b2], 1)
    emit, joined = st.step([], [b1, b2], 1 + CFG.window)
    assert emit == [] and {a.joined_into for a in joined} == {3, 4}
    assert (a1.joined_into, a2.joined_into) == (3, 4)


def test_flush_joins_a_chain():
    a = tracklet(1, 0, 10, BOX, BOX, ME)
    b = tracklet(2, 14, 24, NEAR, NEAR, ME)
    c = tracklet(3, 28, 40, BOX, BOX, ME)
    st = Stitcher(CFG)
    st.step([a], [b, c], 1)
    emit, joined = st.flush([b, c])
    assert emit == [c] and c.joined == [1, 2] and c.first_frame == 0 and len(joined) == 2


def test_bad_settings_are_refused():
    with pytest.raises(InputError):
        StitchConfig(window=-1)
    with pytest.raises(InputError):
        StitchConfig(min_cosine=2)


def scene(second_colour):
    """A 30x60 block on frames 0-19, gone for 12 frames, back at the same place on 32-51 in
    ``second_colour``; a detector that boxes it exactly."""
    frames = []
    for i in range(60):
        f = np.full((120, 200, 3), 60, np.uint8)
        if i < 20:
            f[30:90, 80:110] = (30, 60, 220)
        elif 32 <= i < 52:
            f[30:90, 81:111] = second_colour
        frames.append(f)

    def detect(frame, index):
        if index < 20 or 32 <= index < 52:
            x = 80 if index < 20 else 81
            return Detections(np.asarray([[x, 30, x + 30, 90]], np.float32),
                              np.full(1, 0.9, np.float32))
        return Detections.empty()
    return frames, detect


def run_scene(rt, tmp_path, colour, window):
    frames, detect = scene(colour)
    cfg = PipelineConfig(every=2, lost_frames=5,
                         stitch=StitchConfig(window=window, max_gap=20, min_cosine=0.9,
                                             wait_s=10.0))   # a loaded CI: no flake
    pipe = VideoPipeline(rt, [CameraSpec("a", "x", "rgb")], {"a": detect}, out=str(tmp_path),
                         config=cfg, annotate=False, pictures=False,
                         open_fns={"a": lambda: Frames(frames)})
    s = pipe.run()
    return s, json.loads((tmp_path / "tracks.json").read_text())["tracks"]


def test_tracks_json_records_the_join(tiny_runtime, tmp_path):
    s, tracks = run_scene(tiny_runtime, tmp_path / "on", (30, 60, 220), window=10)
    assert len(tracks) == 2, tracks
    first, second = sorted(tracks, key=lambda t: t["track"])
    assert first["joined_into"] == second["track"] and second["joined"] == [first["track"]]
    assert first["outcome"].startswith("joined") and second["outcome"] == "gallery"
    assert second["start_frame"] == 0 and second["end_frame"] == 51
    assert second["identity"] == first["identity"]     # one gallery person, the first id
    c = s["crops"]      # every crop counted once, the joined samples with the later track
    assert c["sampled"] == sum(sum(t["samples"].values()) for t in tracks)
    # without stitching (the old behaviour): two gallery entries, nothing joined
    _, off = run_scene(tiny_runtime, tmp_path / "off", (30, 60, 220), window=0)
    assert [t["outcome"] for t in off] == ["gallery", "gallery"]
    assert not any(t["joined"] or t["joined_into"] for t in off)


def test_a_different_person_in_the_same_place_is_not_joined(tiny_runtime, tmp_path):
    _, tracks = run_scene(tiny_runtime, tmp_path, (200, 220, 40), window=10)
    assert [t["outcome"] for t in tracks] == ["gallery", "gallery"], tracks
    assert not any(t["joined"] for t in tracks)


def test_a_forgotten_gallery_id_leaves_at_the_next_prune(tiny_runtime):
    """The later track of a join in the gallery camera takes the earlier one's id: the entry
    its own id had while live must go, or a query could be matched to a person twice."""
    from ssft_deploy.video.association import Associator

    ds, dp = tiny_runtime.bundle.dims["shared"], tiny_runtime.bundle.dims["specific"]
    assoc = Associator(tiny_runtime, "rgb")
    rng = np.random.default_rng(0)
    entries = []
    for identity in (1, 2):
        t = Tracklet("a", 0, "rgb", identity, 0, 0.0, identity=identity)
        t.samples.append(Sample(0, (0, 0, 8, 16), 0.9, "extracted", None,
                                rng.normal(size=ds).astype(np.float32),
                                rng.normal(size=dp).astype(np.float32)))
        entries.append(t)
    with assoc.lock:
        assoc._put(entries)
    assoc.forget(2)
    assert len(assoc.gallery) == 2            # not under a search: pruning is the associator's
    with assoc.lock:
        assoc._prune()
    assert len(assoc.gallery) == 1 and assoc.owner(2) is None and assoc.owner(1) is entries[0]
