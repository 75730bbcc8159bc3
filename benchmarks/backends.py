"""The extractor variants a benchmark compares: torch eager (the baseline) and every bundle engine.

Each runner maps a float32 image batch ``[B,3,H,W]`` (normalised) to ``{"shared", "specific"}``.
A variant that cannot run here (no checkpoint, no GPU, no such precision in the bundle) is
returned in the skipped list with the reason, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (backend, precision) pairs tried after the torch baseline, in display order.
ENGINE_VARIANTS = (
    ("ort-cpu", "fp32"), ("ort-cpu", "fp16"), ("ort-cpu", "int8"),
    ("ort-cuda", "fp32"), ("ort-cuda", "fp16"), ("ort-cuda", "int8"),
    ("tensorrt", "fp16"), ("tensorrt", "int8"),
)
TORCH = ("torch", "fp32")


@dataclass
class Runner:
    """One extractor variant: ``fn(images) -> {"shared": [B,Ds], "specific": [B,Dp]}``."""

    backend: str
    precision: str
    fn: Callable[[np.ndarray], dict[str, np.ndarray]]

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.precision}"


def random_images(batch: int, input_size: tuple[int, int], mean, std, seed: int = 0) -> np.ndarray:
    """A normalised random image batch, like preprocessed crops."""
    h, w = input_size
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 3, h, w), dtype=np.float32)
    m = np.asarray(mean, np.float32)[None, :, None, None]
    s = np.asarray(std, np.float32)[None, :, None, None]
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def torch_runner(checkpoint: Path, modality: str = "rgb") -> Runner:
    """The eager PyTorch model from ``checkpoint`` (CPU, eval, inference mode)."""
    import torch

    from train.model import load_model

    model = load_model(str(checkpoint))

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            shared, specific = model.extract(torch.from_numpy(images), modality=modality)
        return {"shared": shared.numpy(), "specific": specific.numpy()}

    return Runner(*TORCH, run)


def engine_runner(bundle, graph: str, backend: str, precision: str) -> Runner:
    """A bundle graph opened by the runtime's engine layer."""
    from ssft_deploy.engines import open_engine

    eng = open_engine(bundle, graph, precision=precision, backend=backend)
    return Runner(backend, precision, lambda images: eng.run({"images": images}))


def extractor_runners(bundle, checkpoint: Path | None, modality: str = "rgb",
                      only: set[str] | None = None) -> tuple[list[Runner], list[dict]]:
    """Open every variant that runs here; returns (runners, [{"name", "reason"}] skipped).

    ``only`` restricts to names like ``"ort-cpu/int8"`` or whole backends like ``"ort-cpu"``.
    """
    from ssft_deploy.errors import SSFTError

    def wanted(backend: str, precision: str) -> bool:
        return only is None or backend in only or f"{backend}/{precision}" in only

    runners: list[Runner] = []
    skipped: list[dict] = []
    if wanted(*TORCH):
        if checkpoint is None or not Path(checkpoint).is_file():
            skipped.append({"name": "torch/fp32", "reason": f"no checkpoint at {checkpoint} "
                            "(--checkpoint; `make demo` writes runs/demo/model.pth)"})
        else:
            try:
                runners.append(torch_runner(Path(checkpoint), modality))
            except (ImportError, SSFTError) as exc:
                skipped.append({"name": "torch/fp32", "reason": str(exc)})
    graph = f"extractor_{modality}"
    for backend, precision in ENGINE_VARIANTS:
        if not wanted(backend, precision):
            continue
        try:
            runners.append(engine_runner(bundle, graph, backend, precision))
        except (ImportError, SSFTError) as exc:
            skipped.append({"name": f"{backend}/{precision}", "reason": str(exc)})
    return runners, skipped
