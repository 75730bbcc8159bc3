"""Precision is what was gated, engine state is what it says (issue 20 item 8): ONNX Runtime's
CUDA provider runs fp32 as fp32 (no TF32), an OpenVINO run error retries or falls back for that
call only (with the engine's threads), and a closed engine raises EngineError on every backend."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ssft_deploy.engines import open_engine
from ssft_deploy.engines.fallback import LazyEngine
from ssft_deploy.engines.ort import OrtCpuEngine, OrtCudaEngine
from ssft_deploy.errors import EngineError
from tests.bundle_factory import reference_extract
from tests.test_engines_trt_fake import _bundle_with_plan, fake_gpu  # noqa: F401

X = np.random.default_rng(0).standard_normal((3, 3, 16, 8)).astype(np.float32)


def test_cuda_provider_is_built_without_tf32(tiny_bundle, monkeypatch):
    """Ampere and newer run fp32 MatMul / Conv as TF32 unless ``use_tf32`` is 0; the gate
    judged fp32. Checked on the options the session is built with (no GPU needed)."""
    import onnxruntime as ort

    seen = {}

    def capture(path, sess_options=None, providers=None, **kw):
        seen["providers"] = providers
        raise RuntimeError("stop here: no GPU on this machine")

    monkeypatch.setattr(OrtCudaEngine, "unavailable_reason", classmethod(lambda cls: None))
    monkeypatch.setattr(ort, "InferenceSession", capture)
    with pytest.raises(EngineError, match="stop here"):
        OrtCudaEngine(tiny_bundle / "extractor_rgb.onnx", device_id=1)
    cuda = [p for p in seen["providers"] if isinstance(p, tuple)
            and p[0] == "CUDAExecutionProvider"]
    assert len(cuda) == 1
    opts = cuda[0][1]
    assert str(opts["use_tf32"]) == "0" and str(opts["device_id"]) == "1"


# -- OpenVINO: a run error affects that call only -----------------------------------------------

@pytest.fixture
def ov(tiny_bundle):
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    from ssft_deploy.engines import openvino as ovmod

    eng = ovmod.OpenVINOEngine(tiny_bundle / "extractor_rgb.onnx", "fp32", intra_op_threads=1)
    yield ovmod, eng
    eng.close()


def _failing(ovmod, monkeypatch, times: int):
    """Make the next ``times`` OpenVINO inferences raise; returns the call counter."""
    real, calls = ovmod._infer, {"n": 0, "failed": 0}

    def flaky(request, feeds):
        calls["n"] += 1
        if calls["failed"] < times:
            calls["failed"] += 1
            raise RuntimeError("simulated transient OpenVINO error")
        return real(request, feeds)

    monkeypatch.setattr(ovmod, "_infer", flaky)
    return calls


def _check(out):
    ref_s, ref_p = reference_extract(X, "extractor_rgb")
    np.testing.assert_allclose(out["shared"], ref_s, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["specific"], ref_p, rtol=1e-4, atol=1e-4)


def test_transient_openvino_error_is_retried_and_not_permanent(ov, monkeypatch):
    ovmod, eng = ov
    calls = _failing(ovmod, monkeypatch, times=1)
    _check(eng.run({"images": X}))
    assert eng.active_backend == "openvino" and eng.fallback_reason is None
    _check(eng.run({"images": X}))
    assert calls["n"] == 3  # failed, retried, then the next call on OpenVINO again


def test_failed_call_runs_on_onnx_runtime_with_the_engines_threads(ov, monkeypatch, caplog):
    ovmod, eng = ov
    _failing(ovmod, monkeypatch, times=2)  # the call and its retry
    with caplog.at_level(logging.WARNING, logger="ssft_deploy.engines"):
        _check(eng.run({"images": X}))
    assert eng.active_backend == "openvino"  # that call only
    stand_in = eng._ort
    assert stand_in is not None and stand_in.session.get_session_options().intra_op_num_threads == 1
    assert any("this call" in r.getMessage() for r in caplog.records)
    _check(eng.run({"images": X}))  # OpenVINO is healthy again


def test_persistent_openvino_failure_switches_once(ov, monkeypatch, caplog):
    ovmod, eng = ov
    _failing(ovmod, monkeypatch, times=10 ** 6)
    with caplog.at_level(logging.WARNING, logger="ssft_deploy.engines"):
        for _ in range(ovmod.SWITCH_AFTER + 2):
            _check(eng.run({"images": X}))
    assert eng.active_backend == "ort-cpu" and "transient" in eng.fallback_reason
    assert sum("switching this engine" in r.getMessage() for r in caplog.records) == 1


# -- closed engines ----------------------------------------------------------------------------

def _closed_raises(eng, feeds):
    eng.close()
    eng.close()  # idempotent
    with pytest.raises(EngineError, match="closed"):
        eng.run(feeds)


def test_closed_ort_engine_raises_engine_error(tiny_bundle):
    _closed_raises(OrtCpuEngine(tiny_bundle / "extractor_rgb.onnx"), {"images": X})


def test_closed_openvino_engine_raises_engine_error(ov):
    _closed_raises(ov[1], {"images": X})


def test_closed_tensorrt_engine_raises_engine_error(fake_gpu, tmp_path):  # noqa: F811
    eng = open_engine(_bundle_with_plan(tmp_path), "extractor_rgb", backend="tensorrt",
                      allow_ungated=True)
    _closed_raises(eng, {"images": X})


def test_closed_fallback_engine_raises_engine_error(tiny_bundle):
    lazy = LazyEngine(lambda: OrtCpuEngine(tiny_bundle / "extractor_rgb.onnx"), "test")
    lazy.get()
    lazy.close()
    with pytest.raises(EngineError, match="closed"):
        lazy.get()  # not silently reopened


def test_closed_runtime_raises_engine_error(tiny_bundle):
    from ssft_deploy.runtime import ReIDRuntime

    rt = ReIDRuntime.open(tiny_bundle, backend="ort-cpu")
    rt.close()
    with pytest.raises(EngineError, match="closed"):
        rt.extract_array(X, "rgb")
