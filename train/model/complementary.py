"""Complementary learning modules of Sec. 3.3: modality discriminator (Eq. 14), projection
matrices (Eq. 15) and reconstruction decoders (Eq. 16)."""

from __future__ import annotations

import torch
from torch import nn


def modality_discriminator(shared_dim: int, hidden: int) -> nn.Sequential:
    """Three fully connected layers: shared feature ``H`` -> logits over (RGB, IR) (Eq. 14)."""
    return nn.Sequential(
        nn.Linear(shared_dim, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, 2),
    )


def projection(specific_dim: int, shared_dim: int) -> nn.Linear:
    """``Theta^m``: projects a specific feature onto the shared feature of the same sample."""
    return nn.Linear(specific_dim, shared_dim, bias=False)


class Decoder(nn.Module):
    """``De^m`` (Eq. 16): four sub-pixel convolution layers (conv -> PixelShuffle(2)), 64
    channels each, the last one producing the 3 image channels: the 16x-downsampled map of
    ``[P^m; H^m]`` back to input resolution."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 4) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c_in = in_channels
        for i in range(layers):
            c_out = 3 if i == layers - 1 else channels
            mods += [nn.Conv2d(c_in, c_out * 4, 3, padding=1), nn.PixelShuffle(2)]
            if i < layers - 1:
                mods.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.body = nn.Sequential(*mods)

    def forward(self, specific_map: torch.Tensor, shared_map: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([specific_map, shared_map], dim=1))
