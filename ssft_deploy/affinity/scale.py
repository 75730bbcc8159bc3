"""Measure top-k affinity + propagation at scale (time, peak RSS) on synthetic clustered features.

    python -m ssft_deploy.affinity.scale --n 100000 --dim 2048 --method knn --index flat \
        --save-idx /tmp/idx_flat.npy --out flat.json
    python -m ssft_deploy.affinity.scale --n 100000 --dim 2048 --method knn --index ivf \
        --compare-idx /tmp/idx_flat.npy --out ivf.json

Features are identity centres plus noise (shared centres common to both modalities, specific
centres per modality), so neighbours are meaningful and approximate recall is not trivially 0.
"""

from __future__ import annotations

import json
import resource
import time

import click
import numpy as np


def synthetic(n: int, dim: int, ids: int, seed: int = 0, noise: float = 0.6
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered float32 features [n, dim] (shared, specific) and a half/half modality vector."""
    rng = np.random.default_rng(seed)
    pid = rng.integers(0, ids, n)
    modality = (np.arange(n) % 2).astype(np.int64)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    spec_centres = rng.standard_normal((2, ids, dim), dtype=np.float32)
    shared = np.empty((n, dim), np.float32)
    specific = np.empty((n, dim), np.float32)
    for s in range(0, n, 8192):
        e = min(n, s + 8192)
        shared[s:e] = centres[pid[s:e]] + noise * rng.standard_normal((e - s, dim), np.float32)
        specific[s:e] = spec_centres[modality[s:e], pid[s:e]] + noise * rng.standard_normal(
            (e - s, dim), np.float32)
    return shared, specific, modality


def peak_rss_gib() -> float:
    """Peak resident set size of this process in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@click.command()
@click.option("--n", default=100_000, show_default=True, help="samples (half RGB, half IR)")
@click.option("--dim", default=2048, show_default=True, help="shared and specific dimension")
@click.option("--ids", default=10_000, show_default=True, help="identity clusters")
@click.option("--k", default=4, show_default=True)
@click.option("--method", default="knn", type=click.Choice(["dense", "knn", "cuda", "auto"]))
@click.option("--index", default="flat", type=click.Choice(["flat", "ivf", "hnsw"]))
@click.option("--nprobe", default=16, show_default=True)
@click.option("--save-idx", type=click.Path(dir_okay=False), help="write idx (.npy) for recall")
@click.option("--compare-idx", type=click.Path(exists=True, dir_okay=False),
              help="exact idx (.npy) to measure recall against")
@click.option("--out", type=click.Path(dir_okay=False), help="JSON results file")
def main(n: int, dim: int, ids: int, k: int, method: str, index: str, nprobe: int,
         save_idx: str | None, compare_idx: str | None, out: str | None) -> None:
    """Time and peak memory of topk_affinity + propagate at N samples."""
    from ssft_deploy.affinity import topk_affinity
    from ssft_deploy.transfer import pad, propagate

    res: dict[str, object] = {"n": n, "dim": dim, "k": k, "method": method}
    if method == "knn":
        res.update(index=index, nprobe=nprobe if index == "ivf" else None)
    t0 = time.perf_counter()
    shared, specific, modality = synthetic(n, dim, ids)
    res["generate_s"] = round(time.perf_counter() - t0, 2)
    res["rss_after_generate_gib"] = round(peak_rss_gib(), 2)
    opts = {"index": index, "nprobe": nprobe} if method == "knn" else {}
    t0 = time.perf_counter()
    idx, w = topk_affinity(shared, specific, modality, k=k, method=method, **opts)
    res["affinity_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    z = pad(shared, specific, modality)
    del shared, specific
    out_z = propagate(z, idx, w)
    res["pad_propagate_s"] = round(time.perf_counter() - t0, 2)
    res["propagated_shape"] = list(out_z.shape)
    res["peak_rss_gib"] = round(peak_rss_gib(), 2)
    res["dense_nxn_float32_gib"] = round(n * n * 4 / 2**30, 1)
    if save_idx:
        np.save(save_idx, idx)
    if compare_idx:
        exact = np.load(compare_idx)
        hits = sum(int((exact[:, h][:, :, None] == idx[:, h][:, None, :]).any(2).sum())
                   for h in (slice(0, k), slice(k, 2 * k)))
        res["recall_vs_exact"] = round(hits / exact.size, 4)
    text = json.dumps(res, indent=2)
    click.echo(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
