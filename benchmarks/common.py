"""Shared benchmark helpers: interleaved timing, percentiles, a GEMM probe, machine facts, output.

Timing rules used by every benchmark here: warm-up calls are never recorded, and the cases being
compared run in interleaved rounds (A B C, B C A, C A B, ...) so that load from other processes or
clock changes hit every case alike instead of whichever happened to run last.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import numpy as np

from ssft_deploy.fileio import durable_write

SCHEMA = "ssft-bench/1"
# SYSU-MM01 single-shot test set: 3803 IR queries + 301 RGB gallery images (paper Sec. 4.1).
SYSU_QUERY, SYSU_GALLERY = 3803, 301


class BenchError(click.ClickException):
    """A problem the user can fix; printed without a traceback, exit code 2 like the CLIs."""

    exit_code = 2


@dataclass
class Case:
    """One thing to time: ``fn()`` is one call handling ``items`` images (or rows).

    ``flops`` is the floating-point work of one call; when set, the summary reports GFLOP/s.
    """

    name: str
    fn: Callable[[], Any]
    items: int = 1
    flops: float | None = None


def run_interleaved(cases: list[Case], rounds: int = 3, warmup: int = 2, budget_s: float = 1.0,
                    min_calls: int = 1, max_calls: int = 10_000, settle_s: float = 0.05,
                    slice_warmup: int = 0,
                    on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Time every case in ``rounds`` interleaved rounds; returns seconds per call, warm-up excluded.

    In each round a case is called until ``budget_s`` has passed (at least ``min_calls`` times, at
    most ``max_calls``); the starting case rotates from round to round. Before each case's slice
    the process sleeps ``settle_s`` (thread pools of the previous case stop spinning, so they do
    not steal cores from this one) and makes ``slice_warmup`` untimed calls.
    """
    for case in cases:
        for _ in range(warmup):
            case.fn()
    samples: dict[str, list[float]] = {c.name: [] for c in cases}
    for r in range(rounds):
        shift = r % max(len(cases), 1)
        for case in cases[shift:] + cases[:shift]:
            time.sleep(settle_s)
            for _ in range(slice_warmup):
                case.fn()
            deadline = time.perf_counter() + budget_s
            calls = 0
            while calls < min_calls or (calls < max_calls and time.perf_counter() < deadline):
                t0 = time.perf_counter()
                case.fn()
                samples[case.name].append(time.perf_counter() - t0)
                calls += 1
        if on_round is not None:
            on_round(r)
    return samples


def summarize(seconds: list[float], items: int = 1, flops: float | None = None) -> dict[str, Any]:
    """Latency percentiles (ms), throughput (items/s) and, given ``flops`` per call, GFLOP/s."""
    s = np.asarray(seconds, dtype=np.float64)
    if s.size == 0:
        return {"calls": 0}
    total = float(s.sum())
    out: dict[str, Any] = {
        "calls": int(s.size),
        "mean_ms": 1e3 * total / s.size,
        "p50_ms": 1e3 * float(np.percentile(s, 50)),
        "p95_ms": 1e3 * float(np.percentile(s, 95)),
        "p99_ms": 1e3 * float(np.percentile(s, 99)),
        "throughput": items * s.size / total,
    }
    if flops is not None:
        out["gflops"] = flops * s.size / total / 1e9
    return out


def gemm_case(m: int, n: int, k: int, name: str = "gemm", seed: int = 0) -> Case:
    """A float32 ``[m,k] @ [k,n]`` (numpy's BLAS sgemm) as a timing case, 2mnk FLOPs per call."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    return Case(name, lambda: np.matmul(a, b, out=out), items=1, flops=2.0 * m * n * k)


def _physical_cores() -> int | None:
    try:
        cores = set()
        phys = "0"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":", 1)[1].strip()
            elif line.startswith("core id"):
                cores.add((phys, line.split(":", 1)[1].strip()))
        return len(cores) or None
    except OSError:
        return None


def gpu_names() -> list[str]:
    """GPU names from ``nvidia-smi`` (empty where there is none)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, GPU, thread settings, versions."""
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    from ssft_deploy.engines.autoselect import cpu_info

    cpu = cpu_info()
    return {
        "cpu": cpu["model"],
        "isa": cpu["isa"],
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": cpu["usable_cores"],
        "memory_gib": mem_gib,
        "gpus": gpu_names(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                        "MKL_NUM_THREADS")},
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("numpy", "onnxruntime", "onnxruntime-gpu", "openvino",
                                              "torch", "faiss-cpu", "tensorrt", "ssft-deploy")},
    }


def header(kind: str) -> dict[str, Any]:
    """The common top of every results file."""
    return {"schema": SCHEMA, "benchmark": kind,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info()}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file + rename), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return durable_write(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def plot_series(path: Path, series: dict[str, tuple[list[float], list[float]]], xlabel: str,
                ylabel: str, title: str, loglog: bool = False,
                logx: bool = False) -> Path | None:
    """One line per series (name -> (xs, ys)) into a PNG; returns None when matplotlib is missing.
    ``logx``: base-2 log x axis (batch sizes); ``loglog``: both axes log."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        click.echo("matplotlib is not installed: no plot written (pip install matplotlib)")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (xs, ys) in series.items():
        if xs:
            ax.plot(xs, ys, marker="o", label=name)
    from matplotlib.ticker import FuncFormatter

    if logx and not loglog:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if loglog:
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width text table (floats to 3 significant places)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != 0 and abs(v) < 1e-3:
                return f"{v:.2e}"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def int_list(ctx: click.Context | None, param: click.Parameter | None, value: str) -> list[int]:
    """click callback: ``"1,8,32"`` -> ``[1, 8, 32]`` (positive ints)."""
    try:
        out = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return out


def require_bundle(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest, or a click error that says how to make a bundle."""
    manifest = Path(bundle) / "manifest.json"
    if not manifest.is_file():
        raise BenchError(
            f"no model bundle at {bundle} (no manifest.json). Make the demo one with `make demo` "
            "(writes runs/demo/bundle), or export a checkpoint: "
            "`ssft-export --checkpoint model.pth --out <bundle>`.")
    try:
        return json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"unreadable manifest {manifest}: {e}") from None


def check_target(name: str, value: float | None, target: float, higher_is_better: bool = True,
                 unit: str = "x") -> dict[str, Any]:
    """A target line for the JSON and the printout: value, target, met, and the shortfall."""
    if value is None or not np.isfinite(value):
        return {"target": name, "value": None, "goal": target, "met": None,
                "note": "not measured"}
    met = value >= target if higher_is_better else value <= target
    if met:
        note = "met"
    elif higher_is_better:
        note = f"missed: {value:.2f} is {value / target:.0%} of the goal {target}"
    else:
        note = f"missed: {value:.2f} is {value / target:.1f}x the limit {target}"
    return {"target": name, "value": round(float(value), 4), "goal": target, "unit": unit,
            "met": bool(met), "note": note}
