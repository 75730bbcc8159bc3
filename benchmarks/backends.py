"""The extractor variants a benchmark compares, each served from a process of its own.

A variant is torch eager fp32 (the baseline), a bundle engine (backend + precision), or the
numpy GEMM probe. ``python -m benchmarks.backends SPEC_JSON`` opens one and answers timing
requests on stdin / stdout (one JSON object per line), so no engine's thread pool (ONNX Runtime
spins its threads after each call, OpenVINO pins its own) runs beside another's. A variant that
cannot run here is reported with the reason, never silently dropped.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python benchmarks/backends.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (backend, precision) pairs tried after the torch baseline, in display order.
ENGINE_VARIANTS = (
    ("ort-cpu", "fp32"), ("ort-cpu", "fp16"), ("ort-cpu", "int8"),
    ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"),
    ("ort-cuda", "fp32"), ("ort-cuda", "fp16"), ("ort-cuda", "int8"),
    ("tensorrt", "fp16"), ("tensorrt", "int8"),
)
CPU_BACKENDS = ("torch", "ort-cpu", "openvino")
GEMM_MAX_M = 8192
TORCH = ("torch", "fp32")


@dataclass
class Runner:
    """One variant: ``fn(images) -> outputs``; ``actual`` is the precision it really runs."""

    backend: str
    precision: str
    fn: Callable[[np.ndarray], Any]
    actual: str = ""

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.precision}"


def random_images(batch: int, input_size, mean, std, seed: int = 0) -> np.ndarray:
    """A normalised random image batch, like preprocessed crops."""
    h, w = input_size
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 3, h, w), dtype=np.float32)
    m = np.asarray(mean, np.float32)[None, :, None, None]
    s = np.asarray(std, np.float32)[None, :, None, None]
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def torch_runner(checkpoint: str, modality: str = "rgb", threads: int | None = None) -> Runner:
    """The eager PyTorch model from ``checkpoint`` (CPU, eval, inference mode)."""
    import torch

    from train.model import load_model

    if threads:
        torch.set_num_threads(int(threads))
    model = load_model(str(checkpoint))

    def run(images: np.ndarray):
        with torch.inference_mode():
            shared, specific = model.extract(torch.from_numpy(images), modality=modality)
        return {"shared": shared.numpy(), "specific": specific.numpy()}

    return Runner(*TORCH, run, actual="f32")


def engine_runner(bundle, graph: str, backend: str, precision: str,
                  allow_ungated: bool = False) -> Runner:
    """A bundle graph opened by the runtime's engine layer (falls back as the runtime does);
    variants without a pass verdict of the parity gate only with ``allow_ungated``."""
    from ssft_deploy.engines import open_engine
    from ssft_deploy.engines.openvino import ort_precision

    eng = open_engine(bundle, graph, precision=precision, backend=backend,
                      allow_ungated=allow_ungated)
    actual = getattr(eng, "inference_precision", None) or ort_precision(precision)
    if getattr(eng, "fallback_reason", None):
        actual += f" (fell back to {eng.name}: {eng.fallback_reason})"
    return Runner(backend, precision, lambda images: eng.run({"images": images}), actual=actual)


def gemm_m(m_per_image: int, batch: int) -> int:
    """Rows of the GEMM probe at ``batch`` (the im2col view of one convolution, capped)."""
    return min(m_per_image * batch, GEMM_MAX_M)


def gemm_runner(m_per_image: int, n: int, k: int) -> Runner:
    """numpy's BLAS sgemm ``[m,k] @ [k,n]`` with ``m = gemm_m(m_per_image, batch)``: the probe
    of what this CPU's fp32 GEMM reaches on the shape of the extractor's heaviest convolution."""
    rng = np.random.default_rng(0)
    arrays: dict[int, tuple] = {}

    def run(images: np.ndarray):
        m = gemm_m(m_per_image, len(images))
        if m not in arrays:
            arrays.clear()
            arrays[m] = (rng.standard_normal((m, k), dtype=np.float32),
                         rng.standard_normal((k, n), dtype=np.float32),
                         np.empty((m, n), dtype=np.float32))
        a, b, out = arrays[m]
        return np.matmul(a, b, out=out)

    return Runner("gemm", "fp32", run, actual="f32")


def make_runner(spec: dict[str, Any]) -> Runner:
    """Open the variant a spec names: ``kind`` torch | engine | gemm and its fields."""
    kind = spec["kind"]
    if kind == "torch":
        return torch_runner(spec["checkpoint"], spec.get("modality", "rgb"), spec.get("threads"))
    if kind == "engine":
        return engine_runner(spec["bundle"], spec["graph"], spec["backend"], spec["precision"],
                             bool(spec.get("allow_ungated")))
    if kind == "gemm":
        return gemm_runner(spec["m_per_image"], spec["n"], spec["k"])
    raise ValueError(f"unknown runner kind {kind!r}")


def time_slice(runner: Runner, images: np.ndarray, budget_s: float, warmup: int,
               min_calls: int = 1, max_calls: int = 10_000) -> dict[str, Any]:
    """``warmup`` untimed calls, then timed calls until ``budget_s``; seconds per call and the
    process's CPU seconds over the timed part (all its threads)."""
    for _ in range(warmup):
        runner.fn(images)
    samples: list[float] = []
    cpu0, deadline = time.process_time(), time.perf_counter() + budget_s
    while len(samples) < min_calls or (len(samples) < max_calls
                                       and time.perf_counter() < deadline):
        t0 = time.perf_counter()
        runner.fn(images)
        samples.append(time.perf_counter() - t0)
    return {"samples": samples, "cpu_s": time.process_time() - cpu0}


def serve(spec: dict[str, Any]) -> None:
    """The worker loop: open the runner, then answer ``{"op": "time", ...}`` lines on stdin."""
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    try:
        runner = make_runner(spec)
    except Exception as exc:  # noqa: BLE001  (reported to the parent as "skipped: reason")
        out.write(json.dumps({"ok": False, "reason": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return
    out.write(json.dumps({"ok": True, "actual": runner.actual}) + "\n")
    out.flush()
    cache: dict[int, np.ndarray] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("op") not in ("time", "outputs"):
            break
        batch = int(cmd["batch"])
        if batch not in cache:
            cache = {batch: random_images(batch, spec["input_size"], spec["mean"], spec["std"])}
        if cmd["op"] == "outputs":  # for the parity check against the reference variant
            outs = runner.fn(cache[batch])
            res = {"outputs": {k: np.asarray(v).tolist() for k, v in outs.items()}
                   if isinstance(outs, dict) else None}
        else:
            res = time_slice(runner, cache[batch], float(cmd["budget_s"]), int(cmd["warmup"]),
                             int(cmd.get("min_calls", 1)))
        out.write(json.dumps(res) + "\n")
        out.flush()


def autoselect(bundle: str) -> None:
    """Print what ``ReIDRuntime.open(bundle, precision="auto")`` picks here (fresh measurement)."""
    from ssft_deploy.engines.autoselect import choose

    c = choose(bundle, use_cache=False)
    print(json.dumps({"backend": c.backend, "precision": c.precision,
                      "throughput": c.throughput, "reason": c.reason}))


if __name__ == "__main__":
    if sys.argv[1] == "--autoselect":
        autoselect(sys.argv[2])
    else:
        serve(json.loads(sys.argv[1]))
