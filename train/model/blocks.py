"""Feature blocks ``Feat^S``, ``Feat^m``, ``Feat^t``: pooling + BNNeck, or the plain FC of Table 4."""

from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent p: ``[B,C,h,w] -> [B,C]``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class FeatureBlock(nn.Module):
    """Optional pooling, then the neck, then an identity classifier.

    ``bnneck`` (Bag of Tricks): the triplet loss sees the pre-BN vector, the classifier and
    retrieval the post-BN one; the BN bias is frozen so the classifier's hyperplanes pass through
    the origin. ``fc``: one linear layer whose output serves all three (Table 4 "wo aug").
    """

    def __init__(self, dim: int, num_classes: int, neck: str = "bnneck",
                 pool: str | None = None) -> None:
        super().__init__()
        self.pool = {"gem": GeM, "avg": AvgPool, None: nn.Identity}[pool]()
        if neck == "bnneck":
            self.neck = nn.BatchNorm1d(dim)
            self.neck.bias.requires_grad_(False)
        else:
            self.neck = nn.Linear(dim, dim)
        self.bnneck = neck == "bnneck"
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (triplet feature, retrieval feature), both ``[B, dim]``."""
        v = self.pool(x)
        post = self.neck(v)
        return (v if self.bnneck else post), post
