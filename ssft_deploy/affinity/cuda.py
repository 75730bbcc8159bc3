"""CUDA method: placeholder until the kernel lands (available() is False)."""

from __future__ import annotations

from typing import Any

from ssft_deploy.errors import EngineError


def available() -> bool:
    return False


def candidate_fn(**options: Any) -> Any:
    raise EngineError("affinity method 'cuda' is not available yet")
