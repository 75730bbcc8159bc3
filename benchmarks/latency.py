"""Extractor latency / throughput per backend and precision, achieved GFLOP/s, transfer step cost.

    python benchmarks/latency.py [--bundle runs/demo/bundle] [--checkpoint runs/demo/model.pth]
                                 [--batch-sizes 1,8,32,64] [--quick] [--out runs/bench]

Backends at one batch size run in interleaved rounds together with a numpy sgemm of the shape of
the extractor's heaviest convolution (im2col view), so "achieved GFLOP/s vs GEMM" compares numbers
taken under the same machine load. Writes ``latency.json`` and ``latency.png`` under ``--out``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python benchmarks/latency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.backends import extractor_runners, random_images
from benchmarks.common import (
    SYSU_GALLERY,
    SYSU_QUERY,
    BenchError,
    Case,
    check_target,
    format_table,
    gemm_case,
    header,
    int_list,
    plot_series,
    require_bundle,
    run_interleaved,
    summarize,
    write_json,
)
from benchmarks.flops import extractor_flops, representative_gemm
from benchmarks.transfer_cost import measure_transfer

REF_BATCH = 32
# (rounds, warm-up calls, seconds per case per round, untimed calls per slice): full / --quick
SCHEDULE = {False: (5, 3, 2.0, 1), True: (2, 1, 0.25, 0)}


def _ref_batch(batch_sizes: list[int]) -> int:
    """Batch 32 when measured, else the largest measured (the JSON says which)."""
    return REF_BATCH if REF_BATCH in batch_sizes else max(batch_sizes)


def bench_extractors(runners, batch_sizes, bundle_info, flops_per_image, gemm_mnk_per_image,
                     schedule) -> tuple[list[dict], list[dict]]:
    """Interleaved rounds per batch size; returns (per-runner rows, GEMM probe rows)."""
    rounds, warmup, budget, slice_warmup = schedule
    rows, gemm_rows = [], []
    for batch in tqdm(batch_sizes, desc="batch sizes", leave=False):
        images = random_images(batch, bundle_info.input_size, bundle_info.mean, bundle_info.std)
        cases = [Case(r.name, (lambda r=r, x=images: r.fn(x)), items=batch,
                      flops=flops_per_image * batch) for r in runners]
        m, n, k = gemm_mnk_per_image
        gemm = gemm_case(min(m * batch, 8192), n, k)
        samples = run_interleaved(cases + [gemm], rounds=rounds, warmup=warmup, budget_s=budget,
                                  slice_warmup=slice_warmup)
        for r, c in zip(runners, cases):
            rows.append({"name": r.name, "backend": r.backend, "precision": r.precision,
                         "batch": batch, **summarize(samples[c.name], c.items, c.flops)})
        g = summarize(samples[gemm.name], 1, gemm.flops)
        gemm_rows.append({"batch": batch, "m": min(m * batch, 8192), "n": n, "k": k,
                          "gflops": g["gflops"], "p50_ms": g["p50_ms"]})
    return rows, gemm_rows


def targets(rows, gemm_rows, transfer, ref_batch) -> dict[str, dict]:
    """The issue's target ratios, each with value, goal, met and the shortfall."""
    at = {r["name"]: r for r in rows if r["batch"] == ref_batch}
    thr = {name: r["throughput"] for name, r in at.items()}
    gemm = next((g["gflops"] for g in gemm_rows if g["batch"] == ref_batch), None)
    fp32 = thr.get("ort-cpu/fp32")

    def ratio(a, b):
        return a / b if a is not None and b else None

    fp32_gflops = at.get("ort-cpu/fp32", {}).get("gflops")
    return {
        "ort_fp32_vs_torch": check_target(f"ORT CPU fp32 / torch eager throughput (batch "
                                          f"{ref_batch})", ratio(fp32, thr.get("torch/fp32")), 1.5),
        "ort_fp32_gemm_fraction": check_target(f"ORT CPU fp32 GFLOP/s / GEMM GFLOP/s (batch "
                                               f"{ref_batch})", ratio(fp32_gflops, gemm), 0.70),
        "int8_vs_ort_fp32": check_target(f"ORT CPU int8 / fp32 throughput (batch {ref_batch})",
                                         ratio(thr.get("ort-cpu/int8"), fp32), 2.0),
        "transfer_vs_gemms": check_target("transfer step (dense, SYSU size) / its GEMMs",
                                          (transfer or {}).get("ratio_dense_to_gemms"), 1.3,
                                          higher_is_better=False),
    }


def print_report(rows, gemm_rows, transfer, tgt, skipped, flops_per_image) -> None:
    click.echo(f"\nextractor: {flops_per_image / 1e9:.3f} GFLOP per image (Conv/Gemm/MatMul)")
    table = [[r["name"], r["batch"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["throughput"],
              r.get("gflops")] for r in rows]
    click.echo(format_table(["backend", "batch", "p50 ms", "p95 ms", "p99 ms", "img/s",
                             "GFLOP/s"], table))
    click.echo("GEMM probe (numpy sgemm, same rounds): " + ", ".join(
        f"b{g['batch']}: {g['gflops']:.1f} GFLOP/s" for g in gemm_rows))
    for s in skipped:
        click.echo(f"skipped {s['name']}: {s['reason']}")
    if transfer:
        steps = ", ".join(f"{m} {t * 1e3:.1f} ms" for m, t in transfer["steps"].items())
        click.echo(f"\ntransfer step at N={transfer['n']} ({transfer['n_ir']} IR + "
                   f"{transfer['n_rgb']} RGB): {steps}; its GEMMs alone "
                   f"{transfer['gemms_s'] * 1e3:.1f} ms ({transfer['gemms_gflops']:.1f} GFLOP/s)")
        for s in transfer["skipped"]:
            click.echo(f"skipped {s['name']}: {s['reason']}")
    click.echo("\ntargets:")
    for t in tgt.values():
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        sign = "<=" if t["target"].startswith("transfer") else ">="
        click.echo(f"  {t['target']}: {value} (goal {sign} {t['goal']}) {t['note']}")


@click.command()
@click.option("--bundle", default="runs/demo/bundle", show_default=True, type=click.Path())
@click.option("--checkpoint", default="runs/demo/model.pth", show_default=True, type=click.Path(),
              help="Checkpoint for the torch eager baseline (skipped when missing).")
@click.option("--batch-sizes", default=None, callback=lambda c, p, v: v and int_list(c, p, v),
              help="Comma-separated batch sizes [default: 1,8,32,64; --quick: 1,8,32].")
@click.option("--modality", default="rgb", type=click.Choice(["rgb", "ir"]), show_default=True,
              help="Which extractor graph to time.")
@click.option("--backends", default=None,
              help="Only these, e.g. 'torch,ort-cpu/fp32,ort-cpu/int8' [default: all available].")
@click.option("--no-transfer", is_flag=True, help="Skip the SYSU-size transfer step.")
@click.option("--quick", is_flag=True, help="Fewer, shorter rounds: about a minute.")
@click.option("--out", "out_dir", default="runs/bench", show_default=True, type=click.Path())
def main(bundle: str, checkpoint: str, batch_sizes: list[int] | None, modality: str,
         backends: str | None, no_transfer: bool, quick: bool, out_dir: str) -> None:
    """Latency (p50/p95/p99) and throughput of every extractor variant, plus the transfer step."""
    from ssft_deploy.bundle import load_bundle
    from ssft_deploy.errors import SSFTError

    require_bundle(Path(bundle))
    batch_sizes = batch_sizes or ([1, 8, 32] if quick else [1, 8, 32, 64])
    schedule = SCHEDULE[quick]
    try:
        info = load_bundle(bundle, verify=True)
        only = {b.strip() for b in backends.split(",")} if backends else None
        runners, skipped = extractor_runners(info, Path(checkpoint), modality, only)
        if not runners:
            raise BenchError("no extractor variant can run here")
        graph = info.file(f"extractor_{modality}", "fp32")
        flops_per_image, gemms = extractor_flops(graph, info.input_size, batch=1)
        gemm_mnk = representative_gemm(gemms)
        click.echo(f"timing {', '.join(r.name for r in runners)} at batch sizes {batch_sizes} "
                   f"({schedule[0]} interleaved rounds, {schedule[1]} warm-up calls)")
        rows, gemm_rows = bench_extractors(runners, batch_sizes, info, flops_per_image, gemm_mnk,
                                           schedule)
        transfer = None
        if not no_transfer:
            click.echo(f"timing the transfer step at N = {SYSU_QUERY} + {SYSU_GALLERY}")
            transfer = measure_transfer(info, info.dims, info.k, info.transfer_parts,
                                        n_rgb=SYSU_GALLERY, n_ir=SYSU_QUERY,
                                        rounds=schedule[0], warmup=1, budget_s=schedule[2])
    except SSFTError as exc:
        raise BenchError(str(exc)) from None

    ref = _ref_batch(batch_sizes)
    tgt = targets(rows, gemm_rows, transfer, ref)
    print_report(rows, gemm_rows, transfer, tgt, skipped, flops_per_image)

    out = Path(out_dir)
    summary = {r["name"]: round(r["throughput"], 2) for r in rows if r["batch"] == ref}
    result = {
        **header("latency"),
        "config": {"bundle": str(bundle), "checkpoint": str(checkpoint), "modality": modality,
                   "input_size": list(info.input_size), "batch_sizes": batch_sizes,
                   "quick": quick, "rounds": schedule[0], "warmup": schedule[1],
                   "seconds_per_case_per_round": schedule[2], "slice_warmup": schedule[3],
                   "reference_batch": ref},
        "extractor_gflop_per_image": flops_per_image / 1e9,
        "gemm_probe_shape_per_image": dict(zip("mnk", gemm_mnk)),
        "results": rows, "gemm": gemm_rows, "transfer": transfer, "skipped": skipped,
        "targets": tgt,
        "summary": {"reference_batch": ref, "throughput": summary,
                    "targets_met": {k: v["met"] for k, v in tgt.items()}},
    }
    write_json(out / "latency.json", result)
    series = {}
    for r in rows:
        xs, ys = series.setdefault(r["name"], ([], []))
        xs.append(r["batch"])
        ys.append(r["throughput"])
    plot_series(out / "latency.png", series, "batch size", "throughput (images/s)",
                f"Extractor throughput ({info.input_size[0]}x{info.input_size[1]}, {modality})",
                logx=True)
    click.echo(f"\nwrote {out / 'latency.json'} and {out / 'latency.png'}")


if __name__ == "__main__":
    main()
