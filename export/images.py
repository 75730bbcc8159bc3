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
    """Query (IR) and gallery (RGB) images of the held-out test split, with labels for the
    ranking. ``trials``: gallery row subsets ranked one at a time (rank figures are their mean);
    none = one trial over the whole gallery."""

    query: np.ndarray
    gallery: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    source: str
    trials: tuple[np.ndarray, ...] = ()


def single_shot_trials(g_pids: np.ndarray, g_camids: np.ndarray, n: int, seed: int = 0
                       ) -> tuple[np.ndarray, ...]:
    """``n`` SYSU single-shot galleries drawn from a gallery pool: one random row per
    (identity, camera) each, as the protocol's trials do (sorted row indices)."""
    groups = {}
    for i, key in enumerate(zip(g_pids.tolist(), g_camids.tolist())):
        groups.setdefault(key, []).append(i)
    out = []
    for t in range(n):
        rng = np.random.default_rng(seed + t)
        out.append(np.sort([rows[rng.integers(len(rows))] for rows in groups.values()]))
    return tuple(np.asarray(o, np.int64) for o in out)


# Queries (and gallery entries) of the gate's trial: 400 queries resolve a quarter of a Rank-1
# point, so "within 1 point of fp32" can be told apart from one query's flip (2.1 points at 48).
GATE_IMAGES = 400
# Single-shot galleries ranked per gate (the SYSU protocol's 10 trials): one trial's Rank-1 moves
# by about a point from draw to draw on the demo model, their mean by a third of that.
GATE_TRIALS = 10


def _labels(records: list[ImageRecord]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([r.pid for r in records], np.int64),
            np.array([r.camid for r in records], np.int64))


def held_out_images(prep: Preprocessor, root: str | os.PathLike | None = None,
                    max_query: int = GATE_IMAGES, max_gallery: int = GATE_IMAGES, seed: int = 0,
                    trials: int = GATE_TRIALS) -> HeldOut:
    """Held-out images for the parity gate from ``root``'s test split, or from a small synthetic
    dataset generated into a temporary folder when ``root`` is None: at most ``max_query`` IR
    queries and a pool of at most ``max_gallery`` RGB images (SYSU all-search, spread over the
    split), ranked as ``trials`` single-shot galleries drawn from the pool."""
    if root is None:
        from ssft_deploy.datasets import synthetic

        with tempfile.TemporaryDirectory(prefix="ssft-verify-") as tmp:
            synthetic.generate_sysu(tmp, num_train=1, num_val=0, num_test=8, rgb_per_cam=3,
                                    size=tuple(prep.input_size), seed=seed + 7)
            return _trial(Path(tmp), prep, max_query, max_gallery, "synthetic", trials, seed)
    return _trial(Path(root), prep, max_query, max_gallery, str(root), trials, seed)


def _trial(root: Path, prep: Preprocessor, max_query: int, max_gallery: int,
           source: str, trials: int, seed: int) -> HeldOut:
    query, gallery = sysu.test_trial(root, mode="all", shots=10, trial=0)
    query, gallery = spread(query, max_query), spread(gallery, max_gallery)
    if not query or not gallery:
        raise DatasetError(f"{root}: the test split has no IR query or RGB gallery images")
    (qp, qc), (gp, gc) = _labels(query), _labels(gallery)
    return HeldOut(load_images(query, prep), load_images(gallery, prep), qp, gp, qc, gc, source,
                   single_shot_trials(gp, gc, trials, seed))
