"""`make demo`: the main job end to end on synthetic data.

generate data -> train -> evaluate (SYSU protocol) -> export (fp32/fp16/int8) -> runtime parity
-> throughput -> video example -> summary. Each step is the user's own command, run as a
subprocess so the demo exercises exactly what a user types; a step whose output already exists is
skipped unless ``--force``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import click

PY = sys.executable
# The demo's synthetic SYSU-MM01 tree (benchmarks/accuracy.py trains on the same one, so its band
# applies to the demo): 300 train + 20 val + 64 test ids, 2-4 images per id per camera, each
# training id seen by its own draw of the six cameras (so the model learns people, not one
# seed's cameras), and a test split whose RGB cells hold 13-42 images as on the real split.
DATA_ARGS = ["--ids", "300,20,64", "--per-cam", "2,4", "--test-per-cam", "13,42",
             "--vary-train-cameras"]
# single-query (Eq. 22) transfers each query on its own: ~100 s of the demo's 10-minute budget per
# evaluation on 2 cores, so the demo scores transfer and shared-only (`ssft-eval` does all three).
EVAL_ARGS = ["--dataset", "sysu", "--mode", "all", "--shots", "1",
             "--settings", "transfer,shared-only"]


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run(title: str, args: list[str], log: Path) -> tuple[float, float, int]:
    """Run one step and tee its output to ``log``; returns its wall and CPU seconds (CPU
    seconds / cores estimates the wall time on an idle machine) and its exit status."""
    click.secho(f"\n== {title}", bold=True)
    click.echo("$ " + " ".join(str(a) for a in args))
    t0, cpu0 = time.perf_counter(), _children_cpu()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if "\r" not in line:  # keep progress-bar redraws out of the console
                sys.stdout.write(line)
        proc.wait()
    dt, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    click.echo(f"   ({dt:.1f} s, {cpu:.1f} CPU s, load average {os.getloadavg()[0]:.2f})")
    return dt, cpu, proc.returncode


def _gate_failed_only(bundle: Path, log: Path) -> bool:
    """Whether an export wrote its bundle and failed only because variants missed the gate
    (fp32 passed)."""
    man = _load(bundle / "manifest.json")
    fp32 = man.get("gate", {}).get("variants", {}).get("fp32", {})
    return fp32.get("verdict") == "pass" and log.exists() and \
        "failed the parity gate" in log.read_text()


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


@click.command()
@click.option("--out", "out_dir", default="runs/demo", show_default=True, type=click.Path())
@click.option("--config", default="configs/demo.json", show_default=True)
@click.option("--force", is_flag=True, help="Redo steps whose outputs exist.")
@click.option("--trials", default=10, show_default=True, help="SYSU protocol trials.")
def main(out_dir: str, config: str, force: bool, trials: int) -> None:
    """Run the whole cm-SSFT pipeline on synthetic data under OUT."""
    out = Path(out_dir)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data, model, bundle = out / "data" / "sysu", out / "model.pth", out / "bundle"
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def step(name: str, done: Path, args: list[str]) -> None:
        if done.exists() and not force:
            click.echo(f"\n== {name}: {done} exists, skipped (--force redoes it)")
            return
        times[name], cpu[name], rc = _run(name, args, logs / f"{name}.log")
        if rc != 0:   # timed all the same: the export of a gate failure counts in the budget
            raise click.ClickException(f"step '{name}' failed (exit {rc}); log: "
                                       f"{logs / f'{name}.log'}")

    step("data", data / "exp" / "test_id.txt",
         [PY, "-m", "ssft_deploy.datasets.synthetic", "--root", data, *DATA_ARGS])
    step("train", model,
         [PY, "-m", "train.cli", "--config", config, "--data", data, "--out", out, "--quiet"])
    click.secho(f"checkpoint: {model.resolve()}", fg="green")
    step("evaluate", out / "eval.json",
         [PY, "-m", "train.evaluate", model, "--data", data, *EVAL_ARGS,
          "--trials", str(trials), "--out", out / "eval.json",
          "--plot", out / "cmc.png", "--reconstructions", "4",
          "--reconstructions-path", out / "reconstructions.png"])
    try:
        step("export", bundle / "manifest.json",
             [PY, "-m", "export.cli", model, "--out", bundle, "--fp16", "--int8", "--openvino",
              "--calib", data, "--verify-data", data, "--triton-repo", out / "triton_repo"])
    except click.ClickException:
        # A variant that missed the parity gate is recorded as failed in the manifest and
        # refused by the runtime; the demo goes on with the variants that passed (the summary
        # lists every verdict). Any other export failure stops the demo.
        if not _gate_failed_only(bundle, logs / "export.log"):
            raise
        click.secho("   some variants failed the parity gate (table above): the demo goes on "
                    "with those that passed", fg="yellow")
    step("runtime-eval", out / "eval_runtime.json",
         [PY, "-m", "train.evaluate", bundle, "--data", data, *EVAL_ARGS,
          "--trials", str(trials), "--out", out / "eval_runtime.json"])
    step("benchmark", out / "bench" / "latency.json",
         [PY, "benchmarks/latency.py", "--bundle", bundle, "--checkpoint", model, "--quick",
          "--out", out / "bench"])
    step("video", out / "video" / "matches.json",
         [PY, "examples/video_reid.py", "--bundle", bundle, "--out", out / "video"])

    from train.demo_summary import summarize

    summary = summarize(out, config, times, cpu)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    click.secho(f"\nresults: {(out / 'results.json').resolve()}", fg="green")


if __name__ == "__main__":
    main()
