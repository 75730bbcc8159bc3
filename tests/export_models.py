"""Tiny real cm-SSFT models for the export tests (helper module, no tests of its own)."""

from __future__ import annotations

import torch
from torch import nn

from train.config import SSFTConfig
from train.model import SSFTModel


def randomise_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so BN folding is really exercised."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)


def tiny_model(height: int = 64, width: int = 32, seed: int = 0) -> SSFTModel:
    """ResNet-18 cm-SSFT at ``height x width`` with random weights and BN statistics, eval mode."""
    torch.manual_seed(seed)
    cfg = SSFTConfig(arch="resnet18", height=height, width=width, num_classes=4, pretrained=None)
    model = SSFTModel(cfg, load_pretrained=False)
    randomise_bn(model)
    return model.eval()
