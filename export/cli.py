"""``ssft-export MODEL.pth``: checkpoint -> model bundle (ONNX graphs, fp16 / int8, TensorRT
engines, manifest, parity gate) and optionally a Triton model repository."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from export.bundle_writer import ExportOptions, check_writable_dir, write_bundle
from export.errors import ExportError
from export.images import GATE_IMAGES
from export.onnx_graphs import DEFAULT_EXPORTER, EXPORTERS
from ssft_deploy.engines.trt_build import TRANSFER_MAX_ROWS
from ssft_deploy.errors import SSFTError


def _say(msg: str) -> None:
    click.echo(f"[ssft-export {time.strftime('%H:%M:%S')}] {msg}" if "\n" not in msg else msg)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_path", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Bundle folder [default: <model dir>/bundle].")
@click.option("--fp16", is_flag=True, help="Add the fp16 graphs (fp32 kept where it matters).")
@click.option("--int8", is_flag=True, help="Add int8 QDQ extractors (needs --calib).")
@click.option("--calib", type=click.Path(exists=True, file_okay=False), default=None,
              help="SYSU-style dataset root; int8 calibrates on its TRAINING split only.")
@click.option("--calib-images", type=click.IntRange(8, 100000), default=128, show_default=True,
              help="Calibration images per modality.")
@click.option("--int8-activations", type=click.Choice(["auto", "s8", "u8"]), default="auto",
              show_default=True,
              help="s8: symmetric (TensorRT-readable); u8: asymmetric, ~3x faster on ORT CPU "
                   "but not usable by TensorRT; auto: s8 with --trt, else u8.")
@click.option("--openvino", is_flag=True,
              help="Add OpenVINO variants, each gated: bf16 (the fp32 graphs at bf16, where this "
                   "CPU has AVX512_BF16 / AMX) and, with --int8, ov-int8 (the QDQ graphs).")
@click.option("--trt", is_flag=True, help="Build TensorRT engines (needs tensorrt and a GPU).")
@click.option("--workspace", type=click.IntRange(1 << 20), default=4 << 30, show_default=True,
              help="TensorRT workspace limit in bytes.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Largest extractor batch of the TensorRT profile / Triton config.")
@click.option("--max-n", type=click.IntRange(1, 1 << 20), default=TRANSFER_MAX_ROWS,
              show_default=True, help="Largest sample count N of the transfer engine's profile "
              "(default: SYSU-MM01 multi-shot all queries, 3803 + 3010).")
@click.option("--exporter", type=click.Choice(EXPORTERS), default=DEFAULT_EXPORTER,
              show_default=True, help="torch.onnx exporter.")
@click.option("--no-verify", is_flag=True,
              help="Skip the parity gate: the bundle then opens only with --allow-ungated / "
                   "allow_ungated=True until ssft-verify passes it.")
@click.option("--verify-data", type=click.Path(exists=True, file_okay=False), default=None,
              help="SYSU-style dataset whose test split feeds the parity gate "
                   "[default: a small synthetic set].")
@click.option("--gate-images", type=click.IntRange(8, 100000), default=GATE_IMAGES,
              show_default=True,
              help="Most IR queries (and RGB gallery entries) of the gate's held-out trial.")
@click.option("--triton-repo", type=click.Path(file_okay=False), default=None,
              help="Also write a Triton model repository here.")
@click.option("--triton-variant", default=None,
              help="Bundle variant served by Triton [default: trt-fp16 if built, else fp32].")
@click.option("--allow-ungated", is_flag=True,
              help="Write the Triton repository even for a variant without a pass verdict "
                   "(experts; logs a warning).")
def main(model_path: str, out: str | None, fp16: bool, int8: bool, calib: str | None,
         calib_images: int, int8_activations: str, trt: bool, workspace: int, max_batch: int,
         max_n: int, exporter: str, no_verify: bool, verify_data: str | None, gate_images: int,
         triton_repo: str | None, triton_variant: str | None, allow_ungated: bool,
         openvino: bool) -> None:
    """Export the cm-SSFT checkpoint MODEL_PATH to a bundle the ssft_deploy runtime loads."""
    try:
        if int8 and not calib:
            raise click.UsageError("--int8 needs --calib DATASET_ROOT (training split images)")
        if trt and int8_activations == "u8":
            raise ExportError("--trt with --int8-activations u8: TensorRT cannot read asymmetric "
                              "u8 activations; use --int8-activations s8 (or auto), or export "
                              "the u8 graphs for ONNX Runtime CPU without --trt")
        from train.model import load_model

        if int8_activations == "auto":  # the int8 graph serves the engine being built
            int8_activations = "s8" if trt else "u8"

        out_dir = Path(out) if out else Path(model_path).resolve().parent / "bundle"
        check_writable_dir(out_dir, "bundle folder")  # before the long work
        if triton_repo:
            check_writable_dir(triton_repo, "Triton repository folder")
        _say(f"loading {model_path}")
        model = load_model(model_path)
        opts = ExportOptions(fp16=fp16, int8=int8, calib=calib, calib_images=calib_images,
                             int8_activations=int8_activations,
                             trt=trt, workspace=workspace, max_batch=max_batch, max_n=max_n,
                             exporter=exporter, verify=not no_verify, verify_data=verify_data,
                             gate_images=gate_images,
                             openvino=openvino)
        manifest = write_bundle(model, out_dir, opts, _say)
        _say(f"bundle written: {out_dir} (variants: {', '.join(manifest['variants'])})")
        if triton_repo:
            from export.triton import write_repository

            variant = triton_variant or ("trt-fp16" if "trt-fp16" in manifest["variants"]
                                         else "fp32")
            write_repository(out_dir, triton_repo, variant, max_batch,
                             allow_ungated=allow_ungated)
            _say(f"Triton model repository written: {triton_repo} ({variant})")
    except SSFTError as exc:
        click.echo(f"ssft-export: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
