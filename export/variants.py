"""The variant registry: manifest variant name -> (precision, backend, graph files).

The export writes a variant's manifest entries from ``files``; the parity gate opens the variant
exactly as the runtime does (``open_engine(bundle, graph, precision=run_as, backend=backend)``)
and judges it against the ``precision`` row of ``export.thresholds``. Adding a variant is one
entry here (docs/ARCHITECTURE.md, "Bundle"): e.g. an OpenVINO bf16 variant that runs the fp32
graph files with a bf16 inference hint is
``"bf16": VariantSpec("bf16", "openvino", FP32_FILES)``, with an OpenVINO engine whose
``variant("bf16")`` is ``"bf16"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from export.errors import GateError
from export.parity import ExtractFn, TransferFn
from ssft_deploy.bundle import GRAPHS
from ssft_deploy.transfer import transfer_feeds


def _files(suffix: str, transfer: str | None = None) -> dict[str, str]:
    names = {g: f"{g}{suffix}" for g in GRAPHS}
    if transfer is not None:
        names["transfer"] = transfer
    return names


FP32_FILES = _files(".onnx")


@dataclass(frozen=True)
class VariantSpec:
    """``precision``: its thresholds row; ``backend``: the ``ssft_deploy.engines`` backend that
    runs it; ``files``: graph -> file name in the bundle; ``run_as``: the ``precision`` argument
    of ``open_engine`` (default: the variant name without ``trt-``)."""

    precision: str
    backend: str
    files: dict[str, str] = field(default_factory=dict)
    run_as: str | None = None


VARIANTS: dict[str, VariantSpec] = {
    "fp32": VariantSpec("fp32", "ort-cpu", FP32_FILES),
    "fp16": VariantSpec("fp16", "ort-cpu", _files(".fp16.onnx")),
    # int8: quantised extractors; the transfer graph stays fp32 (see export/quantize.py)
    "int8": VariantSpec("int8", "ort-cpu", _files(".int8.onnx", transfer="transfer.onnx")),
    "trt-fp32": VariantSpec("fp32", "tensorrt", _files(".plan")),
    "trt-fp16": VariantSpec("fp16", "tensorrt", _files(".fp16.plan")),
    "trt-int8": VariantSpec("int8", "tensorrt", _files(".int8.plan", transfer="transfer.plan")),
    # OpenVINO (export/openvino_variants.py): bf16 runs the fp32 graphs at bf16 inference
    # precision; ov-int8 the int8 QDQ extractors (fp32 transfer) on OpenVINO's int8 kernels
    "bf16": VariantSpec("bf16", "openvino", FP32_FILES),
    "ov-int8": VariantSpec("int8", "openvino", _files(".int8.onnx", transfer="transfer.onnx"),
                           run_as="int8"),
}


def spec(variant: str) -> VariantSpec:
    """The registry entry of ``variant``; GateError for an unknown one."""
    if variant not in VARIANTS:
        raise GateError(f"variant {variant!r} is not in the gate's registry (it has "
                        f"{sorted(VARIANTS)}); add it to export/variants.py")
    return VARIANTS[variant]


def run_as(variant: str) -> str:
    s = spec(variant)
    return s.run_as or variant.removeprefix("trt-")


def check_engine_mapping(variant: str) -> None:
    """GateError unless the backend opens exactly ``variant``'s files for ``run_as``: the gate
    must judge the files the runtime will run."""
    from ssft_deploy.engines import BACKENDS

    s = spec(variant)
    if s.backend not in BACKENDS:
        raise GateError(f"variant {variant!r}: backend {s.backend!r} is not one of "
                        f"{sorted(BACKENDS)}")
    opened = BACKENDS[s.backend].variant(run_as(variant))
    if opened != variant:
        raise GateError(f"variant {variant!r}: backend {s.backend!r} at precision "
                        f"{run_as(variant)!r} opens variant {opened!r}; fix its registry entry")


def engine_fns(bundle: Any, variant: str) -> tuple[ExtractFn, TransferFn]:
    """extract / transfer of one bundle variant through ``ssft_deploy.engines.open_engine``."""
    from ssft_deploy.engines import open_engine

    check_engine_mapping(variant)
    s = spec(variant)
    return engine_pair({g: open_engine(bundle, g, precision=run_as(variant), backend=s.backend)
                        for g in GRAPHS})


def engine_pair(engines: dict[str, Any]) -> tuple[ExtractFn, TransferFn]:
    """numpy-in / numpy-out extract and transfer over opened engines, one per graph name."""

    def extract(images, modality: str):
        out = engines[f"extractor_{modality}"].run({"images": images})
        return out["shared"], out["specific"]

    def transfer(z, idx, w):
        eng = engines["transfer"]
        return eng.run(transfer_feeds(eng, z, idx, w))["transferred"]

    return extract, transfer


def manifest_entries(bundle_dir: str | os.PathLike, variant: str,
                     **meta: Any) -> dict[str, dict[str, Any]]:
    """Manifest entries (file, sha256, format) of ``variant``'s graph files already written."""
    from export.manifest import file_entry

    fmt = "tensorrt" if spec(variant).backend == "tensorrt" else "onnx"
    return {g: file_entry(bundle_dir, name, fmt, **meta) for g, name in spec(variant).files.items()}
