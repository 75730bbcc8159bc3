"""``ssft-video`` end to end, its errors, Ctrl-C; camera specs, frame queue and backoff."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from examples.make_video import make_videos
from ssft_deploy.errors import InputError
from ssft_deploy.frames import Stretch
from ssft_deploy.video.cli import main
from ssft_deploy.video.sources import Backoff, CameraReader, CameraSpec, Frame, FrameQueue

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene")
    make_videos(out, people=2, frames=24, crop_size=(64, 32), lead_in=6, seed=1)
    return out


def test_cli_writes_every_output(scene, tiny_bundle, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["--bundle", str(tiny_bundle), "--out", str(out),
                                    "--camera", f"cam1={scene / 'rgb.avi'}:rgb",
                                    "--camera", f"cam3={scene / 'ir.avi'}:ir", "--every", "3",
                                    "--detector", "motion"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    tracks = json.loads((out / "tracks.json").read_text())
    assert summary["events"] == len(events) >= 1 and summary["frames"] == 60
    assert {t["camera"] for t in tracks["tracks"]} == {"cam1", "cam3"}
    for e in events:
        assert e["camera"] == "cam3" and e["modality"] == "ir" and e["matches"]
        assert e["start_frame"] <= e["end_frame"] and e["start_time"] <= e["end_time"]
        assert (out / e["picture"]).stat().st_size > 0
        assert e["identity"] == e["matches"][0]["identity"]          # max distance 1.0
    for cam in ("cam1", "cam3"):
        assert (out / f"{cam}.avi").stat().st_size > 0 and (out / f"{cam}.mot.txt").exists()


def test_cli_unknown_below_the_threshold(scene, tiny_bundle, tmp_path):
    res = CliRunner().invoke(main, ["--bundle", str(tiny_bundle), "--out", str(tmp_path),
                                    "--camera", f"a={scene / 'rgb.avi'}:rgb",
                                    "--camera", f"b={scene / 'ir.avi'}:ir",
                                    "--max-distance", "0", "--no-video", "--no-pictures",
                                    "--detector", "motion"])
    assert res.exit_code == 0, res.output
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events and all(e["identity"] == "unknown" and e["matches"] for e in events)
    assert not (tmp_path / "a.avi").exists() and not (tmp_path / "rankings").exists()


@pytest.mark.parametrize("args, message", [
    (["--camera", "cam1=x.avi"], "NAME=PATH_OR_URL:rgb"),
    (["--camera", "cam1=nope.avi:rgb"], "nope.avi does not exist"),
    (["--camera", "a=x:rgb", "--stretch", "b=fixed:1:2"], "--stretch"),
    (["--camera", "a=x:ir", "--stretch", "a=fixed:5:1"], "low < high"),
    (["--camera", f"a={ROOT}:rgb", "--detector", "yolo"], "unknown detector"),
    (["--camera", f"a={ROOT}:rgb", "--camera", f"a={ROOT}:ir"], "distinct names"),
])
def test_cli_errors_exit_2_without_traceback(tiny_bundle, tmp_path, args, message):
    res = CliRunner().invoke(main, ["--bundle", str(tiny_bundle), "--out", str(tmp_path),
                                    *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("sig, ignored", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                         (signal.SIGINT, True)])
def test_ctrl_c_stops_cleanly_and_flushes(scene, tiny_bundle, tmp_path, sig, ignored):
    """``ignored``: started with SIGINT ignored, as a background job of a script is; Ctrl-C
    must still stop it (it used to run on, writing video until the disk was full)."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ssft_deploy.video.cli", "--bundle", str(tiny_bundle), "--out",
           str(out), "--camera", f"a={scene / 'rgb.avi'}:rgb", "--camera",
           f"b={scene / 'ir.avi'}:ir", "--live", "a", "--live", "b", "--lost-frames", "100",
           "--detector", "motion"]
    if ignored:  # the shell's `trap '' INT` is inherited through exec
        cmd = ["sh", "-c", "trap '' INT; exec \"$0\" \"$@\"", *cmd]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "a.mot.txt").exists():
        time.sleep(0.2)
    time.sleep(2.0)             # the live cameras loop forever: only a signal ends the run
    proc.send_signal(sig)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()             # never leave a hung run behind (it would load the next tests)
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["interrupted"] and summary["frames"] > 0
    tracks = json.loads((out / "tracks.json").read_text())
    assert tracks["interrupted"] and tracks["crops"]["pending"] == 0
    events = (out / "events.jsonl").read_text().splitlines()
    assert len(events) == summary["events"] >= 1          # open tracks ended and were flushed


def test_camera_spec_parsing():
    s = CameraSpec.parse("door=rtsp://user:pw@10.0.0.5:554/live:ir", stretch="fixed:1:9")
    assert (s.name, s.source, s.modality, s.is_live) == ("door", "rtsp://user:pw@10.0.0.5:554/live",
                                                         "ir", True)
    assert s.stretch == Stretch("fixed", 1, 9)
    assert not CameraSpec.parse("a=/data/v.mp4:RGB").is_live
    assert CameraSpec.parse("a=/data/v.mp4:rgb", live=True).is_live
    for bad in ("a=/v.mp4", "=/v.mp4:rgb", "a=:ir", "a=/v.mp4:uv"):
        with pytest.raises(InputError):
            CameraSpec.parse(bad)


def test_frame_queue_policies():
    q = FrameQueue(size=2, policy="drop")
    for i in range(5):
        q.put(Frame("a", i, 0.0, np.zeros((2, 2), np.uint8)))
    assert q.dropped == 3 and [q.get(0).index for _ in range(2)] == [3, 4]
    q.close()
    assert q.get(0.01) is None
    with pytest.raises(InputError):
        FrameQueue(size=0)


def test_backoff_gives_up_and_a_missing_file_is_reported_not_raised(tmp_path):
    assert list(Backoff(0.5, 2.0, tries=5).delays()) == [0.5, 1.0, 2.0, 2.0, 2.0]
    live = CameraReader(CameraSpec("a", "rtsp://nowhere/x", "rgb"), open_fn=_refuse,
                        backoff=Backoff(0.001, 0.002, tries=3)).start()
    live.thread.join(5)
    assert live.error.startswith("gave up after 3") and live.queue.get(0.1) is None
    gone = CameraReader(CameraSpec("b", str(tmp_path / "none.mp4"), "rgb")).start()
    gone.thread.join(5)
    assert "cannot open" in gone.error and gone.events[0]["event"] == "open-failed"


def _refuse():
    raise ConnectionRefusedError("no route")
