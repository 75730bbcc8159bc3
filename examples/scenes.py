"""Small scripted one-camera scenes with exact ground truth, for tracking quality and stitching.

    python examples/scenes.py --out runs/demo/scenes [--kind cross --kind still --kind reenter]

Scenes (``KINDS``), each a few seconds at 10 frames/s after ``lead_in`` empty frames:

- ``cross``: two people walk towards each other and pass, the nearer one hiding the other;
- ``still``: one person walks in, stands still for 5 s and walks on while another passes in
  front (a background-subtraction detector loses the one standing);
- ``reenter``: one person walks out of view to the right, stays out for 3.5 s and comes back
  the same way, while another walks slowly across;
- ``handover``: the same, but a different person comes in where the first went out (what
  stitching must not join).

People are the synthetic identities of ``ssft_deploy.datasets.persons`` (the crops pasted as in
``make_video.py``, the nearer person, lower in the frame, last). Truth per frame: the pasted
rectangle clipped to the frame, for every person with at least ``MIN_VISIBLE`` px of width in
view. Writes per scene and modality ``KIND_MOD.avi`` (MJPG), ``KIND_MOD.gt.txt``
(MOTChallenge ``frame,person,x,y,w,h,1,-1,-1,-1``, frames from 1) and ``scenes.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import click
import cv2
import numpy as np

from ssft_deploy.datasets.persons import make_camera, make_identity, render

KINDS = ("cross", "still", "reenter", "handover")
SIZE = (320, 176)           # frame width, height
CROP = (96, 40)             # person height, width
MIN_VISIBLE = 8             # px of width in view for a truth box
# person id -> (y of the top, waypoints (frame, x of the left edge)); x is interpolated
# between waypoints and the person is drawn from the first waypoint's frame to the last one's.
PATHS = {
    "cross": {1: (20, [(0, 10), (60, 270)]), 2: (50, [(0, 270), (60, 10)])},
    "still": {1: (20, [(0, 10), (20, 140), (70, 140), (90, 270)]),
              2: (60, [(20, 275), (80, 5)])},
    "reenter": {1: (30, [(0, 120), (30, 330), (65, 330), (95, 150)]),
                2: (60, [(0, 5), (95, 110)])},
    "handover": {1: (30, [(0, 120), (30, 330)]), 3: (40, [(65, 330), (95, 150)]),
                 2: (60, [(0, 5), (95, 110)])},
}


@dataclass
class Scene:
    """One scene for one modality: BGR uint8 frames and the truth boxes per frame index."""

    kind: str
    modality: str
    frames: list[np.ndarray]
    truth: dict[int, list[tuple[int, tuple[int, int, int, int]]]] = field(default_factory=dict)
    fps: float = 10.0

    def people(self) -> list[int]:
        return sorted({p for rows in self.truth.values() for p, _ in rows})


def placements(paths: dict, lead_in: int):
    """Per frame ``n`` (``lead_in`` empty ones first): ``(n, f, [(person, y0, x)])`` for the
    people of ``paths`` in view at script frame ``f = n - lead_in``, far ones (smaller y0) first
    so the nearer is drawn over them."""
    n_frames = max(wp[-1][0] for _, wp in paths.values()) + 1
    order = sorted(paths.items(), key=lambda kv: kv[1][0])
    for n in range(lead_in + n_frames):
        f = n - lead_in
        yield n, f, [(p, y0, x) for p, (y0, wp) in order if (x := position(wp, f)) is not None]


def position(waypoints: list[tuple[int, int]], f: int) -> float | None:
    """x of the left edge at frame ``f`` (None before the first / after the last waypoint)."""
    fs = [w[0] for w in waypoints]
    if not fs[0] <= f <= fs[-1]:
        return None
    return float(np.interp(f, fs, [w[1] for w in waypoints]))


def make_scene(kind: str, modality: str = "rgb", seed: int = 0, lead_in: int = 10,
               first_pid: int = 2000) -> Scene:
    """The scene ``kind`` (one of ``KINDS``) in ``modality``; deterministic in ``seed``."""
    if kind not in PATHS:
        raise click.BadParameter(f"unknown scene {kind!r}: one of {', '.join(KINDS)}")
    mod = ("rgb", "ir").index(modality)
    w, h = SIZE
    ch, cw = CROP
    rng = np.random.default_rng([seed, KINDS.index(kind), mod])
    cam = make_camera(seed, 1 + 2 * mod)
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    if mod == 0:
        top, bottom = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
        bg = top * (1 - ramp) + bottom * ramp
    else:
        bg = np.repeat(rng.uniform(25, 60) * (1.2 - 0.4 * ramp), 3, axis=2)
    bg = np.broadcast_to(bg, (h, w, 3)).astype(np.float32)
    paths = PATHS[kind]
    idents = {p: make_identity(seed, first_pid + p) for p in paths}
    scene = Scene(kind, modality, [])
    for n, f, people in placements(paths, lead_in):
        frame = bg + rng.normal(0, 3, bg.shape).astype(np.float32)
        rows = []
        for p, y0, x in people:
            x = round(x)
            y = y0 + round(2 * np.sin(0.3 * f + p))
            x0, x1 = max(x, 0), min(x + cw, w)
            if x1 - x0 < MIN_VISIBLE:
                continue
            crop = render(idents[p], cam, mod, np.random.default_rng([seed, p, mod, f]), CROP)
            frame[y:y + ch, x0:x1] = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)[:, x0 - x:x1 - x]
            rows.append((first_pid + p, (x0, y, x1 - x0, ch)))
        scene.frames.append(np.clip(frame, 0, 255).astype(np.uint8))
        if rows:
            scene.truth[n] = rows
    return scene


def write_scene(scene: Scene, out: Path) -> dict:
    """``KIND_MOD.avi`` and ``KIND_MOD.gt.txt`` into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{scene.kind}_{scene.modality}"
    h, w = scene.frames[0].shape[:2]
    writer = cv2.VideoWriter(f"{stem}.avi", cv2.VideoWriter_fourcc(*"MJPG"), scene.fps, (w, h))
    if not writer.isOpened():
        raise click.ClickException(f"OpenCV cannot write {stem}.avi (MJPG)")
    for frame in scene.frames:
        writer.write(frame)
    writer.release()
    lines = [f"{n + 1},{p},{x},{y},{bw},{bh},1,-1,-1,-1"
             for n, rows in sorted(scene.truth.items()) for p, (x, y, bw, bh) in rows]
    Path(f"{stem}.gt.txt").write_text("\n".join(lines) + "\n")
    return {"video": f"{stem}.avi", "truth": f"{stem}.gt.txt", "people": scene.people(),
            "frames": len(scene.frames)}


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo/scenes"),
              show_default=True)
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS), default=KINDS,
              show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(out: Path, kinds: tuple[str, ...], seed: int) -> None:
    """Write the scripted scenes (RGB and IR) with their ground truth into OUT."""
    paths = {f"{k}_{m}": write_scene(make_scene(k, m, seed), out)
             for k in kinds for m in ("rgb", "ir")}
    (out / "scenes.json").write_text(json.dumps(paths, indent=2) + "\n")
    click.echo(json.dumps(paths, indent=2))


if __name__ == "__main__":
    main()
