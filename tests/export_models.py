"""Tiny real cm-SSFT models for the export tests, and the graph edits that make broken exports
(helper module, no tests of its own)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from train.config import SSFTConfig
from train.model import SSFTModel


def randomise_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so BN folding is really exercised."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)


def tiny_model(height: int = 64, width: int = 32, seed: int = 0) -> SSFTModel:
    """ResNet-18 cm-SSFT at ``height x width`` with random weights and BN statistics, eval mode."""
    torch.manual_seed(seed)
    cfg = SSFTConfig(arch="resnet18", height=height, width=width, num_classes=4, pretrained=None)
    model = SSFTModel(cfg, load_pretrained=False)
    randomise_bn(model)
    return model.eval()


# -- broken exports: real ONNX graphs edited the way an export can go wrong ----------------------

def scale_output(model: onnx.ModelProto, output: str, value: float) -> onnx.ModelProto:
    """The graph output ``output`` multiplied by ``value`` (0: all zeros; NaN: all NaN)."""
    raw = f"{output}__raw"
    for node in model.graph.node:
        node.output[:] = [raw if o == output else o for o in node.output]
        node.input[:] = [raw if i == output else i for i in node.input]
    model.graph.initializer.append(
        numpy_helper.from_array(np.array(value, np.float32), f"{output}__factor"))
    model.graph.node.append(helper.make_node("Mul", [raw, f"{output}__factor"], [output]))
    return model


def swap_outputs(model: onnx.ModelProto, a: str = "shared", b: str = "specific") -> onnx.ModelProto:
    """The graph's outputs ``a`` and ``b`` exchanged (same shapes, wrong meaning)."""
    rename = {a: b, b: a}
    for node in model.graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
        node.input[:] = [rename.get(i, i) for i in node.input]
    return model


def perturb_weight(model: onnx.ModelProto, name: str, sigma: float,
                   seed: int = 0) -> onnx.ModelProto:
    """Initializer ``name`` plus Gaussian noise of ``sigma`` times its own standard deviation."""
    init = next(t for t in model.graph.initializer if t.name == name)
    w = numpy_helper.to_array(init)
    noise = np.random.default_rng(seed).standard_normal(w.shape) * sigma * w.std()
    init.CopyFrom(numpy_helper.from_array((w + noise).astype(w.dtype), name))
    return model
