"""Extractor throughput per backend and precision, one process per variant, plus the transfer step.

    python benchmarks/latency.py [--bundle runs/demo/bundle] [--checkpoint runs/demo/model.pth]
                                 [--arch resnet50 --size 288x144] [--quick] [--out runs/bench]

Two models: the bundle's own (its graphs; torch eager from its checkpoint) and, with ``--arch``,
that architecture at ``--size`` with seeded random weights, exported here by the repo's export
code (``benchmarks/arch_model.py``): the paper's extractor is ResNet-50 at 288x144, the demo's a
ResNet-18 at 64x32, and engines rank differently at the two sizes. Without a bundle (a clean
clone) the bundle part is skipped, and with neither the demo architecture is timed.

Every variant (torch, ONNX Runtime, OpenVINO, TensorRT; the numpy GEMM probe) is served by its own
process, rounds are interleaved with a settle pause, and each slice records the load average and
the CPU other processes used; rounds under load are flagged and, where clean rounds exist, figures
come from those (``benchmarks/workers.py``). Writes ``latency.json`` and ``latency.png``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python benchmarks/latency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.backends import CPU_BACKENDS, ENGINE_VARIANTS, TORCH, gemm_m
from benchmarks.common import (
    SYSU_GALLERY,
    SYSU_QUERY,
    BenchError,
    header,
    int_list,
    write_json,
)
from benchmarks.latency_report import (
    autoselect_check,
    parity_rows,
    plot,
    print_report,
    summarize_slices,
    targets,
    targets_judged,
)
from benchmarks.workers import interleaved_rounds, start_workers

REF_BATCH = 32
DEMO_ARCH = ("resnet18", (64, 32))
# (rounds, warm-up calls, seconds per variant per round, untimed calls per slice) by --quick;
# the production-size model takes seconds per call, so it gets one warm-up and no slice warm-up
SCHEDULE = {False: (3, 2, 2.0, 1), True: (2, 1, 0.25, 0)}
ARCH_SCHEDULE = {False: (3, 1, 2.0, 0), True: (2, 1, 0.25, 0)}


@dataclass
class Source:
    """One model to time: its bundle, torch checkpoint (or None) and batch sizes."""

    label: str
    kind: str  # "bundle" | "arch"
    bundle: Path
    checkpoint: Path | None
    batch_sizes: list[int]


def parse_size(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW like 288x144, got {value!r}") from None
    if h < 32 or w < 32:
        raise click.BadParameter(f"input size {value} is too small (at least 32x32)")
    return h, w


def variant_specs(src: Source, info, modality: str, only: set[str] | None
                  ) -> tuple[dict[str, dict], list[dict]]:
    """Worker specs of every variant of ``src`` (CPU backends only for a random-weights model),
    and the variants left out without starting a process (backend missing, no such variant)."""
    from ssft_deploy.engines import BACKENDS

    base = {"input_size": list(info.input_size), "mean": list(info.mean), "std": list(info.std)}
    specs: dict[str, dict] = {}
    skipped: list[dict] = []

    def wanted(backend: str, precision: str) -> bool:
        return only is None or backend in only or f"{backend}/{precision}" in only

    if wanted(*TORCH) and src.checkpoint is not None:
        specs["torch/fp32"] = {**base, "kind": "torch", "checkpoint": str(src.checkpoint),
                               "modality": modality}
    for backend, precision in ENGINE_VARIANTS:
        if not wanted(backend, precision) or (src.kind == "arch" and backend not in CPU_BACKENDS):
            continue
        if src.kind == "arch" and precision == "fp16":
            continue  # no CPU here runs fp16 natively; it only costs minutes at this size
        cls, graph = BACKENDS[backend], f"extractor_{modality}"
        reason = cls.unavailable_reason()
        if reason is None and not info.has(graph, cls.variant(precision)):
            reason = f"the bundle has no {cls.variant(precision)!r} {graph}"
        if reason is not None:
            skipped.append({"name": f"{backend}/{precision}", "reason": reason})
            continue
        specs[f"{backend}/{precision}"] = {**base, "kind": "engine", "bundle": str(src.bundle),
                                           "graph": f"extractor_{modality}", "backend": backend,
                                           "precision": precision,
                                           "allow_ungated": src.kind == "arch"}
    return specs, skipped


def time_source(src: Source, modality: str, only, schedule, threads: int | None) -> dict:
    """All variants of one model: rows per (variant, batch), round records, parity, skipped."""
    from benchmarks.flops import extractor_flops, representative_gemm
    from ssft_deploy.bundle import load_bundle

    info = load_bundle(src.bundle, allow_ungated=src.kind == "arch")  # random weights: no gate
    graph = info.file(f"extractor_{modality}", "fp32")
    flops_per_image, gemms = extractor_flops(graph, info.input_size, batch=1)
    m, n, k = representative_gemm(gemms)
    specs, skipped = variant_specs(src, info, modality, only)
    specs["gemm"] = {"input_size": list(info.input_size), "mean": list(info.mean),
                     "std": list(info.std), "kind": "gemm", "m_per_image": m, "n": n, "k": k}
    if src.checkpoint is None:
        skipped.insert(0, {"name": "torch/fp32", "reason": "no checkpoint (--checkpoint; "
                           "`make demo` writes runs/demo/model.pth)"})
    click.echo(f"[{src.label}] starting {len(specs)} worker processes")
    workers, failed = start_workers(specs, threads)
    skipped += failed
    if len(workers) <= 1:
        raise BenchError(f"[{src.label}] no extractor variant can run here: {skipped}")
    rounds, warmup, budget, slice_warmup = schedule
    rows, records, gemm_rows = [], [], []
    try:
        click.echo(f"[{src.label}] timing {', '.join(workers)} at batch sizes "
                   f"{src.batch_sizes} ({rounds} interleaved rounds)")
        bar = tqdm(total=len(src.batch_sizes) * rounds * len(workers), desc=src.label,
                   leave=False)
        for batch in src.batch_sizes:
            slices, recs = interleaved_rounds(workers, batch, rounds, warmup, budget,
                                              slice_warmup, progress=lambda _: bar.update())
            records += recs
            for name, sl in slices.items():
                if name == "gemm":
                    mm = gemm_m(m, batch)
                    g = summarize_slices(sl, 1, 2.0 * mm * n * k)
                    gemm_rows.append({"batch": batch, "m": mm, "n": n, "k": k, **g})
                    continue
                backend, precision = name.split("/")
                rows.append({"model": src.label, "name": name, "backend": backend,
                             "precision": precision, "actual_precision": workers[name].actual,
                             "batch": batch,
                             **summarize_slices(sl, batch, flops_per_image * batch)})
        bar.close()
        parity = parity_rows(workers, reference="torch/fp32" if "torch/fp32" in workers
                             else "ort-cpu/fp32")
    finally:
        for w in workers.values():
            w.close()
    return {"label": src.label, "kind": src.kind, "bundle": str(src.bundle),
            "input_size": list(info.input_size), "arch": info.model.arch,
            "gflop_per_image": flops_per_image / 1e9, "gemm_probe_shape_per_image":
            dict(zip("mnk", (m, n, k))), "results": rows, "gemm": gemm_rows, "rounds": records,
            "parity": parity, "skipped": skipped}


def sources(ctx, bundle: str, checkpoint: str, arch: str | None, size, seed: int, out: Path,
            batch_sizes: list[int] | None, quick: bool) -> tuple[list[Source], list[str]]:
    """The models to time and notes on what was left out."""
    from benchmarks import arch_model

    notes, out_sources = [], []
    default_batches = [1, 8, 32] if quick else [1, 8, 32, 64]
    if (Path(bundle) / "manifest.json").is_file():
        ckpt = Path(checkpoint) if Path(checkpoint).is_file() else None
        out_sources.append(Source("bundle", "bundle", Path(bundle), ckpt,
                                  batch_sizes or default_batches))
    elif ctx.get_parameter_source("bundle").name != "DEFAULT":
        raise BenchError(f"no model bundle at {bundle} (no manifest.json). Make the demo one "
                         "with `make demo` (writes runs/demo/bundle), or export a checkpoint: "
                         "`ssft-export model.pth --out <bundle>`.")
    else:
        notes.append(f"no bundle at {bundle} (`make demo` writes one): its model is not timed")
        if arch is None:
            arch, size = DEMO_ARCH
            notes.append(f"timing the demo architecture {arch} {size[0]}x{size[1]} with random "
                         "weights instead")
    if arch is not None:
        size = size or ((288, 144) if arch == "resnet50" else DEMO_ARCH[1])
        root = arch_model.prepare(out, arch, size, seed, say=click.echo)
        label = f"{arch}-{size[0]}x{size[1]}"
        out_sources.append(Source(label, "arch", root, root / "model.pth",
                                  batch_sizes or [REF_BATCH]))
    return out_sources, notes


@click.command()
@click.option("--bundle", default="runs/demo/bundle", show_default=True, type=click.Path())
@click.option("--checkpoint", default="runs/demo/model.pth", show_default=True, type=click.Path(),
              help="Checkpoint of the bundle's model for the torch eager baseline.")
@click.option("--arch", type=click.Choice(["resnet50", "resnet18"]), default=None,
              help="Also time this architecture with seeded random weights (exported here).")
@click.option("--size", default=None, callback=parse_size,
              help="Input size HxW of --arch [default: 288x144 for resnet50, else 64x32].")
@click.option("--seed", default=0, show_default=True, help="Seed of the random --arch weights.")
@click.option("--batch-sizes", default=None, callback=lambda c, p, v: v and int_list(c, p, v),
              help="Comma-separated batch sizes [default: 1,8,32,64; --quick: 1,8,32].")
@click.option("--modality", default="rgb", type=click.Choice(["rgb", "ir"]), show_default=True)
@click.option("--backends", default=None,
              help="Only these, e.g. 'torch,ort-cpu/int8,openvino' [default: all available].")
@click.option("--threads", type=click.IntRange(1, 512), default=None,
              help="Threads per engine [default: OMP_NUM_THREADS or the usable cores].")
@click.option("--no-transfer", is_flag=True, help="Skip the SYSU-size transfer step.")
@click.option("--no-autoselect", is_flag=True, help="Skip the precision='auto' check.")
@click.option("--quick", is_flag=True, help="Fewer, shorter rounds.")
@click.option("--out", "out_dir", default="runs/bench", show_default=True, type=click.Path())
@click.pass_context
def main(ctx, bundle, checkpoint, arch, size, seed, batch_sizes, modality, backends, threads,
         no_transfer, no_autoselect, quick, out_dir) -> None:
    """Throughput of every extractor variant (own processes), the transfer step, the targets."""
    from ssft_deploy.engines.autoselect import cpu_info
    from ssft_deploy.errors import SSFTError

    out = Path(out_dir)
    schedule = SCHEDULE[quick]
    only = {b.strip() for b in backends.split(",")} if backends else None
    threads = threads or cpu_info()["usable_cores"]
    try:
        srcs, notes = sources(ctx, bundle, checkpoint, arch, size, seed, out, batch_sizes, quick)
        models = [time_source(s, modality, only,
                              schedule if s.kind == "bundle" else ARCH_SCHEDULE[quick], threads)
                  for s in srcs]
        transfer, auto = None, None
        bundle_src = next((s for s in srcs if s.kind == "bundle"), None)
        if bundle_src is not None and not no_autoselect:
            auto = autoselect_check(bundle_src.bundle, models[0])
        if not no_transfer:
            from benchmarks.transfer_cost import measure_transfer
            from ssft_deploy.bundle import load_bundle

            info = load_bundle(srcs[0].bundle, allow_ungated=srcs[0].kind == "arch")
            click.echo(f"timing the transfer step at N = {SYSU_QUERY} + {SYSU_GALLERY}")
            transfer = measure_transfer(info if bundle_src else None, info.dims, info.k,
                                        info.transfer_parts, n_rgb=SYSU_GALLERY,
                                        n_ir=SYSU_QUERY, rounds=schedule[0], warmup=1,
                                        budget_s=schedule[2])
    except SSFTError as exc:
        raise BenchError(str(exc)) from None
    tgt = targets(models, transfer, auto, REF_BATCH)
    print_report(models, transfer, auto, tgt, notes)
    bundle_model = next((m for m in models if m["kind"] == "bundle"), models[0])
    ref = REF_BATCH if any(r["batch"] == REF_BATCH for r in bundle_model["results"]) else max(
        r["batch"] for r in bundle_model["results"])
    result = {
        **header("latency"),
        "config": {"bundle": str(bundle), "checkpoint": str(checkpoint), "arch": arch,
                   "size": list(size) if size else None, "seed": seed, "modality": modality,
                   "quick": quick, "threads_per_engine": threads, "rounds": schedule[0],
                   "warmup": schedule[1], "seconds_per_variant_per_round": schedule[2],
                   "slice_warmup": schedule[3], "reference_batch": ref,
                   "process_per_variant": True},
        "notes": notes, "models": models, "transfer": transfer, "autoselect": auto,
        "targets": tgt,
        "targets_judged": targets_judged(models),
        "summary": {"reference_batch": ref,
                    "throughput": {r["name"]: round(r["throughput"], 2)
                                   for r in bundle_model["results"] if r["batch"] == ref},
                    "targets_met": {k: v["met"] for k, v in tgt.items()}},
    }
    write_json(out / "latency.json", result)
    plot(out / "latency.png", models)
    click.echo(f"\nwrote {out / 'latency.json'} and {out / 'latency.png'}")


if __name__ == "__main__":
    main()
