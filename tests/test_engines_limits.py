"""Engines state their row limits and the runtime respects them: a ReIDRuntime whose transfer
engine is a (stand-in) TensorRT engine with a 64-row profile ranks like an unlimited one."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from ssft_deploy.engines import open_engine
from ssft_deploy.engines.fallback import unlimited_fallback
from ssft_deploy.errors import EngineLimitError
from ssft_deploy.features import Features
from ssft_deploy.gallery import Gallery
from ssft_deploy.runtime import ReIDRuntime
from tests.bundle_factory import DP, DS, DT, transfer_graph
from tests.test_engines_trt_fake import TRANSFER_REFS, _bundle_with_plan, fake_gpu  # noqa: F401

LIMIT = 64
WT = np.random.default_rng(5).standard_normal((2 * DP + DS, DT)).astype(np.float32)


def gather_transfer(z, idx, w):
    """``(z + sum_j w_ij z[idx_ij]) @ Wt``: depends on neighbours, not on where a block sits, so
    single-query blocks give the same result however they are batched (as the real graph)."""
    return ((z + np.einsum("nk,nkd->nd", w, z[idx])) @ WT).astype(np.float32)


def gather_transfer_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gather", ["z", "idx"], ["zi"], axis=0),
        helper.make_node("Unsqueeze", ["w", "ax2"], ["w3"]),
        helper.make_node("Mul", ["zi", "w3"], ["wz"]),
        helper.make_node("ReduceSum", ["wz", "ax1"], ["agg"], keepdims=0),
        helper.make_node("Add", ["z", "agg"], ["zs"]),
        helper.make_node("MatMul", ["zs", "wt"], ["transferred"]),
    ]
    return transfer_graph(nodes, [numpy_helper.from_array(WT, "wt"),
                                  numpy_helper.from_array(np.array([1]), "ax1"),
                                  numpy_helper.from_array(np.array([2]), "ax2")])


TRANSFER_REFS["gather"] = gather_transfer


def _feats(n, modality, seed):
    rng = np.random.default_rng(seed)
    return Features(rng.standard_normal((n, DS)).astype(np.float32),
                    rng.standard_normal((n, DP)).astype(np.float32),
                    np.full(n, modality, np.int64))


@pytest.fixture
def bundle(fake_gpu, tmp_path):  # noqa: F811 (the fixture imported above)
    from ssft_deploy.bundle import load_bundle

    root = _bundle_with_plan(tmp_path, plans=(("transfer", LIMIT),),
                             transfer=("gather", gather_transfer_model()))
    return load_bundle(root, allow_ungated=True)  # stand-in plan and graph: no gate verdict


def _calls(engine):
    """Record the rows of every call into ``engine``."""
    rows, run = [], engine._run

    def spy(feeds):
        rows.append(len(feeds["z"]))
        return run(feeds)

    engine._run = spy
    return rows


def _search(rt, query, gallery, mode):
    gal = Gallery(DS, DP)
    gal.add(gallery, np.arange(len(gallery)) // 2, np.arange(len(gallery)))
    return [h.to_dict() for h in rt.search(query, top=5, mode=mode, gallery=gal)]


def test_onnx_runtime_engines_have_no_row_limit(bundle):
    assert open_engine(bundle, "transfer", backend="ort-cpu").max_batch is None


def test_single_query_fits_a_64_row_transfer_engine_and_ranks_alike(bundle):
    query, gallery = _feats(10, 1, 1), _feats(20, 0, 2)
    with ReIDRuntime.open(bundle, backend="auto", affinity="dense") as rt, \
            ReIDRuntime.open(bundle, backend="ort-cpu", affinity="dense") as ref:
        assert rt.transfer_engine.name == "tensorrt" and rt.sstn.max_rows == LIMIT
        assert ref.transfer_engine.max_batch is None and ref.sstn.max_rows is None
        rows = _calls(rt.transfer_engine)
        got = _search(rt, query, gallery, "single-query")
        want = _search(ref, query, gallery, "single-query")
        assert [h["pids"] for h in got] == [h["pids"] for h in want]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a["distances"], b["distances"], atol=1e-5)
        # blocks of 21 rows, three per call: 63 <= 64; nothing ran on the fallback
        assert rows and max(rows) <= LIMIT and sum(rows) == 10 * 21 and max(rows) == 63
        assert not rt.transfer_fallback.opened


def test_all_queries_beyond_the_limit_falls_back_with_a_logged_reason(bundle, caplog):
    query, gallery = _feats(50, 1, 3), _feats(20, 0, 4)   # 70 rows in one graph > 64
    with ReIDRuntime.open(bundle, backend="auto", affinity="dense") as rt, \
            ReIDRuntime.open(bundle, backend="ort-cpu", affinity="dense") as ref:
        rows = _calls(rt.transfer_engine)
        with caplog.at_level(logging.WARNING, logger="ssft_deploy.transfer"):
            got = _search(rt, query, gallery, "all-queries")
        assert rows == [] and rt.transfer_fallback.opened
        assert rt.transfer_fallback.get().name == "ort-cpu"
        assert any("70 rows" in r.getMessage() and "at most 64" in r.getMessage()
                   for r in caplog.records)
        want = _search(ref, query, gallery, "all-queries")
        assert [h["pids"] for h in got] == [h["pids"] for h in want]
        small = _search(rt, query.take(slice(0, 10)), gallery, "all-queries")  # 30 rows: TRT
        assert rows == [30] and len(small) == 10


def test_all_queries_beyond_the_limit_without_fallback_names_the_limit(bundle):
    query, gallery = _feats(50, 1, 3), _feats(20, 0, 4)
    with ReIDRuntime.open(bundle, backend="auto", affinity="dense") as opened:
        rt = ReIDRuntime(opened.bundle, opened.extractors, opened.transfer_engine,
                         affinity="dense")   # no fallback engine
        with pytest.raises(EngineLimitError, match=r"70 rows .* at most 64.*--max-n 70"):
            _search(rt, query, gallery, "all-queries")
        # a single-query block larger than the engine (gallery of 64 + the query) also names it
        with pytest.raises(EngineLimitError, match="65 rows"):
            _search(rt, query.take(slice(0, 2)), _feats(64, 0, 5), "single-query")


def test_fallback_is_none_for_unlimited_engines_and_ort_for_limited(bundle):
    from ssft_deploy.bundle import load_bundle

    b = load_bundle(bundle)
    with open_engine(b, "transfer", backend="ort-cpu") as ort_eng:
        assert unlimited_fallback(b, "transfer", "fp32", ort_eng) is None
    with open_engine(b, "transfer", backend="tensorrt") as trt_eng:
        lazy = unlimited_fallback(b, "transfer", "fp16", trt_eng)  # no fp16 graph: fp32
        assert lazy is not None and not lazy.opened and "fp32" in lazy.label
        assert lazy.get().max_batch is None
        lazy.close()
