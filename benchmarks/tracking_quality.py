"""Tracking quality on the scripted scenes (``examples/scenes.py``): HOTA, IDF1, MOTA and tracks
per true person per detector and ByteTrack setting, and appearance stitching before / after.

    python benchmarks/tracking_quality.py [--detector motion --detector ssdlite]
        [--bundle runs/demo/bundle] [--out docs/results/tracking_quality.json]

``tracking``: each scene (``cross``, ``still``, ``reenter``, ``handover``; RGB and IR renders) goes through the
detector and ``ByteTracker`` alone, for every setting in the grid (activation threshold, match
threshold, lost frames); metrics by TrackEval (``benchmarks/tracking_eval.py`` says why).

``stitching``: each scene's RGB and IR renders go, as two cameras, through the whole
``VideoPipeline`` (ReID on the bundle's extractor) for every stitch setting; "before" is the
pipeline's own tracks (``NAME.mot.txt``), "after" the same boxes with the joined tracks relabelled
as ``tracks.json`` records them; ``joins`` counts the joins of two tracks of one true person
(right) and of two people (wrong: tracks per person can still fall, IDF1 shows it); ``pairs`` lists every (ended, later) pair of tracks within the
time gap with its distance, cosine and whether it is one true person, from which the thresholds
were chosen. A detector ``make_detector`` does not know is reported ``unavailable`` with the
reason. ``photo``: the ``tracking`` grid on the same scripts with people photographed by a real
camera (``examples/photo_scenes.py``, from ``vtest.avi``): the synthetic figures cannot score
``ssdlite``, which finds nobody in cartoon renders; ``--photo-only`` reruns just that section.
Without ``--bundle`` (and no ``runs/demo/bundle``) an untrained demo-size bundle is
built (its features are a projection of the crop's mean colour: the stitching figures then show
what the mechanism does with a weak appearance model).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

if __package__ in (None, ""):  # run as `python benchmarks/tracking_quality.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import header, write_json
from benchmarks.tracking_eval import evaluate, tracks_per_person
from examples.scenes import KINDS, Scene, make_scene

TARGET_TRACKS_PER_PERSON = 1.3
# ByteTrack grid: (activation threshold, minimum matching threshold, lost frames)
GRID = list(itertools.product((0.25, 0.5), (0.8, 0.9), (10, 30)))
PIPELINE = (0.25, 0.8, 30)      # the pipeline's ByteTrack setting (PipelineConfig, video CLI)
STRIDES = (2, 4, 8, 12)         # --detect-every values scored on the photo scenes
# pipeline settings: lost_frames (the tracker's and the tracklets'), then StitchConfig fields
STITCH = ([{"lost_frames": 30, "window": 0}]
          + [{"lost_frames": 30, "window": w, "min_cosine": c}
             for w in (10, 20, 40) for c in (0.6, 0.75, 0.9)]
          + [{"lost_frames": 30, "window": 20, "min_cosine": 0.75, "max_distance": 0.75},
             {"lost_frames": 10, "window": 0}]
          + [{"lost_frames": 10, "window": w, "min_cosine": 0.75} for w in (20, 40)])


DEFAULT = {"lost_frames": 30, "window": 20, "min_cosine": 0.75}   # PipelineConfig's defaults


def detector(name: str):
    """A fresh detector ``name`` for one camera, or the reason it is unavailable."""
    from ssft_deploy.errors import SSFTError
    from ssft_deploy.video.detectors import make_detector

    try:
        return make_detector(name, ["cam"])["cam"], None
    except (SSFTError, ImportError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def xywh(xyxy: np.ndarray) -> list[tuple[float, ...]]:
    return [(float(a), float(b), float(c - a), float(d - b)) for a, b, c, d in xyxy]


def track_scene(dets: list, activation: float, match: float, lost: int, stride: int = 1,
                frames: list | None = None, flow: bool = True) -> dict:
    """Hypothesis boxes {frame: [(track, xywh)]} of ByteTrack over precomputed detections; with
    ``stride`` N the detections of every N-th frame only, the frames between carried by flow
    over ``frames`` (or Kalman-predicted: ``flow=False``), as the pipeline's
    ``--detect-every N``."""
    from ssft_deploy.video.tracker import ByteTracker

    tracker = ByteTracker(activation=activation, lost_frames=lost, match_threshold=match,
                          detect_every=stride, flow=flow)
    hyp = {}
    for n, det in enumerate(dets):
        img = frames[n] if frames is not None else None
        xyxy, _, ids = tracker.update(det, img) if n % stride == 0 else tracker.predict(img)
        if len(ids):
            hyp[n] = list(zip(ids.tolist(), xywh(xyxy)))
    return hyp


def tracking(detectors: list[str], scenes: list[Scene], strides: tuple[int, ...] = ()
             ) -> list[dict]:
    """The ByteTrack grid per detector over ``scenes``; then, at the pipeline's setting, each
    of ``strides`` (detection on every N-th frame) for detectors that honour a stride."""
    rows = []
    for name in detectors:
        probe, why = detector(name)
        if probe is None:
            rows.append({"detector": name, "unavailable": why})
            continue
        dets = {}
        for sc in scenes:
            det, _ = detector(name)
            dets[(sc.kind, sc.modality)] = [det(f, i) for i, f in enumerate(sc.frames)]
        for act, match, lost in GRID:
            per = {f"{sc.kind}_{sc.modality}": evaluate(sc.truth, track_scene(
                dets[(sc.kind, sc.modality)], act, match, lost)) for sc in scenes}
            rows.append({"detector": name, "activation": act, "match_threshold": match,
                         "lost_frames": lost, "mean": _mean(per), "scenes": per})
        for stride, flow in itertools.product(
                strides if not getattr(probe, "every_frame", False) else (), (True, False)):
            per = {f"{sc.kind}_{sc.modality}": evaluate(sc.truth, track_scene(
                dets[(sc.kind, sc.modality)], *PIPELINE, stride, sc.frames, flow))
                for sc in scenes}
            rows.append({"detector": name, "activation": PIPELINE[0],
                         "match_threshold": PIPELINE[1], "lost_frames": PIPELINE[2],
                         "detect_every": stride, "between": "flow" if flow else "kalman",
                         "mean": _mean(per), "scenes": per})
    return rows


def _mean(per: dict) -> dict:
    keys = ("HOTA", "IDF1", "MOTA", "tracks_per_person")
    return {k: round(float(np.mean([p[k] for p in per.values() if p[k] is not None])), 4)
            for k in keys}


def _read_mot(path: Path) -> dict:
    hyp: dict = {}
    if path.exists():
        for line in path.read_text().splitlines():
            f, t, x, y, w, h = (float(v) for v in line.split(",")[:6])
            hyp.setdefault(int(f) - 1, []).append((int(t), (x, y, w, h)))
    return hyp


def _relabel(hyp: dict, tracks: list[dict], camera: str) -> dict:
    """Boxes of tracks joined into another carry that one's id (chains followed)."""
    into = {t["track"]: t["joined_into"] for t in tracks
            if t["camera"] == camera and t.get("joined_into") is not None}

    def final(t):
        while t in into:
            t = into[t]
        return t

    return {f: [(final(t), b) for t, b in rows] for f, rows in hyp.items()}


def _frames_folder(sc: Scene, tmp: Path) -> Path:
    """The scene's frames as PNG files (lossless: the pixels the tracking rows saw), read by
    the pipeline's own image-folder capture."""
    import cv2

    folder = tmp / "frames" / f"{sc.kind}_{sc.modality}"
    if not folder.exists():
        folder.mkdir(parents=True)
        for n, frame in enumerate(sc.frames):
            cv2.imwrite(str(folder / f"{n:05d}.png"), frame)
    return folder


def stitch_run(rt, name: str, pair: tuple[Scene, Scene], stitch: dict, tmp: Path) -> dict:
    """One pipeline run of a scene's RGB + IR renders with stitch settings ``stitch``."""
    from ssft_deploy.video import CameraSpec, PipelineConfig, VideoPipeline
    from ssft_deploy.video.stitching import StitchConfig

    cams = [CameraSpec(sc.modality, str(_frames_folder(sc, tmp)), sc.modality) for sc in pair]
    dets = {sc.modality: detector(name)[0] for sc in pair}
    opts = dict(stitch)
    cfg = PipelineConfig(every=3, lost_frames=opts.pop("lost_frames", 30),
                         stitch=StitchConfig(**opts))
    out = tmp / f"{pair[0].kind}_{len(list(tmp.iterdir()))}"
    pipe = VideoPipeline(rt, cams, dets, out=str(out), config=cfg, annotate=False,
                         pictures=False)
    trace: list[dict] = []
    for c in pipe.cameras:
        c.stitcher.trace = trace
    summary = pipe.run()
    res = {"exit_code": summary["exit_code"], "joins": [], "pairs": []}
    for sc in pair:
        raw = _read_mot(out / f"{sc.modality}.mot.txt")
        after = _relabel(raw, summary["tracks"], sc.modality)
        b, a = evaluate(sc.truth, raw), evaluate(sc.truth, after)
        res[sc.modality] = {"before": _brief(b), "after": _brief(a)}
        owner = {t: p for p, ts in tracks_per_person(sc.truth, raw)["per_person"].items()
                 for t in ts}
        for p in trace:
            if p["camera"] == sc.modality:
                same = owner.get(p["end"]) is not None and owner.get(p["end"]) == \
                    owner.get(p["start"])
                res["pairs"].append({**p, "same_person": same})
        # a join is right when the tracks it joins belonged to one true person before it
        res["joins"] += [{"camera": t["camera"], "track": t["track"], "joined": j,
                          "same_person": owner.get(j) is not None
                          and owner.get(j) == owner.get(t["track"])}
                         for t in summary["tracks"] if t["camera"] == sc.modality
                         for j in t["joined"]]
    return res


def _brief(m: dict) -> dict:
    return {k: m[k] for k in ("HOTA", "IDF1", "MOTA", "IDSW", "tracks", "false_tracks",
                              "people", "people_tracked", "tracks_per_person", "per_person")}


def stitching(detectors: list[str], scenes: list[Scene], bundle: Path) -> list[dict]:
    from ssft_deploy.runtime import ReIDRuntime

    pairs = [tuple(sc for sc in scenes if sc.kind == k) for k in KINDS]
    rows = []
    with ReIDRuntime.open(bundle) as rt, tempfile.TemporaryDirectory() as tmp:
        for name in detectors:
            probe, why = detector(name)
            if probe is None:
                rows.append({"detector": name, "unavailable": why})
                continue
            for stitch in STITCH:
                runs = {p[0].kind: stitch_run(rt, name, p, stitch, Path(tmp)) for p in pairs}
                tpp = {side: round(float(np.mean([r[m][side]["tracks_per_person"]
                                                  for r in runs.values()
                                                  for m in ("rgb", "ir")])), 4)
                       for side in ("before", "after")}
                idf1 = {side: round(float(np.mean([r[m][side]["IDF1"] for r in runs.values()
                                                   for m in ("rgb", "ir")])), 4)
                        for side in ("before", "after")}
                joins = [j for r in runs.values() for j in r["joins"]]
                rows.append({"detector": name, "stitch": stitch,
                             "tracks_per_person": tpp, "IDF1": idf1,
                             "joins": {"right": sum(j["same_person"] for j in joins),
                                       "wrong": sum(not j["same_person"] for j in joins)},
                             # a wrong join can lower tracks per person too: it must not count
                             "target_met": tpp["after"] <= TARGET_TRACKS_PER_PERSON
                             and not any(not j["same_person"] for j in joins),
                             "runs": runs})
    return rows


def photo(detectors: list[str], seed: int) -> dict:
    """The ``tracking`` grid on the scenes with photographed people (``examples/photo_scenes``:
    vtest.avi's background and people, so ``ssdlite`` has people to find), or why not."""
    from examples.photo_scenes import CLIP, photo_scenes

    if not CLIP.is_file():
        return {"unavailable": f"{CLIP} is missing: make clip-setup"}
    scenes = photo_scenes(CLIP, seed=seed)
    return {**header("tracking_quality_photo"), "clip": CLIP.name,
            "scenes": {f"{s.kind}_{s.modality}": {"frames": len(s.frames), "people": s.people()}
                       for s in scenes},
            "tracking": tracking(detectors, scenes, STRIDES)}


def _print_photo(section: dict) -> None:
    if "unavailable" in section:
        click.echo(f"photo scenes: unavailable ({section['unavailable']})")
        return
    for r in section["tracking"]:
        if "unavailable" in r:
            click.echo(f"photo {r['detector']}: unavailable ({r['unavailable']})")
            continue
        click.echo(f"photo {r['detector']} act {r['activation']} match {r['match_threshold']} "
                   f"lost {r['lost_frames']} every {r.get('detect_every', 1)} "
                   f"{r.get('between', '')}: {r['mean']}")


@click.command()
@click.option("--detector", "detectors", multiple=True, default=("motion", "ssdlite"),
              show_default=True, help="any name make_detector knows; others are reported "
                                       "unavailable")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="default: runs/demo/bundle, else an untrained demo-size bundle")
@click.option("--seed", default=0, show_default=True)
@click.option("--photo-only", is_flag=True,
              help="only the photographed-people scenes; the other sections of --out are kept")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("docs/results/tracking_quality.json"), show_default=True)
def main(detectors, bundle, seed, photo_only, out) -> None:
    """Tracking quality (TrackEval) and appearance stitching on the scripted scenes."""
    from benchmarks.video_soak import demo_bundle

    if photo_only:
        result = json.loads(out.read_text()) if out.is_file() else {}
        result["photo"] = photo(list(detectors), seed)
        write_json(out, result)
        _print_photo(result["photo"])
        click.echo(f"wrote {out}")
        return
    if bundle is None:
        demo = Path("runs/demo/bundle")
        bundle = demo if demo.exists() else demo_bundle(Path("runs/demo/bench/soak_bundle"))
    head = header("tracking_quality")
    scenes = [make_scene(k, m, seed) for k in KINDS for m in ("rgb", "ir")]
    model = json.loads((bundle / "manifest.json").read_text()).get("model", {})
    result = {**head, "bundle": str(bundle), "seed": seed, "evaluator": "trackeval",
              "bundle_model": {k: model.get(k) for k in ("arch", "input_size", "trained_on",
                                                         "shared_dim", "specific_dim")},
              "target_tracks_per_person": TARGET_TRACKS_PER_PERSON,
              "scenes": {f"{s.kind}_{s.modality}": {"frames": len(s.frames),
                                                    "people": s.people()} for s in scenes},
              "tracking": tracking(list(detectors), scenes),
              "stitching": stitching(list(detectors), scenes, bundle),
              "photo": photo(list(detectors), seed)}
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    result["default"] = next(({"detector": r["detector"], "stitch": r["stitch"],
                               "tracks_per_person": r["tracks_per_person"], "IDF1": r["IDF1"],
                               "joins": r["joins"],
                               "target_met": r["target_met"]}
                              for r in result["stitching"] if r.get("stitch") == DEFAULT), None)
    write_json(out, result)
    for r in result["stitching"]:
        if "unavailable" in r:
            click.echo(f"{r['detector']}: unavailable ({r['unavailable']})")
            continue
        click.echo(f"{r['detector']} {r['stitch']}: tracks/person {r['tracks_per_person']} "
                   f"IDF1 {r['IDF1']} joins {r['joins']}")
    _print_photo(result["photo"])
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
