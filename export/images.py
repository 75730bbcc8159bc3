"""Image sets the export needs: calibration images (training split only) and held-out images for
the parity gate (a SYSU-style test trial, synthetic unless a dataset is given)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssft_deploy.datasets import sysu
from ssft_deploy.datasets.records import ImageRecord
from ssft_deploy.errors import DatasetError
from ssft_deploy.preprocess import Preprocessor

MODALITY_CODE = {"rgb": 0, "ir": 1}


def spread(records: list, limit: int) -> list:
    """At most ``limit`` records, evenly spaced (deterministic, covers every identity/camera)."""
    if len(records) <= limit:
        return list(records)
    picks = np.linspace(0, len(records) - 1, limit).round().astype(int)
    return [records[i] for i in picks]


def load_images(records: list[ImageRecord], prep: Preprocessor) -> np.ndarray:
    """Records -> normalised float32 ``[n,3,H,W]``; unreadable images raise InputError."""
    batch = prep.crops([r.path for r in records])
    batch.raise_errors()
    return batch.array


def calibration_images(root: str | os.PathLike, modality: str, prep: Preprocessor,
                       limit: int = 128) -> np.ndarray:
    """int8 calibration images of one modality from the TRAINING split of a SYSU-style dataset.

    Only ``sysu.load_split(root, "train")`` is read: calibrating on test images would leak them.
    """
    records = [r for r in sysu.load_split(root, "train") if r.modality == MODALITY_CODE[modality]]
    if not records:
        raise DatasetError(f"{root}: no {modality} images in the training split to calibrate on")
    return load_images(spread(records, limit), prep)


@dataclass
class HeldOut:
    """Query (IR) and gallery (RGB) images of one test trial, with labels for the ranking."""

    query: np.ndarray
    gallery: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    source: str


# Queries (and gallery entries) of the gate's trial: 400 queries resolve a quarter of a Rank-1
# point, so "within 1 point of fp32" can be told apart from one query's flip (2.1 points at 48).
GATE_IMAGES = 400


def _labels(records: list[ImageRecord]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([r.pid for r in records], np.int64),
            np.array([r.camid for r in records], np.int64))


def held_out_images(prep: Preprocessor, root: str | os.PathLike | None = None,
                    max_query: int = GATE_IMAGES, max_gallery: int = GATE_IMAGES, seed: int = 0
                    ) -> HeldOut:
    """Held-out images for the parity gate: a SYSU all-search multi-shot trial of ``root``'s test
    split, or of a small synthetic dataset generated into a temporary folder when ``root`` is None.
    At most ``max_query`` IR queries and ``max_gallery`` RGB entries, spread over the split."""
    if root is None:
        from ssft_deploy.datasets import synthetic

        with tempfile.TemporaryDirectory(prefix="ssft-verify-") as tmp:
            synthetic.generate_sysu(tmp, num_train=1, num_val=0, num_test=8, rgb_per_cam=3,
                                    size=tuple(prep.input_size), seed=seed + 7)
            return _trial(Path(tmp), prep, max_query, max_gallery, "synthetic")
    return _trial(Path(root), prep, max_query, max_gallery, str(root))


def _trial(root: Path, prep: Preprocessor, max_query: int, max_gallery: int,
           source: str) -> HeldOut:
    query, gallery = sysu.test_trial(root, mode="all", shots=10, trial=0)
    query, gallery = spread(query, max_query), spread(gallery, max_gallery)
    if not query or not gallery:
        raise DatasetError(f"{root}: the test split has no IR query or RGB gallery images")
    (qp, qc), (gp, gc) = _labels(query), _labels(gallery)
    return HeldOut(load_images(query, prep), load_images(gallery, prep), qp, gp, qc, gc, source)
