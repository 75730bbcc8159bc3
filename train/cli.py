"""``ssft-train``: train cm-SSFT from a config file (+ overrides) on a dataset folder."""

from __future__ import annotations

import sys

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
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(config_path: str | None, data_root: str, out_dir: str, overrides: tuple[str, ...],
         resume: bool, epochs: int | None, quiet: bool) -> None:
    """Train cm-SSFT; prints the path of the final checkpoint."""
    try:
        import torch  # noqa: F401  (fail early and clearly without the [train] extra)
    except ImportError:
        click.echo("error: ssft-train needs torch: pip install 'ssft-deploy[train]'", err=True)
        sys.exit(2)
    from train.config import load
    from train.data import load_train_records
    from train.trainer import Trainer

    try:
        extra = [f"epochs={epochs}"] if epochs is not None else []
        cfg = load(config_path, list(overrides) + extra)
        records = load_train_records(cfg, data_root)
        trainer = Trainer(cfg, records, out_dir, resume=resume, progress=not quiet)
        click.echo(f"training {cfg.arch} {cfg.height}x{cfg.width} on {len(records)} images, "
                   f"{trainer.cfg.num_classes} identities, {cfg.epochs} epochs "
                   f"x {len(trainer.sampler)} batches -> {out_dir}")
        path = trainer.run()
    except SSFTError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"checkpoint: {path}")


if __name__ == "__main__":
    main()
