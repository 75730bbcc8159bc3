"""FrameBatcher against hostile engines and options: BaseException faults, bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from ssft_deploy.batcher import CropFeatures, FrameBatcher
from ssft_deploy.errors import EngineError, SSFTError
from tests.test_batcher import StandInEngine, crop


class Injected(BaseException):
    """A BaseException that is not an Exception (like SystemExit, KeyboardInterrupt)."""


@pytest.mark.parametrize("fault", [SystemExit(3), KeyboardInterrupt(), Injected("boom")],
                         ids=["SystemExit", "KeyboardInterrupt", "BaseException"])
def test_engine_base_exception_fails_its_batch_and_the_worker_carries_on(fault):
    eng = StandInEngine()
    calls = {"n": 0}

    def hostile(x, modality):
        calls["n"] += 1
        if calls["n"] == 1:
            raise fault
        return eng(x, modality)

    b = FrameBatcher(hostile, max_batch=4, max_wait_ms=20)
    try:
        first = [b.submit(crop(i)) for i in range(3)]
        for f in first:        # today: the worker thread dies and these never complete
            err = f.exception(timeout=5)
            assert isinstance(err, EngineError) and type(fault).__name__ in str(err)
        later = [b.submit(crop(i), modality="rgb") for i in range(5)]
        assert all(isinstance(f.result(timeout=5), CropFeatures) for f in later)
        st = b.stats()
        assert st["engine_faults"] == 1 and st["failed"] == 3 and st["completed"] == 5
    finally:
        b.close(timeout=5)


def test_a_fault_outside_the_engine_call_restarts_the_worker(monkeypatch):
    """A BaseException escaping the worker loop itself (a bug, not the engine) fails the batch it
    held, starts a new worker and is counted; nothing stays pending."""
    b = FrameBatcher(StandInEngine(), max_batch=2, max_wait_ms=20)
    original = FrameBatcher._run_batch
    calls = {"n": 0}

    def broken(self, modality, batch, stacked):
        calls["n"] += 1
        if calls["n"] == 1:
            raise SystemExit("injected loop fault")
        return original(self, modality, batch, stacked)

    monkeypatch.setattr(FrameBatcher, "_run_batch", broken)
    try:
        first = [b.submit(crop(i)) for i in range(2)]
        for f in first:
            err = f.exception(timeout=5)
            assert isinstance(err, EngineError) and "injected loop fault" in str(err)
        assert isinstance(b.submit(crop(5)).result(timeout=5), CropFeatures)
        assert b.stats()["worker_restarts"] == 1
    finally:
        b.close(timeout=5)


@pytest.mark.parametrize("kwargs", [
    {"max_batch": 0}, {"max_batch": 8, "max_queue": 4}, {"full_policy": "drop"},
    {"max_batch": "8"}, {"max_batch": 2.5}, {"max_wait_ms": "soon"}, {"max_wait_ms": -1},
    {"block_timeout_s": float("nan")}, {"max_queue": None},
])
def test_bad_options_are_package_errors(kwargs):
    with pytest.raises(SSFTError) as info:     # today: ValueError / TypeError
        FrameBatcher(StandInEngine(), **kwargs).close()
    name = next(iter(kwargs))
    assert name in str(info.value)


def test_good_options_still_accepted():
    b = FrameBatcher(StandInEngine(), max_batch=np.int64(4), max_queue=8, max_wait_ms=0,
                     block_timeout_s=0.5)
    try:
        assert isinstance(b.submit(crop(0)).result(timeout=5), CropFeatures)
    finally:
        b.close(timeout=5)
    assert np.isfinite(b.stats()["latency_ms"]["p50"])
