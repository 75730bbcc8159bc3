"""A Triton Inference Server model repository for a bundle.

One model per graph: ``extractor_rgb`` and ``extractor_ir`` batch requests dynamically (B is the
batch dimension); ``transfer`` is not batchable across requests (its N samples interact through
the neighbour indices), so it has ``max_batch_size: 0`` and a dynamic leading dimension.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ssft_deploy.bundle import GRAPHS, load_bundle
from ssft_deploy.errors import BundleError

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"),
             "tensorrt": ("tensorrt_plan", "model.plan")}


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }}'


def _io(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def model_config(name: str, platform: str, inputs: list[str], outputs: list[str],
                 max_batch: int, preferred: list[int] | None = None,
                 delay_us: int = 0) -> str:
    """config.pbtxt text of one model (protobuf text format of Triton's ModelConfig)."""
    text = f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
    text += _io("input", inputs) + _io("output", outputs)
    if preferred is not None:
        sizes = ", ".join(str(b) for b in preferred if b <= max_batch)
        text += (f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
                 f"  max_queue_delay_microseconds: {delay_us}\n}}\n")
    return text


def write_repository(bundle_dir: str | os.PathLike, repo_dir: str | os.PathLike,
                     variant: str = "fp32", max_batch: int = 64,
                     preferred: tuple[int, ...] = (8, 16, 32), delay_us: int = 2000, *,
                     allow_ungated: bool = False) -> Path:
    """Write ``repo_dir/<graph>/{config.pbtxt, 1/model.onnx|model.plan}`` for a bundle variant
    (one that passed the parity gate, unless ``allow_ungated``)."""
    bundle = load_bundle(bundle_dir, verify=True, allow_ungated=allow_ungated)
    if variant not in bundle.variants:
        raise BundleError(f"bundle has no {variant!r} variant for the Triton repository "
                          f"(it has {sorted(bundle.variants)})")
    bundle.check_gate(variant)
    m = bundle.model
    h, w = m.input_size
    ds, dp, dt, k2 = m.shared_dim, m.specific_dim, m.transfer_dim, m.transfer_width
    repo = Path(repo_dir)
    for graph in GRAPHS:
        entry = bundle.entry(graph, variant)
        platform, filename = PLATFORMS[entry.format]
        target = repo / graph / "1"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle.root / entry.file, target / filename)
        if graph == "transfer":
            text = model_config(graph, platform,
                                [_tensor("z", "TYPE_FP32", [-1, 2 * dp + ds]),
                                 _tensor("idx", "TYPE_INT64", [-1, k2]),
                                 _tensor("w", "TYPE_FP32", [-1, k2])],
                                [_tensor("transferred", "TYPE_FP32", [-1, dt])], 0)
        else:
            text = model_config(graph, platform, [_tensor("images", "TYPE_FP32", [3, h, w])],
                                [_tensor("shared", "TYPE_FP32", [ds]),
                                 _tensor("specific", "TYPE_FP32", [dp])],
                                max_batch, list(preferred), delay_us)
        (repo / graph / "config.pbtxt").write_text(text)
    return repo
