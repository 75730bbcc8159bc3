"""Learning curves: train a config and score it on the SYSU protocol every N epochs.

Rank-1 / mAP / mINP of the transfer and shared-only settings against training steps, on the
training data's test split and optionally on test sets of other generator seeds (data the model
never saw generated), plus the identity loss. JSON (rewritten after every evaluation, so a run
stopped early keeps its points) and a plot.

    python benchmarks/learning_curve.py --config configs/demo.json --data runs/demo/data/sysu \
        --eval-every 5 --epochs 100 --other runs/data/s1 --out docs/results/learning_curve_demo.json
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import click

METRICS = ("rank1", "mAP", "mINP")
SETTINGS = ("transfer", "shared-only")


def _score(model_path: Path, root: str, trials: int) -> dict:
    import torch

    from ssft_deploy.evaluation import evaluate_sysu
    from train.evaluate import TorchFeatureSource

    with torch.no_grad():
        res = evaluate_sysu(TorchFeatureSource(model_path, batch_size=128, progress=False), root,
                            mode="all", shots=1, trials=trials, settings=SETTINGS, progress=False)
    return {s: {m: round(res["settings"][s][m]["mean"], 2) for m in METRICS} for s in SETTINGS}


def plot(result: dict, path: str | os.PathLike) -> None:
    """One panel per metric: transfer and shared-only (and other-seed transfer) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    steps = [p["step"] for p in pts]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, m in zip(axes, METRICS):
        for s in SETTINGS:
            ax.plot(steps, [p["eval"][s][m] for p in pts], marker="o", ms=3, label=s)
        for name in result.get("other", []):
            ax.plot(steps, [p["other"][name]["transfer"][m] for p in pts], ls="--", marker="x",
                    ms=3, label=f"transfer, {name}")
        ax.set(title=m, xlabel="training step", ylabel="%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(result["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def combine(paths: list[str], out: str | os.PathLike) -> dict:
    """Several curve JSONs -> one ``{"runs": {name: curve}}`` JSON and a plot: per metric,
    transfer (solid) and shared-only (dashed) of every run against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {Path(p).stem: json.loads(Path(p).read_text()) for p in paths}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for i, (name, res) in enumerate(runs.items()):
        steps = [p["step"] for p in res["points"]]
        for ax, m in zip(axes, METRICS):
            for s, ls in zip(SETTINGS, ("-", "--")):
                ax.plot(steps, [p["eval"][s][m] for p in res["points"]], ls=ls, marker="o", ms=3,
                        color=f"C{i}", label=f"{name}: {s}")
    for ax, m in zip(axes, METRICS):
        ax.set(title=f"{m} (SYSU all-search single-shot, 10 trials)", xlabel="training step",
               ylabel="%")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out).with_suffix(".png"), dpi=100)
    plt.close(fig)
    Path(out).write_text(json.dumps({"runs": runs}, indent=1))
    return runs


@click.command()
@click.option("--config", required=True, type=click.Path(exists=True))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="curve JSON (plot beside it)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--epochs", type=int, default=None, help="train this many epochs")
@click.option("--eval-every", default=5, show_default=True, type=click.IntRange(1),
              help="epochs between evaluations")
@click.option("--trials", default=10, show_default=True, type=click.IntRange(1, 10))
@click.option("--other", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="test set of another generator seed (repeatable)")
def main(config, data, out, overrides, epochs, eval_every, trials, other) -> None:
    """Train CONFIG on DATA, scoring every --eval-every epochs."""
    import torch

    from train.config import load
    from train.data import load_train_records
    from train.model import save_checkpoint
    from train.trainer import Trainer, deterministic

    cfg = load(config, list(overrides) + ([f"epochs={epochs}"] if epochs else []))
    trainer = Trainer(cfg, load_train_records(cfg, data), tempfile.mkdtemp(prefix="curve-"),
                      progress=False)
    cfg = trainer.cfg
    result = {"config": cfg.to_dict(), "config_file": config, "overrides": list(overrides),
              "data": data, "other": {Path(o).name: o for o in other}, "trials": trials,
              "protocol": "SYSU all-search single-shot", "cpu": platform.processor() or
              platform.machine(), "torch_threads": torch.get_num_threads(), "points": [],
              "title": f"{config} {' '.join(overrides)}"}
    result["other"] = list(result["other"])
    from torch.utils.data import DataLoader

    from train.sampler import SeededBatches

    loader = DataLoader(trainer.dataset, batch_sampler=SeededBatches(trainer.sampler),
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    steps, train_s = 0, 0.0
    model_path = Path(trainer.out) / "model.pth"
    with deterministic(cfg.deterministic):
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            means = trainer._epoch(epoch, loader)
            train_s += time.perf_counter() - t0
            steps += len(trainer.sampler)
            if (epoch + 1) % eval_every and epoch + 1 != cfg.epochs:
                continue
            save_checkpoint(trainer.model.eval(), model_path)
            point = {"epoch": epoch + 1, "step": steps, "train_seconds": round(train_s, 1),
                     "load_avg": os.getloadavg()[0],
                     "id_transfer": round(means.get("id_transfer", float("nan")), 3),
                     "id_shared": round(means.get("id_shared", float("nan")), 3),
                     "eval": _score(model_path, data, trials),
                     "other": {Path(o).name: _score(model_path, o, trials) for o in other}}
            result["points"].append(point)
            click.echo(json.dumps(point))
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(result, indent=1))
            plot(result, Path(out).with_suffix(".png"))


if __name__ == "__main__":
    main()
