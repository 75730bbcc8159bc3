"""The demo recipe's augmentations (train/augment.py) and the warm-up of the learning rate."""

from __future__ import annotations

import pytest
import torch

from train.augment import Augment, colour_jitter, random_crop
from train.config import ConfigError, SSFTConfig
from train.trainer import lr_at


def _image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(3, 32, 16).clamp(-1.5, 1.5)


def test_colour_jitter_only_touches_rgb() -> None:
    x = _image()
    aug = Augment(flip=False, erasing=False, jitter=0.4)
    torch.manual_seed(1)
    assert not torch.allclose(aug(x, 0), x)          # RGB: jittered
    torch.manual_seed(1)
    assert torch.equal(aug(x, 1), x)                 # IR: its grey levels are its signature
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    in_range = ((x * std + mean).clamp(0, 1) - mean) / std
    assert torch.allclose(colour_jitter(x, 0.0), in_range, atol=1e-5)   # strength 0: identity


def test_random_crop_keeps_the_shape_and_shifts() -> None:
    x = _image()
    torch.manual_seed(0)
    crops = [random_crop(x, 4) for _ in range(10)]
    assert all(c.shape == x.shape for c in crops)
    assert any(not torch.equal(c, x) for c in crops)
    assert all((c == 0).any() or torch.equal(c, x) for c in crops)   # padding is the mean (0)


def test_augmentation_is_a_function_of_the_seed() -> None:
    x = _image()
    aug = Augment(flip=True, erasing=True, crop_pad=3, jitter=0.3)
    torch.manual_seed(5)
    a = aug(x, 0)
    torch.manual_seed(5)
    assert torch.equal(aug(x, 0), a)


def test_warmup_then_step_decay() -> None:
    cfg = SSFTConfig(lr=1.0, warmup_epochs=4, milestones=(6,))
    lrs = [lr_at(cfg, e) for e in range(8)]
    assert lrs[:5] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])
    assert lrs[5:] == pytest.approx([1.0, 0.1, 0.1])
    assert lr_at(SSFTConfig(lr=1.0), 0) == 1.0     # no warm-up by default (the paper's schedule)


@pytest.mark.parametrize("bad", [{"crop_pad": -1}, {"warmup_epochs": -2}, {"colour_jitter": 1.5}])
def test_bad_recipe_values(bad) -> None:
    with pytest.raises(ConfigError):
        SSFTConfig(**bad)
