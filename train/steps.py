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
    """Adam (Sec. 4.1) for Theta_N and, when MoA or PA is on, for the adversaries.

    The fused kernel (one pass over each parameter's state instead of a chain of foreach ops) did
    a fifth of a demo step's CPU time in the unfused form; same update rule
    (``cfg.fused_optimizer``)."""
    def adam(params: list[torch.nn.Parameter]) -> torch.optim.Adam:
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=cfg.fused_optimizer)

    opts = {"network": adam(model.network_parameters())}
    adv = model.adversary_parameters()
    if adv:
        opts["adversary"] = adam(adv)
    return opts


def train_step(model: SSFTModel, optimizers: dict[str, torch.optim.Optimizer],
               rgb: torch.Tensor, ir: torch.Tensor, labels: torch.Tensor, cfg: SSFTConfig
               ) -> dict[str, float]:
    """One iteration of Eq. 21; ``labels`` cover the RGB rows first, then the IR rows.
    ``cfg.bf16``: forward and losses under bf16 autocast (weights, gradients and the optimiser
    stay fp32); ``cfg.channels_last``: NHWC inputs for a model moved to channels_last."""
    if cfg.channels_last:
        rgb, ir = (x.contiguous(memory_format=torch.channels_last) for x in (rgb, ir))
    with torch.autocast(rgb.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        return _step(model, optimizers, rgb, ir, labels, cfg)


def _step(model: SSFTModel, optimizers: dict[str, torch.optim.Optimizer], rgb: torch.Tensor,
          ir: torch.Tensor, labels: torch.Tensor, cfg: SSFTConfig) -> dict[str, float]:
    out = model.forward_train(rgb, ir)
    logs: dict[str, float] = {}
    if "adversary" in optimizers:
        logs |= max_step(model, optimizers["adversary"], out, cfg)
    logs |= min_step(model, optimizers["network"], out, labels, torch.cat([rgb, ir]), cfg)
    return logs
