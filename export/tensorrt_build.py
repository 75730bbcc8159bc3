"""TensorRT engines (``*.plan``) for the bundle's ONNX variants (``ssft-export --trt``).

The builder is the runtime's (``ssft_deploy.engines.trt_build``, torch-free, so a deployed process
rebuilds an engine for its own GPU with the same code): strongly typed networks, one optimisation
profile sized from the protocols, the timing cache ``timing.cache`` beside the plans. This module
adds only the export-side checks (TensorRT importable, a GPU present).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ssft_deploy.engines.trt_build import (
    EXTRACTOR_MAX_BATCH,
    TRANSFER_MAX_ROWS,
    build_variants,
)
from ssft_deploy.errors import EngineError


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
                       max_batch: int = EXTRACTOR_MAX_BATCH, max_n: int = TRANSFER_MAX_ROWS,
                       workspace: int = 4 << 30,
                       say: Callable[[str], None] = print) -> dict[str, dict[str, dict]]:
    """``trt-<v>`` manifest variants built from each ONNX variant ``v`` present in ``variants``,
    after checking that a GPU is there (see ``trt_build.build_variants``)."""
    require_gpu()
    return build_variants(bundle_dir, variants, max_batch=max_batch, max_n=max_n,
                          workspace_bytes=workspace, say=say)
