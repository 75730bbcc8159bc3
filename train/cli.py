"""``ssft-train``: train cm-SSFT from a config file (+ overrides) on a dataset folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ssft_deploy.errors import SSFTError


@click.command()
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="JSON config (configs/*.json); defaults when omitted.")
@click.option("--data", "data_root", required=True, type=click.Path(),
              help="Dataset root (SYSU-MM01 or RegDB layout, as the config's 'dataset' says).")
@click.option("--out", "out_dir", required=True, type=click.Path(),
              help="Output folder: model.pth, model.safetensors, checkpoint.pth, log.json.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value (JSON value), repeatable.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pth.")
@click.option("--epochs", type=int, default=None, help="Shortcut for --set epochs=N.")
@click.option("--regdb-trials", default=None, metavar="A-B|A,B,...",
              help="RegDB: train one model per trial (e.g. 1-10) into OUT/trial_NN/; each is "
                   "evaluated on its own trial (ssft-eval OUT --dataset regdb).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(config_path: str | None, data_root: str, out_dir: str, overrides: tuple[str, ...],
         resume: bool, epochs: int | None, regdb_trials: str | None, quiet: bool) -> None:
    """Train cm-SSFT; prints the path of the final checkpoint (one per RegDB trial with
    --regdb-trials)."""
    try:
        import torch  # noqa: F401  (fail early and clearly without the [train] extra)
    except ImportError:
        click.echo("error: ssft-train needs torch: pip install 'ssft-deploy[train]'", err=True)
        sys.exit(2)
    from train.config import load
    from train.data import load_train_records
    from train.outputs import check_output_dir
    from train.trainer import Trainer

    try:
        check_output_dir(out_dir, "--out")   # before any work
        extra = [f"epochs={epochs}"] if epochs is not None else []
        cfg = load(config_path, list(overrides) + extra)
        runs = [(cfg, Path(out_dir))]
        if regdb_trials is not None:
            runs = [(cfg.replace(dataset="regdb", regdb_trial=t), Path(out_dir) / f"trial_{t:02d}")
                    for t in parse_trials(regdb_trials)]
        paths = []
        for run_cfg, out in runs:
            records = load_train_records(run_cfg, data_root)
            trainer = Trainer(run_cfg, records, out, resume=resume, progress=not quiet)
            trial = f" (RegDB trial {run_cfg.regdb_trial})" if run_cfg.dataset == "regdb" else ""
            click.echo(f"training {run_cfg.arch} {run_cfg.height}x{run_cfg.width} on "
                       f"{len(records)} images{trial}, {trainer.cfg.num_classes} identities, "
                       f"{run_cfg.epochs} epochs x {len(trainer.sampler)} batches -> {out}")
            paths.append(trainer.run())
            click.echo(f"checkpoint: {paths[-1]}")
    except SSFTError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def parse_trials(text: str) -> list[int]:
    """``"1-10"`` / ``"1,3,5"`` / ``"2"`` -> sorted distinct RegDB trials (1..10)."""
    out: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise SSFTError(f"--regdb-trials {text!r}: use a range like 1-10 or a list like 1,3,5"
                        ) from None
    if not out or min(out) < 1 or max(out) > 10:
        raise SSFTError(f"--regdb-trials {text!r}: RegDB trials are 1..10")
    return sorted(out)


if __name__ == "__main__":
    main()
