"""Why is (or is not) the transfer gain of the accuracy sweep clearly above zero? Two cheap probes
on already trained models (features extracted once per model):

- ``k``: the transfer gain over shared-only with k = 1, 2, 4, 8 neighbours per block at test time
  (SYSU all-search, single-shot, 10 gallery trials, as benchmarks/accuracy.py);
- modality-specific signal: within-modality retrieval on the test split (RGB cameras 1, 2 ->
  RGB cameras 4, 5; IR camera 3 -> IR camera 6) with the specific and with the shared features.
  Specific features that retrieve far better than shared ones inside a modality carry identity
  information the shared ones lack: what transfer can bring across.

    python benchmarks/accuracy_probe.py runs/accuracy/default/seed*/model.pth \
        --data runs/accuracy/data/sysu --out docs/results/accuracy_probe.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import seed_row
from benchmarks.common import header, write_json


class WithK:
    """A feature source whose features come from a shared cache and whose SSTN uses ``k``."""

    def __init__(self, cache, source, k: int) -> None:
        self.cache, self.source, self.k, self.parts = cache, source, k, source.parts

    def extract(self, records):
        return self.cache(records)

    def transfer(self, z, idx, w):
        return self.source.transfer(z, idx, w)


def within_modality(feats, records, query_cams, gallery_cams) -> dict[str, dict[str, float]]:
    """Rank-1 / mAP (percent) of ``query_cams`` -> ``gallery_cams`` retrieval, per feature kind."""
    from ssft_deploy.metrics import eval_regdb
    from ssft_deploy.transfer import l2_distances

    pid = np.array([r.pid for r in records])
    cam = np.array([r.camid for r in records])
    q, g = np.isin(cam, query_cams), np.isin(cam, gallery_cams)
    q &= np.isin(pid, pid[g])   # queries whose identity the gallery holds
    out = {}
    for kind in ("shared", "specific"):
        f = getattr(feats, kind)
        cmc, mAP, _ = eval_regdb(l2_distances(f[q], f[g], np.float64), pid[q], pid[g], max_rank=1)
        out[kind] = {"rank1": 100 * float(cmc[0]), "mAP": 100 * mAP, "queries": int(q.sum())}
    return out


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--ks", default="1,2,4,8", show_default=True)
@click.option("--trials", default=10, show_default=True, type=click.IntRange(1, 10))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def main(models, data, ks, trials, out) -> None:
    """Probe the transfer gain of trained MODELS (k at test time, modality-specific signal)."""
    from ssft_deploy.datasets import sysu
    from ssft_deploy.evaluation import FeatureCache, evaluate_sysu
    from train.evaluate import TorchFeatureSource

    result = {**header("accuracy-probe"), "data": str(data), "models": {}}
    records = sysu.test_records(data)
    for path in models:
        source = TorchFeatureSource(path, progress=False)
        cache = FeatureCache(source)
        feats = cache(records)
        row = {"within_modality": {
            "rgb_cams12_to_cams45": within_modality(feats, records, (1, 2), (4, 5)),
            "ir_cam3_to_cam6": within_modality(feats, records, (3,), (6,))}, "k": {}}
        for k in (int(x) for x in ks.split(",")):
            ev = evaluate_sysu(WithK(cache, source, k), data, trials=trials,
                               settings=("transfer", "shared-only"), progress=False)
            row["k"][str(k)] = seed_row(ev)
            gain = row["k"][str(k)]["gain"]["transfer_minus_shared"]
            click.echo(f"{path} k={k}: transfer R1 {row['k'][str(k)]['transfer']['rank1']:.2f}, "
                       f"gain R1 {gain['rank1']:+.2f}, mAP {gain['mAP']:+.2f}")
        click.echo(f"{path} within modality: {row['within_modality']}")
        result["models"][str(path)] = row
    write_json(Path(out), result)
    click.echo(f"results: {out}")


if __name__ == "__main__":
    main()
