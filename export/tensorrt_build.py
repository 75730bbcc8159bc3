"""TensorRT engines (``*.plan``) for the bundle's ONNX variants (``ssft-export --trt``).

The build itself is ``ssft_deploy.engines.trt_build.build_plan`` (shared with the runtime, which
rebuilds an engine for a new GPU from the same graph): a strongly typed network (TensorRT >= 10
has the flag; on 11 every network is strongly typed), so precision comes from the graph (fp16
casts, int8 Q/DQ) and no FP16 / INT8 builder flag is set; one optimisation profile over B
(extractors: 1 .. max_batch) or N (transfer: 1 .. max_n); the timing cache ``timing.cache``
beside the plans is read and written; the workspace pool is capped in bytes. This module adds
the export-side checks (TensorRT importable, a GPU present) and the variant bookkeeping.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssft_deploy.errors import EngineError

TIMING_CACHE = "timing.cache"
ONNX_VARIANTS = ("fp32", "fp16", "int8")


def tensorrt_version() -> str | None:
    """The importable TensorRT's version, or None."""
    try:
        import tensorrt as trt
    except Exception:  # noqa: BLE001  (a broken install counts as absent)
        return None
    return str(trt.__version__)


def require_gpu() -> tuple[str, str]:
    """(GPU name, compute capability) of GPU 0, probed as the runtime's bundle check does."""
    from ssft_deploy.bundle import current_trt_platform

    here = current_trt_platform()
    if here.gpu is None or here.compute_capability is None:
        raise EngineError("TensorRT is installed but no CUDA GPU is visible (or pycuda is "
                          "missing): TensorRT engines can only be built on the GPU they will run "
                          "on; drop --trt or run the export on that machine")
    return here.gpu, here.compute_capability


def build_trt_variants(bundle_dir: str | os.PathLike, variants: dict[str, dict[str, dict]],
                       max_batch: int = 64, max_n: int = 4096, workspace: int = 4 << 30,
                       say: Callable[[str], None] = print) -> dict[str, dict[str, dict]]:
    """``trt-<v>`` manifest variants built from each ONNX variant ``v`` present in ``variants``.

    A graph file shared by two variants (the int8 variant's fp32 transfer graph) is built once.
    """
    from ssft_deploy.engines.trt_build import build_plan

    require_gpu()
    out = Path(bundle_dir)
    built: dict[str, dict[str, Any]] = {}
    result: dict[str, dict[str, dict]] = {}
    for variant in (v for v in ONNX_VARIANTS if v in variants):
        if any(e.get("activations") == "u8" for e in variants[variant].values()):
            say(f"TensorRT: skipping the {variant} variant (asymmetric u8 activations are not "
                "readable by TensorRT; export with --int8-activations s8)")
            continue
        result[f"trt-{variant}"] = {}
        for graph, entry in variants[variant].items():
            source = entry["file"]
            if source not in built:
                plan = out / (source.removesuffix(".onnx") + ".plan")
                rows = max_n if graph == "transfer" else max_batch
                say(f"TensorRT: building {plan.name} (profile 1..{rows})")
                built[source] = build_plan(out / source, plan, max_rows=rows,
                                           opt_rows=min(rows, 512 if graph == "transfer" else 16),
                                           workspace_bytes=workspace,
                                           timing_cache=out / TIMING_CACHE)
            result[f"trt-{variant}"][graph] = built[source]
    return result
