"""Training images as tensors: the runtime's preprocessing (ssft_deploy.preprocess) plus the
training augmentations (train/augment.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ssft_deploy.datasets.records import ImageRecord
from ssft_deploy.errors import DatasetError
from ssft_deploy.preprocess import Preprocessor
from train.augment import Augment
from train.config import SSFTConfig


def load_train_records(cfg: SSFTConfig, root: str | os.PathLike) -> list[ImageRecord]:
    """The training split of ``cfg.dataset`` under ``root`` (SYSU: train + val identities)."""
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder {root} does not exist")
    if cfg.dataset == "sysu":
        from ssft_deploy.datasets import sysu

        records = sysu.load_split(root, "train")
    else:
        from ssft_deploy.datasets import regdb

        records = regdb.load_split(root, "train", trial=cfg.regdb_trial)
    if not records:
        raise DatasetError(f"no training images found under {root}")
    return list(records)


def label_map(records: Sequence[ImageRecord]) -> dict[int, int]:
    """Person id -> contiguous class index (sorted by pid)."""
    return {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}


class ReIDDataset(Dataset):
    """``(image [3,H,W] float32, label, modality)`` per record; augmentations when ``train``."""

    def __init__(self, records: Sequence[ImageRecord], cfg: SSFTConfig, train: bool = True,
                 labels: dict[int, int] | None = None) -> None:
        self.records = list(records)
        self.labels = labels if labels is not None else label_map(self.records)
        self.pre = Preprocessor((cfg.height, cfg.width))
        self.augment = Augment(train and cfg.flip, train and cfg.random_erasing,
                               cfg.crop_pad if train else 0, cfg.colour_jitter if train else 0.0)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        """``key`` = index, or (index, augmentation seed): with a seed the flip and erasing are
        a pure function of it, whatever process or worker loads the sample."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        rec = self.records[i]
        x = torch.from_numpy(np.ascontiguousarray(self.pre.one(rec.path)))
        if seed is None:
            return self.augment(x, rec.modality), self.labels[rec.pid], rec.modality
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.augment(x, rec.modality), self.labels[rec.pid], rec.modality

    @property
    def pids(self) -> list[int]:
        return [r.pid for r in self.records]

    @property
    def modalities(self) -> list[int]:
        return [r.modality for r in self.records]
