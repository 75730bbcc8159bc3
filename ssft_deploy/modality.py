"""The two modalities, one vocabulary: arrays carry the code (0 RGB, 1 IR), APIs take either."""

from __future__ import annotations

import numpy as np

from ssft_deploy.errors import InputError

RGB, IR = 0, 1
NAMES = ("rgb", "ir")
# Dataset folders and camera configs name the modalities in several ways; all map here.
_ALIASES = {"rgb": RGB, "ir": IR, "visible": RGB, "thermal": IR, "infrared": IR}


def modality_code(modality: int | str) -> int:
    """``"rgb"`` / ``"ir"`` (or an alias, or 0 / 1) -> 0 / 1; anything else is an InputError."""
    if isinstance(modality, str):
        code = _ALIASES.get(modality.strip().lower())
        if code is not None:
            return code
    elif isinstance(modality, (int, np.integer)) and not isinstance(modality, bool) \
            and int(modality) in (RGB, IR):
        return int(modality)
    raise InputError(f"unknown modality {modality!r}: use 'rgb' (0) or 'ir' (1)")


def modality_name(modality: int | str) -> str:
    """``"rgb"`` / ``"ir"`` (or an alias, or 0 / 1) -> ``"rgb"`` / ``"ir"``."""
    return NAMES[modality_code(modality)]
