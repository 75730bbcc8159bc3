"""Soak: N looping cameras for M minutes with faults injected; resources sampled over time.

    python benchmarks/video_soak.py [--bundle runs/demo/bundle] [--cameras 4 --minutes 10
        --out docs/results/video_soak.json]

Cameras alternate between the synthetic scene's RGB and IR videos (``examples/make_video.py``),
looped, through the motion detector, ByteTrack, the batcher and association, writing events and
ranking pictures (no annotated video) into ``--run-dir``. Faults injected all along:

- camera 0 is a live camera that stalls for ``--stall-s`` every ``--stall-every-s``: its frames
  stop, and its reopen hangs past the open timeout until the stall ends (a stalled server);
- every ``--picture-fail-every``-th ranking picture write fails (OSError, as a full disk);
- every camera's detector raises on every ``--detector-fail-every``-th frame.

Sampled every ``--sample-s``: Python threads, OS threads, open file descriptors, RSS. Verdicts:
threads and open files flat (the maximum over the second half of the run is not above the
maximum over the first half, after ``--warmup-s``), RSS growth from the end of the warm-up to
the end under 10 %, and every ended track accounted for (an event, a gallery entry or a recorded
reason: its ``outcome``). Every gallery-modality track enters the gallery: give
``--gallery-max-size`` / ``--gallery-max-age-s`` (the gallery bounds, issue 19 item 6) so that
the run reaches its steady state within the soak. Without ``--bundle`` (and no ``runs/demo/bundle``) an untrained
demo-size bundle is built with ``tests/bundle_factory.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import click

if __package__ in (None, ""):  # run as `python benchmarks/video_soak.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchError, header, write_json
from ssft_deploy.errors import SSFTError

RSS_TARGET = 0.10


def resources() -> dict:
    """Threads (Python and OS), open file descriptors and RSS (MiB) of this process now."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if ":" in line)
    return {"py_threads": threading.active_count(), "os_threads": int(status["Threads"]),
            "open_files": len(os.listdir("/proc/self/fd")),
            "rss_mib": round(int(status["VmRSS"].split()[0]) / 1024, 1)}


class StallingCamera:
    """A live camera over a video file that stalls for ``stall_s`` every ``every_s``: reads
    return nothing and opens hang until the stall is over (longer than the open timeout)."""

    def __init__(self, source: str, every_s: float, stall_s: float) -> None:
        self.source, self.every_s, self.stall_s = source, every_s, stall_s
        self.t0 = time.monotonic()
        self.stalls = 0

    def stalled_for(self) -> float:
        """Seconds until the current stall ends (0: not stalled)."""
        t = (time.monotonic() - self.t0) % self.every_s
        start = self.every_s - self.stall_s
        return self.every_s - t if t >= start else 0.0

    def open(self):
        from ssft_deploy.video.captures import open_source

        wait = self.stalled_for()
        if wait:
            time.sleep(wait)          # a stalled server: the open hangs past its timeout
        cam = self

        class Capture:
            def __init__(self):
                self.inner = open_source(cam.source)
                self.fps = self.inner.fps
                self.stalled = False

            def read(self):
                if cam.stalled_for():
                    if not self.stalled:
                        self.stalled = True
                        cam.stalls += 1
                    return None
                frame = self.inner.read()
                if frame is None:         # the file ended: a live stream goes on, loop it
                    self.inner.release()
                    self.inner = open_source(cam.source)
                    frame = self.inner.read()
                time.sleep(1 / self.fps)  # a live camera delivers at its frame rate
                return frame

            def release(self):
                self.inner.release()

        return Capture()


class FailingDetector:
    """The camera's detector, raising on every ``every``-th frame."""

    def __init__(self, inner, every: int) -> None:
        self.inner, self.every, self.calls, self.raised = inner, int(every), 0, 0

    def __call__(self, frame, index):
        self.calls += 1
        if self.every and self.calls % self.every == 0:
            self.raised += 1
            raise RuntimeError("injected detector fault")
        return self.inner(frame, index)


def fail_every(fn, every: int, counter: Counter):
    """``fn``, but every ``every``-th call raises OSError(ENOSPC) instead."""
    import errno

    def wrapped(*a, **kw):
        counter["calls"] += 1
        if every and counter["calls"] % every == 0:
            counter["failed"] += 1
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return fn(*a, **kw)

    return wrapped


def verdicts(samples: list[dict], warmup_s: float) -> dict:
    """Flatness of threads and open files, RSS growth after the warm-up (see module doc)."""
    after = [s for s in samples if s["t"] >= warmup_s] or samples
    half = len(after) // 2
    first, second = after[:max(half, 1)], after[half:] or after
    out = {}
    for key in ("py_threads", "os_threads", "open_files"):
        a, b = max(s[key] for s in first), max(s[key] for s in second)
        out[key] = {"first_half_max": a, "second_half_max": b,
                    "min": min(s[key] for s in after), "max": max(s[key] for s in after),
                    "flat": b <= a}
    base, end = after[0]["rss_mib"], after[-1]["rss_mib"]
    out["rss"] = {"at_warmup_end_mib": base, "at_end_mib": end,
                  "at_start_mib": samples[0]["rss_mib"],
                  "max_mib": max(s["rss_mib"] for s in after),
                  "growth": round((end - base) / base, 4), "target": RSS_TARGET,
                  "met": (end - base) / base < RSS_TARGET}
    return out


def plot(path: Path, samples: list[dict], title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        click.echo("matplotlib is not installed: no plot written")
        return None
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    for ax, keys, label in ((axes[0], ("os_threads", "py_threads"), "threads"),
                            (axes[1], ("open_files",), "open files"),
                            (axes[2], ("rss_mib",), "RSS (MiB)")):
        for k in keys:
            ax.plot(t, [s[k] for s in samples], label=k)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="lower right")
    axes[-1].set_xlabel("minutes")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def soak(bundle: Path, scene: Path, run_dir: Path, cameras: int, seconds: float, sample_s: float,
         warmup_s: float, stall_every_s: float, stall_s: float, picture_fail_every: int,
         detector_fail_every: int, gallery: dict) -> dict:
    from ssft_deploy.runtime import ReIDRuntime
    from ssft_deploy.video import outputs
    from ssft_deploy.video.detectors import MotionDetector
    from ssft_deploy.video.pipeline import Backoff, PipelineConfig, VideoPipeline
    from ssft_deploy.video.sources import CameraSpec

    specs = [CameraSpec(f"cam{i}", str(scene / ("rgb.avi" if i % 2 == 0 else "ir.avi")),
                        "rgb" if i % 2 == 0 else "ir", live=True if i == 0 else None)
             for i in range(cameras)]
    stalling = StallingCamera(specs[0].source, stall_every_s, stall_s)
    detectors = {s.name: FailingDetector(MotionDetector(), detector_fail_every) for s in specs}
    cfg = PipelineConfig(every=5, loop=True, open_timeout_s=2.0,
                         backoff=Backoff(initial=0.5, maximum=2.0), **gallery)
    pictures: Counter = Counter()
    save = outputs.save_picture
    outputs.save_picture = fail_every(save, picture_fail_every, pictures)
    samples: list[dict] = []
    done = threading.Event()
    try:
        with ReIDRuntime.open(bundle) as rt:
            pipe = VideoPipeline(rt, specs, detectors, out=run_dir, config=cfg, annotate=False,
                                 open_fns={specs[0].name: stalling.open})
            t0 = time.monotonic()

            def sampler():
                while True:
                    frames = sum(c.processed for c in pipe.cameras)
                    samples.append({"t": round(time.monotonic() - t0, 2), **resources(),
                                    "frames": frames, "events": len(pipe.events),
                                    "load_1m": round(os.getloadavg()[0], 2)})
                    if done.wait(sample_s):
                        return

            th = threading.Thread(target=sampler, name="soak-sampler", daemon=True)
            th.start()
            summary = pipe.run(duration_s=seconds)
            done.set()
            th.join()
    finally:
        outputs.save_picture = save
    outcomes = Counter((t["outcome"] or "NONE").split(":")[0] for t in summary["tracks"])
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return {"summary": summary, "samples": samples, "outcomes": dict(outcomes),
            "unaccounted": sum(t["outcome"] is None for t in summary["tracks"]),
            "events_written": len(lines), "stalls": stalling.stalls,
            "detector_faults": sum(d.raised for d in detectors.values()),
            "picture_writes": dict(pictures)}


def _commit() -> str | None:
    """The code's git commit (None outside a checkout)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def demo_bundle(path: Path) -> Path:
    """An untrained demo-size bundle (64x32 input) from tests/bundle_factory.py."""
    if not (path / "manifest.json").exists():
        from tests.bundle_factory import make_bundle

        make_bundle(path, input_size=(64, 32))
    return path


@click.command()
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="default: runs/demo/bundle, else an untrained demo-size bundle")
@click.option("--cameras", default=4, show_default=True, type=click.IntRange(2))
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(0.05))
@click.option("--sample-s", default=5.0, show_default=True, type=click.FloatRange(0.1))
@click.option("--warmup-s", default=60.0, show_default=True, type=click.FloatRange(0),
              help="resources are judged from here on")
@click.option("--stall-every-s", default=60.0, show_default=True, type=click.FloatRange(1))
@click.option("--stall-s", default=15.0, show_default=True, type=click.FloatRange(0.5))
@click.option("--picture-fail-every", default=3, show_default=True, type=click.IntRange(0))
@click.option("--detector-fail-every", default=50, show_default=True, type=click.IntRange(0))
@click.option("--gallery-max-size", type=click.IntRange(1), default=None,
              help="gallery entries kept (PipelineConfig.gallery_max_size)")
@click.option("--gallery-max-age-s", type=click.FloatRange(0, min_open=True), default=None,
              help="seconds an entry stays (PipelineConfig.gallery_max_age_s)")
@click.option("--scene", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/demo/video/scene"), show_default=True)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="the run's output folder (default: a temporary folder, removed)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("docs/results/video_soak.json"), show_default=True)
def main(bundle, cameras, minutes, sample_s, warmup_s, stall_every_s, stall_s,
         picture_fail_every, detector_fail_every, gallery_max_size, gallery_max_age_s, scene,
         run_dir, out) -> None:
    """Run the video pipeline for a long time under faults; threads, files and RSS over time."""
    from dataclasses import fields

    from ssft_deploy.video.pipeline import PipelineConfig

    if stall_s >= stall_every_s:
        raise BenchError("--stall-s must be shorter than --stall-every-s")
    gallery = {k: v for k, v in (("gallery_max_size", gallery_max_size),
                                 ("gallery_max_age_s", gallery_max_age_s)) if v is not None}
    known = {f.name for f in fields(PipelineConfig)}
    if set(gallery) - known:
        raise BenchError("this build's pipeline has no gallery bounds (issue 19 item 6): run "
                         "without --gallery-max-size / --gallery-max-age-s")
    if bundle is None:
        demo = Path("runs/demo/bundle")
        bundle = demo if demo.exists() else demo_bundle(Path("runs/demo/bench/soak_bundle"))
    if not (scene / "rgb.avi").exists() or not (scene / "ir.avi").exists():
        from examples.make_video import make_videos

        make_videos(scene, lead_in=10)
    seconds = minutes * 60
    warmup_s = min(warmup_s, seconds / 4)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            res = soak(bundle, scene, Path(run_dir or Path(tmp) / "run"), cameras, seconds,
                       sample_s, warmup_s, stall_every_s, stall_s, picture_fail_every,
                       detector_fail_every, gallery)
        except SSFTError as exc:
            raise BenchError(str(exc)) from None
    s = res.pop("summary")
    v = verdicts(res["samples"], warmup_s)
    cams = {k: {f: c[f] for f in ("processed", "frames", "frame_errors", "disconnects",
                                  "reconnects", "state", "reason")}
            for k, c in s["cameras"].items()}
    result = {**header("video_soak"), "commit": _commit(), "bundle": str(bundle),
              "cameras": cameras,
              "minutes": minutes, "warmup_s": warmup_s,
              "gallery_bounds": gallery,
              "faults": {"stall_every_s": stall_every_s, "stall_s": stall_s,
                         "picture_fail_every": picture_fail_every,
                         "detector_fail_every": detector_fail_every},
              "frames": s["frames"], "events": s["events"], "tracks": len(s["tracks"]),
              "crops": {k: s["crops"][k] for k in ("sampled", "extracted", "filtered",
                                                    "failed", "pending")},
              "pictures_failed": s["pictures_failed"], "exit_code": s["exit_code"],
              "errors": s["errors"], "camera_summary": cams, "verdicts": v, **res}
    result["targets"] = {
        "threads_flat": v["os_threads"]["flat"] and v["py_threads"]["flat"],
        "open_files_flat": v["open_files"]["flat"], "rss_growth_under_10pct": v["rss"]["met"],
        "zero_tracks_unaccounted": res["unaccounted"] == 0}
    write_json(out, result)
    png = plot(out.with_suffix(".png"), res["samples"],
               f"video soak: {cameras} cameras, {minutes:g} min, faults injected "
               f"({result['machine']['cpu']})")
    click.echo(f"{s['frames']} frames, {s['events']} events ({res['events_written']} written), "
               f"{len(s['tracks'])} tracks, {res['unaccounted']} unaccounted; stalls "
               f"{res['stalls']}, detector faults {res['detector_faults']}, pictures failed "
               f"{s['pictures_failed']}")
    for key in ("os_threads", "py_threads", "open_files"):
        click.echo(f"{key}: {v[key]['min']}..{v[key]['max']} (flat: {v[key]['flat']})")
    r = v["rss"]
    click.echo(f"RSS {r['at_warmup_end_mib']} -> {r['at_end_mib']} MiB after the warm-up "
               f"({100 * r['growth']:+.1f} %, target < {100 * RSS_TARGET:.0f} %)")
    click.echo(f"targets: {result['targets']}")
    click.echo(f"results: {out}" + (f", plot: {png}" if png else ""))


if __name__ == "__main__":
    main()
