"""Inference engines: one interface, backends ONNX Runtime CPU / CUDA and TensorRT."""

from __future__ import annotations

from ssft_deploy.engines.base import Engine, TensorSpec
from ssft_deploy.engines.registry import (
    BACKENDS,
    available_backends,
    backend_status,
    choose_backend,
    open_engine,
)

__all__ = ["BACKENDS", "Engine", "TensorSpec", "available_backends", "backend_status",
           "choose_backend", "open_engine"]
