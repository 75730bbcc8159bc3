"""Whole video pipeline throughput for 1, 4 and 16 cameras; ReID batched vs one call per crop.

    python benchmarks/video_throughput.py --bundle runs/demo/bundle [--cameras 1,4,16
        --duration 10 --out runs/demo/bench/video_throughput.json]

Cameras alternate between the synthetic scene's RGB and IR videos (``examples/make_video.py``,
made in ``--scene`` when missing), looped, through the default motion detector, ByteTrack, the
tracklet sampler and association, for ``--duration`` seconds per case. Each camera count runs
with ReID through the shared ``FrameBatcher`` and with one ``extract_boxes`` call per crop,
alternating which goes first. Reported per case: frames/s, crops/s, each stage's share of the
thread-seconds (read, detect, track, reid, associate), and ReID / (detection + tracking).
Target: with the batcher, at the largest camera count, ReID takes less time than detection and
tracking together (ratio < 1).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

if __package__ in (None, ""):  # run as `python benchmarks/video_throughput.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchError, check_target, format_table, header, int_list, write_json
from ssft_deploy.errors import SSFTError

TARGET = 1.0


def run_case(runtime, scene: Path, cameras: int, reid: str, duration: float, every: int) -> dict:
    """One pipeline run of ``cameras`` looped cameras for ``duration`` seconds."""
    from ssft_deploy.video import CameraSpec, PipelineConfig, VideoPipeline

    specs = [CameraSpec(f"cam{i:02d}", str(scene / ("rgb.avi" if i % 2 == 0 else "ir.avi")),
                        "rgb" if i % 2 == 0 else "ir") for i in range(cameras)]
    cfg = PipelineConfig(every=every, loop=True, reid=reid)
    load0 = os.getloadavg()[0]
    s = VideoPipeline(runtime, specs, "motion", config=cfg).run(duration_s=duration)
    st = s["stage_seconds"]
    total = sum(st.values()) or 1.0
    det_track = st["detect"] + st["track"]
    return {"cameras": cameras, "reid": reid, "wall_s": s["wall_s"], "frames": s["frames"],
            "fps": s["frames"] / s["wall_s"], "crops": s["crops"]["extracted"],
            "crops_per_s": s["crops"]["extracted"] / s["wall_s"],
            "failed_crops": s["crops"]["failed"],
            "share": {k: v / total for k, v in st.items()}, "stage_seconds": st,
            "reid_over_detect_track": st["reid"] / det_track if det_track else None,
            "mean_batch": (s["batcher"] or {}).get("mean_batch"),
            "load_before": load0, "load_after": os.getloadavg()[0]}


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False,
                                                         path_type=Path))
@click.option("--cameras", default="1,4,16", callback=int_list, show_default=True)
@click.option("--duration", default=10.0, show_default=True, type=click.FloatRange(0.5))
@click.option("--every", default=5, show_default=True, type=click.IntRange(1))
@click.option("--scene", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/demo/video/scene"), show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("runs/demo/bench/video_throughput.json"), show_default=True)
def main(bundle: Path, cameras: list[int], duration: float, every: int, scene: Path,
         out: Path) -> None:
    """Frames/s of the video pipeline for each camera count, batched vs per-crop ReID."""
    from ssft_deploy.runtime import ReIDRuntime

    if not (scene / "rgb.avi").exists() or not (scene / "ir.avi").exists():
        from examples.make_video import make_videos

        make_videos(scene, lead_in=10)
    rows = []
    try:
        with ReIDRuntime.open(bundle) as rt:
            for i, n in enumerate(cameras):
                order = ("batcher", "direct") if i % 2 == 0 else ("direct", "batcher")
                for reid in order:
                    rows.append(run_case(rt, scene, n, reid, duration, every))
                    r = rows[-1]
                    click.echo(f"{n:>2} cameras, {reid:<7}: {r['fps']:.1f} frames/s, reid / "
                               f"(detect+track) {r['reid_over_detect_track'] or 0:.2f}, load "
                               f"{r['load_before']:.1f}->{r['load_after']:.1f}")
    except SSFTError as exc:
        raise BenchError(str(exc)) from None
    rows.sort(key=lambda r: (r["cameras"], r["reid"]))
    table = [[r["cameras"], r["reid"], f"{r['fps']:.1f}", f"{r['crops_per_s']:.1f}",
              *(f"{100 * r['share'][k]:.0f}%" for k in ("read", "detect", "track", "reid",
                                                        "associate")),
              f"{r['reid_over_detect_track'] or 0:.2f}"] for r in rows]
    click.echo(format_table(["cams", "reid", "frames/s", "crops/s", "read", "detect", "track",
                             "reid", "assoc", "reid/(det+trk)"], table))
    top = max(cameras)
    batched = next(r for r in rows if r["cameras"] == top and r["reid"] == "batcher")
    direct = next(r for r in rows if r["cameras"] == top and r["reid"] == "direct")
    targets = [check_target(f"reid / (detect + track) at {top} cameras, batched",
                            batched["reid_over_detect_track"], TARGET, higher_is_better=False)]
    speedup = batched["fps"] / direct["fps"] if direct["fps"] else None
    click.echo(f"target: {targets[0]['note']} ({targets[0]['value']}); batched / per-crop "
               f"frames/s at {top} cameras: {speedup or 0:.2f}x")
    write_json(out, {**header("video_throughput"), "bundle": str(bundle), "every": every,
                     "duration_s": duration, "rows": rows, "targets": targets,
                     "batched_over_per_crop_fps": speedup})
    click.echo(f"results: {out}")


if __name__ == "__main__":
    main()
