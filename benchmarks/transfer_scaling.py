"""Time and peak memory of the transfer step (top-k affinity + transfer) as N grows.

    python benchmarks/transfer_scaling.py [--max-n 100000] [--methods dense,knn,cuda]
                                          [--bundle runs/demo/bundle] [--quick] [--out runs/bench]

Every point (N, method) runs in its own subprocess, so its peak RSS (``getrusage`` max RSS) is its
own and not the high-water mark of an earlier, larger point. Features are random unit vectors of
the bundle's dims (2048-d without a bundle). The transfer is the bundle's transfer graph on ONNX
Runtime CPU when ``--bundle`` is given, else its numpy equivalent: Eq. 10 propagation, ``@ W``,
ReLU (the same GEMM shape).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

if __package__ in (None, ""):  # run as `python benchmarks/transfer_scaling.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    format_table,
    header,
    int_list,
    plot_series,
    require_bundle,
    write_json,
)
from benchmarks.transfer_cost import transfer_fn, unit_features

MARK = "@@SSFT-POINT "
DEFAULT_NS = (1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)
QUICK_NS = (500, 1000, 2000, 4000)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def run_point(n: int, method: str, dims: dict[str, int], k: int, parts: tuple[str, ...],
              repeats: int, rgb_fraction: float, bundle: str | None) -> dict:
    """Measure one (N, method) in this process; returns seconds and MiB."""
    from ssft_deploy.affinity import topk_affinity
    from ssft_deploy.transfer import pad

    transfer = transfer_fn(bundle, dims)
    # A tiny warm-up call pays lazy imports and kernel compilation outside the timed region.
    s, p, m = unit_features(64, dims, 32, seed=1)
    i, w = topk_affinity(s, p, m, k=k, method=method)
    transfer(pad(s, p, m, parts=parts), i, w)

    n_rgb = min(n - 1, max(1, round(n * rgb_fraction)))
    shared, specific, modality = unit_features(n, dims, n_rgb)
    base = _rss_mib()
    t_aff, t_tr = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        idx, w = topk_affinity(shared, specific, modality, k=k, method=method)
        t1 = time.perf_counter()
        transfer(pad(shared, specific, modality, parts=parts), idx, w)
        t2 = time.perf_counter()
        t_aff.append(t1 - t0)
        t_tr.append(t2 - t1)
    aff, tr = float(np.median(t_aff)), float(np.median(t_tr))
    peak = _rss_mib()
    return {"n": n, "method": method, "status": "ok", "affinity_s": aff, "transfer_s": tr,
            "total_s": aff + tr, "repeats": repeats, "peak_rss_mib": round(peak, 1),
            "inputs_rss_mib": round(base, 1), "step_extra_mib": round(peak - base, 1)}


def _spawn(args: list[str], timeout: float) -> dict:
    """Run one point in a fresh interpreter and parse its result line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"over {timeout:.0f} s"}
    for line in res.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "failed", "reason": tail[:300]}


def _bundle_dims(bundle: str | None, dim: int, k: int) -> tuple[dict[str, int], int, list[str]]:
    if not bundle:
        return {"shared": dim, "specific": dim, "transfer": dim}, k, ["shared", "specific"]
    model = require_bundle(Path(bundle))["model"]
    dims = {"shared": int(model["shared_dim"]), "specific": int(model["specific_dim"]),
            "transfer": int(model["transfer_dim"])}
    return dims, int(model.get("k", k)), list(model.get("transfer_parts", ["shared", "specific"]))


@click.command()
@click.option("--max-n", default=100_000, show_default=True, help="Largest N measured.")
@click.option("--ns", default=None, help="Explicit comma-separated N values (overrides the series).")
@click.option("--methods", default="dense,knn,cuda", show_default=True,
              help="Affinity methods; one that cannot run here is skipped with its reason.")
@click.option("--dense-max-n", default=20_000, show_default=True,
              help="Largest N for the dense method (it is O(N^2 D)).")
@click.option("--bundle", default=None, type=click.Path(),
              help="Take dims, k and the transfer graph from this bundle.")
@click.option("--dim", default=2048, show_default=True, help="Feature dims without a bundle.")
@click.option("--k", default=4, show_default=True)
@click.option("--rgb-fraction", default=0.5, show_default=True, help="Share of RGB samples.")
@click.option("--repeats", default=2, show_default=True, help="Timed repeats per point (median).")
@click.option("--timeout", "point_timeout", default=900.0, show_default=True,
              help="Seconds per point; a method that times out is not tried at larger N.")
@click.option("--quick", is_flag=True, help=f"N in {QUICK_NS}, one repeat: about a minute.")
@click.option("--out", "out_dir", default="runs/bench", show_default=True, type=click.Path())
@click.option("--point", hidden=True, default=None, help="Internal: measure N:method and exit.")
def main(max_n: int, ns: str | None, methods: str, dense_max_n: int, bundle: str | None, dim: int,
         k: int, rgb_fraction: float, repeats: int, point_timeout: float, quick: bool, out_dir: str,
         point: str | None) -> None:
    """Cost of affinity + transfer versus N for each affinity method; JSON + log-log PNG."""
    dims, k, parts = _bundle_dims(bundle, dim, k)
    if quick:
        repeats = 1
    if point is not None:
        from ssft_deploy.errors import SSFTError

        n, method = point.split(":", 1)
        try:
            res = run_point(int(n), method, dims, k, tuple(parts), repeats, rgb_fraction, bundle)
        except (ImportError, SSFTError) as exc:  # the method cannot run here: say why
            res = {"n": int(n), "method": method, "status": "unavailable", "reason": str(exc)}
        click.echo(MARK + json.dumps(res))
        return

    series = int_list(None, None, ns) if ns else [n for n in DEFAULT_NS if n <= max_n]
    if quick:
        series = [n for n in QUICK_NS if n <= max_n]
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    click.echo(f"dims {dims}, k={k}, N in {series}, methods {method_list}")
    stopped: dict[str, str] = {}
    points: list[dict] = []
    common = ["--k", str(k), "--dim", str(dim), "--repeats", str(repeats),
              "--rgb-fraction", str(rgb_fraction)] + (["--bundle", bundle] if bundle else [])
    for n in series:
        for method in method_list:  # methods interleaved at each N
            if method in stopped:
                points.append({"n": n, "method": method, "status": "skipped",
                               "reason": stopped[method]})
                continue
            if method == "dense" and n > dense_max_n:
                points.append({"n": n, "method": method, "status": "skipped",
                               "reason": f"N > --dense-max-n {dense_max_n}"})
                continue
            res = _spawn(["--point", f"{n}:{method}", *common], point_timeout)
            res.setdefault("n", n)
            res.setdefault("method", method)
            points.append(res)
            if res["status"] == "ok":
                click.echo(f"  N={n:>7} {method:<6} affinity {res['affinity_s']:.3f} s  transfer "
                           f"{res['transfer_s']:.3f} s  peak {res['peak_rss_mib']:.0f} MiB")
            else:
                stopped[method] = f"{res['status']} at N={n}: {res.get('reason', '')}"
                click.echo(f"  N={n:>7} {method:<6} {stopped[method]} (not tried at larger N)")

    ok = [p for p in points if p["status"] == "ok"]
    rows = [[p["n"], p["method"], p["affinity_s"], p["transfer_s"], p["total_s"],
             p["peak_rss_mib"], p["step_extra_mib"]] for p in ok]
    click.echo("\n" + format_table(["N", "method", "affinity s", "transfer s", "total s",
                                    "peak MiB", "step MiB"], rows))
    for method, reason in stopped.items():
        click.echo(f"{method}: {reason}")

    out = Path(out_dir)
    result = {**header("transfer_scaling"),
              "config": {"dims": dims, "k": k, "transfer_parts": parts, "ns": series,
                         "methods": method_list, "repeats": repeats, "rgb_fraction": rgb_fraction,
                         "transfer": "bundle graph (ORT CPU fp32)" if bundle else "numpy",
                         "bundle": bundle, "quick": quick},
              "points": points}
    write_json(out / "transfer_scaling.json", result)

    def by_method(key: str) -> dict:
        return {m: ([p["n"] for p in ok if p["method"] == m],
                    [p[key] for p in ok if p["method"] == m]) for m in method_list}

    plot_series(out / "transfer_scaling.png", by_method("total_s"), "N (samples)",
                "affinity + transfer time (s)", "Transfer step time vs N", loglog=True)
    plot_series(out / "transfer_scaling_memory.png", by_method("peak_rss_mib"), "N (samples)",
                "peak RSS (MiB)", "Transfer step peak memory vs N", loglog=True)
    click.echo(f"wrote {out / 'transfer_scaling.json'}, {out / 'transfer_scaling.png'}, "
               f"{out / 'transfer_scaling_memory.png'}")


if __name__ == "__main__":
    main()
