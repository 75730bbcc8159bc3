"""The cm-SSFT model against the paper (Sec. 3, Eq. 1, 5-11) and the runtime's numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssft_deploy.affinity import topk_affinity
from ssft_deploy.errors import CheckpointError, InputError
from ssft_deploy.transfer import pad as np_pad
from ssft_deploy.transfer import propagate as np_propagate
from train.config import SSFTConfig
from train.model import SSFTModel, affinity, neighbour_weights, neighbours, pad, propagate

torch.set_num_threads(2)
H, W = 64, 32


def tiny(**changes) -> SSFTConfig:
    return SSFTConfig(arch="resnet18", height=H, width=W, num_classes=6, disc_hidden=32,
                      decoder_channels=8, **changes)


@pytest.fixture(scope="module")
def model() -> SSFTModel:
    torch.manual_seed(0)
    return SSFTModel(tiny()).eval()


def _ids(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def test_parameter_sharing_follows_eq1(model: SSFTModel) -> None:
    b = model.backbone
    # Conv1^m and Conv2^m are per modality (disjoint), Conv2^S is one module for both.
    assert not _ids(b.conv1["rgb"]) & _ids(b.conv1["ir"])
    assert not _ids(b.specific["rgb"]) & _ids(b.specific["ir"])
    assert not _ids(b.shared) & (_ids(b.specific["rgb"]) | _ids(b.specific["ir"]))
    calls: dict[str, list[str]] = {}
    hooks = [mod.register_forward_hook(lambda *_, n=name: calls[cur].append(n))
             for name, mod in [("shared", b.shared), ("conv1.rgb", b.conv1["rgb"]),
                               ("conv1.ir", b.conv1["ir"]), ("specific.rgb", b.specific["rgb"]),
                               ("specific.ir", b.specific["ir"])]]
    x = torch.randn(2, 3, H, W)
    for cur in ("rgb", "ir"):
        calls[cur] = []
        model.extract(x, cur)
    for h in hooks:
        h.remove()
    assert sorted(calls["rgb"]) == ["conv1.rgb", "shared", "specific.rgb"]
    assert sorted(calls["ir"]) == ["conv1.ir", "shared", "specific.ir"]
    # Gradients of an IR shared feature reach the shared layers and IR Conv1 only.
    model.zero_grad()
    model.extract(x, "ir")[0].sum().backward()
    assert b.shared.layer3[0].conv1.weight.grad.abs().sum() > 0
    assert b.conv1["ir"].layer1[0].conv1.weight.grad.abs().sum() > 0
    assert b.conv1["rgb"].layer1[0].conv1.weight.grad is None
    assert b.specific["ir"].layer3[0].conv1.weight.grad is None
    model.zero_grad()


def test_feature_shapes_and_last_stride(model: SSFTModel) -> None:
    x = torch.randn(3, 3, H, W)
    shared, specific = model.extract(x, "rgb")
    assert shared.shape == (3, 512) and specific.shape == (3, 512)
    assert model.dims == {"shared": 512, "specific": 512, "transfer": 512}
    b = model.backbone
    with torch.no_grad():
        after3 = b.shared.layer3(b.conv1["rgb"](x))
        after4 = b.shared.layer4(after3)
    assert after3.shape[-2:] == after4.shape[-2:] == (H // 16, W // 16)   # last stride 1
    r50 = SSFTModel(SSFTConfig(num_classes=4, reconstruction=False))
    assert r50.dims["shared"] == 2048 and r50.backbone.shared.layer4[0].conv2.stride == (1, 1)
    with pytest.raises(InputError):
        model.extract(x, "thermal-ish")


def test_bnneck_retrieval_features_are_post_bn(model: SSFTModel) -> None:
    x = torch.randn(2, 3, H, W)
    b = model.backbone
    with torch.no_grad():
        pooled = model.feat_shared.pool(b.shared(b.conv1["ir"](x)))
        expected = model.feat_shared.neck(pooled)
        shared, _ = model.extract(x, "ir")
    torch.testing.assert_close(shared, expected)
    assert not model.feat_shared.neck.bias.requires_grad


def _features(n_rgb: int, n_ir: int, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n_rgb + n_ir, dim)).astype(np.float32)
    specific = rng.normal(size=(n_rgb + n_ir, dim)).astype(np.float32)
    modality = np.array([0] * n_rgb + [1] * n_ir)
    rng.shuffle(modality)
    return shared, specific, modality


@pytest.mark.parametrize("parts", [("shared", "specific"), ("shared",), ("specific",)])
def test_pad_is_eq5(parts) -> None:
    shared, specific, modality = _features(3, 4)
    z = pad(torch.from_numpy(shared), torch.from_numpy(specific), torch.from_numpy(modality),
            parts).numpy()
    np.testing.assert_array_equal(z, np_pad(shared, specific, modality, parts))
    rgb = modality == 0
    assert (z[rgb, 16:] == 0).all() and (z[~rgb, :8] == 0).all()   # the zero blocks of Eq. 5
    if parts == ("shared", "specific"):
        np.testing.assert_array_equal(z[rgb, :8], specific[rgb])
        np.testing.assert_array_equal(z[:, 8:16], shared)


@pytest.mark.parametrize("n_rgb,n_ir", [(7, 6), (5, 2)])   # (5, 2): IR halves need padding
def test_affinity_matches_runtime_reference(n_rgb: int, n_ir: int) -> None:
    shared, specific, modality = _features(n_rgb, n_ir, seed=n_rgb)
    specific[3] = specific[1]  # an exact tie, resolved towards the smaller index
    shared[4] = shared[2]
    idx, w = affinity(torch.from_numpy(shared), torch.from_numpy(specific),
                      torch.from_numpy(modality), k=4)
    ref_idx, ref_w = topk_affinity(shared, specific, modality, k=4, method="dense")
    assert idx.dtype == torch.int64 and w.dtype == torch.float32
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(w.numpy(), ref_w, rtol=0, atol=1e-6)


def _dense(n: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    a = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(idx.shape[1]):
            a[i, idx[i, j]] += float(w[i, j])
    return a


def test_propagation_equals_dense_normalised_graph(model: SSFTModel) -> None:
    torch.manual_seed(1)
    n = 9
    shared, specific = torch.randn(n, 512), torch.randn(n, 512)
    modality = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 1])
    z = model.pad(shared, specific, modality)
    idx, w = model.affinity(shared, specific, modality)
    w[2] = 0.0  # a row with d = 0 gives 0
    a = _dense(n, idx, w)
    d = a.sum(1)
    r = torch.where(d > 0, d.clamp(min=1e-30).rsqrt(), torch.zeros_like(d))
    dense = (r[:, None] * a * r[None, :]) @ z.double()            # D^-1/2 A D^-1/2 Z
    out = propagate(z, idx, w)
    torch.testing.assert_close(out.double(), dense, rtol=1e-5, atol=1e-5)
    assert out[2].abs().max() == 0
    np.testing.assert_allclose(out.numpy(), np_propagate(z.numpy(), idx.numpy(), w.numpy()),
                               rtol=1e-5, atol=1e-5)
    with torch.no_grad():   # Eq. 10-11: sigma(D^-1/2 A D^-1/2 Z W), then Feat^t (BN, eval)
        t = model.transfer(z, idx, w)
        expected = model.sstn.feat.neck(torch.relu(dense.float() @ model.sstn.W.weight.T))
    torch.testing.assert_close(t, expected, rtol=1e-4, atol=1e-4)


def test_transfer_switches_and_no_sstn() -> None:
    torch.manual_seed(0)
    m = SSFTModel(tiny(shared_transfer=False)).eval()
    shared, specific = torch.randn(4, 512), torch.randn(4, 512)
    z = m.pad(shared, specific, torch.tensor([0, 1, 0, 1]))
    assert (z[:, 512:1024] == 0).all() and z[:, :512].abs().sum() > 0
    plain = SSFTModel(tiny(shared_transfer=False, specific_transfer=False)).eval()
    assert plain.sstn is None and plain.dims["transfer"] is None
    with pytest.raises(Exception, match="no SSTN"):
        plain.transfer(z, torch.zeros(4, 8, dtype=torch.long), torch.zeros(4, 8))


def test_pretrained_weights_from_local_file(tmp_path) -> None:
    from torchvision.models import resnet18, resnet50

    torch.manual_seed(3)
    ref = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    m = SSFTModel(tiny(pretrained=str(path)))
    b = m.backbone
    for conv in (b.conv1["rgb"].conv1, b.conv1["ir"].conv1):
        torch.testing.assert_close(conv.weight, ref.conv1.weight)
    for stream in (b.shared, b.specific["rgb"], b.specific["ir"]):
        torch.testing.assert_close(stream.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    with pytest.raises(CheckpointError, match="do not exist"):
        SSFTModel(tiny(pretrained=str(tmp_path / "missing.pth")))
    torch.save(resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(CheckpointError):
        SSFTModel(tiny(pretrained=str(tmp_path / "r50.pth")))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        SSFTModel(tiny(pretrained=str(tmp_path / "junk.pth")))


def test_neighbour_weights_equal_affinity_and_carry_gradient() -> None:
    shared, specific, modality = _features(5, 2, seed=3)   # IR rows need padding at k = 4
    h = torch.from_numpy(shared).double().requires_grad_()
    p = torch.from_numpy(specific).double().requires_grad_()
    mod = torch.from_numpy(modality)
    idx, w, valid = neighbours(h, p, mod, k=4)
    got = neighbour_weights(h, p, mod, idx, valid)
    torch.testing.assert_close(got, w, rtol=0, atol=1e-6)
    assert not valid.all() and (got[~valid] == 0).all()
    got.sum().backward()
    assert h.grad.abs().sum() > 0 and p.grad.abs().sum() > 0
    # Eq. 7 by hand for one kept entry
    i, j = 0, int(idx[0, 1])
    ui, uj = (x / x.norm() for x in (p[i].detach(), p[j].detach()))
    assert float(got.detach()[0, 1]) == pytest.approx(float(1 - 0.5 * (ui - uj).norm()), abs=1e-6)


@pytest.mark.parametrize("grad", [True, False])
def test_gradient_reaches_specific_stream_through_affinity_only_when_on(grad: bool) -> None:
    # Z without the specific parts (SpT off): the specific stream can only influence T through
    # the intra-modality weights of A (Eq. 6), so it gets a gradient from T only with affinity_grad.
    torch.manual_seed(0)
    m = SSFTModel(tiny(specific_transfer=False, affinity_grad=grad)).train()
    out = m.forward_train(torch.randn(4, 3, H, W), torch.randn(4, 3, H, W))
    out["t"].square().sum().backward()
    g = m.backbone.specific["rgb"].layer4[1].conv2.weight.grad
    assert (g is not None and g.abs().sum() > 0) == grad
