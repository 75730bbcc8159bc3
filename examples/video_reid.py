"""Cross-modality re-identification over two video streams, through the camera-frame batcher.

    python examples/video_reid.py --bundle runs/demo/bundle --out runs/demo/video
    python examples/video_reid.py --bundle B --rgb-video a.mp4 --rgb-det a.txt --ir-video ...

Without input videos it first makes the synthetic scene of ``make_video.py`` in ``--out``.

Each camera (an RGB and an IR video, each with a MOTChallenge detections file
``frame,id,x,y,w,h,conf,...``) is read by its own thread with OpenCV; every ``--every`` frames per
track the person box goes to a shared ``FrameBatcher``, which batches crops of both cameras per
modality. A track's feature is the mean of its crops' features. The tracks of one modality form
the gallery, the other modality's tracks are the queries; the matches are printed (and checked
against ``tracks.json`` when the data folder has one) and written to ``<out>/matches.json``.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from concurrent.futures import Future
from pathlib import Path

import click
import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python examples/video_reid.py`
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.make_video import make_videos
from ssft_deploy.batcher import FrameBatcher
from ssft_deploy.errors import InputError, SSFTError
from ssft_deploy.features import Features, modality_code
from ssft_deploy.gallery import MODES, Gallery
from ssft_deploy.video.detectors import read_mot as mot_rows

CAMERA_IDS = {"rgb": 1, "ir": 3}


def read_mot(path: str | Path, min_conf: float = 0.0) -> dict[int, list[tuple[int, tuple]]]:
    """MOTChallenge detections -> {frame (from 1): [(track id, (x, y, w, h)), ...]}."""
    return {f: [(t, b) for t, b, _ in rows] for f, rows in mot_rows(path, min_conf).items()}


def sample_video(batcher: FrameBatcher, video: str | Path, detections: dict, modality: str,
                 camera_id: int, every: int) -> list[Future]:
    """Submit each track's box every ``every`` frames (from its first); futures tagged
    ``(track, frame)``."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise InputError(f"OpenCV cannot open video {video}")
    last: dict[int, int] = {}
    futures: list[Future] = []
    frame_no = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frame_no += 1
            due = [(t, b) for t, b in detections.get(frame_no, [])
                   if t not in last or frame_no - last[t] >= every]
            if not due:
                continue
            for t, _ in due:
                last[t] = frame_no
            futures += batcher.submit_boxes(frame, [b for _, b in due], camera_id, modality,
                                            tags=[(t, frame_no) for t, _ in due])
    finally:
        cap.release()
    if frame_no == 0:
        raise InputError(f"video {video} has no readable frames")
    return futures


def track_features(futures: list[Future], modality: str) -> tuple[Features, np.ndarray, int]:
    """Mean feature per track over its crops -> (Features, track ids, number of failed crops)."""
    per_track: dict[int, list] = defaultdict(list)
    failed = 0
    for fut in futures:
        if fut.exception() is not None:
            failed += 1
            continue
        res = fut.result()
        per_track[res.tag[0]].append(res)
    tracks = np.array(sorted(per_track), np.int64)
    if len(tracks) == 0:
        raise InputError(f"no {modality} track produced a feature ({failed} crops failed)")
    shared = np.stack([np.mean([r.shared for r in per_track[t]], axis=0) for t in tracks])
    specific = np.stack([np.mean([r.specific for r in per_track[t]], axis=0) for t in tracks])
    code = np.full(len(tracks), modality_code(modality), np.int64)
    return Features(shared.astype(np.float32), specific.astype(np.float32), code), tracks, failed


def extract_tracks(runtime, streams: dict[str, tuple[Path, Path]], every: int = 5,
                   max_batch: int = 32, max_wait_ms: float = 5.0) -> tuple[dict, dict]:
    """Both streams through one batcher concurrently (a thread per camera) ->
    ({modality: (Features, track ids, failed crops, crops submitted)}, batcher stats)."""
    futures: dict[str, list[Future]] = {}
    errors: list[BaseException] = []

    def camera(name: str) -> None:
        video, det = streams[name]
        try:
            futures[name] = sample_video(batcher, video, read_mot(det), name, CAMERA_IDS[name],
                                         every)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    with FrameBatcher.for_runtime(runtime, max_batch=max_batch, max_wait_ms=max_wait_ms) as batcher:
        threads = [threading.Thread(target=camera, args=(n,)) for n in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    tracks = {n: (*track_features(f, n), len(f)) for n, f in futures.items()}
    return tracks, batcher.stats()


def run_video_reid(runtime, streams: dict[str, tuple[Path, Path]], every: int = 5,
                   gallery_modality: str = "rgb", top: int = 3, mode: str = "all-queries",
                   max_batch: int = 32, max_wait_ms: float = 5.0) -> dict:
    """Track features of both streams, then the other modality's tracks searched in a gallery
    of ``gallery_modality``'s tracks."""
    tracks, stats = extract_tracks(runtime, streams, every, max_batch, max_wait_ms)
    query_modality = "ir" if gallery_modality == "rgb" else "rgb"
    g_feats, g_tracks, g_failed, _ = tracks[gallery_modality]
    q_feats, q_tracks, q_failed, _ = tracks[query_modality]
    gallery = Gallery(*g_feats.dims)             # a track is an identity of the gallery
    gallery.add(g_feats, g_tracks, CAMERA_IDS[gallery_modality])
    hits = runtime.search(q_feats, top=top, mode=mode, gallery=gallery)
    matches = [{"query_track": int(q), "matches": [{"track": int(t), "distance": float(d)}
                                                   for t, d in zip(r.pids, r.distances)]}
               for q, r in zip(q_tracks, hits)]
    return {"gallery_modality": gallery_modality, "query_modality": query_modality,
            "mode": mode, "every": every, "crops": {n: v[3] for n, v in tracks.items()},
            "failed_crops": g_failed + q_failed, "gallery_tracks": g_tracks.tolist(),
            "matches": matches, "batcher": stats}


def check_truth(result: dict, truth: dict) -> int:
    """Number of queries whose best match is the same person (``tracks.json`` ground truth)."""
    g, q = truth[result["gallery_modality"]], truth[result["query_modality"]]
    return sum(bool(m["matches"]) and g[str(m["matches"][0]["track"])] == q[str(m["query_track"])]
               for m in result["matches"])


def _streams(data: Path | None, given: dict) -> dict[str, tuple[Path, Path]] | None:
    """(video, detections) per modality from --data or the explicit options; None if none."""
    if data is None and not any(given.values()):
        return None
    streams = {}
    for name in ("rgb", "ir"):
        video = given[f"{name}_video"] or (data / f"{name}.avi" if data else None)
        det = given[f"{name}_det"] or (data / f"{name}.txt" if data else None)
        if video is None or det is None:
            raise click.UsageError(f"give --data or both --{name}-video and --{name}-det")
        streams[name] = (video, det)
    return streams


def _print(result: dict, truth: dict | None) -> None:
    g, q = result["gallery_modality"].upper(), result["query_modality"].upper()
    st = result["batcher"]
    click.echo(f"crops {result['crops']} ({result['failed_crops']} failed), batches "
               f"{st['batches']}, mean batch {st['mean_batch']:.1f}, latency p50 "
               f"{st['latency_ms']['p50']:.1f} ms")
    click.echo(f"gallery: {len(result['gallery_tracks'])} {g} tracks; mode {result['mode']}")
    for m in result["matches"]:
        ranked = ", ".join(f"{g} track {h['track']} ({h['distance']:.3f})" for h in m["matches"])
        mark = ""
        if truth:
            same = truth[result["gallery_modality"]][str(m["matches"][0]["track"])] == \
                truth[result["query_modality"]][str(m["query_track"])]
            mark = "  [correct]" if same else "  [wrong]"
        click.echo(f"{q} track {m['query_track']} -> {ranked}{mark}")
    if truth:
        click.echo(f"rank-1: {result['rank1_correct']}/{len(result['matches'])} queries matched "
                   "the right person")


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/demo/video"), show_default=True,
              help="writes matches.json here (and the synthetic scene, without input videos)")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="folder from make_video.py (rgb.avi, rgb.txt, ir.avi, ir.txt)")
@click.option("--rgb-video", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--rgb-det", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--ir-video", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--ir-det", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--every", default=5, show_default=True, help="sample a track every N frames")
@click.option("--gallery", "gallery_modality", type=click.Choice(["rgb", "ir"]), default="rgb",
              show_default=True, help="modality whose tracks form the gallery")
@click.option("--mode", default="all-queries", show_default=True,
              type=click.Choice(MODES))
@click.option("--top", default=3, show_default=True)
@click.option("--precision", default="fp32", show_default=True)
@click.option("--backend", default="auto", show_default=True)
def main(bundle: str, out: Path, data: Path | None, every: int, gallery_modality: str,
         mode: str, top: int, precision: str, backend: str, **given: Path | None) -> None:
    """Match people across an RGB and an IR video with a model bundle."""
    from ssft_deploy.runtime import ReIDRuntime

    streams = _streams(data, given)
    if streams is None:                      # no input: the synthetic scene, made here
        make_videos(out, progress=True)
        data, streams = out, _streams(out, given)
    try:
        with ReIDRuntime.open(bundle, precision=precision, backend=backend) as rt:
            result = run_video_reid(rt, streams, every, gallery_modality, top, mode)
    except SSFTError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    truth_file = data / "tracks.json" if data else None
    truth = json.loads(truth_file.read_text()) if truth_file and truth_file.exists() else None
    if truth:
        result["rank1_correct"] = check_truth(result, truth)
    _print(result, truth)
    out.mkdir(parents=True, exist_ok=True)
    (out / "matches.json").write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"wrote {out / 'matches.json'}")


if __name__ == "__main__":
    main()
