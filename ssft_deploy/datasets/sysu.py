"""SYSU-MM01: the on-disk layout and the official evaluation protocol.

Layout: ``camC/PPPP/*.jpg`` for cameras 1..6 (RGB 1, 2, 4, 5; IR 3, 6) and
``exp/{train,val,test}_id.txt`` (one comma-separated line of person ids).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ssft_deploy.datasets.records import IR, RGB, ImageRecord
from ssft_deploy.errors import DatasetError

RGB_CAMS = (1, 2, 4, 5)
IR_CAMS = (3, 6)
GALLERY_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def read_ids(root: str | os.PathLike, split: str) -> list[int]:
    """Person ids of ``exp/{split}_id.txt``; a missing file or a non-integer entry is a
    DatasetError naming file and line."""
    path = Path(root) / "exp" / f"{split}_id.txt"
    if not path.is_file():
        raise DatasetError(f"missing {path}: not a SYSU-MM01 root (expected exp/{split}_id.txt)")
    ids = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        for item in filter(None, (x.strip() for x in line.split(","))):
            try:
                ids.append(int(item))
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: bad person id {item!r} "
                                   "(expected comma-separated integers)") from None
    if not ids:
        raise DatasetError(f"{path}: no person ids")
    return ids


def camera_records(root: str | os.PathLike, cams: tuple[int, ...],
                   pids: list[int]) -> list[ImageRecord]:
    """Every image of ``pids`` in ``cams`` (sorted by camera, id, file name). A camera outside
    1..6 or a missing camera folder is a DatasetError; an id absent from a camera is normal."""
    root = Path(root)
    out = []
    for cam in cams:
        if cam not in RGB_CAMS + IR_CAMS:
            raise DatasetError(f"unknown SYSU-MM01 camera {cam!r}: cameras are 1..6")
        cam_dir = root / f"cam{cam}"
        if not cam_dir.is_dir():
            raise DatasetError(f"missing folder {cam_dir}: not a SYSU-MM01 root")
        modality = IR if cam in IR_CAMS else RGB
        for pid in sorted(pids):
            pid_dir = cam_dir / f"{pid:04d}"
            if not pid_dir.is_dir():
                continue
            names = sorted(n for n in os.listdir(pid_dir) if n.lower().endswith(_IMAGE_EXT))
            out += [ImageRecord(str(pid_dir / n), pid, cam, modality) for n in names]
    return out


def load_split(root: str | os.PathLike, split: str = "train") -> list[ImageRecord]:
    """``"train"``: the train + val ids (as the field trains), all six cameras; ``"test"``: the
    test ids, all six cameras."""
    if split == "train":
        pids = read_ids(root, "train") + read_ids(root, "val")
    elif split == "test":
        pids = read_ids(root, "test")
    else:
        raise DatasetError(f"unknown SYSU-MM01 split {split!r}: use 'train' or 'test'")
    return camera_records(root, RGB_CAMS + IR_CAMS, pids)


def test_records(root: str | os.PathLike) -> list[ImageRecord]:
    """All test-id images of all cameras (what one feature extraction pass covers)."""
    return load_split(root, "test")


def select_trial(records: list[ImageRecord], mode: str = "all", shots: int = 1, trial: int = 0,
                 seed: int = 0) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The official protocol applied to test ``records``: query = every image of IR cameras 3 and 6;
    gallery = ``shots`` random images (all when fewer) per id per camera of cameras 1, 2, 4, 5
    (``mode="all"``) or 1, 2 (``"indoor"``), drawn from the per-trial seed ``(seed, trial)``."""
    if mode not in GALLERY_CAMS:
        raise DatasetError(f"unknown SYSU-MM01 mode {mode!r}: use 'all' or 'indoor'")
    if shots < 1:
        raise DatasetError(f"shots must be >= 1, got {shots}")
    query = [r for r in records if r.camid in IR_CAMS]
    cells: dict[tuple[int, int], list[ImageRecord]] = {}
    for r in records:
        if r.camid in GALLERY_CAMS[mode]:
            cells.setdefault((r.pid, r.camid), []).append(r)
    rng = np.random.default_rng([seed, trial])
    gallery = []
    for key in sorted(cells):
        cell = cells[key]
        if len(cell) <= shots:
            gallery += cell
        else:
            gallery += [cell[i] for i in sorted(rng.choice(len(cell), shots, replace=False))]
    return query, gallery


def test_trial(root: str | os.PathLike, mode: str = "all", shots: int = 1, trial: int = 0,
               seed: int = 0) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(query, gallery) of one SYSU-MM01 test trial read from ``root`` (see ``select_trial``)."""
    return select_trial(test_records(root), mode, shots, trial, seed)
