"""``ssft-eval``: a checkpoint (or an exported bundle) + a dataset root -> the paper's tables.

SYSU-MM01 (all / indoor search, single / multi-shot) or RegDB (both directions), Rank-1/10/20,
mAP, mINP as mean and std over trials, in the transductive, single-query (Eq. 22) and shared-only
settings; optional Fig. 4 auxiliary-set sweep; JSON results and a CMC plot.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np
import torch

from ssft_deploy.datasets import regdb, sysu
from ssft_deploy.datasets.records import ImageRecord
from ssft_deploy.errors import SSFTError
from ssft_deploy.evaluation import (
    SETTINGS,
    evaluate_regdb,
    evaluate_sysu,
    extract_records,
    format_table,
)
from ssft_deploy.features import Features
from ssft_deploy.preprocess import Preprocessor
from train.model import load_model
from train.outputs import check_output_file
from train.regdb_models import is_bundle, regdb_models, trained_on


class TorchFeatureSource:
    """``FeatureSource`` over a ``train.model`` checkpoint: batched ``model.extract`` per modality
    and ``model.transfer`` (CPU, no grad)."""

    def __init__(self, checkpoint: str | Path, batch_size: int = 64, progress: bool = True) -> None:
        self.model = load_model(checkpoint)
        cfg = self.model.config
        self.preprocessor = Preprocessor((cfg.height, cfg.width))
        self.k, self.parts = int(cfg.k), tuple(self.model.transfer_parts or ("shared", "specific"))
        self.has_transfer = self.model.dims.get("transfer") is not None
        self.batch_size, self.progress = int(batch_size), progress

    def extract(self, records: Sequence[ImageRecord]) -> Features:
        shared, specific = extract_records(records, self.preprocessor, self._extract_array,
                                           self.model.dims, self.batch_size, self.progress)
        return Features(shared, specific, np.array([r.modality for r in records], np.int64))

    @torch.no_grad()
    def _extract_array(self, images: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
        h, p = self.model.extract(torch.from_numpy(images), code)
        return h.numpy(), p.numpy()

    @torch.no_grad()
    def transfer(self, z: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        t = self.model.transfer(torch.from_numpy(np.ascontiguousarray(z, np.float32)),
                                torch.from_numpy(np.ascontiguousarray(idx, np.int64)),
                                torch.from_numpy(np.ascontiguousarray(w, np.float32)))
        return t.numpy()


def open_source(path: str | Path, batch_size: int = 64, precision: str = "fp32",
                backend: str = "auto", progress: bool = True):
    """A FeatureSource for a checkpoint file or a bundle folder (runtime, imported lazily)."""
    path = Path(path)
    if path.is_dir():
        from ssft_deploy.runtime import ReIDRuntime

        rt = ReIDRuntime.open(path, precision=precision, backend=backend, max_batch=batch_size)
        return rt.as_feature_source(progress=progress)
    return TorchFeatureSource(path, batch_size=batch_size, progress=progress)


def plot_cmc(result: dict, path: str | Path) -> None:
    """Mean CMC curves of every setting (one panel per RegDB direction), plus the Fig. 4 sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ({"SYSU-MM01": result["settings"]} if result["dataset"] == "sysu"
              else {f"RegDB {d}": s for d, s in result["directions"].items()})
    sweep = result.get("aux_sweep")
    n = len(panels) + (1 if sweep else 0)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    for ax, (title, settings) in zip(axes[0], panels.items()):
        for name, row in settings.items():
            ax.plot(range(1, len(row["cmc"]) + 1), row["cmc"], marker="o", ms=3,
                    label=f"{name} (R1 {row['rank1']['mean']:.1f}, mAP {row['mAP']['mean']:.1f})")
        ax.set(title=title, xlabel="rank", ylabel="matching rate (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if sweep:
        ax = axes[0][-1]
        sizes = [result["queries"] if k == "all" else int(k) for k in sweep]
        for metric in ("rank1", "mAP"):
            ax.errorbar(sizes, [r[metric]["mean"] for r in sweep.values()],
                        yerr=[r[metric]["std"] for r in sweep.values()], marker="o", label=metric)
        ax.set(title="auxiliary-set size (Fig. 4)", xscale="log", xlabel="n", ylabel="%")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sizes(text: str | None) -> list[int | str] | None:
    if not text:
        return None
    out: list[int | str] = []
    for item in text.split(","):
        item = item.strip()
        if item == "all":
            out.append(item)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise SSFTError(f"--aux-sizes takes positive integers and 'all', got {item!r}")
    return out


def _open_checked(path: str, batch_size: int, precision: str, backend: str):
    """``open_source`` with the bundle-only options refused for a checkpoint."""
    if not is_bundle(path) and (precision != "fp32" or backend != "auto"):
        raise SSFTError(f"--precision {precision} / --backend {backend} select a variant of an "
                        f"exported bundle; {path} is a checkpoint, which runs in PyTorch fp32: "
                        f"export it (ssft-export {path} --int8 ...) and evaluate the bundle")
    return open_source(path, batch_size, precision, backend)


def _shared_only_note(source, chosen: tuple[str, ...]) -> tuple[str, ...]:
    if getattr(source, "has_transfer", True):
        return chosen
    click.echo("note: this model has no SSTN; evaluating shared-only features")
    return tuple(s for s in chosen if s == "shared-only") or ("shared-only",)


@click.command()
@click.argument("checkpoint_or_bundle", type=click.Path(exists=True))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="dataset root (SYSU-MM01 or RegDB layout)")
@click.option("--dataset", type=click.Choice(["sysu", "regdb"]), default="sysu", show_default=True)
@click.option("--mode", type=click.Choice(["all", "indoor"]), default="all", show_default=True)
@click.option("--shots", type=click.Choice(["1", "10"]), default="1", show_default=True)
@click.option("--trials", default=None, type=click.IntRange(1, 10),
              help="SYSU: gallery draws (default 10). RegDB: a model trained on RegDB is scored "
                   "on its own trial only (pass a folder of per-trial checkpoints for several); "
                   "this only sets how many trials score a model trained on other data")
@click.option("--settings", default=",".join(SETTINGS), show_default=True,
              help="comma-separated subset of transfer,single-query,shared-only")
@click.option("--aux-sizes", default=None, help="Fig. 4 sweep, e.g. 1,10,100,300,all (SYSU)")
@click.option("--out", type=click.Path(), default=None, help="results JSON")
@click.option("--plot", type=click.Path(), default=None, help="CMC plot PNG")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--precision", default="fp32", show_default=True, help="bundle variant")
@click.option("--backend", default="auto", show_default=True, help="bundle backend")
@click.option("--affinity", default="dense", show_default=True, help="dense | knn | cuda | auto")
@click.option("--seed", default=0, show_default=True, type=int, help="SYSU gallery draws")
@click.option("--visrank", default=0, show_default=True, type=click.IntRange(0),
              help="ranking pictures of the N worst and N best queries of trial 0")
@click.option("--visrank-dir", default="visrank", show_default=True,
              type=click.Path(file_okay=False), help="folder for the --visrank pictures")
@click.option("--reconstructions", default=0, show_default=True, type=click.IntRange(0),
              help="Fig. 3: N RGB and N IR test images and the decoders' reconstructions from "
                   "shared only, specific only and both (a checkpoint with decoders)")
@click.option("--reconstructions-path", default="reconstructions.png", show_default=True,
              type=click.Path(dir_okay=False), help="PNG for --reconstructions")
def main(checkpoint_or_bundle, data, dataset, mode, shots, trials, settings, aux_sizes, out, plot,
         batch_size, precision, backend, affinity, seed, visrank, visrank_dir, reconstructions,
         reconstructions_path) -> None:
    """Evaluate CHECKPOINT_OR_BUNDLE (a checkpoint, a bundle folder, or for RegDB a folder of
    per-trial checkpoints) on the SYSU-MM01 or RegDB protocol."""
    try:
        for path, option in ((out, "--out"), (plot, "--plot")):   # before any work
            if path:
                check_output_file(path, option)
        if reconstructions and is_bundle(checkpoint_or_bundle):   # before any work
            raise SSFTError("--reconstructions needs a checkpoint: a bundle has no decoders")
        chosen = tuple(s.strip() for s in settings.split(",") if s.strip())
        target = checkpoint_or_bundle
        with torch.no_grad():  # scoped: the CLI also runs in-process (tests, notebooks)
            if dataset == "sysu":
                if Path(target).is_dir() and not is_bundle(target):
                    raise SSFTError(f"{target} is not a bundle (no manifest.json); a folder of "
                                    "per-trial checkpoints is for --dataset regdb")
                source = _open_checked(target, batch_size, precision, backend)
                chosen = _shared_only_note(source, chosen)
                result = evaluate_sysu(source, data, mode=mode, shots=int(shots),
                                       trials=trials or 10, settings=chosen,
                                       aux_sizes=_sizes(aux_sizes), seed=seed, affinity=affinity)
            else:
                models = regdb_models(target, trials)
                if visrank and 1 not in models:   # the pictures show RegDB trial 1
                    raise SSFTError(f"--visrank draws RegDB trial 1, but the model(s) given are "
                                    f"scored on trial(s) {sorted(models)}: pass trial 1's model")
                opened = {p: _open_checked(str(p), batch_size, precision, backend)
                          for p in dict.fromkeys(models.values())}
                chosen = _shared_only_note(next(iter(opened.values())), chosen)
                result = evaluate_regdb({t: opened[p] for t, p in models.items()}, data,
                                        settings=chosen, affinity=affinity)
                result["trial_models"] = {str(t): str(p) for t, p in models.items()}
                source = opened[models[min(models)]]   # trial 1's model when --visrank
                result["trained_on"] = trained_on(next(iter(models.values())))[0]
        result["model"] = str(checkpoint_or_bundle)
        click.echo(format_table(result))
        if out:
            Path(out).write_text(json.dumps(result, indent=2))
            click.echo(f"results: {out}")
        if plot:
            plot_cmc(result, plot)
            click.echo(f"CMC plot: {plot}")
        if visrank:
            from ssft_deploy.visrank import eval_rankings

            with torch.no_grad():
                pics = eval_rankings(source, data, visrank, visrank_dir, dataset, chosen[0], mode,
                                     int(shots), seed, affinity)
            click.echo(f"ranking pictures: {len(pics)} in {visrank_dir}")
        if reconstructions:
            from train.reconstruct import figure

            records = (sysu.test_records(data) if dataset == "sysu"
                       else regdb.load_split(data, "test", trial=1))
            pic = figure(source.model, records, reconstructions, reconstructions_path)
            click.echo(f"reconstructions (Fig. 3): {pic}")
    except SSFTError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
