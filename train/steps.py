"""The alternating optimisation of Eq. 21: a max step on Theta_D, Theta^m, then a min step on
Theta_N, both from one forward pass of the network."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from train.config import SSFTConfig
from train.losses import max_loss, min_loss
from train.model import SSFTModel


@contextmanager
def frozen(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """``requires_grad = False`` on ``params`` inside the block (restored after)."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def max_step(model: SSFTModel, optimizer: torch.optim.Optimizer, out: dict[str, torch.Tensor],
             cfg: SSFTConfig) -> dict[str, float]:
    """Update the discriminator and projections only: their losses on detached features."""
    loss, logs = max_loss(model, out, cfg)
    if loss is not None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return logs


def min_step(model: SSFTModel, optimizer: torch.optim.Optimizer, out: dict[str, torch.Tensor],
             labels: torch.Tensor, images: torch.Tensor, cfg: SSFTConfig) -> dict[str, float]:
    """Update the network only (discriminator and projections frozen): Eq. 20, min side."""
    optimizer.zero_grad(set_to_none=True)
    with frozen(model.adversary_parameters()):
        loss, logs = min_loss(model, out, labels, images, cfg)
        loss.backward()
    optimizer.step()
    return logs


def make_optimizers(model: SSFTModel, cfg: SSFTConfig) -> dict[str, torch.optim.Optimizer]:
    """Adam (Sec. 4.1) for Theta_N and, when MoA or PA is on, for the adversaries."""
    opts = {"network": torch.optim.Adam(model.network_parameters(), lr=cfg.lr,
                                        weight_decay=cfg.weight_decay)}
    adv = model.adversary_parameters()
    if adv:
        opts["adversary"] = torch.optim.Adam(adv, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opts


def train_step(model: SSFTModel, optimizers: dict[str, torch.optim.Optimizer],
               rgb: torch.Tensor, ir: torch.Tensor, labels: torch.Tensor, cfg: SSFTConfig
               ) -> dict[str, float]:
    """One iteration of Eq. 21; ``labels`` cover the RGB rows first, then the IR rows."""
    out = model.forward_train(rgb, ir)
    logs: dict[str, float] = {}
    if "adversary" in optimizers:
        logs |= max_step(model, optimizers["adversary"], out, cfg)
    logs |= min_step(model, optimizers["network"], out, labels, torch.cat([rgb, ir]), cfg)
    return logs
