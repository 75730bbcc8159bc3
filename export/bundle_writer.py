"""Checkpoint model -> bundle folder: graphs, precision variants, engines, manifest, parity."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export import manifest as mf
from export.onnx_graphs import DEFAULT_EXPORTER, export_extractor, export_transfer
from export.precision import TRANSFER_FP16_OPS, convert_fp16
from ssft_deploy.engines.trt_build import TRANSFER_MAX_ROWS
from ssft_deploy.preprocess import Preprocessor

GRAPHS = ("extractor_rgb", "extractor_ir", "transfer")
FAILED_MANIFEST = "manifest.failed.json"


@dataclass
class ExportOptions:
    """What ``ssft-export`` builds (see its --help)."""

    fp16: bool = False
    int8: bool = False
    calib: str | None = None
    calib_images: int = 128
    int8_activations: str = "s8"
    trt: bool = False
    workspace: int = 4 << 30
    max_batch: int = 64
    max_n: int = TRANSFER_MAX_ROWS
    exporter: str = DEFAULT_EXPORTER
    verify: bool = True
    verify_data: str | None = None
    notes: list[str] = field(default_factory=list)


def onnx_name(graph: str, variant: str) -> str:
    return f"{graph}.onnx" if variant == "fp32" else f"{graph}.{variant}.onnx"


def export_onnx_variants(model: Any, out: Path, info: dict, opts: ExportOptions,
                         say: Callable[[str], None]) -> dict[str, dict[str, dict]]:
    """fp32 graphs, then the fp16 / int8 variants asked for; returns the manifest variants."""
    size = tuple(info["input_size"])
    dims = {"shared": info["shared_dim"], "specific": info["specific_dim"],
            "transfer": info["transfer_dim"]}
    for modality in ("rgb", "ir"):
        say(f"exporting extractor_{modality} ({opts.exporter})")
        export_extractor(model, modality, out / onnx_name(f"extractor_{modality}", "fp32"),
                         size, opts.exporter)
    say(f"exporting transfer ({opts.exporter})")
    export_transfer(model, out / onnx_name("transfer", "fp32"), dims, info["k"], opts.exporter)
    variants = {"fp32": {g: mf.file_entry(out, onnx_name(g, "fp32")) for g in GRAPHS}}
    if opts.fp16:
        say("converting to fp16 (fp32 kept for normalisations and reductions)")
        for g in GRAPHS:
            convert_fp16(out / onnx_name(g, "fp32"), out / onnx_name(g, "fp16"),
                         TRANSFER_FP16_OPS if g == "transfer" else None)
        variants["fp16"] = {g: mf.file_entry(out, onnx_name(g, "fp16")) for g in GRAPHS}
    if opts.int8:
        from export.images import calibration_images
        from export.quantize import quantize_int8

        prep = Preprocessor(size, tuple(info["mean"]), tuple(info["std"]))
        for modality in ("rgb", "ir"):
            g = f"extractor_{modality}"
            images = calibration_images(opts.calib, modality, prep, opts.calib_images)
            say(f"int8: calibrating {g} on {len(images)} training-split images")
            quantize_int8(out / onnx_name(g, "fp32"), out / onnx_name(g, "int8"), images,
                          activations=opts.int8_activations)
        variants["int8"] = {g: mf.file_entry(out, onnx_name(g, "int8"), calibration="train split",
                                             activations=opts.int8_activations)
                            for g in GRAPHS[:2]}
        variants["int8"]["transfer"] = dict(variants["fp32"]["transfer"])  # fp32 (see quantize)
    return variants


def build_engines(out: Path, variants: dict, opts: ExportOptions,
                  say: Callable[[str], None]) -> str | None:
    """TensorRT plans for every ONNX variant (adds ``trt-*`` variants); returns the version."""
    from export.tensorrt_build import build_trt_variants, tensorrt_version

    version = tensorrt_version()
    if version is None:
        say("TensorRT is not importable here: no engines built (the ONNX bundle is complete; "
            "run ssft-export --trt on the GPU machine to add them)")
        opts.notes.append("--trt skipped: tensorrt not importable")
        return None
    variants.update(build_trt_variants(out, variants, opts.max_batch, opts.max_n,
                                       opts.workspace, say))
    return version


def write_bundle(model: Any, out: str | os.PathLike, opts: ExportOptions,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Export everything ``opts`` asks for into ``out``; returns the manifest written.

    With ``opts.verify`` the parity gate runs; a variant missing its threshold by a wide margin
    raises ParityError and the manifest is left as ``manifest.failed.json`` (not loadable).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = mf.model_section(model)
    variants = export_onnx_variants(model, out, info, opts, say)
    trt_version = build_engines(out, variants, opts, say) if opts.trt else None
    record = {"exporter": opts.exporter, "max_batch": opts.max_batch, "max_n": opts.max_n,
              "notes": opts.notes}
    manifest = mf.build_manifest(info, variants, None, trt_version, record)
    mf.write(out, manifest)
    if not opts.verify:
        say("parity gate skipped (--no-verify)")
        return manifest
    from export import parity
    from export.images import held_out_images

    say("parity gate: comparing every variant with PyTorch fp32")
    prep = Preprocessor(tuple(info["input_size"]), tuple(info["mean"]), tuple(info["std"]))
    data = held_out_images(prep, opts.verify_data)
    checkable = [v for v in variants if not v.startswith("trt-") or trt_version is not None]
    result = parity.verify_bundle(model, out, checkable, data, info["k"],
                                  tuple(info["transfer_parts"]))
    say(parity.format_table(result))
    manifest["parity"] = result
    mf.write(out, manifest)
    bad = parity.failures(result)
    if bad:
        os.replace(out / "manifest.json", out / FAILED_MANIFEST)
        raise parity.ParityError(
            f"variant(s) {', '.join(bad)} differ from the PyTorch model far beyond their "
            f"thresholds (table above); the bundle in {out} was not finalised (its manifest is "
            f"kept as {FAILED_MANIFEST}). Export without those options, or pass --no-verify to "
            "keep it anyway.")
    return manifest
