"""Gallery at scale: two-stage search accuracy against full SSTN, and latency / memory / recall
from 10k to 1M entries for the local store and Milvus Lite (issue 13).

    python benchmarks/gallery_scale.py --out runs/bench                       # everything
    python benchmarks/gallery_scale.py --sizes 10000,100000 --milvus-sizes 10000 --trials 2
    python benchmarks/gallery_scale.py --writes --baseline OLD_CHECKOUT   # the write path

Features are synthetic (identity centres + camera shift + noise) and the transfer is Eq. 10 with
a fixed random W (no trained model): the accuracy table measures what two-stage search changes
against full single-query SSTN (Eq. 22) on the SYSU-MM01 test split's shape (96 identities, 3803
IR queries, 301 single-shot RGB gallery entries drawn anew in each of the trials), not the
paper's accuracy. Each scale point runs in its own process so peak memory is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gallery_sweep, gallery_writes
from benchmarks.common import (
    SYSU_GALLERY,
    SYSU_QUERY,
    check_target,
    format_table,
    header,
    int_list,
    plot_series,
    write_json,
)
from ssft_deploy.features import Features
from ssft_deploy.gallery import Gallery, open_gallery, twostage
from ssft_deploy.metrics.ranking import eval_sysu
from ssft_deploy.transfer import SSTN, propagate

K, TOP = 4, 10


STAND_INS = ("orthogonal", "random-64")


def stand_in_sstn(ds: int, dp: int, seed: int = 0, kind: str = "orthogonal") -> SSTN:
    """Eq. 10 without a trained W (the runtime's transfer_fn contract, no model). "orthogonal":
    a random orthogonal W, which keeps every distance of the propagated features (the graph
    propagation is all the transfer does); "random-64": a fixed Gaussian W onto 64 dims, which
    also discards information at random (a distortion a trained W would not add)."""
    rng, d = np.random.default_rng(seed), 2 * dp + ds
    if kind == "orthogonal":
        w_t = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    else:
        w_t = rng.standard_normal((d, 64)).astype(np.float32)
    return SSTN(lambda z, idx, w: propagate(z, idx, w) @ w_t, k=K)


class People:
    """Identity centres: shared features common to both modalities, specific ones per modality."""

    def __init__(self, n_ids: int, ds: int, dp: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.shared = rng.standard_normal((n_ids, ds)).astype(np.float32)
        self.specific = rng.standard_normal((2, n_ids, dp)).astype(np.float32)
        self.cams = rng.standard_normal((7, ds)).astype(np.float32) * 0.6

    def sample(self, rng, pids, modality: int, cams, noise: float) -> Features:
        n = len(pids)
        sh = self.shared[pids] + self.cams[cams] + noise * rng.standard_normal(
            (n, self.shared.shape[1]), np.float32)
        sp = self.specific[modality][pids] + noise * rng.standard_normal(
            (n, self.specific.shape[2]), np.float32)
        return Features(sh, sp, modality)


# -- accuracy: two-stage vs full SSTN on the synthetic SYSU split --------------------------------
def accuracy(trials: int, shortlists: list[int], ds: int = 64, dp: int = 64, seed: int = 0,
             noise: float = 1.6, stand_in: str = "orthogonal") -> dict:
    rng = np.random.default_rng(seed)
    people = People(96, ds, dp, seed)
    q_pids = rng.integers(0, 96, SYSU_QUERY)
    q_cams = rng.choice([3, 6], SYSU_QUERY)
    query = people.sample(rng, q_pids, 1, q_cams, noise)
    pairs = [(p, c) for p in range(96) for c in (1, 2, 4, 5)][:SYSU_GALLERY]
    sstn = stand_in_sstn(ds, dp, kind=stand_in)
    rows: dict[str, list] = {"full": [], **{f"M={m}": [] for m in shortlists}}
    for t in tqdm(range(trials), desc=f"accuracy trials ({stand_in} W)"):
        t_rng = np.random.default_rng(seed + 1 + t)       # one image per (identity, camera)
        g_pids = np.array([p for p, _ in pairs])
        g_cams = np.array([c for _, c in pairs])
        g = Gallery(ds, dp)
        gallery = people.sample(t_rng, g_pids, 0, g_cams, noise)
        g.add(gallery, pids=g_pids, camids=g_cams, entry_ids=np.arange(len(pairs)))
        full = sstn.single_query_distances(query, gallery)
        rows["full"].append(_metrics(full, q_pids, g_pids, q_cams, g_cams))
        shared_d = np.sqrt(np.maximum(2 - 2 * _unit(query.shared) @ _unit(gallery.shared).T, 0))
        for m in shortlists:
            dist = 4.0 + shared_d  # beyond the shortlist: after it, in stage one's order
            ranked = twostage.distances(g, query, (0,), (None, None), m, "single-query", sstn,
                                        None)
            for i, (d, cols) in enumerate(ranked):
                dist[i, cols["ids"]] = d
            rows[f"M={m}"].append(_metrics(dist, q_pids, g_pids, q_cams, g_cams))
    out = {}
    for name, vals in rows.items():
        r1, mAP = np.array(vals).T
        out[name] = {"rank1": float(r1.mean()), "mAP": float(mAP.mean()),
                     "rank1_std": float(r1.std()), "trials": len(vals)}
    for m in shortlists:
        out[f"M={m}"]["d_rank1"] = out[f"M={m}"]["rank1"] - out["full"]["rank1"]
        out[f"M={m}"]["d_mAP"] = out[f"M={m}"]["mAP"] - out["full"]["mAP"]
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _metrics(dist, q_pids, g_pids, q_cams, g_cams) -> tuple[float, float]:
    cmc, mAP, _ = eval_sysu(dist, q_pids, g_pids, q_cams, g_cams)
    return 100 * float(cmc[0]), 100 * float(mAP)


# -- scale: one store at one size, in its own process -------------------------------------------
def rss_mib() -> float:
    """Resident memory of this process and its children (Milvus Lite runs as a child), MiB."""
    me, total = os.getpid(), 0
    for pid in [me] + _children(me):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out += [int(p.name)] + _children(int(p.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def scale_data(n: int, ds: int, dp: int, queries: int, seed: int = 0
               ) -> tuple[Features, np.ndarray, np.ndarray, Features]:
    """n RGB entries of n/10 identities (10 entries each, cameras 1, 2, 4, 5) and IR queries of
    random identities from cameras 3 and 6 (noise 0.8 around the identity and camera centres)."""
    rng = np.random.default_rng(seed)
    people = People(max(1, n // 10), ds, dp, seed)
    pids = np.arange(n) % (max(1, n // 10))
    cams = rng.choice([1, 2, 4, 5], n)
    gallery = people.sample(rng, pids, 0, cams, 0.8)
    q_pids = rng.integers(0, max(1, n // 10), queries)
    return gallery, pids, cams, people.sample(rng, q_pids, 1, rng.choice([3, 6], queries), 0.8)


def scale_point(store: str, n: int, ds: int, dp: int, queries: int, m: int, seed: int = 0
                ) -> dict:
    feats, pids, cams, q = scale_data(n, ds, dp, queries, seed)
    tmp = Path(tempfile.mkdtemp(prefix="ssft-gallery-bench-"))
    t0 = time.perf_counter()
    if store == "local":
        g = open_gallery(tmp / "g.gallery", (ds, dp))
        g.add(feats, pids=pids, camids=cams, entry_ids=np.arange(n))
    else:
        g = open_gallery(f"milvus:{tmp / 'g.db'}", (ds, dp), index="ivf" if n >= 50_000 else "flat")
        for s in tqdm(range(0, n, 10_000), desc=f"milvus insert {n}", leave=False):
            e = slice(s, min(n, s + 10_000))
            g.add(feats.take(np.arange(n)[e]), pids=pids[e], camids=cams[e],
                  entry_ids=np.arange(n)[e])
    del feats
    load_s = time.perf_counter() - t0
    sstn = stand_in_sstn(ds, dp)
    t0 = time.perf_counter()
    g.search(q.take([0]), top=TOP, transfer=sstn, mode="single-query", shortlist=m)  # indexes
    index_s = time.perf_counter() - t0
    lat, loads = [], []
    for i in tqdm(range(queries), desc=f"{store} {n} queries", leave=False):
        t0 = time.perf_counter()
        g.search(q.take([i]), top=TOP, transfer=sstn, mode="single-query", shortlist=m)
        lat.append(time.perf_counter() - t0)
        loads.append(os.getloadavg()[0])
    recall = shortlist_recall(g, q, m)
    mem = rss_mib()
    g.close()
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    tmp.rmdir()
    lat_ms = 1e3 * np.array(lat)
    return {"store": store, "n": n, "dims": [ds, dp], "shortlist": m, "queries": queries,
            "load_s": load_s, "first_search_s": index_s, "p50_ms": float(np.percentile(lat_ms, 50)),
            "p99_ms": float(np.percentile(lat_ms, 99)), "rss_mib": mem,
            "peak_rss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "shortlist_recall": recall["recall_at_m"], "recalls": recall,
            "loadavg": os.getloadavg(), "loadavg_during": [min(loads), max(loads)]}


def shortlist_recall(g, q: Features, m: int) -> dict[str, float]:
    """Stage one's shortlists, as two-stage search takes them (``twostage.shortlists``), against
    exact k-NN over all RGB entries' shared features (float64, query chunks)."""
    feats, cols = g.entries("rgb")
    base = _unit(feats.shared)
    del feats
    got = twostage.shortlists(g, q, (0,), (None, None), m)
    pos = np.argsort(cols["ids"])
    found = np.stack([pos[np.searchsorted(cols["ids"], s, sorter=pos)] for s in got])
    qs = _unit(q.shared)
    exact, mth = gallery_sweep.exact_top(qs, base, m)
    return gallery_sweep.recalls(found, exact, mth, qs, base)


def run_sweep(out: Path, sizes: list[int], ds: int, dp: int, queries: int, m: int,
              hnsw_max: int) -> None:
    """Stage one's recall against latency per index knob (see gallery_sweep)."""
    rows = []
    for n in sizes:
        feats, _, _, q = scale_data(n, ds, dp, queries)
        base, spec = _unit(feats.shared), _unit(feats.specific)
        del feats
        rows += gallery_sweep.sweep(base, _unit(q.shared), m,
                                    gallery_sweep.default_configs(n, hnsw=n <= hnsw_max), spec)
        del base, spec
    for r in rows:
        if r.get("neighbour_lists"):
            knob = {k: r[k] for k in ("nlist", "nprobe", "m", "ef_search") if r.get(k)}
            click.echo(f"n={r['n']:>8d} {r['index']:5s} {knob} neighbour lists: "
                       f"recall@{r['k']} {r['recall_at_k']:.3f}  p50 {r['p50_ms']:.2f} ms")
            continue
        knob = {k: r[k] for k in ("nlist", "nprobe", "m", "ef_search") if r.get(k)}
        click.echo(f"n={r['n']:>8d} {r['index']:5s} {knob}  build {r['build_s']:.1f} s "
                   f"{r['index_mib']:.0f} MiB  p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms  "
                   f"recall@{m} {r['recall_at_m']:.3f} @10 {r['recall_at_10']:.3f} "
                   f"tol {r['recall_at_m_tol']:.3f}  load {r['loadavg'][0]:.1f}")
    write_json(out / "gallery_sweep.json", {**header("gallery_sweep"), "dims": [ds, dp],
                                            "shortlist": m, "rows": rows})
    plot_sweep(rows, out / "gallery_sweep.png", m, ds)
    click.echo(f"wrote {out / 'gallery_sweep.json'} and {out / 'gallery_sweep.png'}")


def plot_sweep(rows: list[dict], path: Path, m: int, ds: int) -> None:
    """Recall@M against stage-one p50 latency, one line per (size, index)."""
    series: dict[str, tuple[list, list]] = {}
    for r in rows:
        if not r.get("neighbour_lists"):
            name = f"{r['n'] // 1000}k {r['index']}" + (f" {r['nlist']}" if r["nlist"] else "")
            xs, ys = series.setdefault(name, ([], []))
            xs.append(r["p50_ms"])
            ys.append(r["recall_at_m"])
    plot_series(path, series, "stage-one p50 latency per query (ms)", f"recall@{m} vs exact",
                f"stage one: recall vs latency per knob, dims {ds}", logx=True)


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench"),
              show_default=True)
@click.option("--trials", default=10, show_default=True, help="accuracy trials (SYSU protocol)")
@click.option("--shortlists", default="50,100,300", callback=int_list, show_default=True)
@click.option("--sizes", default="10000,100000,1000000", callback=int_list, show_default=True)
@click.option("--milvus-sizes", default="10000,100000", callback=int_list, show_default=True)
@click.option("--dims", default="256,256", callback=int_list, show_default=True,
              help="shared,specific dims of the scale runs")
@click.option("--queries", default=200, show_default=True, help="single queries per local point")
@click.option("--milvus-queries", default=50, show_default=True,
              help="single queries per Milvus Lite point (its searches take seconds here)")
@click.option("--shortlist", "m", default=100, show_default=True)
@click.option("--skip-accuracy", is_flag=True)
@click.option("--no-milvus", is_flag=True, help="local store only")
@click.option("--sweep", is_flag=True, help="only stage one's recall vs latency per index knob")
@click.option("--sweep-sizes", default="100000,1000000", callback=int_list, show_default=True)
@click.option("--sweep-hnsw-max", default=100_000, show_default=True,
              help="largest size the sweep builds HNSW at (1M: about 7 min per build here)")
@click.option("--writes", is_flag=True, help="only the local store's write path "
              "(gallery_writes: add throughput, first search after an add)")
@click.option("--baseline", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="with --writes: a checkout of older code, measured side by side")
@click.option("--batch", default=1000, show_default=True, help="with --writes: entries per add")
@click.option("--batches", default=3, show_default=True, help="with --writes: adds per point")
@click.option("--point", default=None, hidden=True, help="STORE:N (internal: one scale point)")
def main(out, trials, shortlists, sizes, milvus_sizes, dims, queries, milvus_queries, m,
         skip_accuracy, no_milvus, sweep, sweep_sizes, sweep_hnsw_max, writes, baseline, batch,
         batches, point):
    """Two-stage gallery search: accuracy vs full SSTN, and scale (JSON + plot)."""
    ds, dp = dims
    if writes:
        res = {**header("gallery_writes"), "loadavg_start": os.getloadavg(),
               "shortlist": gallery_writes.M, "rows": []}

        def on_row(rows: list[dict]) -> None:  # written after every point
            write_json(out / "gallery_writes.json", {**res, "rows": rows,
                                                     "ratios": gallery_writes.ratios(rows)})

        res["rows"] = gallery_writes.run(sizes, ds, dp, batch, batches, baseline, click.echo,
                                         on_row)
        res["ratios"], res["loadavg_end"] = gallery_writes.ratios(res["rows"]), os.getloadavg()
        for r in res["ratios"]:
            click.echo(f"n={r['n']:>8d} add throughput new/old "
                       f"{r['add_throughput_new_over_old']:.1f}x  first search after add old/new "
                       f"{r['search_after_add_old_over_new']:.1f}x")
        write_json(out / "gallery_writes.json", res)
        click.echo(f"wrote {out / 'gallery_writes.json'}")
        return
    if sweep:
        run_sweep(out, sweep_sizes, ds, dp, queries, m, sweep_hnsw_max)
        return
    if point:
        store, n = point.split(":")
        click.echo(json.dumps(scale_point(store, int(n), ds, dp, queries, m)))
        return
    res = {**header("gallery_scale"), "loadavg_start": os.getloadavg(), "scale": []}
    if not skip_accuracy:
        res["accuracy"] = {w: accuracy(trials, shortlists, stand_in=w) for w in STAND_INS}
        click.echo(format_table(["W", "search", "Rank-1", "mAP", "dRank-1", "dmAP"], [
            [w, k, f"{v['rank1']:.2f}", f"{v['mAP']:.2f}", f"{v.get('d_rank1', 0):+.2f}",
             f"{v.get('d_mAP', 0):+.2f}"] for w, acc in res["accuracy"].items()
            for k, v in acc.items()]))
    points = [("local", n) for n in sizes] + [("milvus-lite", n) for n in
                                              ([] if no_milvus else milvus_sizes)]
    for store, n in points:
        kind = "local" if store == "local" else "milvus"
        cmd = [sys.executable, __file__, "--point", f"{kind}:{n}", "--dims", f"{ds},{dp}",
               "--shortlist", str(m),
               "--queries", str(queries if store == "local" else milvus_queries)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            res["scale"].append({"store": store, "n": n, "error": proc.stderr[-2000:]})
            click.echo(f"{store} {n}: failed: {proc.stderr[-500:]}", err=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["store"] = store
        res["scale"].append(row)
        click.echo(f"{store:12s} n={n:>8d}  p50 {row['p50_ms']:.1f} ms  p99 {row['p99_ms']:.1f} ms"
                   f"  rss {row['rss_mib']:.0f} MiB  recall@{m} {row['shortlist_recall']:.3f}"
                   f"  load {row['loadavg'][0]:.1f}")
    res["targets"] = targets(res, m)
    for t in res["targets"]:
        click.echo(f"target {t['target']}: {t['value']} (goal {t['goal']}) {t['note']}")
    res["loadavg_end"] = os.getloadavg()
    write_json(out / "gallery_scale.json", res)
    ok = [r for r in res["scale"] if "error" not in r]
    plot_series(out / "gallery_scale.png",
                {f"{s} p{p}": ([r["n"] for r in ok if r["store"] == s],
                               [r[f"p{p}_ms"] for r in ok if r["store"] == s])
                 for s in ("local", "milvus-lite") for p in (50, 99)},
                "gallery entries", "single-query two-stage latency (ms)",
                f"two-stage search, M={m}, dims {ds}/{dp}", loglog=True)
    click.echo(f"wrote {out / 'gallery_scale.json'} and {out / 'gallery_scale.png'}")


def targets(res: dict, m: int) -> list[dict]:
    out = []
    for w, table in res.get("accuracy", {}).items():
        acc = table.get(f"M={m}")
        for metric in ("rank1", "mAP") if acc else ():
            out.append(check_target(f"|d{metric}| at M={m}, {w} W (points)",
                                    abs(acc[f"d_{metric}"]), 0.5, higher_is_better=False,
                                    unit=""))
    local = sorted((r for r in res["scale"] if r["store"] == "local" and "error" not in r),
                   key=lambda r: r["n"])
    if len(local) >= 2:
        ratio = local[-1]["p99_ms"] / local[0]["p99_ms"]
        out.append(check_target(f"local p99 at {local[-1]['n']} / p99 at {local[0]['n']}", ratio,
                                10.0, higher_is_better=False))
    return out


if __name__ == "__main__":
    main()
