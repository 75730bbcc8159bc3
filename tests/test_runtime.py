"""ReIDRuntime on a tiny ONNX bundle: extraction, chunking, boxes, transfer, search, evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from ssft_deploy.errors import GalleryError, InputError
from ssft_deploy.features import Features
from ssft_deploy.gallery import MODES, SearchResult
from ssft_deploy.preprocess import Preprocessor
from ssft_deploy.runtime import ReIDRuntime
from ssft_deploy.transfer import SSTN
from tests.bundle_factory import (
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
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("rt") / "b", input_size=SIZE)


def _open(bundle):
    return ReIDRuntime.open(bundle, backend="ort-cpu", affinity="dense", max_batch=3,
                            intra_op_threads=1, gallery=None)


@pytest.fixture(scope="module")
def rt(bundle):
    runtime = _open(bundle)
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
    shared = rt.distances(query, gallery, "shared")
    np.testing.assert_allclose(shared[1, 2], np.linalg.norm(
        query.shared[1] / np.linalg.norm(query.shared[1])
        - gallery.shared[2] / np.linalg.norm(gallery.shared[2])), atol=1e-5)
    with pytest.raises(InputError, match="unknown search mode"):
        rt.distances(query, gallery, "magic")


def test_bundle_graph_without_the_query_edge_column_says_re_export(rt):
    """The factory's graph takes 2k neighbours, as bundles exported before the 2k + 1 width did:
    Eq. 22 over a gallery of both modalities needs 2k + 1 and gets a clear error."""
    from ssft_deploy.errors import EngineError

    assert rt.transfer_engine.inputs["idx"].shape == (-1, 2 * K)
    query = _feats(2, "ir", 30)
    mixed = Features.concat([_feats(3, "rgb", 31), _feats(3, "ir", 32)])
    with pytest.raises(EngineError, match="re-export"):
        rt.distances(query, mixed, "single-query")
    rt.distances(query, mixed, "all-queries")  # 2k wide: runs as before


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


def _best_per_pid(dist, pids, top):
    """Reference ranking: each identity at its closest row, closest first."""
    best = {}
    for j in np.argsort(dist, kind="stable"):
        best.setdefault(int(pids[j]), (float(dist[j]), int(j)))
    return sorted(best.items(), key=lambda kv: kv[1])[:top]


def test_search_uses_the_runtimes_own_gallery_in_every_mode(bundle):
    pids, camids = np.array([5, 5, 7, 8, 7, 9]), np.arange(6)
    gallery = _feats(6, "rgb", 30)
    # IR queries carrying the features of gallery rows 2 and 3 (a query searches the RGB side)
    query = Features(gallery.shared[[2, 3]], gallery.specific[[2, 3]], np.ones(2, np.int64))
    ref = SSTN(reference_transfer, k=K, affinity="dense")
    with _open(bundle) as rt:
        with pytest.raises(GalleryError, match="empty"):
            rt.search(query)
        ids = rt.gallery.add(gallery, pids, camids)
        expected = {"shared": rt.distances(query, gallery, "shared"),
                    "single-query": ref.single_query_distances(query, gallery),
                    "all-queries": ref.auxiliary_distances(query, gallery),
                    "rolling": ref.auxiliary_distances(query, gallery)}  # rolling set empty yet
        for mode in MODES:
            hits = rt.search(query, top=3, mode=mode)
            assert len(hits) == 2 and all(isinstance(h, SearchResult) for h in hits)
            for h, dist in zip(hits, expected[mode]):
                want = _best_per_pid(dist, pids, 3)
                assert h.pids.tolist() == [pid for pid, _ in want], mode
                assert h.entry_ids.tolist() == [ids[j] for _, (_, j) in want], mode
                assert h.camids.tolist() == [camids[j] for _, (_, j) in want], mode
                np.testing.assert_allclose(h.distances, [d for _, (d, _) in want], atol=1e-4)
        assert [h.pids[0] for h in rt.search(query, top=1, mode="shared")] == [7, 8]
        assert len(rt.rolling) == 2  # "rolling" added its queries to the auxiliary set
        rolled = rt.search(query, top=3, mode="rolling")
        want = _best_per_pid(ref.auxiliary_distances(query, gallery, query)[0], pids, 3)
        np.testing.assert_allclose(rolled[0].distances, [d for _, (d, _) in want], atol=1e-4)
        assert rt.search(query.take(slice(0, 0))) == []
        with pytest.raises(InputError, match="unknown search mode"):
            rt.search(query, mode="shared-only")
        with pytest.raises(InputError, match="Gallery"):
            rt.search(query, gallery=(gallery, pids, camids))
        rt.gallery.remove(pids=pids)
        with pytest.raises(GalleryError, match="empty"):
            rt.search(query, mode="single-query")


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
