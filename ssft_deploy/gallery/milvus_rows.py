"""The rows of the Milvus store (format ``ssft-milvus/3``, see ``milvus.py``): one write request
built column by column from numpy, and rows read back as entries.

Both rows of an entry carry its two features as one base64 string (``feat``: shared then
specific, float32) and its meta value as JSON text (``meta``), both VARCHAR: the server stores
and returns them as they are (a JSON field is parsed by the server on the way in and by pymilvus
on the way out; with the features inside it, that was most of a write's and a search's cost).

pymilvus packs a row-based write field by field and row by row (18 Python calls per row, each
vector float by float into protobuf); a batch of 1000 entries (2000 rows, 15 MB) took 0.5-0.6 s
of client time that way. Here each column goes into the request's protobuf in one call: the
vectors as one float32 buffer, the JSON cells encoded once per entry (both rows carry the same).
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import numpy as np

from ssft_deploy.errors import InputError
from ssft_deploy.gallery.table import Entries

VERSION_KEY = "version"
META_MAX = 65535  # bytes of one entry's meta as JSON text (Milvus's VARCHAR limit)
# a row's fields as searches return them: the features come in ``feat``, never as the vector
# field, which Milvus 2.3 returns several times slower (and pymilvus parses as lists)
OUT = ["eid", "block", "pid", "camid", "track", "ts", "feat", "meta"]
_INT64, _DOUBLE, _VARCHAR, _FLOAT_VECTOR = 5, 11, 21, 101  # schema.proto DataType


def feat_length(dims: tuple[int, int]) -> int:
    """Characters of the ``feat`` column: base64 of both features as float32."""
    return 4 * -(-4 * sum(dims) // 3)


def upsert_request(collection: str, entries: Entries, width: int) -> Any:
    """One UpsertRequest: both rows of every entry (``s:ID`` then ``p:ID``) and the version row
    with a new token, which Milvus applies at one timestamp."""
    from pymilvus.grpc_gen import milvus_pb2

    c, n = entries.cols, len(entries)
    ids = c["ids"].astype(np.int64)
    m = c["modality"].astype(np.int64)
    both_feats = np.concatenate([c["shared"], c["specific"]], axis=1).astype(np.float32)
    feat = [base64.b64encode(r.tobytes()).decode("ascii") for r in both_feats]
    meta = [json.dumps(v, separators=(",", ":")) for v in entries.meta]
    big = [i for i, t in enumerate(meta) if len(t) > META_MAX or len(t.encode()) > META_MAX]
    if big:
        raise InputError(f"meta of entry {big[0]} is {len(meta[big[0]].encode())} bytes as JSON; "
                         f"a Milvus gallery holds at most {META_MAX} per entry")
    vec = np.zeros((2 * n + 1, width), np.float32)
    for half, f in enumerate(("shared", "specific")):
        vec[half * n:(half + 1) * n, :c[f].shape[1]] = c[f]
    vec[2 * n, 0] = 1.0                                  # the version row's (any nonzero) vector

    def both(col: np.ndarray, version: Any) -> list:
        return [*col.tolist(), *col.tolist(), version]

    token = secrets.token_hex(8)
    req = milvus_pb2.UpsertRequest(collection_name=collection, num_rows=2 * n + 1)
    cols: list[tuple[str, int, list]] = [
        ("pk", _VARCHAR, [*(f"s:{i}" for i in ids.tolist()), *(f"p:{i}" for i in ids.tolist()),
                          VERSION_KEY]),
        ("eid", _INT64, both(ids, -1)),
        ("block", _INT64, [*m.tolist(), *(m + 2).tolist(), -1]),
        ("pid", _INT64, both(c["pids"], -1)), ("camid", _INT64, both(c["camids"], -1)),
        ("track", _INT64, both(c["tracks"], -1)), ("ts", _DOUBLE, both(c["ts"], 0.0)),
        ("feat", _VARCHAR, [*feat, *feat, ""]), ("meta", _VARCHAR, [*meta, *meta, token])]
    slots = {_INT64: "long_data", _DOUBLE: "double_data", _VARCHAR: "string_data"}
    for name, kind, values in cols:
        fd = req.fields_data.add(type=kind, field_name=name)
        getattr(fd.scalars, slots[kind]).data.extend(values)
    vector_field(req, "vec", vec)
    return req


def vector_field(req: Any, name: str, vec: np.ndarray) -> None:
    """Add a float vector column [rows, dim] to an insert / upsert request in one copy."""
    fd = req.fields_data.add(type=_FLOAT_VECTOR, field_name=name)
    fd.vectors.dim = vec.shape[1]
    # FloatArray's only field, packed: its wire form is the raw little-endian float32 bytes
    # (parsed in one copy; a list of a million Python floats took 0.1-0.2 s to make and add)
    raw = np.ascontiguousarray(vec, "<f4").tobytes()
    fd.vectors.float_vector.MergeFromString(b"\x0a" + _varint(len(raw)) + raw)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def parse(r: dict, ds: int) -> tuple:
    """A returned row as (eid, shared, specific, modality, pid, camid, track, ts, meta);
    ``ds``: the shared feature's dim."""
    x = np.frombuffer(base64.b64decode(r["feat"]), np.float32)
    meta = r["meta"]
    return (int(r["eid"]), x[:ds], x[ds:], int(r["block"]) % 2, int(r["pid"]), int(r["camid"]),
            int(r["track"]), float(r["ts"]), None if meta == "null" else json.loads(meta))


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
