"""The rows of the Milvus store (format ``ssft-milvus/2``, see ``milvus.py``): one write request
built column by column from numpy, and rows read back as entries.

pymilvus packs a row-based write field by field and row by row (18 Python calls per row, each
vector float by float into protobuf); a batch of 1000 entries (2000 rows, 15 MB) took 0.5-0.6 s
of client time that way. Here each column goes into the request's protobuf in one call: the
vectors as one float32 array, the JSON cells encoded once per entry (both rows carry the same).
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import numpy as np

from ssft_deploy.gallery.table import Entries

VERSION_KEY = "version"
# a row's fields as searches return them: both features come in ``meta`` (base64), never as the
# vector field, which Milvus 2.3 returns several times slower (and pymilvus parses as lists)
OUT = ["eid", "block", "pid", "camid", "track", "ts", "meta"]
_INT64, _DOUBLE, _VARCHAR, _JSON, _FLOAT_VECTOR = 5, 11, 21, 23, 101  # schema.proto DataType


def upsert_request(collection: str, entries: Entries, width: int) -> Any:
    """One UpsertRequest: both rows of every entry (``s:ID`` then ``p:ID``) and the version row
    with a new token, which Milvus applies at one timestamp."""
    from pymilvus.grpc_gen import milvus_pb2

    c, n = entries.cols, len(entries)
    ids = c["ids"].astype(np.int64)
    m = c["modality"].astype(np.int64)
    b64 = {f: [base64.b64encode(r.tobytes()).decode("ascii")
               for r in np.ascontiguousarray(c[f], np.float32)] for f in ("shared", "specific")}
    meta = [json.dumps({"v": v, "s": s, "p": p}, separators=(",", ":")).encode()
            for v, s, p in zip(entries.meta, b64["shared"], b64["specific"])]
    vec = np.zeros((2 * n + 1, width), np.float32)
    for half, f in enumerate(("shared", "specific")):
        vec[half * n:(half + 1) * n, :c[f].shape[1]] = c[f]
    vec[2 * n, 0] = 1.0                                  # the version row's (any nonzero) vector

    def both(col: np.ndarray, version: Any) -> list:
        return [*col.tolist(), *col.tolist(), version]

    token = json.dumps({"token": secrets.token_hex(8)}).encode()
    req = milvus_pb2.UpsertRequest(collection_name=collection, num_rows=2 * n + 1)
    cols: list[tuple[str, int, list]] = [
        ("pk", _VARCHAR, [*(f"s:{i}" for i in ids.tolist()), *(f"p:{i}" for i in ids.tolist()),
                          VERSION_KEY]),
        ("eid", _INT64, both(ids, -1)),
        ("block", _INT64, [*m.tolist(), *(m + 2).tolist(), -1]),
        ("pid", _INT64, both(c["pids"], -1)), ("camid", _INT64, both(c["camids"], -1)),
        ("track", _INT64, both(c["tracks"], -1)), ("ts", _DOUBLE, both(c["ts"], 0.0)),
        ("meta", _JSON, [*meta, *meta, token])]
    slots = {_INT64: "long_data", _DOUBLE: "double_data", _VARCHAR: "string_data",
             _JSON: "json_data"}
    for name, kind, values in cols:
        fd = req.fields_data.add(type=kind, field_name=name)
        getattr(fd.scalars, slots[kind]).data.extend(values)
    fd = req.fields_data.add(type=_FLOAT_VECTOR, field_name="vec")
    fd.vectors.dim = width
    fd.vectors.float_vector.data.extend(vec.ravel().tolist())
    return req


def parse(r: dict) -> tuple:
    """A returned row as (eid, shared, specific, modality, pid, camid, track, ts, meta)."""
    meta = r["meta"]
    return (int(r["eid"]), np.frombuffer(base64.b64decode(meta["s"]), np.float32),
            np.frombuffer(base64.b64decode(meta["p"]), np.float32), int(r["block"]) % 2,
            int(r["pid"]), int(r["camid"]), int(r["track"]), float(r["ts"]), meta.get("v"))


def to_entries(rows: list[tuple], dims: tuple[int, int]) -> Entries:
    """Parsed rows as an Entries table (in the given order)."""
    e = Entries.empty(*dims)
    if not rows:
        return e
    cols = list(zip(*rows))
    names = ("ids", "shared", "specific", "modality", "pids", "camids", "tracks", "ts")
    out = {n: np.asarray(v, e.cols[n].dtype) for n, v in zip(names, cols)}
    for k in ("shared", "specific"):
        out[k] = out[k].reshape(len(rows), -1)
    return Entries(out, list(cols[8]))
