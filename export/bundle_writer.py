"""Checkpoint model -> bundle folder: graphs, precision variants, engines, then the parity gate,
which publishes ``manifest.json`` last."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export import manifest as mf
from export import variants as reg
from export.conditioning import float32_convs
from export.errors import ExportError, ParityError
from export.images import GATE_IMAGES
from export.onnx_graphs import (
    DEFAULT_EXPORTER,
    export_extractor,
    export_transfer,
    transfer_width,
)
from export.precision import TRANSFER_FP16_OPS, convert_fp16
from ssft_deploy.bundle import EXTRACTORS, GRAPHS, STAGING_NAME, unpublish_manifest, write_manifest
from ssft_deploy.engines.trt_build import TRANSFER_MAX_ROWS
from ssft_deploy.fileio import durable_unlink
from ssft_deploy.preprocess import Preprocessor
from ssft_deploy.roles import fingerprints


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
    gate_images: int = GATE_IMAGES
    openvino: bool = False
    notes: list[str] = field(default_factory=list)


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """ExportError now, before any long work, when ``path`` cannot be created or written."""
    target = Path(path).absolute()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ExportError(f"cannot create the {what} {target}: {probe} is not a folder; "
                          "choose another path")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as exc:
        raise ExportError(f"cannot write the {what} {target}: {probe} is not writable "
                          f"({exc.strerror or exc}); choose another path") from exc
    return target


def export_onnx_variants(model: Any, out: Path, info: dict, opts: ExportOptions,
                         say: Callable[[str], None]) -> dict[str, dict[str, dict]]:
    """fp32 graphs, then the fp16 / int8 variants asked for; returns the manifest variants."""
    size = tuple(info["input_size"])
    dims = {"shared": info["shared_dim"], "specific": info["specific_dim"],
            "transfer": info["transfer_dim"]}
    fp32 = reg.VARIANTS["fp32"].files
    for modality in ("rgb", "ir"):
        say(f"exporting extractor_{modality} ({opts.exporter})")
        export_extractor(model, modality, out / fp32[f"extractor_{modality}"], size,
                         opts.exporter)
    say(f"exporting transfer ({opts.exporter})")
    export_transfer(model, out / fp32["transfer"], dims, info["k"], opts.exporter)
    variants = {"fp32": reg.manifest_entries(out, "fp32")}
    prep = Preprocessor(size, tuple(info["mean"]), tuple(info["std"]))
    calib = _calibration(opts, prep, say) if opts.calib else {}
    # convolutions that compute by cancellation (and everything upstream of them) stay float32
    # in the fp16 and int8 graphs (export/conditioning.py)
    kept = {g: float32_convs(out / fp32[g], calib.get(g)) if opts.fp16 or opts.int8 else []
            for g in EXTRACTORS}
    for g, names in kept.items():
        if names:
            say(f"{g}: {len(names)} convolution(s) stay float32 in fp16 / int8 (a cancelling "
                f"folded BN and what feeds it): {', '.join(names)}")
    if opts.fp16:
        say("converting to fp16 (fp32 kept for normalisations and reductions)")
        for g in GRAPHS:
            convert_fp16(out / fp32[g], out / reg.VARIANTS["fp16"].files[g],
                         TRANSFER_FP16_OPS if g == "transfer" else None, kept.get(g, []))
        variants["fp16"] = reg.manifest_entries(out, "fp16")
        for g in EXTRACTORS:
            variants["fp16"][g].update(float32_nodes=kept[g])
    if opts.int8:
        from export.quantize import quantize_int8

        for g in EXTRACTORS:
            quantize_int8(out / fp32[g], out / reg.VARIANTS["int8"].files[g], calib[g],
                          activations=opts.int8_activations, float_nodes=kept[g])
        variants["int8"] = reg.manifest_entries(out, "int8")
        for g in EXTRACTORS:
            variants["int8"][g].update(calibration="train split",
                                       activations=opts.int8_activations,
                                       float32_nodes=kept[g])
    if opts.openvino:
        from export.openvino_variants import openvino_variants

        variants.update(openvino_variants(out, variants, say))
    return variants


def _calibration(opts: ExportOptions, prep: Preprocessor,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """Calibration images per extractor graph, from the TRAINING split of ``opts.calib``."""
    from export.images import calibration_images

    out = {}
    for g in EXTRACTORS:
        out[g] = calibration_images(opts.calib, g.removeprefix("extractor_"), prep,
                                    opts.calib_images)
        say(f"calibration images for {g}: {len(out[g])} from the training split")
    return out


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
    """Export everything ``opts`` asks for into ``out``; returns the manifest published.

    Any old ``manifest.json`` is removed first. With ``opts.verify`` the parity gate judges every
    variant against the PyTorch model and ``manifest.json`` appears only once it has finished
    (``export.gate.finalize``); a failed variant raises ParityError after its verdict is recorded
    (``load_bundle`` refuses it). Without, the bundle loads only with ``allow_ungated``.
    """
    from export.gate import failures, finalize, format_table, torch_reference

    out = check_writable_dir(out, "bundle folder")
    out.mkdir(parents=True, exist_ok=True)
    unpublish_manifest(out)  # files are rewritten in place: never loadable in between
    durable_unlink(out / STAGING_NAME)
    info = {**mf.model_section(model), "transfer_width": transfer_width(model.config.k)}
    variants = export_onnx_variants(model, out, info, opts, say)
    # each graph's role fingerprint, checked at every open (ssft_deploy.roles); in the model
    # section, so every verdict is bound to it
    fp32 = reg.VARIANTS["fp32"].files
    info["probe"] = fingerprints({g: out / fp32[g] for g in GRAPHS}, info)
    trt_version = build_engines(out, variants, opts, say) if opts.trt else None
    record = {"exporter": opts.exporter, "max_batch": opts.max_batch, "max_n": opts.max_n,
              "notes": opts.notes}
    manifest = mf.build_manifest(info, variants, trt_version, record)
    if not opts.verify:
        write_manifest(out, manifest)
        say("parity gate skipped (--no-verify): the bundle opens only with allow_ungated=True "
            f"(--allow-ungated) until `ssft-verify {out} --checkpoint MODEL.pth` passes it")
        return manifest
    from export.images import held_out_images

    say("parity gate: every variant against PyTorch fp32")
    prep = Preprocessor(tuple(info["input_size"]), tuple(info["mean"]), tuple(info["std"]))
    data = held_out_images(prep, opts.verify_data, opts.gate_images, opts.gate_images)
    final = finalize(out, manifest, torch_reference(model), data, say=say)
    records = final["gate"]["variants"]
    say(format_table(records))
    bad = failures(records)
    if bad:
        good = [v for v in records if v not in bad]
        raise ParityError(
            f"variant(s) {', '.join(bad)} failed the parity gate (table above); the verdicts are "
            f"recorded in {out / 'manifest.json'} and load_bundle refuses those variants"
            + (f" (usable: {', '.join(good)})" if good else " (no variant is usable)")
            + ". Export without the failing option, or re-check with ssft-verify.")
    return final
