"""Stage one's recall against latency, per index knob (``gallery_scale.py --sweep``).

On the scale benchmark's data (``gallery_scale.scale_data``: same seed, same queries), each
faiss index the local store can build over the RGB entries' shared features is searched with the
IR queries as two-stage search's stage one does (``knn.build_index`` / ``knn.search``, unit
vectors, inner product), one query per call. Recall is against exact search in float64:
``recall@M`` (the exact top M found), ``recall@10`` (the exact top 10: here the query's own
identity's entries) and ``recall@M tol`` (a found entry counts when its cosine is within 1e-6 of
the exact M-th: ties at the boundary are not misses). The neighbour-list rows measure the Eq. 8
lists' search (gallery entries among their own modality on the specific field, k + slack = 8
candidates at the store's default ``nprobe`` / ``ef_search``): recall of the exact top k = 4.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np
from tqdm import tqdm

from ssft_deploy.affinity import knn
from ssft_deploy.affinity.common import SLACK

K = 4


def _index_mib(ix) -> float:
    """The index's own size (serialised: vectors, lists, graph links), MiB."""
    import faiss

    return len(faiss.serialize_index(ix)) / 2**20


def exact_top(q: np.ndarray, base: np.ndarray, m: int, chunk: int = 16
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-m indices (float64 cosines, ties by index) and the m-th cosine, per row."""
    top, mth = [], []
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk].astype(np.float64) @ base.T.astype(np.float64)
        part = np.argpartition(-sim, m, axis=1)[:, :m + 1]
        for row, p in zip(sim, part):
            o = p[np.lexsort((p, -row[p]))]
            top.append(o[:m])
            mth.append(row[o[m - 1]])
    return np.array(top), np.array(mth)


def recalls(found: np.ndarray, exact: np.ndarray, mth: np.ndarray, q: np.ndarray,
            base: np.ndarray) -> dict[str, float]:
    m = exact.shape[1]
    at_m = np.mean([len(np.intersect1d(e, f)) / m for e, f in zip(exact, found)])
    at_10 = np.mean([len(np.intersect1d(e[:10], f)) / 10 for e, f in zip(exact, found)])
    tol = []
    for i, f in enumerate(found):
        f = f[f >= 0]
        sims = base[f].astype(np.float64) @ q[i].astype(np.float64)
        tol.append(min(1.0, float(np.sum(sims >= mth[i] - 1e-6)) / m))
    return {"recall_at_m": float(at_m), "recall_at_10": float(at_10),
            "recall_at_m_tol": float(np.mean(tol))}


def _timed(ix, q: np.ndarray, c: int, **params) -> tuple[np.ndarray, list[float]]:
    knn.search(ix, q[:4], c, **params)  # warm
    lat = []
    for i in range(len(q)):
        t0 = time.perf_counter()
        knn.search(ix, q[i:i + 1], c, **params)
        lat.append(1e3 * (time.perf_counter() - t0))
    return knn.search(ix, q, c, **params), lat


def sweep(base: np.ndarray, q: np.ndarray, m: int, configs: list[tuple[str, dict, list[dict]]],
          spec: np.ndarray | None = None, nl_rows: int = 200) -> list[dict]:
    """One row per (index, build options, search options): build time, memory, latency, recall.
    ``spec``: the gallery's specific features, for the neighbour-list rows."""
    n = len(base)
    exact, mth = exact_top(q, base, m)
    out = []
    if spec is not None:
        sel = np.random.default_rng(1).choice(len(spec), min(nl_rows, len(spec)), replace=False)
        nl_exact, _ = exact_top(spec[sel], spec, K)
    for kind, build, searches in configs:
        gc.collect()
        t0 = time.perf_counter()
        ix = knn.build_index(base, kind, **build)
        build_s, mem = time.perf_counter() - t0, _index_mib(ix)
        for params in tqdm(searches, desc=f"sweep {n} {kind} {build}", leave=False):
            found, lat = _timed(ix, q, m, **params)
            out.append({"n": n, "index": kind, **build, **params,
                        "nlist": getattr(ix, "nlist", None), "build_s": build_s,
                        "index_mib": mem, "p50_ms": float(np.percentile(lat, 50)),
                        "p99_ms": float(np.percentile(lat, 99)), "queries": len(q),
                        **recalls(found, exact, mth, q, base), "loadavg": os.getloadavg()})
        del ix
        if spec is not None and kind != "flat" and (kind != "hnsw" or n <= 200_000):
            ix = knn.build_index(spec, kind, **build)
            for params in ([{"nprobe": p} for p in (16, 32, 64)] if kind == "ivf" else
                           [{"ef_search": 64}]):
                found, lat = _timed(ix, spec[sel], K + SLACK, **params)
                hit = np.mean([len(np.intersect1d(e, f)) / K for e, f in zip(nl_exact, found)])
                out.append({"n": n, "index": kind, **build, **params, "neighbour_lists": True,
                            "nlist": getattr(ix, "nlist", None), "recall_at_k": float(hit),
                            "k": K, "candidates": K + SLACK,
                            "p50_ms": float(np.percentile(lat, 50)), "loadavg": os.getloadavg()})
            del ix
    return out


def default_configs(n: int, hnsw: bool) -> list[tuple[str, dict, list[dict]]]:
    """Flat; IVF with sqrt(n) and 4 sqrt(n) lists over a range of nprobe; HNSW (M 32) over
    efSearch."""
    out: list[tuple[str, dict, list[dict]]] = [("flat", {}, [{}])]
    for mult in (1, 4):
        nlist = mult * int(np.sqrt(n))
        if mult == 4 and n > 200_000:
            continue  # 4000 lists at 1M: k-means training alone takes minutes on 2 cores
        probes = sorted({p for p in (16, 64, nlist // 8, nlist // 4, nlist // 2,
                                    int(np.ceil(0.6 * nlist)), 3 * nlist // 4)
                         if 1 <= p <= nlist})
        out.append(("ivf", {"nlist": nlist}, [{"nprobe": p} for p in probes]))
    if hnsw:
        out.append(("hnsw", {"m": 32}, [{"ef_search": e} for e in (100, 200, 400, 800, 1600)]))
    return out
