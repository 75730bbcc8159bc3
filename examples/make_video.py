"""Make a small synthetic two-camera scene: an RGB video, an IR video and MOTChallenge detections.

    python examples/make_video.py --out runs/demo/video [--people 4 --frames 48]

The same people (synthetic identities from ``ssft_deploy.datasets.persons``) walk in front of an
RGB camera and an IR camera, in a different order and with different track ids in each. Writes
``rgb.avi``, ``ir.avi`` (MJPG), ``rgb.txt``, ``ir.txt`` (``frame,id,x,y,w,h,conf,-1,-1,-1``,
frames from 1) and ``tracks.json`` (track id -> person id per camera, the ground truth).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import cv2
import numpy as np
from tqdm import tqdm

from ssft_deploy.datasets.persons import make_camera, make_identity, render

CAMERAS = {"rgb": (1, 0), "ir": (3, 1)}  # name -> (SYSU-style camera id, modality code)
GAP = 16                                  # pixels between walking lanes


def _background(h: int, w: int, modality: int, rng: np.random.Generator) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    if modality == 0:
        top, bottom = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
        img = top * (1 - ramp) + bottom * ramp
    else:
        level = rng.uniform(25, 60)
        img = np.repeat(level * (1.2 - 0.4 * ramp), 3, axis=2)
    return np.broadcast_to(img, (h, w, 3)).astype(np.float32)


def _schedule(people: int, frames: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Per lane, the frames (first, last) its person is in view; everyone stays >= half."""
    out = []
    for _ in range(people):
        first = int(rng.integers(0, frames // 4 + 1))
        last = int(rng.integers(max(first + frames // 2, frames * 3 // 4), frames))
        out.append((first, last))
    return out


def make_videos(out: str | Path, people: int = 4, frames: int = 48,
                crop_size: tuple[int, int] = (128, 64), seed: int = 0, fps: int = 10,
                first_pid: int = 1000, progress: bool = False, lead_in: int = 0) -> dict:
    """Write the two videos, detections and ground truth into ``out``; returns the file paths.
    ``lead_in`` empty frames come first (a background-subtraction detector learns the scene)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ch, cw = crop_size
    fh, fw = ch + 4 * GAP, people * (cw + 2 * GAP) + GAP
    rng = np.random.default_rng(seed)
    pids = list(range(first_pid, first_pid + people))
    idents = {pid: make_identity(seed, pid) for pid in pids}
    truth, paths = {}, {}
    for name, (cam_id, modality) in CAMERAS.items():
        cam = make_camera(seed, cam_id)
        order = [int(i) for i in rng.permutation(people)]       # lane -> person
        tracks = {lane + 1: pids[p] for lane, p in enumerate(order)}
        schedule = _schedule(people, frames, rng)
        bg = _background(fh, fw, modality, rng)
        video = out / f"{name}.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), fps, (fw, fh))
        if not writer.isOpened():
            raise click.ClickException(f"OpenCV cannot write {video} (MJPG)")
        lines = []
        for n in tqdm(range(lead_in + frames), desc=f"{name} video", disable=not progress,
                      unit="frame"):
            frame = bg + rng.normal(0, 3, bg.shape).astype(np.float32)
            f = n - lead_in
            for lane, (first, last) in enumerate(schedule):
                if not first <= f <= last:
                    continue
                pid = tracks[lane + 1]
                x = GAP + lane * (cw + 2 * GAP) + round(GAP * np.sin(0.2 * f + lane))
                y = 2 * GAP + round(GAP * np.sin(0.13 * f + 2 * lane))
                crop = render(idents[pid], cam, modality,
                              np.random.default_rng([seed, pid, cam_id, f]), crop_size)
                frame[y:y + ch, x:x + cw] = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
                jx, jy = rng.integers(-2, 3, 2)               # detector jitter
                lines.append(f"{n + 1},{lane + 1},{x + jx},{y + jy},{cw},{ch},"
                             f"{rng.uniform(0.6, 1.0):.3f},-1,-1,-1")
            writer.write(np.clip(frame, 0, 255).astype(np.uint8))
        writer.release()
        det = out / f"{name}.txt"
        det.write_text("\n".join(lines) + "\n")
        truth[name] = {str(t): p for t, p in tracks.items()}
        paths[name] = {"video": str(video), "detections": str(det)}
    (out / "tracks.json").write_text(json.dumps(truth, indent=2) + "\n")
    return {**paths, "tracks": str(out / "tracks.json")}


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo/video"),
              show_default=True)
@click.option("--people", default=4, show_default=True)
@click.option("--frames", default=48, show_default=True)
@click.option("--crop-size", default="128x64", show_default=True, help="person size h x w")
@click.option("--seed", default=0, show_default=True)
@click.option("--lead-in", default=0, show_default=True, help="empty frames first")
def main(out: Path, people: int, frames: int, crop_size: str, seed: int, lead_in: int) -> None:
    """Write a synthetic RGB + IR video pair with MOTChallenge detections into OUT."""
    h, w = (int(v) for v in crop_size.lower().split("x"))
    paths = make_videos(out, people, frames, (h, w), seed, progress=True, lead_in=lead_in)
    click.echo(json.dumps(paths, indent=2))


if __name__ == "__main__":
    main()
