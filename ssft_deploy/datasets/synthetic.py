"""Deterministic synthetic cross-modality datasets written in the SYSU-MM01 or RegDB layout.

SYSU-MM01 layout: ``cam1..cam6/PPPP/NNNN.jpg`` (RGB cameras 1, 2, 4, 5; IR cameras 3, 6) and
``exp/train_id.txt``, ``exp/val_id.txt``, ``exp/test_id.txt`` (one comma-separated line of ids).
RegDB layout: ``Visible/P/v_NN.jpg``, ``Thermal/P/t_NN.jpg`` and
``idx/{train,test}_{visible,thermal}_{1..10}.txt`` (lines ``path label``).

The persons (``persons.py``) carry shared cues (shape, texture) and modality-specific cues (colour
in RGB, a thermal signature in IR). Same seed and arguments -> byte-identical files.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from ssft_deploy.datasets.images import write_jpeg
from ssft_deploy.datasets.persons import make_camera, make_identity, render
from ssft_deploy.errors import SSFTError

RGB_CAMS = (1, 2, 4, 5)
IR_CAMS = (3, 6)
REGDB_TRIALS = 10

# SYSU-MM01's test split: 96 ids, 3803 IR query images, 301 (id, RGB camera) pairs (= the
# single-shot gallery; multi-shot takes 10 per pair, 3010), 112 of them indoor (cameras 1, 2: 56
# ids, so 40 ids have no indoor-search match), 13-42 images per (id, RGB camera) pair.
SYSU_TEST_SCALE = {"num_test": 96, "query_images": 3803, "gallery_pairs": 301,
                   "indoor_pairs": 112, "test_rgb_per_cam": (13, 42)}
INDOOR_CAMS = (1, 2)
# A query of IR camera 3 ignores RGB camera 2 (same room): an id needs a cell in one of these
# for every all-search query to have a match.
ALL_SEARCH_CAMS = (1, 4, 5)


@dataclass
class Summary:
    """What was written: root, per-split ids, per-camera image counts."""

    root: str
    splits: dict[str, list[int]]
    images_per_camera: dict[str, int] = field(default_factory=dict)
    images: int = 0

    def to_dict(self) -> dict:
        return {"root": self.root, "splits": self.splits, "images": self.images,
                "images_per_camera": self.images_per_camera}


def _spread(rng: np.random.Generator, total: int, cells: int, lo: int) -> np.ndarray:
    """``cells`` counts, each >= lo, summing exactly to ``total`` (random, largest remainder)."""
    if total < cells * lo:
        raise SSFTError(f"cannot place {total} images in {cells} cells of at least {lo}")
    share = rng.uniform(0.5, 1.5, cells)
    raw = share / share.sum() * (total - cells * lo)
    out = np.floor(raw).astype(int)
    out[np.argsort(out - raw, kind="stable")[: total - cells * lo - out.sum()]] += 1
    return out + lo


def _range(x: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (x, x) if isinstance(x, int) else tuple(x)
    if lo > hi:
        raise SSFTError(f"image-count range {lo},{hi}: LO must not exceed HI")
    return int(lo), int(hi)


def _rgb_cells(rng: np.random.Generator, n: int, presence: float, gallery_pairs: int | None,
               indoor_pairs: int | None) -> np.ndarray:
    """``[n, 4]`` presence of each id in RGB cameras 1, 2, 4, 5: every id in at least one of
    cameras 1, 4, 5; ``gallery_pairs`` / ``indoor_pairs`` fix the pair totals (all / cams 1-2)."""
    cols = {c: j for j, c in enumerate(RGB_CAMS)}
    must = [cols[c] for c in ALL_SEARCH_CAMS]
    if gallery_pairs is None and indoor_pairs is None:
        rgb = rng.random((n, len(RGB_CAMS))) < presence
        lacking = ~rgb[:, must].any(axis=1)
        rgb[np.flatnonzero(lacking), rng.choice(must, size=int(lacking.sum()))] = True
        return rgb
    total = n * 2 if gallery_pairs is None else gallery_pairs
    indoor = min(n, total - n) if indoor_pairs is None else indoor_pairs
    if not 0 <= indoor <= 2 * n or total > 4 * n:
        raise SSFTError(f"cannot place {total} (id, RGB camera) pairs, {indoor} of them indoor, "
                        f"for {n} ids")
    rgb = np.zeros((n, len(RGB_CAMS)), bool)
    # indoor ids hold both indoor cameras (as on the real split), an odd total leaves one at cam 1
    ids = rng.permutation(n)[: (indoor + 1) // 2]
    rgb[ids, cols[1]] = True
    rgb[ids[: indoor // 2], cols[2]] = True
    outdoor = [cols[4], cols[5]]
    need = np.flatnonzero(~rgb[:, must].any(axis=1))   # ids without a cam-1 cell: one outdoor
    rgb[need, rng.choice(outdoor, size=need.size)] = True
    free = np.flatnonzero(~rgb[:, outdoor].ravel())
    left = total - int(rgb.sum())
    if left < 0 or left > free.size:
        raise SSFTError(f"cannot place {total} (id, RGB camera) pairs, {indoor} of them indoor, "
                        f"for {n} ids (each id needs one camera of {ALL_SEARCH_CAMS})")
    view = rgb[:, outdoor].ravel()
    view[rng.choice(free, left, replace=False)] = True
    rgb[:, outdoor] = view.reshape(n, 2)
    return rgb


def _plan_sysu(rng: np.random.Generator, pids: list[int], rgb_per_cam: tuple[int, int],
               ir_per_cam: tuple[int, int], rgb_presence: float, gallery_pairs: int | None,
               query_images: int | None, indoor_pairs: int | None = None):
    """{(pid, cam): image count}: every id in both IR cameras and in RGB cameras as
    ``_rgb_cells`` places them."""
    n = len(pids)
    rgb = _rgb_cells(rng, n, rgb_presence, gallery_pairs, indoor_pairs)
    plan = {}
    for i, pid in enumerate(pids):
        for j, cam in enumerate(RGB_CAMS):
            if rgb[i, j]:
                plan[(pid, cam)] = int(rng.integers(rgb_per_cam[0], rgb_per_cam[1] + 1))
    ir_counts = (_spread(rng, query_images, n * len(IR_CAMS), 1) if query_images is not None
                 else rng.integers(ir_per_cam[0], ir_per_cam[1] + 1, n * len(IR_CAMS)))
    for c, (pid, cam) in zip(ir_counts, [(p, c) for p in pids for c in IR_CAMS]):
        plan[(pid, cam)] = int(c)
    return plan


def _write_images(root: Path, jobs: list[tuple[int, int, int, Path]], seed: int,
                  size: tuple[int, int], quality: int, progress: bool,
                  vary: frozenset[int] = frozenset()) -> None:
    """Render and write (pid, cam, index, path) jobs; the modality follows the camera. Ids in
    ``vary`` get their own draw of each camera's conditions (``make_camera``'s ``cell``)."""
    if len(size) != 2 or size[0] < 16 or size[1] < 8:
        raise SSFTError(f"image size (h, w) must be at least (16, 8), got {tuple(size)}")
    idents, cams = {}, {}
    for pid, cam, n, path in tqdm(jobs, desc="synthetic images", disable=not progress, unit="img"):
        if pid not in idents:
            idents[pid] = make_identity(seed, pid)
        key = (cam, pid if pid in vary else None)
        if key not in cams:
            cams[key] = make_camera(seed, *key)
        modality = 1 if cam in IR_CAMS else 0
        img = render(idents[pid], cams[key], modality, np.random.default_rng([seed, pid, cam, n]),
                     size)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jpeg(path, img, quality)


def generate_sysu(root: str | os.PathLike, num_train: int = 32, num_val: int = 8,
                  num_test: int = 16, rgb_per_cam: int | tuple[int, int] = (4, 8),
                  ir_per_cam: int | tuple[int, int] | None = None, rgb_presence: float = 0.8,
                  size: tuple[int, int] = (128, 64), seed: int = 0,
                  query_images: int | None = None, gallery_pairs: int | None = None,
                  indoor_pairs: int | None = None,
                  test_rgb_per_cam: int | tuple[int, int] | None = None,
                  vary_train_cameras: bool = False, quality: int = 90,
                  progress: bool = False) -> Summary:
    """Write a synthetic SYSU-MM01 tree under ``root`` and return a Summary.

    ``rgb_per_cam`` / ``ir_per_cam``: images per identity per camera (an int or a (lo, hi) range;
    IR defaults to the RGB range). Every id appears in both IR cameras and in a random non-empty
    subset of the RGB cameras (each with probability ``rgb_presence``) that includes one of
    cameras 1, 4, 5, so every all-search query has a match. For the test split,
    ``query_images``, ``gallery_pairs`` and ``indoor_pairs`` fix the IR image total and the
    (id, RGB camera) pair counts, and ``test_rgb_per_cam`` its images per RGB pair:
    ``generate_sysu(root, **SYSU_TEST_SCALE)`` gives SYSU-MM01's test split.
    ``vary_train_cameras``: every train / val id sees its own draw of each camera's background,
    light, colour cast, scale and blur (the test split keeps one draw per camera, as a real
    site does), so what a model learns depends on the people, not on six cameras' incidentals.
    """
    rgb_rng = _range(rgb_per_cam)
    ir_rng = rgb_rng if ir_per_cam is None else _range(ir_per_cam)
    test_rng = rgb_rng if test_rgb_per_cam is None else _range(test_rgb_per_cam)
    if min(rgb_rng + ir_rng + test_rng) < 1 or num_test < 1 or num_train + num_val < 1:
        raise SSFTError("need >= 1 image per camera, >= 1 test id and >= 1 train/val id")
    root = Path(root)
    rng = np.random.default_rng([seed, 1])
    pids = (rng.permutation(num_train + num_val + num_test) + 1).tolist()
    splits = {"train": sorted(pids[:num_train]), "val": sorted(pids[num_train:num_train + num_val]),
              "test": sorted(pids[num_train + num_val:])}
    jobs = []
    for s, (name, ids) in enumerate(splits.items()):
        test = name == "test"
        plan = _plan_sysu(np.random.default_rng([seed, 2, s]), ids, test_rng if test else rgb_rng,
                          ir_rng, rgb_presence, gallery_pairs if test else None,
                          query_images if test else None, indoor_pairs if test else None)
        for (pid, cam), count in plan.items():
            jobs += [(pid, cam, n, root / f"cam{cam}" / f"{pid:04d}" / f"{n + 1:04d}.jpg")
                     for n in range(count)]
    vary = frozenset(splits["train"] + splits["val"]) if vary_train_cameras else frozenset()
    _write_images(root, jobs, seed, size, quality, progress, vary)
    (root / "exp").mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        (root / "exp" / f"{name}_id.txt").write_text(",".join(str(p) for p in ids) + "\n")
    per_cam = {f"cam{c}": sum(1 for j in jobs if j[1] == c) for c in RGB_CAMS + IR_CAMS}
    return Summary(str(root), splits, dict(sorted(per_cam.items())), len(jobs))


def generate_regdb(root: str | os.PathLike, num_ids: int = 40, images_per_id: int = 10,
                   size: tuple[int, int] = (128, 64), seed: int = 0, quality: int = 90,
                   progress: bool = False) -> Summary:
    """Write a synthetic RegDB tree: ``images_per_id`` visible and thermal images per id, and 10
    trials each splitting the ids in half (train / test), labels 0-based as in RegDB's files."""
    if num_ids < 2 or images_per_id < 1:
        raise SSFTError("RegDB needs at least 2 ids and 1 image per id")
    root = Path(root)
    # RegDB is one visible/thermal camera pair: camera codes 1 and 3 select the RGB / IR modality
    # and the per-camera conditions; ids are offset so they never meet SYSU identities' seeds.
    jobs, rel = [], {}
    for pid in range(num_ids):
        for folder, cam, tag in (("Visible", 1, "v"), ("Thermal", 3, "t")):
            for n in range(images_per_id):
                name = f"{folder}/{pid + 1}/{tag}_{n + 1:02d}.jpg"
                rel.setdefault((folder, pid), []).append(name)
                jobs.append((100000 + pid, cam, n, root / name))
    _write_images(root, jobs, seed, size, quality, progress)
    (root / "idx").mkdir(parents=True, exist_ok=True)
    splits = {}
    for trial in range(1, REGDB_TRIALS + 1):
        order = np.random.default_rng([seed, 3, trial]).permutation(num_ids)
        half = {"train": sorted(order[: num_ids // 2].tolist()),
                "test": sorted(order[num_ids // 2:].tolist())}
        for split, ids in half.items():
            for folder in ("Visible", "Thermal"):
                lines = [f"{name} {label}" for label, pid in enumerate(ids)
                         for name in rel[(folder, pid)]]
                path = root / "idx" / f"{split}_{folder.lower()}_{trial}.txt"
                path.write_text("\n".join(lines) + "\n")
        if trial == 1:
            splits = {k: [p + 1 for p in v] for k, v in half.items()}
    counts = {"Visible": num_ids * images_per_id, "Thermal": num_ids * images_per_id}
    return Summary(str(root), splits, counts, len(jobs))


@click.command()
@click.option("--root", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--regdb", is_flag=True, help="write the RegDB layout instead of SYSU-MM01")
@click.option("--ids", default=None, help="SYSU: TRAIN,VAL,TEST id counts; RegDB: total ids")
@click.option("--per-cam", default="4,8", show_default=True,
              help="SYSU images per id per camera (N or LO,HI); RegDB images per modality")
@click.option("--test-per-cam", default=None,
              help="SYSU test split's images per id per RGB camera (N or LO,HI; default --per-cam)")
@click.option("--sysu-test-scale", is_flag=True,
              help="SYSU test split of the real size (96 ids, 3803 queries, 301 pairs)")
@click.option("--size", default="128,64", show_default=True, help="image H,W")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--vary-train-cameras", is_flag=True,
              help="SYSU: a fresh draw of each camera's conditions per training id")
def main(root, regdb, ids, per_cam, test_per_cam, sysu_test_scale, size, seed,
         vary_train_cameras) -> None:
    """Generate a synthetic cross-modality person dataset."""
    try:
        hw = tuple(int(x) for x in size.split(","))
        pc = [int(x) for x in per_cam.split(",")]
        if regdb:
            summary = generate_regdb(root, num_ids=int(ids or 40), images_per_id=pc[0], size=hw,
                                     seed=seed, progress=True)
        else:
            counts = [int(x) for x in (ids or "32,8,16").split(",")]
            if len(counts) != 3:
                raise SSFTError("--ids for SYSU is TRAIN,VAL,TEST")
            extra = dict(SYSU_TEST_SCALE) if sysu_test_scale else {}
            kwargs = {"num_train": counts[0], "num_val": counts[1], "num_test": counts[2],
                      "rgb_per_cam": pc[0] if len(pc) == 1 else (pc[0], pc[1]),
                      "vary_train_cameras": vary_train_cameras, **extra}
            if test_per_cam:
                tc = [int(x) for x in test_per_cam.split(",")]
                kwargs["test_rgb_per_cam"] = tc[0] if len(tc) == 1 else (tc[0], tc[1])
            summary = generate_sysu(root, size=hw, seed=seed, progress=True, **kwargs)
    except (SSFTError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(json.dumps(summary.to_dict()["images_per_camera"]))
    click.echo(f"wrote {summary.images} images under {summary.root}")


if __name__ == "__main__":
    main()
