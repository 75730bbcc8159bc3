"""Figures of ``benchmarks/latency.py``: per-variant statistics from clean rounds, parity against
the reference, the precision="auto" check, the issue's target ratios, the printout and the plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from benchmarks.common import check_target, format_table, summarize
from benchmarks.workers import ROOT

PARITY_BATCH = 4
AUTO_BATCH = 8


def summarize_slices(slices: list[dict], items: int, flops: float | None) -> dict[str, Any]:
    """Statistics from the slices not taken under load (all slices when every one was), with the
    load record: rounds, rounds under load, other processes' mean CPU use, load averages."""
    clean = [s for s in slices if not s["under_load"]]
    use = clean or slices
    stats = summarize([t for s in use for t in s["samples"]], items, flops)
    others = [s["others_cores"] for s in slices if s["others_cores"] is not None]
    return {**stats, "from_rounds": "clean" if clean else "all (every round under load)",
            "rounds": len(slices), "rounds_under_load": len(slices) - len(clean),
            "others_cores_mean": round(float(np.mean(others)), 3) if others else None,
            "load_before": [s["load_before"] for s in slices],
            "load_after": [s["load_after"] for s in slices],
            "throughput_all_rounds": summarize([t for s in slices for t in s["samples"]],
                                               items)["throughput"]}


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)
    return float(cos.min())


def parity_rows(workers: dict, reference: str) -> dict[str, dict]:
    """Min cosine of every variant's outputs against ``reference`` on the same random batch."""
    outs = {n: w.outputs(PARITY_BATCH) for n, w in workers.items() if n != "gemm"}
    ref = outs.get(reference)
    if not ref:
        return {}
    rows = {}
    for name, out in outs.items():
        if out:
            cos = min(_min_cos(np.asarray(out[k]), np.asarray(ref[k])) for k in ref)
            rows[name] = {"min_cos": cos, "reference": reference, "batch": PARITY_BATCH}
    return rows


def autoselect_check(bundle: Path, model: dict) -> dict[str, Any]:
    """Run ``precision="auto"`` (fresh measurement, own process) and compare its pick with the
    fastest of the same candidates in this benchmark's rows."""
    from ssft_deploy.bundle import load_bundle
    from ssft_deploy.engines.autoselect import candidates

    res = subprocess.run([sys.executable, "-m", "benchmarks.backends", "--autoselect",
                          str(bundle)], cwd=ROOT, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines() or ["(no output)"]
        return {"error": lines[-1][-600:]}
    pick = json.loads(res.stdout.strip().splitlines()[-1])
    pairs, skipped = candidates(load_bundle(bundle, allow_ungated=True))
    names = {f"{b}/{p}" for b, p in pairs}
    batches = sorted({r["batch"] for r in model["results"]}, key=lambda b: abs(b - AUTO_BATCH))
    at = {r["name"]: r["throughput"] for r in model["results"]
          if r["batch"] == batches[0] and r["name"] in names}
    fastest = max(at, key=at.get) if at else None
    picked = f"{pick['backend']}/{pick['precision']}"
    return {"picked": picked, "picked_by": pick, "candidates": sorted(names),
            "not_candidates": skipped, "benchmark_batch": batches[0],
            "benchmark_throughput": at, "benchmark_fastest": fastest,
            "same": picked == fastest,
            "ratio": at.get(picked, 0.0) / at[fastest] if fastest else None}


def _at(model: dict | None, batch: int) -> dict[str, float]:
    if model is None:
        return {}
    batches = {r["batch"] for r in model["results"]}
    b = batch if batch in batches else max(batches)
    return {r["name"]: r["throughput"] for r in model["results"] if r["batch"] == b}


# The accuracy bound on the best variant: Rank-1 and mAP within this many points of fp32
# on the gate's held-out trial.
ACCURACY_POINTS = 1.0


def _gated(model: dict, bundle_model: dict | None, name: str) -> tuple[bool, str, bool]:
    """Whether a CPU variant counts as gated (its variant passed the parity gate of the timed
    bundle: a trained model; the verdict is about the variant, the same kind of graph at another
    size), why, and whether the gate's |dRank-1| and |dmAP| are within ``ACCURACY_POINTS``.
    Without a bundle nothing counts as gated. The cosine to torch here is only reported: on
    random weights it says nothing about a trained model's accuracy."""
    from ssft_deploy.bundle import load_bundle
    from ssft_deploy.engines import BACKENDS
    from ssft_deploy.engines.autoselect import gate_verdict

    backend, precision = name.split("/")
    cos = model["parity"].get(name, {}).get("min_cos")
    if bundle_model is None:
        return False, f"no bundle timed: no gate verdict (cosine to torch here {cos})", False
    variant = BACKENDS[backend].variant(precision)
    bundle = load_bundle(bundle_model["bundle"], allow_ungated=True)
    verdict = gate_verdict(bundle, variant)
    figs = (bundle.gate_record(variant) or {}).get("figures", {})
    d = [figs.get("d_rank1"), figs.get("d_mAP")]
    close = all(x is not None and abs(x) <= ACCURACY_POINTS for x in d)
    queries = ((bundle.gate_record(variant) or {}).get("data") or {}).get("queries")
    why = (f"bundle gate verdict of {variant!r}: {verdict!r}; gate dRank-1 / dmAP "
           f"{_pts(d[0])} / {_pts(d[1])} on {queries} queries; cosine to torch here {cos}")
    if model.get("kind") == "arch":   # the timed graph itself was never gated
        why = (f"UNGATED: this {model.get('arch')} graph has random weights and no gate of its "
               f"own; quoted instead: {why}")
    return verdict == "pass", why, close


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def targets(models: list[dict], transfer: dict | None, auto: dict | None, ref_batch: int
            ) -> dict[str, dict]:
    """The issue's ratios, measured side by side in this run."""
    from ssft_deploy.engines.autoselect import cpu_info

    isa = cpu_info()["isa"]
    amx = isa.get("amx_tile", False)
    bundle_m = next((m for m in models if m["kind"] == "bundle"), None)
    prod = next((m for m in models if m["kind"] == "arch"), bundle_m)
    b, p = _at(bundle_m, ref_batch), _at(prod, ref_batch)
    gemm = next((g["gflops"] for g in (bundle_m or {}).get("gemm", []) if g["batch"] == ref_batch),
                None)
    fp32_gf = next((r.get("gflops") for r in (bundle_m or {}).get("results", [])
                    if r["name"] == "ort-cpu/fp32" and r["batch"] == ref_batch), None)

    def ratio(x, y):
        return x / y if x is not None and y else None

    gated = {n: _gated(prod, bundle_m, n) for n in p
             if n.split("/")[0] in ("ort-cpu", "openvino")} if prod else {}
    ok = [n for n, (g, _, close) in gated.items() if g and close]
    best = max(ok, key=p.get) if ok else None
    label = prod["label"] if prod else "-"
    out = {
        "best_gated_cpu_vs_torch": check_target(
            f"{label}: best gated CPU variant within {ACCURACY_POINTS:g} point of fp32 ({best}) / "
            f"torch eager fp32, batch {ref_batch}",
            ratio(p.get(best), p.get("torch/fp32")), 10.0 if amx else 4.0),
        "openvino_int8_vs_ort_int8": check_target(
            f"{label}: OpenVINO int8 / ONNX Runtime int8, batch {ref_batch}"
            + ("" if amx else " (no AMX here: the 1.3x goal is for AMX CPUs; reported)"),
            ratio(p.get("openvino/int8"), p.get("ort-cpu/int8")), 1.3),
        "ort_fp32_vs_torch": check_target(f"bundle: ORT CPU fp32 / torch eager (batch "
                                          f"{ref_batch})", ratio(b.get("ort-cpu/fp32"),
                                                                 b.get("torch/fp32")), 1.5),
        "ort_fp32_gemm_fraction": check_target(f"bundle: ORT CPU fp32 GFLOP/s / GEMM GFLOP/s "
                                               f"(batch {ref_batch})", ratio(fp32_gf, gemm), 0.70),
        "int8_vs_ort_fp32": check_target(f"bundle: ORT CPU int8 / fp32 (batch {ref_batch})",
                                         ratio(b.get("ort-cpu/int8"), b.get("ort-cpu/fp32")), 2.0),
        "auto_picks_fastest": check_target(
            "bundle: precision='auto' pick / fastest gated candidate in this run (1.0 = same)",
            (auto or {}).get("ratio"), 1.0),
        "transfer_vs_gemms": check_target("transfer step (dense, SYSU size) / its GEMMs",
                                          (transfer or {}).get("ratio_dense_to_gemms"), 1.3,
                                          higher_is_better=False),
    }
    out["best_gated_cpu_vs_torch"]["gated"] = {n: why for n, (_, why, _) in gated.items()}
    if not amx and out["openvino_int8_vs_ort_int8"]["met"] is False:
        out["openvino_int8_vs_ort_int8"]["note"] += " (goal applies to AMX CPUs only)"
    return out


def print_report(models, transfer, auto, tgt, notes) -> None:
    """The tables, the transfer step and the targets; without the paper-size model in the run
    (a `--bundle` run, as in `make demo`) the ratios are shown but not judged: the goals belong to
    the paper-size benchmark, not to a small demo model."""
    for note in notes:
        click.echo(f"note: {note}")
    for m in models:
        ungated = (" (random weights, UNGATED: speed only; gate verdicts quoted are the "
                   "demo bundle's)" if m.get("kind") == "arch" else "")
        click.echo(f"\n[{m['label']}] {m['arch']} {m['input_size'][0]}x{m['input_size'][1]}, "
                   f"{m['gflop_per_image']:.3f} GFLOP per image{ungated}")
        rows = [[r["name"], r["actual_precision"], r["batch"], r["p50_ms"], r["throughput"],
                 r.get("gflops"), f"{r['rounds_under_load']}/{r['rounds']}",
                 r["others_cores_mean"], m["parity"].get(r["name"], {}).get("min_cos")]
                for r in m["results"]]
        click.echo(format_table(["variant", "runs as", "batch", "p50 ms", "img/s", "GFLOP/s",
                                 "loaded", "others", "cos"], rows))
        click.echo("GEMM probe: " + ", ".join(f"b{g['batch']}: {g['gflops']:.1f} GFLOP/s"
                                              for g in m["gemm"]))
        for s in m["skipped"]:
            click.echo(f"skipped {s['name']}: {s['reason'][:300]}")
    if transfer:
        steps = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in transfer["steps"].items())
        click.echo(f"\ntransfer step at N={transfer['n']}: {steps}; its GEMMs "
                   f"{transfer['gemms_s'] * 1e3:.1f} ms (the products it performs: "
                   f"{transfer['gemms_performed_s'] * 1e3:.1f} ms)")
    if auto:
        click.echo(f"\nprecision='auto' picked {auto.get('picked')}; fastest in this run: "
                   f"{auto.get('benchmark_fastest')} {auto.get('error', '')}")
    judged = targets_judged(models)
    click.echo("\ntargets:" if judged else
               "\nratios of this bundle (reported, not judged: the goals are for the paper-size "
               "benchmark, `python benchmarks/latency.py` without --bundle):")
    for t in tgt.values():
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        sign = "<=" if t["target"].startswith("transfer") else ">="
        verdict = t["note"] if judged or t["value"] is None else "reported"
        click.echo(f"  {t['target']}: {value} (goal {sign} {t['goal']}) {verdict}")


def targets_judged(models: list[dict]) -> bool:
    """Whether this run measured the paper-size model the targets are written for."""
    return any(m.get("kind") == "arch" for m in models)


def plot(path: Path, models: list[dict]) -> Path | None:
    """Throughput against batch size, one panel per model, one line per variant."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        click.echo("matplotlib is not installed: no plot written (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, m in zip(axes[0], models):
        for name in dict.fromkeys(r["name"] for r in m["results"]):
            pts = sorted((r["batch"], r["throughput"]) for r in m["results"] if r["name"] == name)
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s")
        ax.set_title(f"{m['label']} ({m['input_size'][0]}x{m['input_size'][1]})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
