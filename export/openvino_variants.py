"""OpenVINO variants of a bundle: manifest entries over graphs the export already wrote.

``bf16`` runs the fp32 graphs with OpenVINO's bf16 inference precision: the same files, another
arithmetic, so it is a variant of its own with its own gate verdict (never a stand-in for fp32).
``ov-int8`` runs the int8 QDQ extractors (and the fp32 transfer graph) on OpenVINO: OpenVINO's
int8 kernels round differently from ONNX Runtime's, so it is gated separately from ``int8``.
The entries carry ``backend: openvino``: no other backend opens them.
"""

from __future__ import annotations

from typing import Any

#: variant -> (precision run by OpenVINO, the variant whose files it reads)
OPENVINO_VARIANTS = {"bf16": ("bf16", "fp32"), "ov-int8": ("int8", "int8")}


def openvino_variants(variants: dict[str, dict[str, dict[str, Any]]]
                      ) -> dict[str, dict[str, dict[str, Any]]]:
    """Manifest entries of the OpenVINO variants whose source variant exists in ``variants``."""
    out = {}
    for name, (precision, source) in OPENVINO_VARIANTS.items():
        if source in variants:
            out[name] = {g: {**e, "backend": "openvino", "precision": precision}
                         for g, e in variants[source].items()}
    return out
