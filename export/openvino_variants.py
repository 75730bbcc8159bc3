"""OpenVINO variants of a bundle (``ssft-export --openvino``): entries over graphs already written.

``bf16`` runs the fp32 graphs with OpenVINO's bf16 inference precision: the same files, another
arithmetic, so it is a variant of its own with its own gate verdict (never a stand-in for fp32).
``ov-int8`` runs the int8 QDQ extractors (and the fp32 transfer graph) on OpenVINO: its int8
kernels round differently from ONNX Runtime's, so it is gated separately from ``int8``. Both are
in the gate's registry (``export/variants.py``); their entries carry ``backend: openvino`` so no
other backend opens them. bf16 is only added where this CPU runs it natively (AVX512_BF16 / AMX):
the gate must be able to judge it here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from export import variants as reg
from export.manifest import file_entry

#: OpenVINO variant -> the variant whose files it reads
SOURCES = {"bf16": "fp32", "ov-int8": "int8"}


def openvino_variants(bundle_dir: str | os.PathLike, variants: dict[str, dict[str, Any]],
                      say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Manifest entries of the OpenVINO variants whose source variant is in ``variants``."""
    from ssft_deploy.engines.openvino import OpenVINOEngine

    reason = OpenVINOEngine.unavailable_reason()
    if reason:
        say(f"OpenVINO variants skipped: {reason}")
        return {}
    out = {}
    for name, source in SOURCES.items():
        if source not in variants:
            continue
        why = OpenVINOEngine.supports(reg.run_as(name))
        if why:
            say(f"OpenVINO {name} skipped: {why}")
            continue
        files = reg.spec(name).files
        # the graphs the source variant has (a timing bundle may hold one extractor only),
        # keeping what its entries record (calibration, activations...)
        out[name] = {g: {**e, **file_entry(bundle_dir, files[g]), "backend": "openvino"}
                     for g, e in variants[source].items()}
    return out
