"""ReIDRuntime on a tiny ONNX bundle: extraction, chunking, boxes, transfer, search, evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.features import Features
from ssft_deploy.preprocess import Preprocessor
from ssft_deploy.runtime import ReIDRuntime, rank_identities
from ssft_deploy.transfer import SSTN
from tests.test_bundle_factory import (
    DP,
    DS,
    DT,
    K,
    make_bundle,
    reference_extract,
    reference_transfer,
)

SIZE = (16, 8)


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    root = make_bundle(tmp_path_factory.mktemp("rt") / "b", input_size=SIZE)
    runtime = ReIDRuntime.open(root, backend="ort-cpu", affinity="dense", max_batch=3,
                               intra_op_threads=1, gallery=None)
    yield runtime
    runtime.close()


def _crops(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (20 + i, 10 + i % 3, 3), dtype=np.uint8) for i in range(n)]


def _ref(crops, graph):
    return reference_extract(Preprocessor(SIZE).crops(crops).array, graph)


def test_extract_matches_reference_and_chunks(rt):
    crops = _crops(7)
    calls = []
    eng = rt.extractors[1]
    original = eng.run
    eng.run = lambda feeds: calls.append(len(feeds["images"])) or original(feeds)
    try:
        feats = rt.extract(crops, modality="ir")
    finally:
        del eng.run
    assert calls == [3, 3, 1]  # max_batch=3
    ref_s, ref_p = _ref(crops, "extractor_ir")
    np.testing.assert_allclose(feats.shared, ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats.specific, ref_p, rtol=1e-5, atol=1e-5)
    assert feats.modality.tolist() == [1] * 7
    rgb = rt.extract(crops[:2], modality="rgb")
    np.testing.assert_allclose(rgb.shared, _ref(crops[:2], "extractor_rgb")[0], atol=1e-5)
    assert not np.allclose(rgb.shared, feats.shared[:2])  # other modality, other weights


def test_bad_items_are_reported_per_item(rt, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"corrupt")
    items = [*_crops(2), tmp_path / "bad.png"]
    with pytest.raises(InputError, match="item 2"):
        rt.extract(items, "rgb")
    ex = rt.extract_batch(items, "rgb")
    assert ex.ok_indices.tolist() == [0, 1] and list(ex.errors) == [2] and len(ex.features) == 2
    with pytest.raises(InputError, match="modality"):
        rt.extract(_crops(1), "uv")


def test_extract_boxes(rt):
    frame = np.random.default_rng(5).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    feats = rt.extract_boxes(frame, [(-4, -4, 20, 30), (30, 40, 20, 30)], "rgb")
    ref_s, _ = _ref([frame[0:26, 0:16], frame[40:60, 30:40]], "extractor_rgb")
    np.testing.assert_allclose(feats.shared, ref_s, rtol=1e-5, atol=1e-5)
    ex = rt.extract_boxes_batch(frame, [(0, 0, 0, 5), (0, 0, 10, 10)], "rgb")
    assert ex.ok_indices.tolist() == [1] and list(ex.errors) == [0]


def _feats(n, modality, seed):
    rng = np.random.default_rng(seed)
    return Features(rng.standard_normal((n, DS)).astype(np.float32),
                    rng.standard_normal((n, DP)).astype(np.float32), modality)


def test_transfer_fn_and_distance_modes_match_numpy_reference(rt):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((9, 2 * DP + DS)).astype(np.float32)
    idx = rng.integers(0, 9, (9, 2 * K))
    w = rng.random((9, 2 * K))
    np.testing.assert_allclose(rt.transfer_fn(z, idx, w), reference_transfer(
        z, idx.astype(np.int64), w.astype(np.float32)), rtol=1e-5, atol=1e-4)
    query, gallery = _feats(4, "ir", 10), _feats(6, "rgb", 11)
    ref = SSTN(reference_transfer, k=K, affinity="dense")
    np.testing.assert_allclose(rt.distances(query, gallery, "all-queries"),
                               ref.auxiliary_distances(query, gallery), atol=1e-4)
    np.testing.assert_allclose(rt.distances(query, gallery, "single-query"),
                               ref.single_query_distances(query, gallery), atol=1e-4)
    assert rt.distances(query, gallery, "shared-only").shape == (4, 6)
    with pytest.raises(InputError, match="unknown search mode"):
        rt.distances(query, gallery, "magic")


def test_rolling_mode_uses_recent_queries(rt):
    rt.rolling.clear()
    query, gallery = _feats(2, "ir", 20), _feats(5, "rgb", 21)
    first = rt.distances(query, gallery, "rolling")
    assert len(rt.rolling) == 2
    np.testing.assert_allclose(first, rt.distances(query, gallery, "all-queries"), atol=1e-5)
    second = rt.distances(query, gallery, "rolling")  # now with the previous queries as aux
    ref = SSTN(reference_transfer, k=K, affinity="dense")
    np.testing.assert_allclose(second, ref.auxiliary_distances(query, gallery, query), atol=1e-4)
    assert len(rt.rolling) == 4


def test_search_ranks_identities(rt):
    gallery = _feats(6, "rgb", 30)
    pids = np.array([5, 5, 7, 8, 7, 9])
    camids = np.arange(6)
    query = gallery.take([2, 3])  # queries equal to gallery rows 2 and 3
    hits = rt.search(query, top=3, mode="shared-only", gallery=(gallery, pids, camids))
    assert hits[0][0].pid == 7 and hits[0][0].index == 2
    assert hits[0][0].distance == pytest.approx(0.0, abs=1e-3)
    assert hits[1][0].pid == 8 and len(hits[1]) == 3
    assert len({h.pid for h in hits[0]}) == 3  # identities, not samples
    empty = (Features.empty(DS, DP), np.zeros(0), np.zeros(0))
    with pytest.raises(GalleryError, match="empty"):
        rt.search(query, gallery=empty)


def test_rank_identities_takes_best_sample_per_pid():
    dist = np.array([[0.5, 0.1, 0.3, 0.2]])
    hits = rank_identities(dist, np.array([1, 2, 1, 3]), np.array([0, 1, 2, 3]), top=10)
    assert [(h.pid, h.index) for h in hits[0]] == [(2, 1), (3, 3), (1, 2)]


@dataclass(frozen=True)
class _Record:  # stand-in for ssft_deploy.datasets.records.ImageRecord
    path: str
    pid: int
    camid: int
    modality: int


def test_feature_source_extracts_records_in_order(rt, tmp_path):
    crops = _crops(5, seed=3)
    records = []
    for i, c in enumerate(crops):
        cv2.imwrite(str(tmp_path / f"{i}.png"), c)
        records.append(_Record(str(tmp_path / f"{i}.png"), i, 1, i % 2))
    src = rt.as_feature_source(progress=False)
    assert src.k == K and src.parts == ("shared", "specific")
    shared, specific = src.extract(records)
    assert shared.shape == (5, DS) and specific.shape == (5, DP)
    for i, c in enumerate(crops):
        ref = _ref([c], "extractor_ir" if i % 2 else "extractor_rgb")
        np.testing.assert_allclose(shared[i], ref[0][0], rtol=1e-5, atol=1e-5)
    z = np.zeros((3, 2 * DP + DS), np.float32)
    assert src.transfer(z, np.zeros((3, 2 * K), np.int64),
                        np.ones((3, 2 * K), np.float32)).shape == (3, DT)
