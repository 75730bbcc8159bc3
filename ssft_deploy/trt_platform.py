"""What a TensorRT engine must match on this machine: TensorRT version, GPU, compute capability.

``current_trt_platform`` probes this machine; ``check_engine_platform`` refuses an engine built
for another (``ssft_deploy.bundle`` re-exports both).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ssft_deploy.errors import BundleError

if TYPE_CHECKING:
    from ssft_deploy.bundle import FileEntry

log = logging.getLogger("ssft_deploy.bundle")

REBUILD_TRT = "rebuild with ssft-export --trt on this machine"


@dataclass(frozen=True)
class TrtPlatform:
    """What a TensorRT engine must match here: TensorRT version, GPU name, compute capability."""

    tensorrt: str | None
    gpu: str | None
    compute_capability: str | None


def current_trt_platform() -> TrtPlatform:
    """Probe the importable TensorRT and GPU 0 (lazy imports; ``None`` fields where absent)."""
    try:
        import tensorrt
        version = str(tensorrt.__version__)
    except Exception:  # noqa: BLE001  (any import failure means "no TensorRT")
        version = None
    gpu = cc = None
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() > 0:
            dev = cuda.Device(0)
            gpu = str(dev.name())
            cc = "{}.{}".format(*dev.compute_capability())
    except Exception as exc:  # noqa: BLE001  (no driver / no pycuda: no GPU for TensorRT)
        log.debug("no CUDA device for TensorRT: %s", exc)
    return TrtPlatform(tensorrt=version, gpu=gpu, compute_capability=cc)


def check_engine_platform(entry: FileEntry, here: TrtPlatform) -> None:
    """Refuse a TensorRT engine built for another TensorRT version or GPU than ``here``."""
    where = f"{entry.variant}/{entry.graph} ({entry.file})"
    built_trt = entry.meta.get("tensorrt")
    built_gpu = entry.meta.get("gpu")
    built_cc = entry.meta.get("compute_capability")
    if here.tensorrt is None:
        raise BundleError(f"{where} is a TensorRT engine but TensorRT is not importable here; "
                          "use an ONNX variant (backend 'ort-cpu' / 'ort-cuda')")
    if here.gpu is None:
        raise BundleError(f"{where} is a TensorRT engine but no CUDA GPU is visible here")
    problems = []
    if built_trt is not None and str(built_trt) != here.tensorrt:
        problems.append(f"TensorRT {built_trt} (this machine has {here.tensorrt})")
    if built_cc is not None and str(built_cc) != here.compute_capability:
        problems.append(f"compute capability {built_cc} (this GPU has {here.compute_capability})")
    if built_gpu is not None and str(built_gpu) != here.gpu:
        problems.append(f"GPU {built_gpu!r} (this machine has {here.gpu!r})")
    if problems:
        raise BundleError(f"{where} was built for " + ", ".join(problems) + f"; {REBUILD_TRT} "
                          "(or open it with rebuild=True to rebuild from its ONNX graph)")
