"""FrameBatcher: batching rules, bad crops, full-queue policies, shutdown, counters."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ssft_deploy.batcher import BatcherClosedError, CropFeatures, FrameBatcher, crop_box
from ssft_deploy.errors import EngineError, InputError, QueueFullError

H, W = 16, 8


class StandInEngine:
    """Deterministic extract_fn (fixed random projections of channel means), records batch sizes."""

    def __init__(self, ds: int = 6, dp: int = 4, delay_s: float = 0.0, gate=None):
        rng = np.random.default_rng(0)
        self.ps = rng.standard_normal((3 * 4, ds)).astype(np.float32)
        self.pp = rng.standard_normal((3 * 4, dp)).astype(np.float32)
        self.delay_s, self.gate = delay_s, gate
        self.sizes: list[int] = []
        self.modalities: list[str] = []

    def reference(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = x.shape[0]
        pooled = x.reshape(b, 3, 4, -1).mean(axis=3).reshape(b, 12)
        return pooled @ self.ps, pooled @ self.pp

    def __call__(self, x: np.ndarray, modality: str):
        if self.gate is not None:
            self.gate.wait(5)
        self.sizes.append(x.shape[0])
        self.modalities.append(modality)
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.reference(x)


def crop(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, H, W)).astype(np.float32)


def stuck_first_batch(b: FrameBatcher, n: int = 2) -> list:
    """Enqueue n crops at once (so they form one batch) and wait until the worker holds them."""
    frame = np.random.default_rng(7).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    futs = b.submit_boxes(frame, [(0, 0, 8, 16)] * n)
    deadline = time.time() + 5
    while b.stats()["queue_depth"]["rgb"] and time.time() < deadline:
        time.sleep(0.005)
    assert b.stats()["queue_depth"]["rgb"] == 0
    return futs


def to_chw(img: np.ndarray) -> np.ndarray:
    """Stand-in preprocess for raw HxWx3 uint8 crops (nearest resize, scale to [0,1])."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"bad crop shape {img.shape}")
    ys = np.linspace(0, img.shape[0] - 1, H).astype(int)
    xs = np.linspace(0, img.shape[1] - 1, W).astype(int)
    return np.ascontiguousarray(img[ys][:, xs].transpose(2, 0, 1), dtype=np.float32) / 255.0


def test_results_match_each_crop_and_modality():
    eng = StandInEngine()
    with FrameBatcher(eng, max_batch=8, max_wait_ms=20) as b:
        futs = [b.submit(crop(i), camera_id=i % 3, modality=("rgb", "ir")[i % 2], tag=i)
                for i in range(20)]
        res = [f.result(timeout=5) for f in futs]
    for i, r in enumerate(res):
        assert isinstance(r, CropFeatures)
        s, p = eng.reference(crop(i)[None])
        np.testing.assert_allclose(r.shared, s[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.specific, p[0], rtol=1e-5, atol=1e-6)
        assert (r.modality, r.camera_id, r.tag) == (i % 2, i % 3, i)
    assert set(eng.modalities) == {"rgb", "ir"}
    assert sum(eng.sizes) == 20


def test_batch_leaves_at_max_batch_or_max_wait():
    eng = StandInEngine()
    with FrameBatcher(eng, max_batch=4, max_wait_ms=30, max_queue=64) as b:
        t0 = time.perf_counter()
        lone = b.submit(crop(0)).result(timeout=5)
        waited = time.perf_counter() - t0
        assert eng.sizes == [1]
        assert 0.02 <= waited < 1.0        # held back for max_wait, then sent alone
        assert lone.latency_s >= 0.02
        eng.sizes.clear()
        futs = [b.submit(crop(i)) for i in range(12)]
        for f in futs:
            f.result(timeout=5)
    assert max(eng.sizes) <= 4 and sum(eng.sizes) == 12
    assert eng.sizes.count(4) >= 2        # full batches leave without waiting out max_wait


def test_bad_box_fails_only_its_own_future():
    eng = StandInEngine()
    frame = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    boxes = [(5, 5, 20, 40), (70, 50, 0, 30), (200, 200, 10, 10), (30, 10, 25, 45), ("a", 1, 2, 3)]
    with FrameBatcher(eng, to_chw, max_batch=8, max_wait_ms=5) as b:
        futs = b.submit_boxes(frame, boxes, camera_id="cam0", modality="ir", tags=list("abcde"))
        assert len(futs) == 5
        for i in (1, 2, 4):
            with pytest.raises(InputError):
                futs[i].result(timeout=5)
        good = [futs[0].result(timeout=5), futs[3].result(timeout=5)]
        assert [g.tag for g in good] == ["a", "d"] and all(g.modality == 1 for g in good)
        # a wrong-type crop through submit() fails its future, not the caller
        assert isinstance(b.submit(np.zeros((4, 4)), modality="ir").exception(5), InputError)
    s, _ = eng.reference(to_chw(crop_box(frame, boxes[0]))[None])
    np.testing.assert_allclose(good[0].shared, s[0], rtol=1e-5, atol=1e-6)
    assert b.stats()["failed"] == 4 and b.stats()["completed"] == 2


def test_bad_modality_and_default_preprocess_check():
    with FrameBatcher(StandInEngine()) as b:
        with pytest.raises(InputError):
            b.submit(crop(0), modality="depth")
        with pytest.raises(InputError):
            b.submit(crop(0), modality=True)
        err = b.submit(np.zeros((3, H, W), np.float64)).exception(5)
        assert isinstance(err, InputError) and "float32" in str(err)


def test_engine_fault_fails_that_batch_only_and_keeps_serving():
    eng = StandInEngine()
    calls = {"n": 0}

    def flaky(x, modality):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA illegal memory access (injected)")
        return eng(x, modality)

    with FrameBatcher(flaky, max_batch=4, max_wait_ms=50) as b:
        first = [b.submit(crop(i)) for i in range(4)]
        [f.result(timeout=5) for f in first]
        second = [b.submit(crop(i)) for i in range(4)]
        errs = [f.exception(timeout=5) for f in second]
        assert all(isinstance(e, EngineError) and "injected" in str(e) for e in errs)
        third = [b.submit(crop(i)) for i in range(4)]
        assert all(isinstance(f.result(timeout=5), CropFeatures) for f in third)
    st = b.stats()
    assert (st["completed"], st["failed"], st["failed_batches"]) == (8, 4, 1)


def test_wrong_output_rows_are_an_engine_error():
    def short(x, modality):
        return np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32)

    with FrameBatcher(short, max_batch=2, max_wait_ms=50) as b:
        futs = [b.submit(crop(i)) for i in range(2)]
        assert all(isinstance(f.exception(5), EngineError) for f in futs)


def test_reject_policy_raises_at_once_when_full():
    gate = threading.Event()
    eng = StandInEngine(gate=gate)
    b = FrameBatcher(eng, to_chw, max_batch=2, max_wait_ms=0, max_queue=4, full_policy="reject")
    try:
        inflight = stuck_first_batch(b)  # the worker holds them, stuck in the gate
        queued = [b.submit(crop(i).transpose(1, 2, 0).astype(np.uint8)) for i in range(4)]
        t0 = time.perf_counter()
        with pytest.raises(QueueFullError, match="reject"):
            b.submit(np.zeros((9, 9, 3), np.uint8))
        assert time.perf_counter() - t0 < 0.5  # at once: a blocking submit would wait 1 s
        assert b.submit(np.zeros((9, 9, 3), np.uint8), modality="ir")  # the other queue has room
        assert b.stats()["rejected"] == 1
        gate.set()
        assert all(isinstance(f.result(5), CropFeatures) for f in inflight + queued)
    finally:
        gate.set()
        b.close()


def test_block_policy_waits_then_raises_or_succeeds():
    gate = threading.Event()
    b = FrameBatcher(StandInEngine(gate=gate), to_chw, max_batch=2, max_wait_ms=0, max_queue=2,
                     full_policy="block", block_timeout_s=0.2)
    raw = np.zeros((9, 9, 3), np.uint8)
    try:
        first = stuck_first_batch(b)
        [b.submit(raw) for _ in range(2)]                  # queue now full
        t0 = time.perf_counter()
        with pytest.raises(QueueFullError, match="block"):
            b.submit(raw)
        assert 0.18 <= time.perf_counter() - t0 < 2.0
        threading.Timer(0.05, gate.set).start()           # room appears while we block
        late = b.submit(raw)
        assert isinstance(late.result(5), CropFeatures)
        assert all(isinstance(f.result(5), CropFeatures) for f in first)
    finally:
        gate.set()
        b.close()
    small = FrameBatcher(StandInEngine(), to_chw, max_batch=1, max_queue=2)
    with small, pytest.raises(InputError, match="max_queue"):    # could never fit: not a wait
        small.submit_boxes(np.zeros((40, 40, 3), np.uint8), [(0, 0, 9, 9)] * 3)


def test_close_drain_finishes_everything():
    eng = StandInEngine(delay_s=0.01)
    b = FrameBatcher(eng, max_batch=4, max_wait_ms=200)
    futs = [b.submit(crop(i)) for i in range(10)]
    b.close(drain=True, timeout=10)
    assert all(f.done() and isinstance(f.result(), CropFeatures) for f in futs)
    with pytest.raises(BatcherClosedError):
        b.submit(crop(0))
    assert b.stats()["completed"] == 10


def test_close_without_drain_fails_pending_clearly():
    gate = threading.Event()
    b = FrameBatcher(StandInEngine(gate=gate), to_chw, max_batch=2, max_wait_ms=0, max_queue=16)
    inflight = stuck_first_batch(b)
    pending = [b.submit(np.zeros((9, 9, 3), np.uint8)) for _ in range(6)]
    threading.Timer(0.1, gate.set).start()
    b.close(drain=False, timeout=10)
    for f in pending:
        err = f.exception(timeout=1)
        assert isinstance(err, BatcherClosedError) and "drain=False" in str(err)
    assert all(isinstance(f.result(1), CropFeatures) for f in inflight)  # in-flight batch finishes


def test_cancelled_future_is_skipped():
    gate = threading.Event()
    eng = StandInEngine(gate=gate)
    with FrameBatcher(eng, max_batch=1, max_wait_ms=0) as b:
        first = b.submit(crop(0))
        second = b.submit(crop(1))
        assert second.cancel()
        gate.set()
        first.result(5)
    assert sum(eng.sizes) == 1


def test_stats_report_depth_histogram_and_percentiles():
    with FrameBatcher(StandInEngine(), max_batch=4, max_wait_ms=5, max_queue=32) as b:
        for f in [b.submit(crop(i)) for i in range(10)]:
            f.result(5)
        st = b.stats()
    assert st["submitted"] == st["completed"] == 10
    assert sum(k * v for k, v in st["batch_sizes"].items()) == 10
    assert st["max_queue"] == 32 and 1 <= st["max_queue_depth"]["rgb"] <= 32
    lat = st["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]


def test_for_runtime_matches_runtime_extract(tmp_path):
    from ssft_deploy.runtime import ReIDRuntime
    from tests.bundle_factory import make_bundle

    rt = ReIDRuntime.open(make_bundle(tmp_path / "b", input_size=(16, 8)), backend="ort-cpu")
    frame = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    boxes = [(0, 0, 20, 40), (30, 4, 16, 30), (50, 10, 14, 30)]
    with FrameBatcher.for_runtime(rt, max_batch=2, max_wait_ms=5) as b:
        got = [f.result(5) for f in b.submit_boxes(frame, boxes, "cam", "ir")]
    want = rt.extract_boxes(frame, boxes, modality="ir")
    np.testing.assert_allclose(np.stack([g.shared for g in got]), want.shared, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.stack([g.specific for g in got]), want.specific, rtol=1e-5,
                               atol=1e-6)
    rt.close()
