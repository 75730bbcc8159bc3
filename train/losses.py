"""Losses of cm-SSFT: Eq. 2-4 and 12-13 (feature learning, batch-hard triplets), Eq. 14-17
(complementary learning) and their mix into the min / max objectives of Eq. 18-21.

Guard against divergence of the adversarial terms. Eq. 20 asks the network to *maximise* the
discriminator's cross entropy (Eq. 14) and the projection error (Eq. 15); both are unbounded above,
so a network can "win" by driving them to infinity (confidently wrong discriminator, exploding
features) instead of by removing information. We therefore use bounded forms in the min step:
  * L_ma per sample is clamped at ln 2, the cross entropy of a discriminator at chance: once the
    discriminator cannot tell the modality of a shared feature there is nothing left to remove,
    and pushing it to be confidently *wrong* would only encode the modality again, inverted.
  * L_pa is the projection error relative to the norm of the target, ||Theta P - H|| / ||H||,
    clamped at 1 in the min step: 1 is what the trivial projection Theta = 0 achieves, i.e. P then
    predicts nothing linear about H; the relative form also removes the trivial win of rescaling
    the features.
The max step (discriminator and projections) minimises the same unclamped terms.
``adversarial="unbounded"`` (config) uses the paper's terms as written instead: the plain cross
entropy of Eq. 14 and the absolute projection error of Eq. 15, unclamped, in both steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from train.config import SSFTConfig

LN2 = math.log(2.0)


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[Na, Nb]`` with a safe gradient at 0."""
    d2 = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2.0 * a @ b.T)
    return d2.clamp(min=1e-12).sqrt()


def batch_hard_triplet(feats: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor,
                       candidates: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over anchors of ``max(margin + d(a, hardest positive) - d(a, hardest negative), 0)``
    with positives and negatives drawn from ``candidates`` (boolean masks over the batch)."""
    fa, fc = feats[anchors], feats[candidates]
    ya, yc = labels[anchors], labels[candidates]
    dist = pairwise_distances(fa, fc)
    same = ya.unsqueeze(1) == yc.unsqueeze(0)
    pos = dist.masked_fill(~same, float("-inf")).max(dim=1).values
    neg = dist.masked_fill(same, float("inf")).min(dim=1).values
    ok = torch.isfinite(pos) & torch.isfinite(neg)
    if not bool(ok.any()):
        return feats.sum() * 0.0
    return F.relu(margin + pos[ok] - neg[ok]).mean()


def cm_triplet(feats: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor,
               margin: float) -> torch.Tensor:
    """Eq. 4: RGB anchors against IR positives / negatives, plus IR anchors against RGB."""
    rgb, ir = modality == 0, modality == 1
    return (batch_hard_triplet(feats, labels, rgb, ir, margin)
            + batch_hard_triplet(feats, labels, ir, rgb, margin))


def sm_triplet(feats: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor,
               margin: float) -> torch.Tensor:
    """Eq. 3: triplets inside each modality, summed over the two modalities."""
    rgb, ir = modality == 0, modality == 1
    return (batch_hard_triplet(feats, labels, rgb, rgb, margin)
            + batch_hard_triplet(feats, labels, ir, ir, margin))


def _per_modality_ce(logits: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor
                     ) -> torch.Tensor:
    """Eq. 2 for P: ``L_c(P^R) + L_c(P^I)``."""
    return sum(F.cross_entropy(logits[modality == m], labels[modality == m]) for m in (0, 1))


def feature_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, cfg: SSFTConfig
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 18-19: ``L(H) + L(P) + L(T)``, each term only where its switch (ShL, SpL, SSTN) is on."""
    mod, rho1, rho2 = out["modality"], cfg.rho1, cfg.rho2
    total = out["h"].sum() * 0.0
    logs: dict[str, float] = {}
    if cfg.shared_loss:
        ce = F.cross_entropy(out["h_logits"], labels)
        tri = cm_triplet(out["h_pre"], labels, mod, rho1)
        total = total + ce + 0.5 * tri
        logs |= {"id_shared": ce.item(), "tri_shared": tri.item()}
    if cfg.specific_loss:
        ce = _per_modality_ce(out["p_logits"], labels, mod)
        tri = sm_triplet(out["p_pre"], labels, mod, rho2)
        total = total + 0.5 * ce + 0.5 * tri
        logs |= {"id_specific": ce.item(), "tri_specific": tri.item()}
    if "t" in out:
        ce = F.cross_entropy(out["t_logits"], labels)                      # Eq. 12
        tri = (cm_triplet(out["t_pre"], labels, mod, rho1)                 # Eq. 13
               + sm_triplet(out["t_pre"], labels, mod, rho2))
        total = total + ce + 0.25 * tri
        logs |= {"id_transfer": ce.item(), "tri_transfer": tri.item()}
    return total, logs


def modality_loss(discriminator: torch.nn.Module, shared: torch.Tensor, modality: torch.Tensor
                  ) -> torch.Tensor:
    """Eq. 14 per sample: cross entropy of the discriminator's modality prediction."""
    return F.cross_entropy(discriminator(shared), modality, reduction="none")


def projection_loss(projections: torch.nn.ModuleDict, specific: torch.Tensor,
                    shared: torch.Tensor, modality: torch.Tensor, relative: bool = True
                    ) -> torch.Tensor:
    """Eq. 15 per sample: ``||Theta^m P - H||``, divided by ``||H||`` when ``relative``."""
    proj = torch.where(modality.unsqueeze(1) == 0, projections["rgb"](specific),
                       projections["ir"](specific))
    err = (proj - shared).norm(dim=1)
    return err / shared.norm(dim=1).clamp(min=1e-6) if relative else err


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Eq. 17: mean squared error between the decoded and the input images."""
    return F.mse_loss(recon, images)


def min_loss(model: torch.nn.Module, out: dict[str, torch.Tensor], labels: torch.Tensor,
             images: torch.Tensor, cfg: SSFTConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 20, min side: ``L_feat + l1 L_re - l2 L_ma - l3 L_pa`` with the bounded (default) or
    the paper's unbounded adversarial terms (module docstring)."""
    l1, l2, l3 = cfg.lambdas
    bounded = cfg.adversarial == "bounded"
    total, logs = feature_loss(out, labels, cfg)
    logs["feat"] = total.item()
    if "recon" in out:
        re = reconstruction_loss(out["recon"], images)
        total = total + l1 * re
        logs["re"] = re.item()
    if model.discriminator is not None:
        ma = modality_loss(model.discriminator, out["h"], out["modality"])
        ma = (ma.clamp(max=LN2) if bounded else ma).mean()
        total = total - l2 * ma
        logs["ma_min"] = ma.item()
    if model.projections is not None:
        pa = projection_loss(model.projections, out["p"], out["h"], out["modality"], bounded)
        pa = (pa.clamp(max=1.0) if bounded else pa).mean()
        total = total - l3 * pa
        logs["pa_min"] = pa.item()
    logs["min"] = total.item()
    return total, logs


def max_loss(model: torch.nn.Module, out: dict[str, torch.Tensor], cfg: SSFTConfig
             ) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Eq. 20, max side, written as the quantity to *minimise* over Theta_D, Theta^m:
    ``l2 L_ma + l3 L_pa`` on detached features (None when MoA and PA are both off)."""
    _, l2, l3 = cfg.lambdas
    h, p, mod = out["h"].detach(), out["p"].detach(), out["modality"]
    total, logs = None, {}
    if model.discriminator is not None:
        ma = modality_loss(model.discriminator, h, mod).mean()
        total = l2 * ma
        logs["ma_max"] = ma.item()
    if model.projections is not None:
        pa = projection_loss(model.projections, p, h, mod, cfg.adversarial == "bounded").mean()
        total = l3 * pa if total is None else total + l3 * pa
        logs["pa_max"] = pa.item()
    return total, logs
