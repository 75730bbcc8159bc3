"""Load test (bounded in time and count, in process): 16 camera threads, injected engine faults."""

from __future__ import annotations

import threading
import time

import numpy as np

from ssft_deploy.batcher import FrameBatcher
from ssft_deploy.errors import EngineError

CAMERAS, DURATION_S, MAX_PER_CAMERA = 16, 2.0, 4000
MAX_QUEUE, FAULT_EVERY = 96, 5
H, W = 16, 8


class FlakyEngine:
    """Fixed-cost stand-in extractor failing every FAULT_EVERY-th batch; crop id = pixel [0,0,0]."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.proj = rng.standard_normal((3, 5)).astype(np.float32)
        self.lock = threading.Lock()
        self.calls = 0
        self.failed_ids: set[int] = set()

    def features(self, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=(2, 3)) @ self.proj

    def __call__(self, x: np.ndarray, modality: str):
        time.sleep(0.001)                      # a fixed per-batch cost, GIL released like an engine
        with self.lock:
            self.calls += 1
            fault = self.calls % FAULT_EVERY == 0
            if fault:
                self.failed_ids.update(int(v) for v in x[:, 0, 0, 0])
        if fault:
            raise RuntimeError(f"injected fault in batch {self.calls}")
        f = self.features(x)
        return f, -f


def test_sixteen_cameras_no_lost_futures_faults_isolated_queue_bounded():
    eng = FlakyEngine()
    batcher = FrameBatcher(eng, max_batch=32, max_wait_ms=5, max_queue=MAX_QUEUE,
                           full_policy="block", block_timeout_s=10)
    futures: list[list] = [[] for _ in range(CAMERAS)]
    crops: list[list] = [[] for _ in range(CAMERAS)]
    depth_seen = [0]
    stop = threading.Event()

    def camera(cam: int) -> None:
        base = np.random.default_rng(cam).standard_normal((3, H, W)).astype(np.float32)
        end = time.perf_counter() + DURATION_S
        for i in range(MAX_PER_CAMERA):
            if time.perf_counter() >= end:
                break
            c = base.copy()
            c[0, 0, 0] = cam * MAX_PER_CAMERA + i      # unique id, exact in float32
            crops[cam].append(c)
            futures[cam].append(batcher.submit(c, camera_id=cam, modality=("rgb", "ir")[cam % 2]))

    def monitor() -> None:
        while not stop.is_set():
            depth_seen[0] = max(depth_seen[0], *batcher.stats()["queue_depth"].values())
            time.sleep(0.002)

    mon = threading.Thread(target=monitor)
    mon.start()
    threads = [threading.Thread(target=camera, args=(c,)) for c in range(CAMERAS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(DURATION_S + 30)
    batcher.close(drain=True, timeout=30)
    elapsed = time.perf_counter() - t0
    stop.set()
    mon.join()

    all_futs = [f for fs in futures for f in fs]
    all_crops = np.stack([c for cs in crops for c in cs])
    ids = all_crops[:, 0, 0, 0].astype(int)
    assert all(f.done() for f in all_futs), "lost futures"
    errors = [f.exception() for f in all_futs]
    failed = {int(i) for i, e in zip(ids, errors) if e is not None}
    assert all(isinstance(e, EngineError) and "injected" in str(e) for e in errors if e)
    assert failed == eng.failed_ids                  # exactly the faulty batches' crops failed
    assert 0 < len(failed) < len(all_futs)
    ok = [i for i, e in enumerate(errors) if e is None]
    got = np.stack([all_futs[i].result().shared for i in ok])
    np.testing.assert_allclose(got, eng.features(all_crops[ok]), rtol=1e-5, atol=1e-5)
    assert [all_futs[i].result().camera_id for i in ok] == [int(j) // MAX_PER_CAMERA
                                                          for j in ids[ok]]
    st = batcher.stats()
    assert st["submitted"] == len(all_futs) == st["completed"] + st["failed"]
    assert st["failed"] == len(failed) and st["rejected"] == 0
    assert max(st["max_queue_depth"].values()) <= MAX_QUEUE and depth_seen[0] <= MAX_QUEUE
    assert max(st["batch_sizes"]) <= 32
    print(f"\nload: {CAMERAS} cameras, {elapsed:.2f} s, {len(all_futs)} crops "
          f"({len(all_futs) / elapsed:.0f}/s), completed {st['completed']}, failed {st['failed']} "
          f"in {st['failed_batches']}/{st['batches']} batches, lost 0, mean batch "
          f"{st['mean_batch']:.1f}, max queue depth {st['max_queue_depth']} (bound {MAX_QUEUE}), "
          f"latency ms {st['latency_ms']}")
