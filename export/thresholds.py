"""The parity gate's judge over the threshold table of ``ssft_deploy.thresholds``.

The table lives in ``ssft_deploy`` (the runtime re-judges every recorded verdict at open with it,
and ``ssft_deploy`` never imports ``export``): change bounds there, in one place.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from export.errors import GateError
from ssft_deploy.thresholds import CHECKS, THRESHOLDS, Thresholds, missed

__all__ = ["CHECKS", "THRESHOLDS", "Thresholds", "judge", "thresholds"]


def thresholds(precision: str) -> Thresholds:
    """The row of ``precision``; GateError for a precision the table does not have."""
    if precision not in THRESHOLDS:
        raise GateError(f"the parity gate has no thresholds for precision {precision!r} "
                        f"(it has {sorted(THRESHOLDS)}); add a row to ssft_deploy/thresholds.py")
    return THRESHOLDS[precision]


def judge(figures: dict[str, Any], precision: str) -> tuple[str, list[str], dict[str, float]]:
    """``(verdict, failed checks, thresholds used)`` of a variant's figures: ``pass`` only when
    every check holds."""
    row = thresholds(precision)
    failed = missed(figures, row)
    return ("fail" if failed else "pass"), failed, asdict(row)
