"""Training augmentations on normalised ``[3,H,W]`` tensors: Sec. 4.1's flip and random erasing
plus the demo recipe's random crop and RGB-only colour jitter.

Colour jitter touches RGB images only: an IR image's grey levels are its thermal signature, the
cue its modality-specific features carry. Every random draw uses torch's global generator, which
``ReIDDataset`` seeds per sample, so an augmentation is a pure function of its sample seed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomErasing

from ssft_deploy.preprocess import MEAN, STD

_MEAN = torch.tensor(MEAN).view(3, 1, 1)
_STD = torch.tensor(STD).view(3, 1, 1)
_GREY = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def _u(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def colour_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by U(1 - s, 1 + s), in pixel space."""
    p = x * _STD + _MEAN
    p = p * _u(1 - strength, 1 + strength)
    grey = (p * _GREY).sum(0, keepdim=True)
    p = (p - grey.mean()) * _u(1 - strength, 1 + strength) + grey.mean()
    grey = (p * _GREY).sum(0, keepdim=True)
    p = (p - grey) * _u(1 - strength, 1 + strength) + grey
    return (p.clamp(0, 1) - _MEAN) / _STD


def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad (0 = the mean colour after normalisation) by ``pad`` and crop back at random."""
    h, w = x.shape[-2:]
    y0, x0 = (int(torch.randint(0, 2 * pad + 1, ())) for _ in range(2))
    return F.pad(x, (pad, pad, pad, pad))[:, y0:y0 + h, x0:x0 + w]


class Augment:
    """The training augmentations a config asks for, applied in a fixed order."""

    def __init__(self, flip: bool, erasing: bool, crop_pad: int = 0, jitter: float = 0.0) -> None:
        self.flip, self.crop_pad, self.jitter = flip, crop_pad, jitter
        # value 0 after normalisation = the ImageNet mean colour, as in Bag of Tricks.
        self.erase = RandomErasing(p=0.5, value=0) if erasing else None

    def __call__(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.crop_pad:
            x = random_crop(x, self.crop_pad)
        if self.jitter and modality == 0:
            x = colour_jitter(x, self.jitter)
        if self.erase is not None:
            x = self.erase(x)
        return x
