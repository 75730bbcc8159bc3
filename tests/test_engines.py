"""Engines: ORT CPU results, input checks, backend selection, thread-safety, TensorRT (GPU)."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from ssft_deploy.bundle import load_bundle
from ssft_deploy.engines import BACKENDS, available_backends, backend_status, open_engine
from ssft_deploy.engines.base import TensorSpec
from ssft_deploy.errors import BundleError, EngineError, InputError
from tests.bundle_factory import (
    DP,
    DS,
    DT,
    K,
    gate,
    make_bundle,
    reference_extract,
    reference_transfer,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_bundle(tmp_path_factory.mktemp("eng") / "b", input_size=(16, 8)))


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 8)).astype(np.float32)


def test_ort_cpu_extractor_and_transfer_match_reference(bundle):
    eng = open_engine(bundle, "extractor_ir", backend="ort-cpu", intra_op_threads=1)
    assert eng.inputs == {"images": TensorSpec("images", (-1, 3, 16, 8), "float32")}
    assert eng.outputs["shared"].shape == (-1, DS)
    for n in (1, 7):
        x = _images(n, n)
        out = eng.run({"images": x})
        ref_s, ref_p = reference_extract(x, "extractor_ir")
        np.testing.assert_allclose(out["shared"], ref_s, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["specific"], ref_p, rtol=1e-5, atol=1e-5)
    tr = open_engine(bundle, "transfer", backend="ort-cpu")
    rng = np.random.default_rng(3)
    z = rng.standard_normal((5, 2 * DP + DS)).astype(np.float32)
    idx = rng.integers(0, 5, (5, 2 * K)).astype(np.int64)
    w = rng.random((5, 2 * K)).astype(np.float32)
    got = tr.run({"z": z, "idx": idx, "w": w})["transferred"]
    assert got.shape == (5, DT)
    np.testing.assert_allclose(got, reference_transfer(z, idx, w), rtol=1e-5, atol=1e-5)


def test_feeds_are_checked(bundle):
    eng = open_engine(bundle, "transfer", backend="ort-cpu")
    z = np.zeros((4, 2 * DP + DS), np.float32)
    idx = np.zeros((4, 2 * K), np.int64)
    w = np.zeros((4, 2 * K), np.float32)
    cases = [
        ({"z": z, "idx": idx}, "missing \\['w'\\]"),
        ({"z": z, "idx": idx, "w": w, "x": w}, "unexpected \\['x'\\]"),
        ({"z": z[0], "idx": idx, "w": w}, "rank 1"),
        ({"z": z[:, :3], "idx": idx, "w": w}, "axis 1"),
        ({"z": z, "idx": idx.astype(np.int32), "w": w}, "int32, expected int64"),
        ({"z": z, "idx": idx, "w": w[:3]}, "leading dimension"),
        ({"z": z.tolist(), "idx": idx, "w": w}, "numpy array"),
    ]
    for feeds, msg in cases:
        with pytest.raises(InputError, match=msg):
            eng.run(feeds)


def test_auto_picks_ort_cpu_here_and_logs(bundle, caplog):
    assert "ort-cpu" in available_backends()
    status = backend_status()
    assert status["ort-cpu"] is None
    # This CI machine has no GPU: CUDA and TensorRT report why they cannot run.
    if status["tensorrt"] is not None:
        assert "tensorrt" in status["tensorrt"] or "GPU" in status["tensorrt"]
    with caplog.at_level(logging.INFO, logger="ssft_deploy.engines"):
        eng = open_engine(bundle, "extractor_rgb", backend="auto")
    best = next(n for n in BACKENDS if n in available_backends() and n != "tensorrt")
    assert eng.name == best
    assert any(f"backend {best}" in r.getMessage() for r in caplog.records)


def test_named_unavailable_or_unknown_backend(bundle):
    with pytest.raises(EngineError, match="unknown backend"):
        open_engine(bundle, "extractor_rgb", backend="nosuch")
    for name in ("ort-cuda", "tensorrt"):
        reason = backend_status()[name]
        if reason is None:
            pytest.skip(f"{name} is available on this machine")
        with pytest.raises(EngineError, match=f"backend '{name}' is unavailable here"):
            open_engine(bundle, "extractor_rgb", backend=name)
    with pytest.raises(EngineError, match="no backend can run"):
        open_engine(bundle, "extractor_rgb", precision="fp16")


def test_graph_with_other_input_size_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b", input_size=(16, 8), graph_size=(32, 16))
    with pytest.raises(BundleError, match=r"input_size is \[16, 8\].*re-export"):
        open_engine(root, "extractor_rgb", backend="ort-cpu")


def test_tampered_graph_is_refused_by_open_engine(tmp_path):
    root = make_bundle(tmp_path / "b")
    data = bytearray((root / "extractor_rgb.onnx").read_bytes())
    data[-1] ^= 0xFF
    (root / "extractor_rgb.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        open_engine(root, "extractor_rgb")


def test_concurrent_runs_are_thread_safe(bundle):
    eng = open_engine(bundle, "extractor_rgb", backend="ort-cpu", intra_op_threads=1)
    inputs = [_images(1 + i % 5, seed=100 + i) for i in range(8)]
    refs = [reference_extract(x, "extractor_rgb") for x in inputs]
    failures: list[str] = []
    barrier = threading.Barrier(len(inputs))

    def worker(i):
        barrier.wait()
        for _ in range(25):
            out = eng.run({"images": inputs[i]})
            if not (np.allclose(out["shared"], refs[i][0], atol=1e-5)
                    and np.allclose(out["specific"], refs[i][1], atol=1e-5)):
                failures.append(f"thread {i}: wrong result")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def _tensorrt_skip_reason() -> str | None:
    return BACKENDS["tensorrt"].unavailable_reason()


@pytest.mark.gpu
def test_tensorrt_engine_matches_ort(tmp_path):
    reason = _tensorrt_skip_reason()
    if reason:
        pytest.skip(f"TensorRT backend unavailable: {reason}")
    from ssft_deploy.engines.trt_build import add_trt_variant

    root = make_bundle(tmp_path / "b")
    add_trt_variant(root, "fp32", max_batch=8, max_n=64)
    assert gate(root, ["trt-fp32"])["trt-fp32"]["verdict"] == "pass"  # the real parity gate
    trt_eng = open_engine(root, "extractor_rgb", backend="tensorrt")
    assert trt_eng.max_batch == 8
    ort_eng = open_engine(root, "extractor_rgb", backend="ort-cpu")
    assert open_engine(root, "extractor_rgb", backend="auto").name == "tensorrt"
    for n in (1, 5, 8, 3):  # buffers are reused across calls of different sizes
        x = _images(n, n)
        a, b = trt_eng.run({"images": x}), ort_eng.run({"images": x})
        np.testing.assert_allclose(a["shared"], b["shared"], rtol=1e-3, atol=1e-3)
    with pytest.raises(InputError, match="exceeds"):
        trt_eng.run({"images": _images(9)})
    tr = open_engine(root, "transfer", backend="tensorrt")
    rng = np.random.default_rng(0)
    z = rng.standard_normal((37, 2 * DP + DS)).astype(np.float32)
    idx = rng.integers(0, 37, (37, 2 * K)).astype(np.int64)
    w = rng.random((37, 2 * K)).astype(np.float32)
    np.testing.assert_allclose(tr.run({"z": z, "idx": idx, "w": w})["transferred"],
                               reference_transfer(z, idx, w), rtol=1e-3, atol=1e-3)
    trt_eng.close()
