"""One Milvus search request, its answer read as numpy columns (the Milvus store's search path).

pymilvus builds the request (its ``Prepare``, consistency and Session timestamps, the cached
schema) and the request goes through the connection's gRPC stub, synchronously; the answer is
read straight from the protobuf. Through ``MilvusClient.search`` pymilvus makes a Python object
per hit and per field (``SearchResult``: ~1.7 ms per 100 hits, at 10k entries about a fifth of
a two-stage search on an idle server), and its asynchronous form starts a gRPC polling thread
per request (~10 ms each). Rows stay undecoded (``Hits.row``) until the search needs them: most
hits of a neighbour list are never ranked. Where this pymilvus lacks the internals used here,
the search goes through ``MilvusClient.search`` instead (same answer, slower).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_SLOTS = {"long_data", "double_data", "string_data"}


class Hits:
    """Per query ``ids`` / ``cos`` [nq, limit] (-1 / -inf where fewer) and the hits' output
    columns (flat, hit order)."""

    def __init__(self, nq: int, limit: int, topks: Any, scores: Any, cols: dict[str, list],
                 id_field: str) -> None:
        topks = np.asarray(topks, np.int64) if len(topks) else np.zeros(nq, np.int64)
        self.cols = cols
        flat = np.asarray(cols.get(id_field, []), np.int64)    # no hits: no columns at all
        if len(flat) != int(topks.sum()):
            raise ValueError(f"the answer holds {int(topks.sum())} hits and {len(flat)} values "
                             f"of {id_field!r}")
        scores = np.asarray(scores, np.float64)
        self.ids = np.full((nq, limit), -1, np.int64)
        self.cos = np.full((nq, limit), -np.inf)
        q = np.repeat(np.arange(nq), topks)
        col = np.arange(len(flat)) - np.repeat(np.cumsum(topks) - topks, topks)
        self.ids[q, col], self.cos[q, col] = flat, scores
        self.flat_ids = flat

    @classmethod
    def from_proto(cls, nq: int, limit: int, res: Any, id_field: str) -> Hits:
        """From a ``SearchResultData`` message."""
        cols = {}
        for fd in res.fields_data:
            slot = fd.scalars.WhichOneof("data")
            if slot in _SLOTS:
                cols[fd.field_name] = list(getattr(fd.scalars, slot).data)
        return cls(nq, limit, res.topks, res.scores, cols, id_field)

    @classmethod
    def from_client(cls, nq: int, limit: int, res: list, fields: list[str],
                    id_field: str) -> Hits:
        """From ``MilvusClient.search``'s answer (hits as dicts)."""
        flat = [h for hits in res for h in hits]
        cols = {f: [h["entity"][f] for h in flat] for f in fields}
        return cls(nq, limit, [len(hits) for hits in res], [h["distance"] for h in flat], cols,
                   id_field)

    def row(self, j: int) -> dict:
        """Hit ``j``'s output fields as a dict (pymilvus's ``entity``)."""
        return {name: values[j] for name, values in self.cols.items()}


def search(client: Any, collection: str, vectors: np.ndarray, expr: str, limit: int,
           params: dict, level: str, fields: list[str], id_field: str = "eid") -> Hits:
    """One search request of ``vectors`` (float32 rows) as ``MilvusClient.search`` would send
    it (its connection, call context, cluster id and consistency); raises what pymilvus
    raises."""
    data = [r.tobytes() for r in np.ascontiguousarray(vectors, np.float32)]
    try:
        from pymilvus.client import ts_utils
        from pymilvus.client.call_context import _api_level_md
        from pymilvus.client.prepare import Prepare
        from pymilvus.client.utils import check_status

        conn, ctx = client._get_connection(), client._generate_call_context()
        kwargs = client._with_cluster_id({"consistency_level": level})
        kwargs["schema"] = conn._get_schema(collection, context=ctx)[0]
        default = ts_utils.construct_guarantee_ts(collection, kwargs, conn.server_address,
                                                  ctx.get_db_name())
        req = Prepare.search_requests_with_expr(
            collection_name=collection, anns_field="vec", param=params, limit=limit, data=data,
            expr=expr, output_fields=fields, use_default_consistency=default, **kwargs)
        stub, metadata = conn._stub, _api_level_md(ctx)
    except (ImportError, AttributeError, TypeError):  # another pymilvus: its public search
        res = client.search(collection, data=data, anns_field="vec", filter=expr, limit=limit,
                            search_params=params, consistency_level=level, output_fields=fields)
        return Hits.from_client(len(data), limit, res, fields, id_field)
    resp = stub.Search(req, metadata=metadata)
    check_status(resp.status)
    return Hits.from_proto(len(data), limit, resp.results, id_field)
