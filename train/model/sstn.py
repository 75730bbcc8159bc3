"""Shared-Specific Transfer Network (Sec. 3.2, Eq. 5-11), torch twin of the runtime's numpy code.

``pad`` (Eq. 5), ``affinity`` (Eq. 6-8 as neighbour lists, the ``topk_affinity`` contract),
``neighbour_weights`` (the same weights with autograd, for end-to-end training) and
``propagate`` (``D^-1/2 A D^-1/2 Z``, the ``propagate`` contract) follow docs/ARCHITECTURE.md.
``TransferNetwork.forward(z, idx, w)`` is what is exported as ``transfer.onnx``: gathers and sums only, no
scatter and no shape that depends on values, so N stays dynamic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from train.model.blocks import FeatureBlock

PARTS = ("shared", "specific")
EPS = 1e-12  # same clamp as torch.nn.functional.normalize and the numpy reference


def pad(shared: torch.Tensor, specific: torch.Tensor, modality: torch.Tensor,
        parts: Sequence[str] = PARTS) -> torch.Tensor:
    """Eq. 5: RGB rows ``[P^R; H; 0]``, IR rows ``[0; H; P^I]`` -> ``[N, 2Dp + Ds]``.

    The layout is fixed; a part not in ``parts`` (ShT / SpT of Table 3) is zero. Masks are
    arithmetic, not indexing, so the function traces to a static graph."""
    ir = modality.reshape(-1, 1).to(specific.dtype)
    sp = specific if "specific" in parts else torch.zeros_like(specific)
    sh = shared if "shared" in parts else torch.zeros_like(shared)
    return torch.cat([sp * (1.0 - ir), sh, sp * ir], dim=1)


def _d(x: torch.Tensor) -> torch.Tensor:
    """Eq. 7 between all rows, in float64 from re-normalised unit vectors (as the reference does,
    so d(x, x) = 1 exactly and ties resolve the same way)."""
    x = x.detach().double()
    u = x / x.norm(dim=1, keepdim=True).clamp(min=EPS)
    return 1.0 - 0.5 * (2.0 - 2.0 * (u @ u.T)).clamp(min=0.0).sqrt()


def _top(score: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row the k largest scores, descending, ties to the smaller column; rows with fewer
    than k finite candidates are padded with (row, 0). Also returns the mask of real entries."""
    n = score.shape[0]
    if n < k:
        score = torch.cat([score, score.new_full((n, k - n), float("-inf"))], dim=1)
    # A stable descending sort keeps the column order among equal scores.
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]
    top = score.gather(1, order)
    valid = torch.isfinite(top)
    rows = torch.arange(n, device=score.device).unsqueeze(1).expand(n, k)
    return (torch.where(valid, order, rows), torch.where(valid, top, torch.zeros_like(top)),
            valid)


@torch.no_grad()
def neighbours(shared: torch.Tensor, specific: torch.Tensor, modality: torch.Tensor, k: int = 4
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``affinity`` plus the ``[N, 2k]`` mask of real (not padding) entries."""
    modality = modality.reshape(-1).long()
    same = modality.unsqueeze(0) == modality.unsqueeze(1)
    halves = [_top(_d(feats).masked_fill(~mask, float("-inf")), k)
              for feats, mask in ((specific, same), (shared, ~same))]
    idx = torch.cat([h[0] for h in halves], dim=1)
    w = torch.cat([h[1] for h in halves], dim=1).float()
    return idx, w, torch.cat([h[2] for h in halves], dim=1)


def affinity(shared: torch.Tensor, specific: torch.Tensor, modality: torch.Tensor, k: int = 4
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6-8 as neighbour lists: ``idx int64 [N,2k]``, ``w float32 [N,2k]``.

    Columns 0..k-1: same-modality neighbours by specific features (i itself included), columns
    k..2k-1: other-modality neighbours by shared features. No gradient: the selection T(., k) is
    piecewise constant, and at inference the runtime computes it outside the transfer graph;
    ``neighbour_weights`` gives the same ``w`` with autograd for training."""
    return neighbours(shared, specific, modality, k)[:2]


def neighbour_weights(shared: torch.Tensor, specific: torch.Tensor, modality: torch.Tensor,
                      idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 6-7 with autograd: ``w[i, j] = d(f_i, f_idx[i,j])`` for the neighbours chosen by
    ``affinity`` (``f`` = specific features in the first half of the columns, shared in the second),
    0 where ``valid`` is False (padding). The selection stays gradient-free; the values of the kept
    entries of A carry the gradient back into both streams, as in the end-to-end model (Sec. 3.2).
    """
    k = idx.shape[1] // 2
    out = []
    for feats, cols in ((specific, idx[:, :k]), (shared, idx[:, k:])):
        u = feats.double()
        u = u / u.norm(dim=1, keepdim=True).clamp(min=EPS)
        cos = (u.unsqueeze(1) * u[cols]).sum(dim=2)
        # The clamp keeps the gradient of sqrt finite at d(x, x) = 1 (zero distance): zero there.
        out.append(1.0 - 0.5 * (2.0 - 2.0 * cos).clamp(min=1e-12).sqrt())
    w = torch.cat(out, dim=1).float()
    return torch.where(valid, w, torch.zeros_like(w))


def propagate(z: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 A D^-1/2 z`` (Eq. 10 before W and sigma) with ``A[i, idx[i,j]] += w[i,j]`` and
    ``d_i = sum_j w[i,j]``: ``out_i = d_i^-1/2 sum_j w_ij d_{idx_ij}^-1/2 z_{idx_ij}``; rows and
    neighbours with d = 0 contribute 0. One gather per neighbour column keeps memory at O(N D)."""
    deg = w.sum(dim=1)
    r = torch.where(deg > 0, deg.clamp(min=EPS).rsqrt(), torch.zeros_like(deg))
    coef = w * r.unsqueeze(1) * r[idx]
    out = coef[:, 0:1] * z[idx[:, 0]]
    for j in range(1, idx.shape[1]):
        out = out + coef[:, j:j + 1] * z[idx[:, j]]
    return out


class TransferNetwork(nn.Module):
    """The SSTN's learned part, Eq. 10-11: propagate, ``W`` (no bias: Eq. 10 is ``ZW``), ReLU,
    then ``Feat^t`` (the runtime's ``ssft_deploy.transfer.SSTN`` wraps its exported graph)."""

    def __init__(self, shared_dim: int, specific_dim: int, transfer_dim: int, num_classes: int,
                 neck: str) -> None:
        super().__init__()
        self.W = nn.Linear(2 * specific_dim + shared_dim, transfer_dim, bias=False)
        self.feat = FeatureBlock(transfer_dim, num_classes, neck=neck)

    def forward(self, z: torch.Tensor, idx: torch.Tensor, w: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (triplet feature, retrieval feature) of the transferred samples, ``[N, Dt]``."""
        # Eq. 10 as (D^-1/2 A D^-1/2)(Z W): both factors are linear, so this equals propagating Z
        # first, and the neighbour gathers then move Dt-wide rows instead of (2 Dp + Ds)-wide ones.
        return self.feat(torch.relu(propagate(self.W(z), idx, w)))
