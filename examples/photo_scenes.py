"""The scripted scenes of ``scenes.py`` with photographed people: ground truth a detector trained
on photographs can be scored on.

    python examples/photo_scenes.py --out runs/demo/photo_scenes [--clip .data/vtest.avi]

The synthetic renders are cartoon figures that ``ssdlite`` (trained on photographs) rightly
does not take for people, so tracking figures for it need real pixels with known tracks. Here
the background is the median of OpenCV's ``vtest.avi`` (a static outdoor camera: the median over
the clip is the empty walkway) and the people are cut out of that same clip: each box of
``tests/data/vtest_boxes.json`` that no other person or ignored box overlaps, masked where it
differs from the background (a person photographed by this camera, without the pixels around
them). They move along the paths of ``scenes.KINDS`` scaled to the 768x576 frame, the nearer
one (lower) drawn last, so they cross, stand still, leave and come back. One modality: these
are colour photographs (``modality`` "photo"). Truth per frame: the sprite's box where it is
drawn, clipped to the frame, as in ``scenes.py``.

What these scenes are not: people do not move their limbs (one photograph slides), and the
clip's lighting is the same everywhere, so they measure the tracker on real detections of real
people, not a walking gait.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import cv2
import numpy as np

from examples.scenes import KINDS, MIN_VISIBLE, PATHS, Scene, placements, write_scene

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / ".data" / "vtest.avi"
LABELS = ROOT / "tests" / "data" / "vtest_boxes.json"
SCALE = 768 / 320                # scenes.py paths are for a 320 px wide frame
TOP = 150                        # px: where scenes.py's y = 0 lands on the walkway
HEIGHTS = (90, 150)              # sprite heights taken (px)


def scan(clip: Path = CLIP, labels: Path = LABELS, step: int = 8
         ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """One read of the clip -> (its per-pixel median over every ``step``-th frame: the empty
    scene, {labelled frame index: frame})."""
    wanted = {int(k) for k in json.loads(Path(labels).read_text())["frames"]}
    cap = cv2.VideoCapture(str(clip))
    if not cap.isOpened():
        raise click.ClickException(f"cannot read {clip}: make clip-setup")
    samples, labelled, i = [], {}, 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if i % step == 0:
                samples.append(frame)
            if i in wanted:
                labelled[i] = frame
            i += 1
    finally:
        cap.release()
    if not samples:
        raise click.ClickException(f"{clip} has no frames")
    return np.median(np.stack(samples), axis=0).astype(np.uint8), labelled


def _alone(box, others) -> bool:
    x0, y0, x1, y1 = box
    for o in others:
        w = min(x1, o[2]) - max(x0, o[0])
        h = min(y1, o[3]) - max(y0, o[1])
        if w > 0 and h > 0 and w * h > 0.02 * (x1 - x0) * (y1 - y0):
            return False
    return True


def sprites(bg: np.ndarray, frames: dict[int, np.ndarray], labels: Path = LABELS,
            threshold: float = 40.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(bgr, alpha)`` cut-outs of the labelled people (``frames`` from :func:`scan`) that
    stand alone and are ``HEIGHTS`` tall, tight to their mask, in label order."""
    lab = json.loads(Path(labels).read_text())["frames"]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    out = []
    for key in sorted(lab, key=int):
        people = [tuple(map(int, b)) for b in lab[key]["people"]]
        ignore = [tuple(map(int, b)) for b in lab[key].get("ignore", [])]
        for j, (x0, y0, x1, y1) in enumerate(people):
            if not HEIGHTS[0] <= y1 - y0 <= HEIGHTS[1]:
                continue
            if not _alone((x0, y0, x1, y1), people[:j] + people[j + 1:] + ignore):
                continue
            crop = frames[int(key)][y0:y1, x0:x1]
            diff = np.abs(crop.astype(np.int16) - bg[y0:y1, x0:x1]).sum(axis=2)
            mask = cv2.morphologyEx((diff > threshold).astype(np.uint8), cv2.MORPH_CLOSE, kernel)
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
            n, comp, stats, _ = cv2.connectedComponentsWithStats(mask)
            if n < 2:
                continue
            keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            mask = (comp == keep).astype(np.uint8)
            if not 0.25 <= mask.mean() <= 0.85:     # a cut-out that is no person's shape
                continue
            ys, xs = np.nonzero(mask)
            sl = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            alpha = cv2.GaussianBlur(mask[sl].astype(np.float32), (3, 3), 0)
            out.append((crop[sl].copy(), alpha))
    return out


def make_photo_scene(kind: str, bg: np.ndarray, cutouts: list, seed: int = 0,
                     lead_in: int = 10, first_pid: int = 3000) -> Scene:
    """The scene ``kind`` of ``scenes.PATHS`` over ``bg`` with the ``cutouts`` (chosen by
    ``seed``); deterministic."""
    if kind not in PATHS:
        raise click.BadParameter(f"unknown scene {kind!r}: one of {', '.join(KINDS)}")
    rng = np.random.default_rng([seed, KINDS.index(kind), 7])
    w = bg.shape[1]
    paths = PATHS[kind]
    if len(cutouts) < len(paths):
        raise click.ClickException(f"{len(cutouts)} cut-outs, the scene needs {len(paths)}")
    pick = rng.choice(len(cutouts), size=len(paths), replace=False)
    people = dict(zip(sorted(paths), (cutouts[i] for i in pick)))
    scene = Scene(kind, "photo", [])
    base = bg.astype(np.float32)
    for n, f, shown in placements(paths, lead_in):
        frame = base + rng.normal(0, 2, base.shape).astype(np.float32)
        rows = []
        for p, y0, x in shown:
            img, alpha = people[p]
            sh, sw = alpha.shape
            x, y = round(x * SCALE), TOP + round(y0 * SCALE + 2 * np.sin(0.3 * f + p))
            x0, x1 = max(x, 0), min(x + sw, w)
            if x1 - x0 < MIN_VISIBLE:
                continue
            a = alpha[:, x0 - x:x1 - x, None]
            frame[y:y + sh, x0:x1] = frame[y:y + sh, x0:x1] * (1 - a) + img[:, x0 - x:x1 - x] * a
            rows.append((first_pid + p, (x0, y, x1 - x0, sh)))
        scene.frames.append(np.clip(frame, 0, 255).astype(np.uint8))
        if rows:
            scene.truth[n] = rows
    return scene


def photo_scenes(clip: Path = CLIP, labels: Path = LABELS, seed: int = 0) -> list[Scene]:
    """Every kind of scene with photographed people (one read of the clip)."""
    bg, frames = scan(clip, labels)
    cut = sprites(bg, frames, labels)
    return [make_photo_scene(k, bg, cut, seed) for k in KINDS]


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo/photo_scenes"),
              show_default=True)
@click.option("--clip", type=click.Path(path_type=Path), default=CLIP, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(out: Path, clip: Path, seed: int) -> None:
    """Write the scripted scenes with photographed people and their ground truth into OUT."""
    paths = {f"{sc.kind}_{sc.modality}": write_scene(sc, out)
             for sc in photo_scenes(clip, seed=seed)}
    (out / "scenes.json").write_text(json.dumps(paths, indent=2) + "\n")
    click.echo(json.dumps(paths, indent=2))


if __name__ == "__main__":
    main()
