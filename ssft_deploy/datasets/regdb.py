"""RegDB: ``Visible/``, ``Thermal/`` and ``idx/{train,test}_{visible,thermal}_{trial}.txt`` index
files of lines ``path label`` (path relative to the root), trials 1..10."""

from __future__ import annotations

import os
from pathlib import Path

from ssft_deploy.datasets.records import IR, RGB, ImageRecord
from ssft_deploy.errors import DatasetError

TRIALS = range(1, 11)
# camera codes: RegDB has one visible and one thermal camera
VISIBLE_CAM, THERMAL_CAM = 1, 2
DIRECTIONS = {"v2t": ("visible", "thermal"), "t2v": ("thermal", "visible")}


def read_index(root: str | os.PathLike, split: str, modality: str, trial: int) -> list[ImageRecord]:
    """Records of ``idx/{split}_{modality}_{trial}.txt``; a missing file, a malformed line or a
    listed image that does not exist is a DatasetError naming file and line."""
    if split not in ("train", "test"):
        raise DatasetError(f"unknown RegDB split {split!r}: use 'train' or 'test'")
    if trial not in TRIALS:
        raise DatasetError(f"RegDB trial must be 1..10, got {trial!r}")
    root = Path(root)
    folder = {"visible": "Visible", "thermal": "Thermal"}[modality]
    if not (root / folder).is_dir():
        raise DatasetError(f"missing folder {root / folder}: not a RegDB root")
    path = root / "idx" / f"{split}_{modality}_{trial}.txt"
    if not path.is_file():
        raise DatasetError(f"missing index file {path}")
    cam, mod = (VISIBLE_CAM, RGB) if modality == "visible" else (THERMAL_CAM, IR)
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{path}:{lineno}: expected 'path label', got {line.strip()!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: label {parts[1]!r} is not an integer") from None
        image = root / parts[0]
        if not image.is_file():
            raise DatasetError(f"{path}:{lineno}: image {image} does not exist")
        out.append(ImageRecord(str(image), label, cam, mod))
    if not out:
        raise DatasetError(f"{path}: no entries")
    return out


def load_split(root: str | os.PathLike, split: str = "train", trial: int = 1) -> list[ImageRecord]:
    """Visible then thermal records of one split (``"train"`` / ``"test"``) of ``trial``."""
    return (read_index(root, split, "visible", trial)
            + read_index(root, split, "thermal", trial))


def test_trial(root: str | os.PathLike, trial: int = 1,
               direction: str = "v2t") -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(query, gallery) of a test trial: ``"v2t"`` visible queries against the thermal gallery,
    ``"t2v"`` the reverse."""
    if direction not in DIRECTIONS:
        raise DatasetError(f"unknown RegDB direction {direction!r}: use 'v2t' or 't2v'")
    q, g = DIRECTIONS[direction]
    return read_index(root, "test", q, trial), read_index(root, "test", g, trial)
