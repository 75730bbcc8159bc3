"""The bundle manifest (docs/ARCHITECTURE.md, "Bundle"), written through ``ssft_deploy.bundle``."""

from __future__ import annotations

import datetime as _dt
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from ssft_deploy.bundle import GRAPHS, MANIFEST_FORMAT, sha256_file  # noqa: F401 (re-exported)
from ssft_deploy.errors import CheckpointError
from ssft_deploy.preprocess import MEAN, STD


def model_section(model: Any) -> dict[str, Any]:
    """The manifest's ``model`` entry from a loaded model (``.config`` and ``.dims``)."""
    cfg = model.config
    try:
        h, w = int(cfg.height), int(cfg.width)
        dims = model.dims
        section = {
            "arch": str(getattr(cfg, "arch", "")),
            "input_size": [h, w],
            "mean": [float(v) for v in getattr(cfg, "mean", MEAN)],
            "std": [float(v) for v in getattr(cfg, "std", STD)],
            "shared_dim": int(dims["shared"]),
            "specific_dim": int(dims["specific"]),
            "transfer_dim": int(dims["transfer"]),
            "k": int(cfg.k),
            "transfer_parts": list(cfg.transfer_parts),
        }
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the model's config lacks what a bundle needs ({exc!r}): "
                              "height, width, k, transfer_parts and dims") from exc
    if not section["transfer_parts"]:
        raise CheckpointError("this model has no feature transfer (ShT and SpT both off): "
                              "nothing for a transfer graph to export")
    return section


def file_entry(bundle_dir: str | os.PathLike, name: str, fmt: str = "onnx",
               **meta: Any) -> dict[str, Any]:
    """``{"file", "sha256", "format", **meta}`` for a file inside the bundle."""
    return {"file": name, "sha256": sha256_file(Path(bundle_dir) / name), "format": fmt, **meta}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions(tensorrt: str | None = None) -> dict[str, str | None]:
    """Versions of the tools that built the bundle (TensorRT only when an engine was built)."""
    import ssft_deploy

    return {"ssft_deploy": ssft_deploy.__version__, "torch": _version("torch"),
            "onnx": _version("onnx"), "onnxruntime": _version("onnxruntime"),
            "onnxconverter_common": _version("onnxconverter-common"),
            "onnxslim": _version("onnxslim"), "tensorrt": tensorrt}


def build_manifest(model: dict[str, Any], variants: dict[str, dict[str, dict]],
                   tensorrt: str | None = None,
                   export: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest dict before the gate (``export.gate`` adds ``gate``); ``export`` records how
    it was made (exporter, options)."""
    return {
        "format": MANIFEST_FORMAT,
        "model": model,
        "variants": variants,
        "versions": versions(tensorrt),
        "export": export or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
