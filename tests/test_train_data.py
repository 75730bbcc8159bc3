"""Sampler (Sec. 4.1: P identities x (K RGB + K IR)) and the training dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssft_deploy.datasets import synthetic, sysu
from ssft_deploy.errors import DatasetError
from ssft_deploy.preprocess import Preprocessor
from train.config import SSFTConfig
from train.data import ReIDDataset, label_map
from train.sampler import CrossModalitySampler


def _index(n_ids: int, rgb: int, ir: int):
    pids, mods = [], []
    for p in range(n_ids):
        pids += [100 + p] * (rgb + ir)
        mods += [0] * rgb + [1] * ir
    return pids, mods


def test_batches_are_ids_times_rgb_plus_ir() -> None:
    pids, mods = _index(12, rgb=6, ir=3)
    s = CrossModalitySampler(pids, mods, ids_per_batch=8, rgb_per_id=4, ir_per_id=4,
                             batches_per_epoch=5, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 5
    pids, mods = np.array(pids), np.array(mods)
    for b in batches:
        b = np.array(b)
        assert len(b) == 64
        rgb, ir = b[:32], b[32:]
        assert (mods[rgb] == 0).all() and (mods[ir] == 1).all()
        order_rgb, order_ir = pids[rgb][::4], pids[ir][::4]
        assert len(set(order_rgb)) == 8 and (order_rgb == order_ir).all()
        assert (pids[rgb].reshape(8, 4) == order_rgb[:, None]).all()
        assert (pids[ir].reshape(8, 4) == order_ir[:, None]).all()
        # 6 RGB images per id: drawn without replacement; 3 IR images: with replacement.
        assert all(len(set(rgb[i:i + 4])) == 4 for i in range(0, 32, 4))
    s.set_epoch(1)
    again = CrossModalitySampler(pids, mods, 8, 4, 4, 5, seed=1)
    again.set_epoch(1)
    assert list(s) == list(again) and list(s) != batches


def test_sampler_needs_identities_of_both_modalities() -> None:
    pids, mods = _index(8, rgb=4, ir=4)
    mods = [0 if p == 100 else m for p, m in zip(pids, mods)]   # id 100 has no IR
    with pytest.raises(DatasetError, match="both RGB and IR"):
        CrossModalitySampler(pids, mods, ids_per_batch=8)
    default = CrossModalitySampler(pids, mods, ids_per_batch=4)
    assert len(default) == max(1, (mods.count(0)) // 16)


def test_dataset_reads_synthetic_sysu(tmp_path) -> None:
    synthetic.generate_sysu(tmp_path, num_train=3, num_val=1, num_test=1, rgb_per_cam=1,
                            size=(64, 32), seed=0)
    records = sysu.load_split(tmp_path, "train")
    cfg = SSFTConfig(arch="resnet18", height=32, width=16, random_erasing=False)
    labels = label_map(records)
    assert sorted(labels.values()) == list(range(4))
    plain = ReIDDataset(records, cfg, train=False)
    x, y, m = plain[0]
    assert x.shape == (3, 32, 16) and x.dtype == torch.float32
    assert y == labels[records[0].pid] and m == records[0].modality
    ref = Preprocessor((32, 16)).one(records[0].path)   # the runtime's preprocessing
    np.testing.assert_array_equal(x.numpy(), ref)
    ir = next(i for i, r in enumerate(records) if r.modality == 1)
    assert plain[ir][0].shape == (3, 32, 16)
    torch.manual_seed(0)
    erasing = ReIDDataset(records, cfg.replace(random_erasing=True, flip=False), train=True)
    erased = [erasing[0][0] for _ in range(20)]
    assert any(not torch.equal(e, x) for e in erased)           # sometimes erased ...
    assert any(torch.equal(e, x) for e in erased)               # ... sometimes not (p = 0.5)
    assert all((e == 0).any() for e in erased if not torch.equal(e, x))
