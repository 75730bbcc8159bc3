"""The gallery stores side by side (issue 21): a real Milvus server (``.venv-milvus``, started
here on loopback), Milvus Lite and the local store. Per store and size: add throughput (the
first 10,000 entries in batches of 1000), p50 / p99 of single-query two-stage search
(``--shortlist``, Eq. 22 with a stand-in W), stage one's recall against exact k-NN, memory; then
3 writer processes + 1 searcher for ``--churn-s`` seconds against the server (``gallery_churn``):
failed writes, failed searches, final count against adds - removes.

    python benchmarks/gallery_stores.py --out docs/results                   # 10k and 100k
    python benchmarks/gallery_stores.py --sizes 10000 --stores server --churn-s 10

Each (store, size) runs in its own process; the load average is recorded around every point
(the machine may be shared: a point whose load average exceeded the usable cores is flagged
``under_load``). Beside the latencies, each Milvus point times one bare request (one query
vector, the shortlist's size, ids only: the server's per-request floor), and each point's p50 is
set against the local store's at the same size in the same run (``p50_vs_local``), a ratio that
the load moves far less than the absolute figures. 1M entries: ``--sizes 1000000`` (the server
needs ~15 GB of rows and, at its measured ~2,000 entries/s, ~10 min of loading plus hours of
index building on 2 cores; not run here).

With the server, ``--ingest`` (default) first measures the server's own ingest ceiling beside
the store's adds (``milvus_ingest.py``); ``--server-set KEY=VALUE`` passes a ``milvus.yaml``
setting to the started server (recorded under ``server.settings``), e.g. for a bulk load at 100k:

    python benchmarks/gallery_stores.py --sizes 100000 --stores server,local --merge \
        --server-set dataCoord.compaction.enableAutoCompaction=false
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gallery_sweep
from benchmarks.common import check_target, format_table, header, int_list, write_json
from benchmarks.gallery_scale import TOP, _unit, rss_mib, scale_data, stand_in_sstn
from ssft_deploy.features import Features
from ssft_deploy.gallery import milvus_search, open_gallery, twostage

TIMED_ENTRIES, BATCH = 10_000, 1000
BULK = 3000  # entries per request past the timed ones (Milvus: ~45 MB, under gRPC's 64 MB)
TARGETS = {10_000: 150.0, 100_000: 250.0}  # p99 ms, real server, 512/512-d


def open_store(store: str, n: int, ds: int, dp: int, where: Path, uri: str | None):
    if store == "local":
        return open_gallery(where / "g.gallery", (ds, dp))
    if store == "lite":
        return open_gallery(f"milvus:{where / 'g.db'}", (ds, dp),
                            index="ivf" if n >= 50_000 else "flat")
    return open_gallery(uri, (ds, dp), collection=f"bench{uuid.uuid4().hex[:12]}", index="ivf")


SETTLE_MAX_S = 180.0  # a live gallery compacts and re-indexes for good; search after this


def settle(g) -> tuple[float, float]:
    """Milvus: seal the loaded rows and (server) wait for their index, at most SETTLE_MAX_S
    (setup after the bulk load, as a deployed gallery would be; never on the search path).
    Returns (seconds, fraction of rows indexed then). At 100k the 2.3.5 server kept compacting
    segments and rebuilding their indexes for 20+ minutes on 2 loaded cores."""
    if not g.uri.startswith(("http", "milvus:")):
        return 0.0, 1.0
    t0 = time.perf_counter()
    g._client.flush(g.collection)
    if not g.uri.startswith("http"):
        return time.perf_counter() - t0, 1.0
    while True:
        info = g._client.describe_index(g.collection, "vec")
        total = max(int(info.get("total_rows", 0)), 1)
        done = int(info.get("pending_index_rows", 0)) == 0 and \
            int(info.get("indexed_rows", 0)) >= total
        if done or time.perf_counter() - t0 > SETTLE_MAX_S:
            return time.perf_counter() - t0, min(1.0, int(info.get("indexed_rows", 0)) / total)
        time.sleep(1.0)


def run_point(store: str, n: int, ds: int, dp: int, queries: int, m: int, uri: str | None) -> dict:
    feats, pids, cams, q = scale_data(n, ds, dp, queries)
    where = Path(tempfile.mkdtemp(prefix="ssft-stores-bench-"))
    g = open_store(store, n, ds, dp, where, uri)
    ids = np.arange(n)
    timed = min(n, TIMED_ENTRIES)
    t0 = time.perf_counter()
    for s in range(0, timed, BATCH):
        sl = ids[s:s + BATCH] if s + BATCH <= timed else ids[s:timed]
        g.add(feats.take(sl), pids=pids[sl], camids=cams[sl], entry_ids=sl)
    add_s = time.perf_counter() - t0
    bulk = n if store == "local" else BULK             # the rest, untimed
    for s in range(timed, n, bulk):
        sl = ids[s:s + bulk]
        g.add(feats.take(sl), pids=pids[sl], camids=cams[sl], entry_ids=sl)
        if (s + bulk) // 100_000 > s // 100_000:           # progress: a stopped point's rate
            print(f"{store} loaded {s + len(sl)} in {time.perf_counter() - t0:.0f} s, load "
                  f"{os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    load_s = time.perf_counter() - t0
    settle_s, indexed = settle(g)
    sstn = stand_in_sstn(ds, dp)
    t0 = time.perf_counter()
    g.search(q.take([0]), top=TOP, transfer=sstn, mode="single-query", shortlist=m)
    first_s = time.perf_counter() - t0
    lat, loads, in_requests = [], [], []
    spent = [0.0]
    if store != "local":                                 # time inside the client's requests
        real = milvus_search.search

        def timed_search(*args, **kwargs):
            t = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t
        milvus_search.search = timed_search
    for i in range(queries):
        spent[0] = 0.0
        t0 = time.perf_counter()
        g.search(q.take([i]), top=TOP, transfer=sstn, mode="single-query", shortlist=m)
        lat.append(time.perf_counter() - t0)
        in_requests.append(spent[0])
        loads.append(os.getloadavg()[0])
    floor = request_floor(g, q, m) if store != "local" else []
    got = twostage.shortlists(g, q, (0,), (None, None), m)
    base, qs = _unit(feats.shared), _unit(q.shared)
    exact, mth = gallery_sweep.exact_top(qs, base, m)
    recall = gallery_sweep.recalls(got, exact, mth, qs, base)  # short answers count as misses
    rss = rss_mib()
    if store == "server":
        g._client.drop_collection(g.collection)
    g.close()
    lat_ms = 1e3 * np.array(lat)
    return {"store": store, "n": n, "dims": [ds, dp], "shortlist": m, "queries": queries,
            "adds_per_s": timed / add_s, "add_batch": BATCH, "timed_entries": timed,
            "load_s": load_s, "settle_s": settle_s, "indexed_fraction": indexed,
            "first_search_s": first_s,
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "requests_p50_ms": 1e3 * float(np.percentile(in_requests, 50)),
            "request_floor_p50_ms": 1e3 * float(np.median(floor)) if floor else None,
            "client_rss_mib": rss, "shortlist_recall": recall["recall_at_m"],
            "short_stage_one": sum(len(x) < m for x in got),   # answers with fewer than m hits
            "loadavg": os.getloadavg(), "loadavg_during": [min(loads), max(loads)],
            "under_load": max(loads) > (os.cpu_count() or 1)}


def request_floor(g, q: Features, m: int) -> list[float]:
    """Seconds of single bare search requests (one query, ``m`` hits, ids only, Bounded)."""
    out = []
    for i in range(len(q)):
        x = np.zeros(g._width, np.float32)
        x[:q.shared.shape[1]] = _unit(q.shared[i:i + 1])[0]
        t0 = time.perf_counter()
        g._client.search(g.collection, data=[x.tobytes()], anns_field="vec", limit=m,
                         filter="block in [0]", output_fields=["eid"],
                         consistency_level="Bounded",
                         search_params={"metric_type": "COSINE", "params": {"nprobe": 16}})
        out.append(time.perf_counter() - t0)
    return out


def server_usage(srv) -> dict:
    rss = 0
    for pid in srv.pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        except OSError:
            pass
    return {"server_rss_mib": rss / 1024}


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench"),
              show_default=True)
@click.option("--sizes", default="10000,100000", callback=int_list, show_default=True)
@click.option("--stores", default="server,lite,local", show_default=True)
@click.option("--dims", default="512,512", callback=int_list, show_default=True)
@click.option("--queries", default=50, show_default=True, help="single queries per point")
@click.option("--shortlist", "m", default=100, show_default=True)
@click.option("--churn-s", default=30.0, show_default=True,
              help="seconds of 3 writers + 1 searcher on the server (0: none)")
@click.option("--churn-prefill", default=5000, show_default=True)
@click.option("--ingest/--no-ingest", default=True, show_default=True,
              help="the server's own ingest ceiling beside the store's adds (milvus_ingest)")
@click.option("--server-set", multiple=True, metavar="KEY=VALUE",
              help="a milvus.yaml setting for the started server (repeatable)")
@click.option("--merge", is_flag=True, help="keep the points of other sizes already in the JSON")
@click.option("--point", default=None, hidden=True, help="STORE:N (internal)")
@click.option("--uri", default=None, hidden=True)
def main(out, sizes, stores, dims, queries, m, churn_s, churn_prefill, ingest, server_set, merge,
         point, uri):
    """Stores side by side: add throughput, two-stage latency, churn (JSON)."""
    ds, dp = dims
    if point == "ingest":
        from benchmarks.milvus_ingest import ingest_ceiling

        click.echo(json.dumps({**ingest_ceiling(uri, ds, dp), "loadavg": os.getloadavg()}))
        return
    if point:
        store, n = point.split(":")
        click.echo(json.dumps(run_point(store, int(n), ds, dp, queries, m, uri)))
        return
    from ssft_deploy.gallery.milvus_server import MilvusServerProcess

    stores = stores.split(",")
    res = {**header("gallery_stores"), "loadavg_start": os.getloadavg(), "points": []}
    extra = dict(kv.split("=", 1) for kv in server_set)
    srv = MilvusServerProcess(extra=extra).start() if "server" in stores else None
    try:
        if srv:
            res["server"] = {"version": "2.3.5 (PyPI milvus, standalone)", "settings": srv.extra,
                             "start_s": srv.started_s, **server_usage(srv)}
            time.sleep(10)
            res["server"]["idle"] = server_usage(srv)
        if srv and ingest:
            proc = subprocess.run([sys.executable, __file__, "--point", "ingest", "--dims",
                                   f"{ds},{dp}", "--uri", srv.uri], capture_output=True,
                                  text=True, check=False)
            res["ingest"] = {"loadavg_start": os.getloadavg(), **(
                json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                else {"error": proc.stderr[-2000:]})}
            for case, r in res["ingest"].get("cases", {}).items():
                click.echo(f"ingest {case:14s} {r['rows_per_s']:8.0f} rows/s "
                           f"{r['entries_per_s']:7.0f} entries/s {r['mb_per_s']:6.1f} MB/s")
        for n in sizes:
            for store in stores:
                cmd = [sys.executable, __file__, "--point", f"{store}:{n}", "--dims", f"{ds},{dp}",
                       "--shortlist", str(m), "--queries", str(queries)] + \
                      (["--uri", srv.uri] if srv else [])
                proc = run_streaming(cmd)
                if proc.returncode:
                    res["points"].append({"store": store, "n": n, "error": proc.stderr[-2000:]})
                    click.echo(f"{store} {n}: failed: {proc.stderr[-800:]}", err=True)
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                if store == "server":
                    row.update(server_usage(srv))
                row["created"] = res["created"]
                res["points"].append(row)
                click.echo(f"{store:7s} n={n:>7d}  adds {row['adds_per_s']:8.0f}/s  p50 "
                           f"{row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  recall@{m} "
                           f"{row['shortlist_recall']:.3f}  load {row['loadavg_during']}")
        if srv and churn_s > 0:
            from benchmarks.gallery_churn import churn  # (it imports settle from here)

            res["churn"] = churn(srv.uri, churn_s, ds, dp, m, churn_prefill)
            c = res["churn"]
            click.echo(f"churn {churn_s:.0f} s: adds {c['adds']} removes {c['removes']} final "
                       f"{c['final_count']} (expected {c['expected_count']}) failed writes "
                       f"{c['failed_writes']} failed searches {c['failed_searches']} of "
                       f"{c['searcher']['searches']}")
    finally:
        if srv:
            srv.stop()
    relate(res)
    res["targets"] = targets(res)
    res["loadavg_end"] = os.getloadavg()
    click.echo(format_table(["target", "value", "goal", "note"],
                            [[t["target"], t["value"], t["goal"], t["note"]]
                             for t in res["targets"]]))
    if merge and (out / "gallery_stores.json").exists():  # keep the other sizes' points
        old = json.loads((out / "gallery_stores.json").read_text())
        mine = {(r["store"], r["n"]) for r in res["points"]}
        res["points"] = [r for r in old["points"] if (r["store"], r["n"]) not in mine] + \
            res["points"]
        res["earlier_runs"] = old.get("earlier_runs", []) + [
            {k: old.get(k) for k in ("created", "loadavg_start", "loadavg_end", "server")}]
        res.setdefault("churn", old.get("churn"))
        res.setdefault("ingest", old.get("ingest"))
        relate(res)
        res["targets"] = targets(res)
    write_json(out / "gallery_stores.json", res)
    click.echo(f"wrote {out / 'gallery_stores.json'}")


def run_streaming(cmd: list[str]) -> subprocess.CompletedProcess:
    """``subprocess.run`` capturing both streams, its stderr also echoed line by line (a long
    point's progress shows while it runs)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        err = []
        for line in p.stderr:
            err.append(line)
            click.echo(line.rstrip(), err=True)
        out = p.stdout.read()
    return subprocess.CompletedProcess(cmd, p.returncode, out, "".join(err))


def relate(res: dict) -> None:
    """Each point's p50 / p99 over the local store's at the same size (same run only)."""
    local = {r["n"]: r for r in res["points"] if r["store"] == "local" and "error" not in r
             and r.get("created", res.get("created")) == res.get("created")}
    for r in res["points"]:
        ref = local.get(r["n"])
        if ref and "error" not in r and r.get("created", res.get("created")) == res.get("created"):
            r["p50_vs_local"] = r["p50_ms"] / ref["p50_ms"]
            r["p99_vs_local"] = r["p99_ms"] / ref["p99_ms"]


def targets(res: dict) -> list[dict]:
    out = []
    for r in res["points"]:
        if r["store"] == "server" and "error" not in r:
            if r["n"] in TARGETS:
                out.append(check_target(f"server p99 at {r['n']} (ms)", r["p99_ms"],
                                        TARGETS[r["n"]], higher_is_better=False))
            out.append(check_target(f"server adds/s at {r['n']} (batches of {BATCH})",
                                    r["adds_per_s"], 10_000))
    c = res.get("churn")
    if c:
        out.append(check_target("churn failed writes + searches", c["failed_writes"] +
                                c["failed_searches"], 0, higher_is_better=False, unit=""))
        out.append(check_target("churn final count - expected", abs(c["final_count"] -
                                c["expected_count"]), 0, higher_is_better=False, unit=""))
    return out


if __name__ == "__main__":
    main()
