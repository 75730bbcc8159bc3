"""Churn against a Milvus server: 3 writer processes adding (and removing every third round) and
1 process searching two-stage for ``seconds``; failed writes, failed searches, and the final
count against adds - removes. Run by ``gallery_stores.py`` (``--churn-s``); each writer and the
searcher is this file in a process of its own (``--role``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import click
import numpy as np

if __package__ in (None, ""):  # run as a role process: `python benchmarks/gallery_churn.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import int_list
from benchmarks.gallery_scale import TOP, scale_data, stand_in_sstn
from benchmarks.gallery_stores import settle
from ssft_deploy.errors import SSFTError
from ssft_deploy.features import Features
from ssft_deploy.gallery import open_gallery


def writer(uri: str, collection: str, wid: int, seconds: float, ds: int, dp: int) -> dict:
    g = open_gallery(uri, (ds, dp), collection=collection)
    rng = np.random.default_rng(wid)
    adds = removes = failed = rounds = 0
    errors: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        eids = wid * 10**9 + rounds * 100 + np.arange(100)
        f = Features(rng.standard_normal((100, ds)), rng.standard_normal((100, dp)), 0)
        try:
            g.add(f, pids=eids % 500, camids=wid, entry_ids=eids)
            adds += 100
            if rounds % 3 == 2:
                removes += g.remove(entry_ids=eids[:50])
        except SSFTError as exc:                      # a failed write, counted
            failed += 1
            errors.append(str(exc)[:300])
        rounds += 1
    return {"adds": adds, "removes": removes, "failed_writes": failed, "rounds": rounds,
            "errors": errors[:5]}


def searcher(uri: str, collection: str, seconds: float, ds: int, dp: int, m: int) -> dict:
    g = open_gallery(uri, (ds, dp), collection=collection)
    sstn = stand_in_sstn(ds, dp)
    rng = np.random.default_rng(99)
    ok = failed = 0
    lat: list[float] = []
    errors: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        q = Features(rng.standard_normal((1, ds)), rng.standard_normal((1, dp)), 1)
        t0 = time.perf_counter()
        try:
            g.search(q, top=TOP, transfer=sstn, mode="single-query", shortlist=m)
            ok += 1
            lat.append(time.perf_counter() - t0)
        except SSFTError as exc:                      # a failed search, counted
            failed += 1
            errors.append(str(exc)[:300])
    lat_ms = 1e3 * np.array(lat or [np.nan])
    return {"searches": ok, "failed_searches": failed,
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "errors": errors[:5]}


def churn(uri: str, seconds: float, ds: int, dp: int, m: int, prefill: int) -> dict:
    collection = f"churn{uuid.uuid4().hex[:12]}"
    g = open_gallery(uri, (ds, dp), collection=collection, index="ivf")
    feats, pids, cams, _ = scale_data(prefill, ds, dp, 1, seed=7)
    for s in range(0, prefill, 2000):
        sl = np.arange(s, min(prefill, s + 2000))
        g.add(feats.take(sl), pids=pids[sl], camids=cams[sl], entry_ids=sl)
    settle(g)
    base = [sys.executable, __file__, "--dims", f"{ds},{dp}", "--shortlist", str(m), "--uri", uri]
    procs = [subprocess.Popen(base + ["--role", f"writer:{collection}:{w}:{seconds}"],
                              stdout=subprocess.PIPE, text=True) for w in (1, 2, 3)]
    procs.append(subprocess.Popen(base + ["--role", f"searcher:{collection}:0:{seconds}"],
                                  stdout=subprocess.PIPE, text=True))
    loads = []
    while any(p.poll() is None for p in procs):
        loads.append(os.getloadavg()[0])
        time.sleep(1.0)
    outs = [json.loads(p.stdout.read().strip().splitlines()[-1]) for p in procs]
    writers, search = outs[:3], outs[3]
    adds, removes = sum(w["adds"] for w in writers), sum(w["removes"] for w in writers)
    final = len(g)
    g._client.drop_collection(collection)
    g.close()
    return {"seconds": seconds, "prefill": prefill, "writers": writers, "searcher": search,
            "adds": adds, "removes": removes, "final_count": final,
            "expected_count": prefill + adds - removes,
            "failed_writes": sum(w["failed_writes"] for w in writers),
            "failed_searches": search["failed_searches"],
            "loadavg_during": [min(loads or [0]), max(loads or [0])]}


@click.command()
@click.option("--uri", required=True)
@click.option("--dims", default="512,512", callback=int_list)
@click.option("--shortlist", "m", default=100)
@click.option("--role", required=True, help="writer|searcher:COLL:ID:SECONDS")
def main(uri: str, dims: list[int], m: int, role: str) -> None:
    """One churn process; prints its counts as one JSON line."""
    kind, coll, wid, secs = role.split(":")
    ds, dp = dims
    res = (writer(uri, coll, int(wid), float(secs), ds, dp) if kind == "writer"
           else searcher(uri, coll, float(secs), ds, dp, m))
    click.echo(json.dumps(res))


if __name__ == "__main__":
    main()
