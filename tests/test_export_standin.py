"""A small stand-in for ``train.model.SSFTModel`` used by the export tests until (and where) the
real model is unavailable. It follows the contract in docs/ARCHITECTURE.md: ``extract``, ``pad``,
``affinity``, ``transfer``, ``dims``, ``config``. Not a test module of its own."""

from __future__ import annotations

import dataclasses

import torch
import torchvision
from torch import nn


@dataclasses.dataclass
class StandinConfig:
    arch: str = "resnet18"
    height: int = 64
    width: int = 32
    k: int = 4
    shared_transfer: bool = True
    specific_transfer: bool = True

    @property
    def transfer_parts(self) -> tuple[str, ...]:
        return tuple(p for p, on in (("shared", self.shared_transfer),
                                     ("specific", self.specific_transfer)) if on)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class GeMBNNeck(nn.Module):
    """GeM pooling + BatchNorm1d (BNNeck): the post-BN feature is the retrieval feature."""

    def __init__(self, dim: int, p: float = 3.0) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        pooled = fmap.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
        return self.bn(pooled)


def _resnet_tail() -> nn.Sequential:
    r = torchvision.models.resnet18(weights=None)
    r.layer4[0].conv1.stride = (1, 1)
    r.layer4[0].downsample[0].stride = (1, 1)
    return nn.Sequential(r.layer3, r.layer4)


def _resnet_head() -> nn.Sequential:
    r = torchvision.models.resnet18(weights=None)
    return nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2)


class StandinSSFT(nn.Module):
    """Two-stream extractor + SSTN transfer head with random weights and non-trivial BN stats."""

    def __init__(self, config: StandinConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.config = config or StandinConfig()
        self.conv1 = nn.ModuleList([_resnet_head(), _resnet_head()])      # Conv1^R, Conv1^I
        self.conv2_shared = _resnet_tail()                                 # Conv2^S
        self.conv2_specific = nn.ModuleList([_resnet_tail(), _resnet_tail()])
        d = 512
        self.feat_shared = GeMBNNeck(d)
        self.feat_specific = nn.ModuleList([GeMBNNeck(d), GeMBNNeck(d)])
        self.transfer_w = nn.Linear(2 * d + d, d, bias=False)              # W of Eq. 10
        self.feat_t = nn.BatchNorm1d(d)                                    # Feat^t
        self.classifier = nn.Linear(d, 10)                                 # training-only
        randomise_bn(self)
        self.eval()

    @property
    def dims(self) -> dict[str, int]:
        return {"shared": 512, "specific": 512, "transfer": 512}

    def extract(self, images: torch.Tensor, modality: str = "rgb") -> tuple[torch.Tensor, ...]:
        m = 0 if modality == "rgb" else 1
        x = self.conv1[m](images)
        shared = self.feat_shared(self.conv2_shared(x))
        specific = self.feat_specific[m](self.conv2_specific[m](x))
        return shared, specific

    def pad(self, shared, specific, modality):
        dp = specific.shape[1]
        z = torch.zeros(shared.shape[0], 2 * dp + shared.shape[1], dtype=shared.dtype)
        rgb = modality == 0
        z[rgb, :dp] = specific[rgb]
        z[:, dp:dp + shared.shape[1]] = shared
        z[~rgb, dp + shared.shape[1]:] = specific[~rgb]
        return z

    def affinity(self, shared, specific, modality):
        from ssft_deploy.affinity import topk_affinity

        idx, w = topk_affinity(shared.numpy(), specific.numpy(), modality.numpy(),
                               k=self.config.k)
        return torch.from_numpy(idx), torch.from_numpy(w)

    def transfer(self, z: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Eq. 10 without the dense A: (D^-1/2 A D^-1/2 z)_i = d_i^-1/2 sum_j w_ij d_idx^-1/2 z_idx
        deg = w.sum(dim=1)
        inv = torch.where(deg > 0, deg.clamp(min=1e-12).rsqrt(), torch.zeros_like(deg))
        coef = w * inv[idx] * inv[:, None]
        prop = (coef[:, :, None] * z[idx]).sum(dim=1)
        return self.feat_t(torch.relu(self.transfer_w(prop)))                # Eq. 10-11


def randomise_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so BN folding is really exercised."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)


def tiny_model(height: int = 64, width: int = 32, seed: int = 0) -> nn.Module:
    """resnet18 cm-SSFT at ``height x width`` with random weights: the real ``train.model``
    when it imports, else the stand-in above."""
    torch.manual_seed(seed)
    try:
        from train.config import SSFTConfig
        from train.model import SSFTModel
    except ImportError:
        return StandinSSFT(StandinConfig(height=height, width=width), seed=seed)
    cfg = SSFTConfig(arch="resnet18", height=height, width=width, num_classes=4, pretrained=None)
    model = SSFTModel(cfg, load_pretrained=False)
    randomise_bn(model)
    return model.eval()
