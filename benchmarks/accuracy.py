"""Accuracy of the demo configuration over training seeds: the figures docs/results.md reports.

    python benchmarks/accuracy.py --seeds 3                       # docs/results/accuracy_demo.json
    python benchmarks/accuracy.py --seeds 3 --set affinity_grad=false \
        --out docs/results/accuracy_demo_no_affinity_grad.json

Generates the demo's synthetic SYSU-MM01 tree (``train.demo.DATA_ARGS``) once, trains the config
once per seed (``ssft-train ... --set seed=S``, up to ``--jobs`` at a time, ``--threads`` torch
threads each) and evaluates each model as ``make demo`` does (all-search, single-shot, 10 gallery
trials). Per seed it keeps the mean over gallery trials; the summary is mean and sample std
(ddof=1) OVER SEEDS of Rank-1 / mAP / mINP in the transfer, single-query and shared-only settings,
and of the per-seed gains transfer - shared-only and single-query - shared-only, with, per
metric, whether the transfer gain's mean is above 2 std. ``--other ROOT`` (repeatable) scores
every seed's model with the same protocol on the test split of another synthetic tree (another
generator seed: identities and cameras the model never saw generated); its figures sit beside the
main ones under ``other``. A finished seed (its model.pth / eval.json exist for the same config)
is reused, so an interrupted sweep resumes.

    python -m ssft_deploy.datasets.synthetic --root runs/accuracy/data/s1 --ids 200,20,64 \
        --per-cam 2,4 --test-per-cam 13,42 --seed 1
    python benchmarks/accuracy.py --seeds 3 --other runs/accuracy/data/s1
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import BenchError, header, write_json
from train.demo import DATA_ARGS, EVAL_ARGS

SETTINGS = ("transfer", "single-query", "shared-only")
METRICS = ("rank1", "mAP", "mINP")
GAINS = {"transfer_minus_shared": "transfer", "single_query_minus_shared": "single-query"}
PY = sys.executable


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1"}


def _run_pool(jobs: list[tuple[str, list[str], Path]], width: int, threads: int) -> None:
    """Run ``(name, argv, log)`` jobs, ``width`` at a time; stop on the first failure."""
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < width:
            name, argv, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            fh = open(log, "w")  # noqa: SIM115 - closed when the job ends
            click.echo(f"[{time.strftime('%H:%M:%S')}] start {name}: {' '.join(map(str, argv))}")
            proc = subprocess.Popen([str(a) for a in argv], stdout=fh, stderr=subprocess.STDOUT,
                                    env=_env(threads), cwd=ROOT)
            running.append((name, proc, fh, log, time.perf_counter()))
        time.sleep(2)
        for item in list(running):
            name, proc, fh, log, t0 = item
            if proc.poll() is None:
                continue
            fh.close()
            running.remove(item)
            if proc.returncode != 0:
                for _, p, f, _, _ in running:
                    p.kill()
                    f.close()
                raise BenchError(f"{name} failed (exit {proc.returncode}); log: {log}")
            click.echo(f"[{time.strftime('%H:%M:%S')}] done {name} "
                       f"({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.2f})")


def _commit() -> str | None:
    """The git commit of the code that ran (a copy without .git: $SSFT_SOURCE_COMMIT)."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SSFT_SOURCE_COMMIT")


def _config(path: Path, overrides: tuple[str, ...], seed: int) -> dict[str, Any]:
    from train.config import load

    return load(path, [*overrides, f"seed={seed}"]).to_dict()


def _same_config(run: Path, cfg: dict[str, Any]) -> bool:
    """Whether ``run`` was trained with ``cfg`` (num_classes is filled in by the trainer)."""
    path = run / "config.json"
    if not path.is_file():
        return False
    done = json.loads(path.read_text())
    return {k: v for k, v in done.items() if k != "num_classes"} == \
        {k: v for k, v in cfg.items() if k != "num_classes"}


def _others(roots: tuple[str, ...]) -> dict[str, Path]:
    """``--other`` roots by folder name (the name keys their figures)."""
    return {Path(r).name: Path(r).resolve() for r in roots}


def same_model(run: Path, ev: Path) -> bool:
    """Whether ``ev`` exists and is newer than the run's model (an evaluation to reuse)."""
    model = run / "model.pth"
    return ev.is_file() and model.is_file() and ev.stat().st_mtime >= model.stat().st_mtime


def seed_row(ev: dict[str, Any]) -> dict[str, Any]:
    """One seed's figures: per setting the mean over gallery trials, plus the gains."""
    row = {s: {m: ev["settings"][s][m]["mean"] for m in METRICS}
           for s in SETTINGS if s in ev["settings"]}
    shared = row.get("shared-only")
    if shared:
        row["gain"] = {g: {m: row[s][m] - shared[m] for m in METRICS}
                       for g, s in GAINS.items() if s in row}
    return row


def _stat(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    std = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
    return {"mean": float(a.mean()), "std": std, "min": float(a.min()), "max": float(a.max())}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean / sample std / min / max over seeds of every figure of ``seed_row``."""
    out: dict[str, Any] = {s: {m: _stat([r[s][m] for r in rows]) for m in METRICS}
                           for s in SETTINGS if all(s in r for r in rows)}
    if all("gain" in r for r in rows):
        out["gain"] = {g: {m: _stat([r["gain"][g][m] for r in rows]) for m in METRICS}
                       for g in GAINS if all(g in r["gain"] for r in rows)}
        g = out["gain"].get("transfer_minus_shared", {})
        if "rank1" in g:
            out["transfer_gain_rank1_clearly_positive"] = bool(
                g["rank1"]["mean"] > 2 * g["rank1"]["std"])
            out["transfer_gain_clearly_positive"] = {
                m: bool(g[m]["mean"] > 2 * g[m]["std"]) for m in METRICS if m in g}
    return out


def _rows(s: dict[str, Any], suffix: str = "") -> list[str]:
    names = {"transfer": "transfer (all queries, Sec. 4.5)", "single-query": "single-query (Eq. 22)",
             "shared-only": "shared only (no transfer)"}
    lines = [f"| {name}{suffix} | " + " | ".join(
        f"{s[key][m]['mean']:.2f} +- {s[key][m]['std']:.2f}" for m in METRICS) + " |"
        for key, name in names.items() if key in s]
    for key, name in (("transfer_minus_shared", "gain: transfer - shared only"),
                      ("single_query_minus_shared", "gain: single-query - shared only")):
        if key in s.get("gain", {}):
            g = s["gain"][key]
            lines.append(f"| {name}{suffix} | " + " | ".join(
                f"{g[m]['mean']:+.2f} +- {g[m]['std']:.2f}" for m in METRICS) + " |")
    return lines


def markdown_table(result: dict[str, Any]) -> str:
    """The accuracy table of docs/results.md from a results file (figures as ``mean +- std``;
    the ``--other`` trees' rows after the main ones, their name in brackets)."""
    lines = ["| setting | Rank-1 | mAP | mINP |", "| --- | --- | --- | --- |",
             *_rows(result["summary"])]
    for name, o in result.get("other", {}).items():
        lines += _rows(o["summary"], f" [{name}]")
    return "\n".join(lines)


@click.command()
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(1),
              help="seeds 0..N-1 (or --seed-list)")
@click.option("--seed-list", default=None, help="comma-separated seeds instead of 0..N-1")
@click.option("--config", "config_path", default=str(ROOT / "configs" / "demo.json"),
              show_default=True, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="config override for every seed (repeatable)")
@click.option("--work", default=str(ROOT / "runs" / "accuracy"), show_default=True,
              type=click.Path(file_okay=False), help="data and per-seed runs")
@click.option("--out", default=str(ROOT / "docs" / "results" / "accuracy_demo.json"),
              show_default=True, type=click.Path(dir_okay=False))
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(1),
              help="trainings at a time")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1),
              help="torch threads per training")
@click.option("--trials", default=10, show_default=True, type=click.IntRange(1, 10))
@click.option("--other", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="also score every seed on the test split of this tree (another generator "
                   "seed; repeatable)")
@click.option("--table", "table_only", is_flag=True, help="print OUT's markdown table and exit")
def main(seeds, seed_list, config_path, overrides, work, out, jobs, threads, trials, other,
         table_only) -> None:
    """Train the demo configuration once per seed and report accuracy mean +- std over seeds."""
    out = Path(out)
    if table_only:
        if not out.is_file():
            raise BenchError(f"{out} does not exist: run the sweep first")
        click.echo(markdown_table(json.loads(out.read_text())))
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the folder of --out {out}: {exc.strerror}") from None
    seed_values = ([int(x) for x in seed_list.split(",")] if seed_list else list(range(seeds)))
    from ssft_deploy.errors import SSFTError

    try:
        configs = {s: _config(Path(config_path), overrides, s) for s in seed_values}
    except SSFTError as exc:
        raise BenchError(str(exc)) from None
    work = Path(work)
    label = "-".join(o.replace("=", "_") for o in overrides) or "default"
    data = work / "data" / "sysu"
    started = header("accuracy")
    t0 = time.perf_counter()
    if not (data / "exp" / "test_id.txt").is_file():
        _run_pool([("data", [PY, "-m", "ssft_deploy.datasets.synthetic", "--root", data,
                             *DATA_ARGS], work / "data.log")], 1, threads)
    runs = {s: work / label / f"seed{s}" for s in seed_values}
    train_jobs, eval_jobs = [], []
    for s, run in runs.items():
        same = _same_config(run, configs[s])
        if same and (run / "eval.json").is_file():
            click.echo(f"seed {s}: reusing {run / 'eval.json'}")
            continue
        if same and (run / "model.pth").is_file():
            click.echo(f"seed {s}: reusing {run / 'model.pth'}")
        else:
            argv = [PY, "-m", "train.cli", "--config", config_path, "--data", data, "--out", run,
                    "--quiet", "--set", f"seed={s}"]
            for o in overrides:
                argv += ["--set", o]
            train_jobs.append((f"train seed {s}", argv, run / "train.log"))
        eval_jobs.append((f"evaluate seed {s}",
                          [PY, "-m", "train.evaluate", run / "model.pth", "--data", data,
                           *EVAL_ARGS, "--trials", str(trials), "--out", run / "eval.json"],
                          run / "eval.log"))
    _run_pool(train_jobs, jobs, threads)
    for s, run in runs.items():
        for name, root in _others(other).items():
            dest = run / f"eval_{name}.json"
            if same_model(run, dest):
                continue
            eval_jobs.append((f"evaluate seed {s} on {name}",
                              [PY, "-m", "train.evaluate", run / "model.pth", "--data", root,
                               *EVAL_ARGS, "--trials", str(trials), "--out", dest],
                              run / f"eval_{name}.log"))
    _run_pool(eval_jobs, jobs, threads)
    rows = []
    for s, run in runs.items():
        ev = json.loads((run / "eval.json").read_text())
        log = json.loads((run / "log.json").read_text())
        row = {"seed": s, "train_seconds": round(sum(e["seconds"] for e in log["epochs"]), 1),
               "queries": ev["queries"], "gallery": ev["gallery"], **seed_row(ev)}
        if other:
            row["other"] = {name: seed_row(json.loads((run / f"eval_{name}.json").read_text()))
                            for name in _others(other)}
        rows.append(row)
    result = {
        **started,
        "command": " ".join(["python", "benchmarks/accuracy.py", *sys.argv[1:]]),
        "commit": _commit(),
        "config_file": os.path.relpath(config_path, ROOT),
        "overrides": list(overrides),
        "config": {k: v for k, v in configs[seed_values[0]].items() if k != "seed"},
        "data_args": DATA_ARGS,
        "protocol": {"dataset": "sysu", "mode": "all", "shots": 1, "gallery_trials": trials},
        "threads_per_training": threads, "parallel_trainings": jobs,
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "std": "sample std over seeds (ddof=1) of each seed's mean over gallery trials",
        "seeds": rows,
        "summary": summarise(rows),
    }
    if other:
        result["other"] = {name: {"data": os.path.relpath(root, ROOT),
                                  "summary": summarise([r["other"][name] for r in rows])}
                           for name, root in _others(other).items()}
    write_json(out, result)
    click.echo(markdown_table(result))
    click.echo(f"results: {out}")


if __name__ == "__main__":
    main()
