"""ssft-deploy runtime: torch-free inference for cm-SSFT cross-modality person re-identification.

Importing this package never imports torch (a test checks it in a fresh interpreter).
"""

from __future__ import annotations

from ssft_deploy.errors import (
    BundleError,
    CheckpointError,
    DatasetError,
    EngineError,
    GalleryError,
    InputError,
    QueueFullError,
    SSFTError,
)
from ssft_deploy.modality import IR, RGB

__version__ = "0.1.0"
MODALITIES = {"rgb": RGB, "ir": IR}


def __getattr__(name: str):
    # Lazy so that `import ssft_deploy` stays light (no onnxruntime / cv2 until used).
    if name == "ReIDRuntime":
        from ssft_deploy.runtime import ReIDRuntime

        return ReIDRuntime
    if name == "FrameBatcher":
        from ssft_deploy.batcher import FrameBatcher

        return FrameBatcher
    raise AttributeError(f"module 'ssft_deploy' has no attribute {name!r}")


__all__ = [
    "IR",
    "MODALITIES",
    "RGB",
    "BundleError",
    "CheckpointError",
    "DatasetError",
    "EngineError",
    "FrameBatcher",
    "GalleryError",
    "InputError",
    "QueueFullError",
    "ReIDRuntime",
    "SSFTError",
    "__version__",
]
