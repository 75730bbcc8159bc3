"""The Milvus server's own ingest ceiling beside the store's add rate (issue 21), in one process
against one server: is 10,000 entries/s in batches of 1,000 reachable on this machine at all?

Cases, each into a fresh collection, ``batches`` requests of ``batch`` entries, interleaved by
round (A B C D, B C D A, ...) so the load moves every case alike:

* ``bare_1000``: ``batch`` rows of an INT64 key and a 512-d vector, nothing else (the request
  built as one buffer, as the store does: the server's floor for the vectors alone);
* ``bare_2000``: twice the rows (an entry is two rows in ``ssft-milvus/3``);
* ``pymilvus_rows``: the same 1,000 bare rows through pymilvus's own ``insert`` (row dicts);
* ``store``: ``MilvusGallery.add`` of ``batch`` entries (both rows, features, meta, the version
  row: one upsert).

Used by ``gallery_stores.py`` (``--ingest``); the JSON records rows/s, entries/s and MB/s.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from ssft_deploy.features import Features
from ssft_deploy.gallery import open_gallery
from ssft_deploy.gallery.milvus_rows import vector_field

_INT64 = 5


def _bare_collection(client: Any, dim: int) -> str:
    from pymilvus import DataType

    name = f"ingest{uuid.uuid4().hex[:12]}"
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=dim)
    ip = client.prepare_index_params()
    ip.add_index("vec", index_type="IVF_FLAT", metric_type="COSINE", params={"nlist": 1024})
    client.create_collection(name, schema=schema, index_params=ip, consistency_level="Bounded")
    return name


def _bare_request(name: str, keys: np.ndarray, vec: np.ndarray) -> Any:
    from pymilvus.grpc_gen import milvus_pb2

    req = milvus_pb2.InsertRequest(collection_name=name, num_rows=len(keys))
    fd = req.fields_data.add(type=_INT64, field_name="pk")
    fd.scalars.long_data.data.extend(keys.tolist())
    vector_field(req, "vec", vec)
    return req


def ingest_ceiling(uri: str, ds: int = 512, dp: int = 512, batch: int = 1000,
                   batches: int = 10) -> dict:
    """Seconds per request for each case (see the module docstring) and the rates they give."""
    g = open_gallery(uri, (ds, dp), collection=f"ingest{uuid.uuid4().hex[:12]}", index="ivf")
    client, conn = g._client, g._client._get_connection()
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((2 * batch, max(ds, dp))).astype(np.float32)
    feats = Features(rng.standard_normal((batch, ds)), rng.standard_normal((batch, dp)), 0)
    names = {c: _bare_collection(client, max(ds, dp))
             for c in ("bare_1000", "bare_2000", "pymilvus_rows")}
    rows_of = {"bare_1000": batch, "bare_2000": 2 * batch, "pymilvus_rows": batch,
               "store": 2 * batch + 1}
    req_bytes: dict[str, int] = {}
    real_upsert = conn.upsert

    def upsert(*args: Any, **kwargs: Any) -> Any:    # the store's request size, as sent
        req_bytes["store"] = kwargs["upsert_param"].ByteSize()
        return real_upsert(*args, **kwargs)
    conn.upsert = upsert

    def call(case: str, r: int) -> None:
        keys = np.arange(r * 2 * batch, (r + 1) * 2 * batch)
        if case == "store":
            g.add(feats, pids=keys[:batch] % 97, camids=1, entry_ids=keys[:batch])
            return
        if case == "pymilvus_rows":
            client.insert(names[case], [{"pk": int(k), "vec": v} for k, v in
                                        zip(keys[:batch], vec[:batch])])
            return
        n = rows_of[case]
        req = _bare_request(names[case], keys[:n], vec[:n])
        req_bytes[case] = req.ByteSize()
        conn.batch_insert(names[case], [], insert_param=req, schema={"fields": []})

    cases = list(rows_of)
    seconds: dict[str, list[float]] = {c: [] for c in cases}
    for r in range(batches):
        for c in cases[r % len(cases):] + cases[:r % len(cases)]:
            t0 = time.perf_counter()
            call(c, r)
            seconds[c].append(time.perf_counter() - t0)
    req_bytes["pymilvus_rows"] = req_bytes["bare_1000"]
    out = {}
    for c in cases:
        s = float(np.median(seconds[c]))
        out[c] = {"rows_per_request": rows_of[c], "request_mb": req_bytes[c] / 2**20,
                  "s_per_request_p50": s, "s_per_request": seconds[c],
                  "rows_per_s": rows_of[c] / s, "entries_per_s": batch / s,
                  "mb_per_s": req_bytes[c] / 2**20 / s}
    for name in names.values():
        client.drop_collection(name)
    client.drop_collection(g.collection)
    g.close()
    return {"batch": batch, "batches": batches, "dim": max(ds, dp), "cases": out}

