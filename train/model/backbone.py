"""Two-stream feature extractor of Sec. 3.1 (Eq. 1) on the torchvision ResNet structure.

``Conv1^m`` = stem + layer1 + layer2, one per modality; ``Conv2^S`` (shared) and ``Conv2^m``
(specific, one per modality) = layer3 + layer4 with the last stride set to 1 (Sec. 4.1). Module
names keep torchvision's (``conv1``, ``bn1``, ``layer1`` ...), so an ImageNet state dict maps onto
every copy by prefix.

``mobilenet_v2`` (optional, for the CPU demo): the same split on torchvision's MobileNetV2,
``Conv1^m`` = ``features[0:7]`` (stride 8), ``Conv2`` = ``features[7:19]`` with the stride of
block 14 set to 1 (a 16x-downsampled, 1280-channel map, as the decoders expect); its ImageNet
weights come from a local file (``pretrained.py``).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn
from torchvision import models

from ssft_deploy.errors import CheckpointError

MODALITIES = ("rgb", "ir")
CHANNELS = {"resnet50": 2048, "resnet18": 512, "mobilenet_v2": 1280}
CONV1_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")
CONV2_PARTS = ("layer3", "layer4")
MOBILENET_SPLIT, MOBILENET_STRIDE = 7, 14   # Conv1 = features[:7]; block 14's stride -> 1


def _resnet(arch: str) -> nn.Module:
    return getattr(models, arch)(weights=None)


def _mobilenet(first: int, last: int) -> nn.Sequential:
    """``features[first:last]`` of a fresh MobileNetV2 (names "7", "8", ... as in its state
    dict's ``features.N`` keys), block 14 at stride 1."""
    feats = models.mobilenet_v2(weights=None).features
    dw = feats[MOBILENET_STRIDE].conv[1][0]   # the depthwise conv of the strided block
    dw.stride = (1, 1)
    return nn.Sequential(OrderedDict((str(i), feats[i]) for i in range(first, last)))


def _last_stride_one(layer4: nn.Sequential) -> None:
    """Stride 1 in the first block of layer4 (main path and shortcut): a 16x-downsampled map."""
    block = layer4[0]
    conv = block.conv2 if isinstance(block, models.resnet.Bottleneck) else block.conv1
    conv.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


def _part(net: nn.Module, names: tuple[str, ...]) -> nn.Sequential:
    return nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))


def conv1(arch: str) -> nn.Sequential:
    """Stem + layer1 + layer2 of a fresh ResNet (MobileNetV2: features[0:7])."""
    if arch == "mobilenet_v2":
        return _mobilenet(0, MOBILENET_SPLIT)
    return _part(_resnet(arch), CONV1_PARTS)


def conv2(arch: str) -> nn.Sequential:
    """layer3 + layer4 of a fresh ResNet, last stride 1 (MobileNetV2: features[7:19])."""
    if arch == "mobilenet_v2":
        return _mobilenet(MOBILENET_SPLIT, 19)
    seq = _part(_resnet(arch), CONV2_PARTS)
    _last_stride_one(seq.layer4)
    return seq


class TwoStream(nn.Module):
    """Eq. 1: ``conv1[m]`` -> ``shared`` gives the shared map, ``conv1[m]`` -> ``specific[m]`` the
    specific map of modality m."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.arch = arch
        self.channels = CHANNELS[arch]
        self.conv1 = nn.ModuleDict({m: conv1(arch) for m in MODALITIES})
        self.shared = conv2(arch)
        self.specific = nn.ModuleDict({m: conv2(arch) for m in MODALITIES})

    def load_imagenet(self, path: str | os.PathLike) -> None:
        """Copy a torchvision ImageNet state dict (local file) into every stream."""
        state = read_imagenet_state(path)
        if self.arch == "mobilenet_v2":
            from train.model.pretrained import torchvision_mobilenet_keys

            state = torchvision_mobilenet_keys(state)
        targets = [self.conv1[m] for m in MODALITIES] + [self.shared] + [
            self.specific[m] for m in MODALITIES]
        for target in targets:
            wanted = target.state_dict()
            missing = [k for k in wanted if k not in state]
            if missing:
                raise CheckpointError(
                    f"{path} is not a torchvision {self.arch} state dict: missing {missing[:3]}")
            bad = [k for k in wanted if state[k].shape != wanted[k].shape]
            if bad:
                raise CheckpointError(f"{path} does not fit {self.arch}: shape mismatch at "
                                      f"{bad[:3]} (pretrained weights of another arch?)")
            target.load_state_dict({k: state[k] for k in wanted})


def read_imagenet_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` state dict from ``path`` (read with ``weights_only=True``)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"pretrained weights {path} do not exist (nothing is downloaded: "
                              f"put torchvision's ImageNet .pth file there)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for bad files
        raise CheckpointError(f"cannot read pretrained weights {path}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}
