"""Losses (Eq. 2-4, 12-17) and the alternating min / max steps of Eq. 20-21."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

from train.config import SSFTConfig
from train.losses import LN2, batch_hard_triplet, cm_triplet, min_loss, sm_triplet
from train.model import SSFTModel
from train.steps import make_optimizers, max_step, min_step

torch.set_num_threads(2)


def _brute_triplet(f, y, anchors, cands, margin):
    """Batch-hard triplet by explicit loops."""
    terms = []
    for i in anchors:
        pos = [torch.dist(f[i], f[j]) for j in cands if y[j] == y[i]]
        neg = [torch.dist(f[i], f[j]) for j in cands if y[j] != y[i]]
        if pos and neg:
            terms.append(torch.relu(margin + max(pos) - min(neg)))
    return torch.stack(terms).mean()


def test_batch_hard_triplets_match_loops() -> None:
    torch.manual_seed(0)
    f = torch.randn(12, 5)
    y = torch.tensor([0, 0, 1, 1, 2, 2] * 2)
    mod = torch.tensor([0] * 6 + [1] * 6)
    rgb, ir = list(range(6)), list(range(6, 12))
    cm = _brute_triplet(f, y, rgb, ir, 0.5) + _brute_triplet(f, y, ir, rgb, 0.5)
    sm = _brute_triplet(f, y, rgb, rgb, 0.5) + _brute_triplet(f, y, ir, ir, 0.5)
    torch.testing.assert_close(cm_triplet(f, y, mod, 0.5), cm)
    torch.testing.assert_close(sm_triplet(f, y, mod, 0.5), sm)
    # Well separated identities give zero loss.
    centres = torch.eye(3) * 100
    g = centres[y] + 0.01 * torch.randn(12, 3)
    assert cm_triplet(g, y, mod, 0.5).item() == 0.0
    one_id = torch.zeros(12, dtype=torch.long)   # no negatives: no term, no NaN
    assert batch_hard_triplet(f, one_id, mod == 0, mod == 1, 0.3).item() == 0.0


def _batch(ids: int = 3, per: int = 2, h: int = 64, w: int = 32):
    torch.manual_seed(1)
    y = torch.arange(ids).repeat_interleave(per)
    rgb, ir = torch.randn(ids * per, 3, h, w), torch.randn(ids * per, 3, h, w)
    return rgb, ir, torch.cat([y, y])


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = SSFTConfig(arch="resnet18", height=64, width=32, num_classes=3, disc_hidden=16,
                     decoder_channels=8)
    model = SSFTModel(cfg).train()
    return cfg, model, make_optimizers(model, cfg)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_max_step_updates_exactly_discriminator_and_projections(setup) -> None:
    cfg, model, opts = setup
    rgb, ir, _ = _batch()
    out = model.forward_train(rgb, ir)
    before = _snapshot(model)
    logs = max_step(model, opts["adversary"], out, cfg)
    changed = _changed(model, before)
    adversary = {n for n, _ in model.named_parameters()
                 if n.startswith(("discriminator.", "projections."))}
    assert changed == adversary and len(adversary) == 8   # 3 FC (w, b) + 2 projections
    assert {"ma_max", "pa_max"} <= set(logs)


def test_min_step_updates_exactly_the_network(setup) -> None:
    cfg, model, opts = setup
    rgb, ir, y = _batch()
    out = model.forward_train(rgb, ir)
    before = _snapshot(model)
    logs = min_step(model, opts["network"], out, y, torch.cat([rgb, ir]), cfg)
    changed = _changed(model, before)
    network = {n for n, p in model.named_parameters()
               if p.requires_grad and not n.startswith(("discriminator.", "projections."))}
    assert changed == network
    assert all(p.requires_grad for p in model.adversary_parameters())   # unfrozen afterwards
    for key in ("id_shared", "id_specific", "id_transfer", "re", "ma_min", "pa_min"):
        assert key in logs


@contextlib.contextmanager
def blown_up_adversaries(model):
    """A discriminator that is confidently wrong and projections that blow up, restored after."""
    with torch.no_grad():
        saved = [p.clone() for p in model.parameters()]
        for p in model.discriminator.parameters():
            p.mul_(50)
        for p in model.projections.parameters():
            p.mul_(1e4)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(model.parameters(), saved):
                p.copy_(s)


def test_adversarial_terms_are_bounded_in_the_min_step(setup) -> None:
    cfg, model, _ = setup
    rgb, ir, y = _batch()
    out = model.forward_train(rgb, ir)
    with blown_up_adversaries(model):
        _, logs = min_loss(model, out, y, torch.cat([rgb, ir]), cfg)
    assert logs["ma_min"] <= LN2 + 1e-6 and logs["pa_min"] <= 1.0 + 1e-6


@pytest.mark.parametrize("switches", [
    {"modality_adaptation": False, "project_adversarial": False, "reconstruction": False,
     "shared_transfer": False, "specific_transfer": False, "specific_loss": False},   # row 1
    {"shared_transfer": False},                                                       # row 10
])
def test_table3_rows_build_and_step(switches) -> None:
    torch.manual_seed(0)
    cfg = SSFTConfig(arch="resnet18", height=64, width=32, num_classes=3, disc_hidden=16,
                     decoder_channels=8, **switches)
    model = SSFTModel(cfg).train()
    opts = make_optimizers(model, cfg)
    rgb, ir, y = _batch(per=1)
    out = model.forward_train(rgb, ir)
    logs = min_step(model, opts["network"], out, y, torch.cat([rgb, ir]), cfg)
    assert ("id_transfer" in logs) == cfg.uses_transfer
    assert ("id_specific" in logs) == cfg.specific_loss
    assert ("adversary" in opts) == (cfg.modality_adaptation or cfg.project_adversarial)
    assert all(torch.isfinite(torch.tensor(v)) for v in itertools.chain(logs.values()))


def test_unbounded_switch_uses_the_papers_terms(setup) -> None:
    cfg, model, _ = setup
    rgb, ir, y = _batch()
    out = model.forward_train(rgb, ir)
    paper = cfg.replace(adversarial="unbounded")
    with blown_up_adversaries(model):
        _, bounded = min_loss(model, out, y, torch.cat([rgb, ir]), cfg)
        _, logs = min_loss(model, out, y, torch.cat([rgb, ir]), paper)
        h, sp, mod = out["h"].detach(), out["p"].detach(), out["modality"]
        with torch.no_grad():   # absolute projection error (Eq. 15), not relative to ||H||
            proj = torch.where(mod.unsqueeze(1) == 0, model.projections["rgb"](sp),
                               model.projections["ir"](sp))
            expected = float((proj - h).norm(dim=1).mean())
    assert logs["ma_min"] > LN2 and logs["pa_min"] > 1.0   # Eq. 14 / 15 as written: unclamped
    assert logs["min"] < bounded["min"]
    assert logs["pa_min"] == pytest.approx(expected, rel=1e-5)


def test_fast_cpu_step_matches_the_fp32_step() -> None:
    """bf16 autocast + channels_last + fused Adam (the demo's speed settings) take the same step
    as fp32 NCHW with foreach Adam, within bf16's precision."""
    from train.steps import train_step

    base = SSFTConfig(arch="resnet18", height=32, width=16, num_classes=3, disc_hidden=16,
                      decoder_channels=8, fused_optimizer=False)
    fast = base.replace(bf16=True, channels_last=True, fused_optimizer=True)
    rgb, ir, y = _batch(per=2, h=32, w=16)
    logs, params = {}, {}
    for name, cfg in (("base", base), ("fast", fast)):
        torch.manual_seed(0)
        model = SSFTModel(cfg).train()
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        logs[name] = train_step(model, make_optimizers(model, cfg), rgb, ir, y, cfg)
        params[name] = torch.cat([p.detach().flatten() for p in model.network_parameters()])
    for key in ("id_shared", "id_transfer", "re", "min"):
        assert logs["fast"][key] == pytest.approx(logs["base"][key], rel=0.05, abs=0.02)
    # Adam's first step moves each weight by ~lr along the sign of its gradient: a bf16 rounding
    # flips the sign only where the gradient is ~0, so few weights may differ by ~2 lr.
    flipped = ((params["fast"] - params["base"]).abs() > base.lr).float().mean()
    assert flipped < 0.1, f"{flipped:.3f} of the weights stepped the other way"
