"""Same seed, same machine -> the same training: two tiny runs of a few steps end with identical
weights (also when the images are loaded by a worker process); another seed does not."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from ssft_deploy.datasets import synthetic, sysu
from train.config import SSFTConfig
from train.trainer import Trainer

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu")
    synthetic.generate_sysu(root, num_train=3, num_val=1, num_test=1, rgb_per_cam=2,
                            size=(32, 16), seed=5)
    return sysu.load_split(root, "train")


def _train(records, out, **changes) -> dict[str, torch.Tensor]:
    base = {"arch": "resnet18", "height": 32, "width": 16, "ids_per_batch": 3, "rgb_per_id": 2,
            "ir_per_id": 2, "epochs": 1, "batches_per_epoch": 3, "num_workers": 0,
            "disc_hidden": 16, "decoder_channels": 8, "seed": 0}
    cfg = SSFTConfig(**{**base, **changes})
    trainer = Trainer(cfg, records, out, progress=False)
    trainer.run()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_same_seed_same_weights(records, tmp_path) -> None:
    a = _train(records, tmp_path / "a")
    b = _train(records, tmp_path / "b")
    worker = _train(records, tmp_path / "w", num_workers=1)
    other = _train(records, tmp_path / "o", seed=1)
    assert a.keys() == b.keys() == worker.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert all(torch.equal(a[k], worker[k]) for k in a)
    assert any(not torch.equal(a[k], other[k]) for k in a)
    assert not torch.are_deterministic_algorithms_enabled()   # the global flag is restored


def test_deterministic_block_does_not_nan_fill_and_trains_the_same(records, tmp_path,
                                                                   monkeypatch) -> None:
    """torch NaN-fills every torch.empty under deterministic mode by default (a fifth of a demo
    step's CPU time); the trainer's block turns that off, restores it after, and the weights are
    those of a run with the fill on."""
    import torch.utils.deterministic as det

    from train import trainer as trainer_mod

    seen = []
    step = trainer_mod.train_step

    def spy(*args, **kwargs):
        seen.append(det.fill_uninitialized_memory)
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_step", spy)
    fast = _train(records, tmp_path / "fast")
    assert seen and not any(seen) and det.fill_uninitialized_memory is True   # restored

    block = trainer_mod.deterministic

    @contextmanager
    def filling(on):
        with block(on):
            det.fill_uninitialized_memory = True
            yield

    monkeypatch.setattr(trainer_mod, "deterministic", filling)
    seen.clear()
    filled = _train(records, tmp_path / "filled")
    assert seen and all(seen)
    assert all(torch.equal(fast[k], filled[k]) for k in fast)
