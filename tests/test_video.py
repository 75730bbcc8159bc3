"""The video example end to end: synthetic videos + detections -> batcher -> cross-modality search."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from examples.make_video import make_videos
from examples.video_reid import extract_tracks, main, read_mot, run_video_reid
from ssft_deploy.errors import InputError

EVERY, FRAMES, PEOPLE = 4, 14, 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("video")
    make_videos(out, people=PEOPLE, frames=FRAMES, crop_size=(48, 24), seed=3)
    return out


def streams(data: Path) -> dict:
    return {n: (data / f"{n}.avi", data / f"{n}.txt") for n in ("rgb", "ir")}


def expected_samples(dets: dict) -> dict[int, list[int]]:
    """Frames at which each track is sampled: its first frame, then every EVERY frames."""
    out: dict[int, list[int]] = {}
    for f in sorted(dets):
        for t, _ in dets[f]:
            if t not in out or f - out[t][-1] >= EVERY:
                out.setdefault(t, []).append(f)
    return out


def read_frames(path: Path) -> dict[int, np.ndarray]:
    cap, frames = cv2.VideoCapture(str(path)), {}
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames[len(frames) + 1] = frame
    cap.release()
    return frames


def test_generated_scene_is_consistent(data):
    truth = json.loads((data / "tracks.json").read_text())
    assert sorted(truth["rgb"].values()) == sorted(truth["ir"].values())   # same people
    assert truth["rgb"] != truth["ir"]                                    # other track order
    for name in ("rgb", "ir"):
        assert len(read_frames(data / f"{name}.avi")) == FRAMES
        dets = read_mot(data / f"{name}.txt")
        assert min(dets) >= 1 and max(dets) <= FRAMES
        assert {t for v in dets.values() for t, _ in v} == {int(t) for t in truth[name]}


def test_track_features_are_the_mean_of_their_sampled_crops(data, tiny_runtime):
    tracks, stats = extract_tracks(tiny_runtime, streams(data), every=EVERY, max_batch=4)
    for name in ("rgb", "ir"):
        dets = read_mot(data / f"{name}.txt")
        samples = expected_samples(dets)
        feats, ids, failed, submitted = tracks[name]
        assert failed == 0 and submitted == sum(len(v) for v in samples.values())
        assert ids.tolist() == sorted(samples)
        assert (feats.modality == (0 if name == "rgb" else 1)).all()
        frames = read_frames(data / f"{name}.avi")
        for row, t in enumerate(ids):
            direct = [tiny_runtime.extract_boxes(frames[f], [dict(dets[f])[t]], name) for f in
                      samples[t]]
            np.testing.assert_allclose(feats.shared[row],
                                       np.mean([d.shared[0] for d in direct], axis=0),
                                       rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(feats.specific[row],
                                       np.mean([d.specific[0] for d in direct], axis=0),
                                       rtol=1e-4, atol=1e-5)
    assert stats["completed"] == sum(v[3] for v in tracks.values())
    assert max(stats["batch_sizes"]) <= 4


def test_matches_rank_every_gallery_track(data, tiny_runtime):
    res = run_video_reid(tiny_runtime, streams(data), every=EVERY, top=PEOPLE, mode="single-query")
    assert len(res["matches"]) == PEOPLE
    for m in res["matches"]:
        assert sorted(h["track"] for h in m["matches"]) == sorted(res["gallery_tracks"])
        dists = [h["distance"] for h in m["matches"]]
        assert dists == sorted(dists)
    flipped = run_video_reid(tiny_runtime, streams(data), every=EVERY, gallery_modality="ir", top=1)
    assert flipped["query_modality"] == "rgb" and len(flipped["matches"]) == PEOPLE


def test_cli_prints_matches(data, tiny_bundle, tmp_path):
    res = CliRunner().invoke(main, ["--bundle", str(tiny_bundle), "--data", str(data), "--every",
                                    str(EVERY), "--top", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert res.output.count("IR track") == PEOPLE and "rank-1:" in res.output
    saved = json.loads((tmp_path / "o" / "matches.json").read_text())
    assert len(saved["matches"]) == PEOPLE and "rank1_correct" in saved


def test_cli_without_inputs_makes_the_scene(tiny_bundle, tmp_path, monkeypatch):
    import examples.video_reid as vr

    small = {"people": 2, "frames": 6, "crop_size": (32, 16)}
    monkeypatch.setattr(vr, "make_videos", lambda out, progress: make_videos(out, **small))
    res = CliRunner().invoke(main, ["--bundle", str(tiny_bundle), "--out", str(tmp_path), "--every",
                                    "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rgb.avi").exists() and (tmp_path / "matches.json").exists()
    assert res.output.count("IR track") == 2


def test_bad_detections_are_a_clear_error(tmp_path, data, tiny_runtime):
    bad = tmp_path / "bad.txt"
    bad.write_text("1,1,10,10,20,40,0.9\nnot,a,line\n")
    with pytest.raises(InputError, match="bad.txt:2"):
        read_mot(bad)
    with pytest.raises(InputError, match="cannot open video"):
        run_video_reid(tiny_runtime, {"rgb": (tmp_path / "none.avi", data / "rgb.txt"),
                                 "ir": (data / "ir.avi", data / "ir.txt")})
