"""The parity gate's thresholds: one row per precision, the only place they are set.

The export's gate judges with this table (``export.thresholds`` re-exports it) and the runtime
re-judges every recorded ``pass`` with it when a bundle opens (``ssft_deploy.verdicts``), so a
verdict whose figures miss these bounds never opens, whatever the record says. It lives here, not
in ``export/``, because ``ssft_deploy`` never imports ``export``.

Each row bounds every stage the gate measures against the reference (the PyTorch fp32 model):

- ``extractor_min_cos``: min over held-out images and both outputs (shared, specific) of the
  cosine between the variant's and the reference's features.
- ``transfer_graph_min_cos``: min cosine of the variant's transfer graph against the reference
  transfer on identical inputs (the reference's z, idx, w), row by row.
- ``transferred_min_cos``: min cosine of the transferred features end to end. Looser than the
  graph bound on purpose: one neighbour that changes at a near-tie changes the whole propagated
  row (measured on the ResNet-18 demo model of 2026-11: fp16 0.986, int8 0.916 with extractor
  cosines 0.999998 and 0.992), so this bound only catches gross failures; ``neighbour_overlap_mean`` bounds the flips.
- ``neighbour_overlap_mean``: mean over rows of |top-k set of the variant ∩ the reference's| / k
  (the affinity stage, Eq. 6).
- ``max_abs_d_rank1`` / ``max_abs_d_mAP``: |Rank-1| / |mAP| difference in points on the held-out
  trial (IR queries vs RGB gallery, transferred features): the mean over 10 single-shot
  galleries drawn from a pool (``export.images.GATE_TRIALS``), up to 400 queries
  (``GATE_IMAGES``: one query is a quarter of a point). The difference is paired: reference and
  variant rank the same queries against the same gallery draws, so gallery sampling noise cancels
  and only the queries whose rank-1 match the variant changes move it (issue 23's bounds).

A zero, NaN or inf feature row has cosine 0, and a NaN or missing figure misses every bound: a
broken graph can never pass. ``bf16`` is set between fp16 and int8 (torch bf16 autocast of the
test model measured 0.99998); the helper adding the OpenVINO bf16 variant re-measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """Bounds of one precision (see the module docstring); cosines and overlap are minimums,
    the rank figures maximum absolute differences in points."""

    extractor_min_cos: float
    transfer_graph_min_cos: float
    transferred_min_cos: float
    neighbour_overlap_mean: float
    max_abs_d_rank1: float
    max_abs_d_mAP: float


THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(0.99999, 0.99999, 0.95, 0.99, 0.25, 0.1),
    "fp16": Thresholds(0.999, 0.999, 0.90, 0.95, 0.5, 0.3),
    "bf16": Thresholds(0.998, 0.998, 0.88, 0.93, 1.0, 0.5),
    "int8": Thresholds(0.98, 0.99, 0.80, 0.85, 1.0, 0.7),
}

# figure name -> (threshold field, how the figure is compared with it)
CHECKS = {
    "extractor_min_cos": ("extractor_min_cos", "min"),
    "transfer_graph_min_cos": ("transfer_graph_min_cos", "min"),
    "transferred_min_cos": ("transferred_min_cos", "min"),
    "neighbour_overlap_mean": ("neighbour_overlap_mean", "min"),
    "d_rank1": ("max_abs_d_rank1", "abs_max"),
    "d_mAP": ("max_abs_d_mAP", "abs_max"),
}


def _ok(value: Any, bound: float, kind: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False  # a missing, boolean or NaN / inf figure misses its bound
    return value >= bound if kind == "min" else abs(value) <= bound


def missed(figures: Any, row: Thresholds) -> list[str]:
    """The checks of :data:`CHECKS` that ``figures`` (name -> number) miss under ``row``."""
    figures = figures if isinstance(figures, dict) else {}
    return [name for name, (fld, kind) in CHECKS.items()
            if not _ok(figures.get(name), getattr(row, fld), kind)]


def variant_precision(variant: str) -> str | None:
    """The threshold row a variant's name implies (``trt-fp16`` -> fp16, ``ov-int8`` -> int8);
    None for a name outside that scheme (a registry entry of its own, judged on its record)."""
    name = variant.removeprefix("trt-").removeprefix("ov-")
    return name if name in THRESHOLDS else None
