"""Score an ``ssft-video`` run on the synthetic scene of ``make_video.py`` against its truth.

    python examples/score_video.py --scene runs/demo/video/scene --run runs/demo/video/out \
        --camera cam1=rgb --camera cam3=ir

Each pipeline track (``NAME.mot.txt``) gets the person whose ground-truth box (the pasted crop,
margins included) holds >= 70 % of its box on most of its frames; detection recall counts truth
boxes with a tracked box of IoU >= 0.5. Reported, as JSON: detection recall per camera; the
query-modality tracks whose person also has a gallery-modality track with features ("with a
true match"), how many of them got an event, and how many events rank that person first.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click
import numpy as np

if __package__ in (None, ""):  # run as `python examples/score_video.py`
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssft_deploy.video.detectors import read_mot


def _overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection over a's area of xywh boxes a [N,4] x b [M,4]."""
    a0, a1 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b0, b1 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(-1)
    area_a = a[:, None, 2:].prod(-1)
    union = area_a + b[None, :, 2:].prod(-1) - inter
    return inter / np.maximum(union, 1e-9), inter / np.maximum(area_a, 1e-9)


def track_people(run_mot: Path, truth_mot: Path, lanes: dict[str, int]) -> tuple[dict, float]:
    """{pipeline track: person id or None}, and the share of truth boxes that were tracked."""
    pred, truth = read_mot(run_mot) if run_mot.exists() else {}, read_mot(truth_mot)
    votes: dict[int, Counter] = {}
    found = total = 0
    for frame, gt in truth.items():
        total += len(gt)
        rows = pred.get(frame, [])
        if not rows:
            continue
        iou, inside = _overlaps(np.asarray([b for _, b, _ in rows]),
                                np.asarray([b for _, b, _ in gt]))
        found += int((iou.max(axis=0) >= 0.5).sum())
        for i, (tid, _, _) in enumerate(rows):
            j = int(inside[i].argmax())
            person = lanes[str(gt[j][0])] if inside[i, j] >= 0.7 else None
            votes.setdefault(tid, Counter())[person] += 1
    for frame, rows in pred.items():
        for tid, _, _ in rows:
            votes.setdefault(tid, Counter())
    people = {t: (c.most_common(1)[0][0] if c else None) for t, c in votes.items()}
    return people, found / max(total, 1)


def score(scene: Path, run: Path, cameras: dict[str, str], gallery: str = "rgb") -> dict:
    truth = json.loads((scene / "tracks.json").read_text())
    tracks = json.loads((run / "tracks.json").read_text())["tracks"]
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x]
    people, recall = {}, {}
    for cam, kind in cameras.items():
        people[cam], recall[cam] = track_people(run / f"{cam}.mot.txt", scene / f"{kind}.txt",
                                                truth[kind])
    in_gallery = {people[t["camera"]].get(t["track"]) for t in tracks
                  if cameras[t["camera"]] == gallery and t["samples"]["extracted"]}
    by_track = {(e["camera"], e["track"]): e for e in events}
    queries = [t for t in tracks if cameras[t["camera"]] != gallery]
    with_match = [t for t in queries if people[t["camera"]].get(t["track"]) in in_gallery - {None}]
    got = [by_track.get((t["camera"], t["track"])) for t in with_match]
    gallery_person = {(t["camera"], t["track"]): people[t["camera"]].get(t["track"])
                      for t in tracks if cameras[t["camera"]] == gallery}
    correct = sum(1 for t, e in zip(with_match, got) if e and e["matches"] and gallery_person.get(
        (e["matches"][0]["camera"], e["matches"][0]["track"])) == people[t["camera"]][t["track"]])
    return {"detection_recall": {c: round(r, 3) for c, r in recall.items()},
            "tracks": {c: sum(t["camera"] == c for t in tracks) for c in cameras},
            "people": len(truth[gallery]),
            "query_tracks": len(queries), "query_tracks_with_true_match": len(with_match),
            "with_event": sum(e is not None for e in got),
            "with_event_and_matches": sum(bool(e and e["matches"]) for e in got),
            "rank1_correct": correct,
            "identified_not_unknown": sum(bool(e and e["identity"] != "unknown") for e in got)}


@click.command()
@click.option("--scene", required=True, type=click.Path(exists=True, file_okay=False,
                                                        path_type=Path))
@click.option("--run", "run", required=True, type=click.Path(exists=True, file_okay=False,
                                                             path_type=Path))
@click.option("--camera", "cameras", multiple=True, required=True,
              help="NAME=rgb|ir: which scene video a run camera showed")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(scene: Path, run: Path, cameras: tuple[str, ...], out: Path | None) -> None:
    """Score RUN against the synthetic SCENE's truth."""
    result = score(scene, run, dict(c.split("=", 1) for c in cameras))
    click.echo(json.dumps(result, indent=2))
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
