"""Issue 19, items 1-3: a live multi-camera run under ordinary faults never fails silently.

Cameras are independent (a stalled stream or a FIFO with no writer beside a file camera that must
keep all its frames), every thread catches at its boundary (a ranking picture that cannot be
written, exceptions on the associator thread), and ``ssft-video`` exits with a code that says
what happened (bad arguments up front, every camera failed, a stage failed)."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from examples.make_video import make_videos
from ssft_deploy.errors import EngineError
from ssft_deploy.video import Backoff, CameraSpec, PipelineConfig, VideoPipeline
from ssft_deploy.video.cli import main

FAST = Backoff(initial=0.05, maximum=0.2)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults")
    make_videos(out, people=2, frames=24, crop_size=(64, 32), lead_in=6, seed=1)
    return out


def frame_count(path: Path) -> int:
    import cv2

    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture
def stalled_port():
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []

    def accept():
        while True:
            try:
                conns.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()
    for c in conns:
        c.close()


def quick(**kw) -> PipelineConfig:
    cfg = PipelineConfig(every=3, backoff=FAST)
    cfg.open_timeout_s = 0.5            # an attribute, so the old code runs the test too
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_a_stalled_stream_does_not_stop_a_file_camera(tiny_runtime, scene, stalled_port):
    """The stalled server accepts and never answers; the file camera beside it must still
    deliver every frame of its file (it used to process 0: one lock held by the stalled open)."""
    cams = [CameraSpec("stall", f"rtsp://127.0.0.1:{stalled_port}/live", "rgb"),
            CameraSpec("file", str(scene / "ir.avi"), "ir")]
    pipe = VideoPipeline(tiny_runtime, cams, "motion", config=quick())
    n = frame_count(scene / "ir.avi")

    def stop_when_the_file_is_done():
        # 15 s, well under FFmpeg's own 30 s open timeout that used to free the file camera
        deadline = time.monotonic() + 15
        while ((pipe.cameras[1].processed < n or not pipe.cameras[0].reader.events)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        pipe.stop()

    threading.Thread(target=stop_when_the_file_is_done, daemon=True).start()
    s = pipe.run()
    file, stall = s["cameras"]["file"], s["cameras"]["stall"]
    assert file["processed"] == n and file["state"] == "ended"
    assert stall["processed"] == 0 and stall["state"] in ("connecting", "reconnecting")
    assert "timed out" in stall["reason"] and stall["connection"][0]["event"] == "retry"


def test_a_fifo_with_no_writer_fails_alone(tiny_runtime, scene, tmp_path):
    """A FIFO without a writer blocks in open(2) forever: the camera fails after the open
    timeout, the file camera delivers every frame and the run ends on its own."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cams = [CameraSpec("pipe", str(fifo), "ir"),
            CameraSpec("file", str(scene / "rgb.avi"), "rgb")]
    try:
        s = VideoPipeline(tiny_runtime, cams, "motion", config=quick()).run(duration_s=20.0)
    finally:
        try:  # release the open still blocked on the FIFO
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert s["cameras"]["file"]["processed"] == frame_count(scene / "rgb.avi")
    pipe = s["cameras"]["pipe"]
    assert pipe["state"] == "failed" and "timed out" in pipe["reason"]
    assert s["wall_s"] < 15 and s["exit_code"] == 5
    assert [e["stage"] for e in s["errors"]] == ["open"]


@pytest.fixture
def stalling_mjpeg():
    """An HTTP MJPEG camera (multipart/x-mixed-replace, as IP cameras serve) that sends 20
    frames on each connection and then stalls with the connection open."""
    import cv2

    frames = [cv2.imencode(".jpg", np.full((64, 96, 3), 20 + 9 * i, np.uint8))[1].tobytes()
              for i in range(20)]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []

    def serve():
        while True:
            try:
                c = srv.accept()[0]
                conns.append(c)
                c.recv(4096)
                c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;"
                          b"boundary=frame\r\n\r\n")
                for f in frames:
                    c.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d"
                              b"\r\n\r\n" % len(f) + f + b"\r\n")
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/video"
    srv.close()
    for c in conns:
        c.close()


def test_a_stream_that_stalls_mid_way_is_reconnected(tiny_runtime, stalling_mjpeg):
    """A read that gets nothing for ``read_timeout_s`` fails: the camera is reconnected (with
    OpenCV's default it sat in one read for 30 s)."""
    pipe = VideoPipeline(tiny_runtime, [CameraSpec("cam", stalling_mjpeg, "rgb")], "motion",
                         config=quick(read_timeout_s=0.5))
    reader = pipe.cameras[0].reader

    def stop_after_two_reconnects():
        deadline = time.monotonic() + 15
        while reader.stats["reconnects"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pipe.stop()

    threading.Thread(target=stop_after_two_reconnects, daemon=True).start()
    cam = pipe.run()["cameras"]["cam"]
    # more frames than one connection sends: the stream went on after the reconnect
    assert cam["reconnects"] >= 2 and cam["disconnects"] >= 2 and cam["frames"] > 20
    assert cam["error"] is None


def _two_cameras(scene):
    return [CameraSpec("cam1", str(scene / "rgb.avi"), "rgb"),
            CameraSpec("cam3", str(scene / "ir.avi"), "ir")]


def test_unwritable_rankings_folder_still_writes_every_event(tiny_runtime, scene, tmp_path):
    out = tmp_path / "run"
    pipe = VideoPipeline(tiny_runtime, _two_cameras(scene), "motion", out=out, config=quick())
    (out / "rankings").write_text("a file where the pictures' folder should be")
    s = pipe.run()
    lines = (out / "events.jsonl").read_text().splitlines()
    queries = [t for t in s["tracks"] if t["camera"] == "cam3"]
    assert len(lines) == s["events"] == len(queries) >= 1          # used to be 0 lines
    assert all(t["outcome"] == "event" for t in queries)
    assert s["pictures_failed"] == len(lines)
    assert [(e["stage"], e["count"], e["fatal"]) for e in s["errors"]] == \
        [("picture", len(lines), False)]
    assert json.loads((out / "tracks.json").read_text())["errors"] == s["errors"]
    assert s["exit_code"] == 5


class Faulty:
    """The runtime, but ``search`` raises an ``EngineError`` on the calls in ``fails``."""

    def __init__(self, rt, fails=()):
        self.rt, self.fails, self.searches = rt, set(fails), 0

    def __getattr__(self, name):
        return getattr(self.rt, name)

    def search(self, *a, **kw):
        self.searches += 1
        if self.searches in self.fails:
            raise EngineError("injected transfer fault")
        return self.rt.search(*a, **kw)


@pytest.mark.parametrize("fault", ["engine", "nan"])
def test_an_associator_exception_loses_one_track_not_the_run(tiny_runtime, scene, fault):
    rt = Faulty(tiny_runtime, fails={1} if fault == "engine" else ())
    # all-queries: every search goes through runtime.search (rolling may rank in the gallery)
    pipe = VideoPipeline(rt, _two_cameras(scene), "motion", config=quick(mode="all-queries"))
    if fault == "nan":      # the first ended track with features gets a NaN one
        end, hit = pipe.associator.end, []

        def nan_end(t):
            if t.extracted() and not hit:
                hit.append(t)
                t.extracted()[0].shared[:] = np.nan
            return end(t)

        pipe.associator.end = nan_end
    s = pipe.run()
    assert s["events"] >= 1                  # the thread used to die: no event after the fault
    outcomes = [t["outcome"] for t in s["tracks"]]
    assert sum(o in ("event", "gallery") for o in outcomes) >= 2
    failed = [o for o in outcomes if o.startswith("association failed")]
    assert len(failed) == 1 and all(o is not None for o in outcomes)
    assert s["events"] == sum(o == "event" for o in outcomes)
    assert s["errors"][0]["stage"] == "associate" and not s["errors"][0]["fatal"]
    assert s["exit_code"] == 5


def test_disk_full_on_events_stops_the_run_as_failed(tiny_runtime, scene, tmp_path):
    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    cams = [CameraSpec("cam1", str(scene / "rgb.avi"), "rgb", live=True),
            CameraSpec("cam3", str(scene / "ir.avi"), "ir", live=True)]
    pipe = VideoPipeline(tiny_runtime, cams, "motion", out=tmp_path, config=quick(lost_frames=5))
    pipe.output._events = Full()
    s = pipe.run(duration_s=60)          # live files loop forever: only the failure stops it
    assert s["wall_s"] < 50 and s["exit_code"] == 4
    fatal = [e for e in s["errors"] if e["fatal"]]
    assert fatal and fatal[0]["stage"] == "events" and "No space left" in fatal[0]["error"]
    assert all(t["outcome"] for t in s["tracks"])        # every ended track says what became of it


# -- exit codes ---------------------------------------------------------------------------------
def _cli(bundle, out, *args):
    motion = [] if "--detector" in args else ["--detector", "motion"]  # the scene's detector
    return CliRunner().invoke(main, ["--bundle", str(bundle), "--out", str(out), *motion, *args])


def test_cli_every_camera_fails_to_open_exits_3(tiny_bundle, tmp_path):
    empty, noise = tmp_path / "empty.avi", tmp_path / "noise.mp4"
    empty.write_bytes(b"")
    noise.write_bytes(np.random.default_rng(0).bytes(50_000))
    res = _cli(tiny_bundle, tmp_path / "run", "--camera", f"a={empty}:rgb",
               "--camera", f"b={noise}:ir")
    assert res.exit_code == 3, res.output
    assert res.output.count("error: camera") == 2
    tracks = json.loads((tmp_path / "run" / "tracks.json").read_text())
    assert {c["state"] for c in tracks["cameras"].values()} == {"failed"}


def test_cli_detector_graph_without_detector_outputs_exits_2_before_work(tiny_bundle, scene,
                                                                        tmp_path):
    extractor = tiny_bundle / "extractor_rgb.onnx"
    if not extractor.exists():
        extractor = next(tiny_bundle.glob("*.onnx"))
    res = _cli(tiny_bundle, tmp_path / "run", "--camera", f"a={scene / 'rgb.avi'}:rgb",
               "--detector", f"onnx:{extractor}")
    assert res.exit_code == 2, res.output
    assert "not a detector" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()                   # nothing was started


def test_cli_output_path_taken_by_a_folder_exits_2_before_work(tiny_bundle, scene, tmp_path):
    out = tmp_path / "run"
    (out / "cam1.avi").mkdir(parents=True)
    res = _cli(tiny_bundle, out, "--camera", f"cam1={scene / 'rgb.avi'}:rgb")
    assert res.exit_code == 2, res.output
    assert "cam1.avi" in res.output and not (out / "events.jsonl").exists()


def test_cli_prints_one_line_per_error_and_exits_5(tiny_bundle, scene, tmp_path, monkeypatch):
    from ssft_deploy.video import outputs

    def refuse(path, image):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(outputs, "save_picture", refuse)     # rankings/ cannot be written
    out = tmp_path / "run"
    res = _cli(tiny_bundle, out, "--camera", f"cam1={scene / 'rgb.avi'}:rgb",
               "--camera", f"cam3={scene / 'ir.avi'}:ir", "--no-video")
    assert res.exit_code == 5, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "picture" in lines[0]


def test_cli_clean_run_exits_0(tiny_bundle, scene, tmp_path):
    res = _cli(tiny_bundle, tmp_path / "run", "--camera", f"cam1={scene / 'rgb.avi'}:rgb",
               "--camera", f"cam3={scene / 'ir.avi'}:ir", "--no-video")
    assert res.exit_code == 0, res.output
    assert "error:" not in res.output


def test_cli_stage_failure_exits_4(tiny_bundle, scene, tmp_path, monkeypatch):
    from ssft_deploy.video import outputs

    def full(self, event):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.RunOutput, "event", full)
    res = _cli(tiny_bundle, tmp_path / "run", "--camera", f"cam1={scene / 'rgb.avi'}:rgb",
               "--camera", f"cam3={scene / 'ir.avi'}:ir", "--no-video")
    assert res.exit_code == 4, res.output
    assert "error: events: OSError" in res.output and "the run stopped" in res.output
