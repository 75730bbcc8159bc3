"""OpenVINO backend: parity with ONNX Runtime on a demo-architecture bundle at each precision, the
precision it states, thread safety, the compiled-model cache, and the fallback to ONNX Runtime
when OpenVINO fails (forced)."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
pytest.importorskip("torch", reason="building the demo-architecture bundle needs torch")

from export.openvino_variants import openvino_variants
from ssft_deploy.bundle import load_bundle, write_manifest
from ssft_deploy.engines import open_engine
from ssft_deploy.engines import openvino as ovmod
from ssft_deploy.errors import EngineError

GRAPHS = ("extractor_rgb", "extractor_ir", "transfer")


def _gate_cos(precision: str) -> float:
    """The parity gate's extractor bound of ``precision`` (export/thresholds.py)."""
    from export.thresholds import thresholds

    return thresholds(precision).extractor_min_cos


@pytest.fixture(scope="module")
def demo_bundle(exported, tmp_path_factory):
    """The shared demo-architecture export (ResNet-18 64x32, random weights, fp32 / fp16 / int8)
    with the OpenVINO variants added and judged by the real parity gate, plus images."""
    import shutil

    from export.gate import torch_reference
    from export.images import held_out_images
    from export.verify import verify_bundle
    from ssft_deploy.preprocess import Preprocessor

    bundle = tmp_path_factory.mktemp("ov") / "bundle"
    shutil.copytree(exported["bundle"], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    added = openvino_variants(bundle, manifest["variants"], say=lambda m: None)
    assert "ov-int8" in added
    manifest["variants"].update(added)
    write_manifest(bundle, manifest)
    held_out = held_out_images(Preprocessor(tuple(manifest["model"]["input_size"])),
                               exported["data"])
    records = verify_bundle(bundle, reference=torch_reference(exported["model"]),
                            held_out=held_out, variants=sorted(added), say=lambda m: None)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((12, 3, *manifest["model"]["input_size"]), dtype=np.float32)
    return {"bundle": bundle, "images": images, "records": records}


def test_openvino_variants_pass_the_gate(demo_bundle):
    records = demo_bundle["records"]
    for name, rec in records.items():
        assert rec["verdict"] == "pass", (name, rec)
        assert rec["backend"] == "openvino"
    assert records["ov-int8"]["precision"] == "int8"
    if "bf16" in records:
        assert records["bf16"]["precision"] == "bf16"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSFT_CACHE", str(tmp_path / "cache"))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    assert (den > 0).all()
    return float(((a * b).sum(1) / den).min())


def _extract(engine, images):
    out = engine.run({"images": images})
    return out["shared"], out["specific"]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_parity_with_onnx_runtime(demo_bundle, precision):
    if precision == "bf16" and "BF16" not in ovmod.cpu_capabilities():
        pytest.skip("this CPU has no native bf16 (AVX512_BF16 / AMX)")
    b, x = demo_bundle["bundle"], demo_bundle["images"]
    ref = open_engine(b, "extractor_rgb", "fp32", "ort-cpu")
    ov = open_engine(b, "extractor_rgb", precision, "openvino")
    assert isinstance(ov, ovmod.OpenVINOEngine), getattr(ov, "fallback_reason", None)
    for got, want in zip(_extract(ov, x), _extract(ref, x)):
        assert np.isfinite(got).all()
        assert _cos(got, want) >= _gate_cos(precision)
    if precision == "fp32":  # forced f32 is fp32 arithmetic, not a bf16 approximation
        for got, want in zip(_extract(ov, x), _extract(ref, x)):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_states_its_real_precision(demo_bundle):
    b = demo_bundle["bundle"]
    fp32 = open_engine(b, "extractor_rgb", "fp32", "openvino")
    assert fp32.inference_precision == "f32"
    assert str(fp32.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
    int8 = open_engine(b, "extractor_rgb", "int8", "openvino")
    assert int8.inference_precision.startswith("int8"), int8.layer_precisions
    if "BF16" in ovmod.cpu_capabilities():
        bf16 = open_engine(b, "extractor_rgb", "bf16", "openvino")
        assert bf16.inference_precision == "bf16", bf16.layer_precisions


def test_transfer_graph_on_openvino(demo_bundle):
    b = load_bundle(demo_bundle["bundle"])
    rng = np.random.default_rng(1)
    n, k2 = 50, b.model.transfer_width
    dz = 2 * b.dims["specific"] + b.dims["shared"]
    feeds = {"z": rng.standard_normal((n, dz), dtype=np.float32),
             "idx": rng.integers(0, n, (n, k2)).astype(np.int64),
             "w": rng.random((n, k2), dtype=np.float32)}
    want = open_engine(b, "transfer", "fp32", "ort-cpu").run(feeds)["transferred"]
    got = open_engine(b, "transfer", "fp32", "openvino").run(feeds)["transferred"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_bf16_variant_is_not_run_by_onnx_runtime(demo_bundle):
    with pytest.raises(EngineError, match="openvino"):
        open_engine(demo_bundle["bundle"], "extractor_rgb", "bf16", "ort-cpu")


def test_concurrent_runs_match_sequential(demo_bundle):
    eng = open_engine(demo_bundle["bundle"], "extractor_ir", "fp32", "openvino")
    batches = [demo_bundle["images"][i:i + 3] for i in range(0, 12, 3)]
    want = [eng.run({"images": x})["shared"] for x in batches]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = eng.run({"images": batches[i]})["shared"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, w in enumerate(want):
        np.testing.assert_array_equal(got[i], w)


def test_compiled_models_are_cached(demo_bundle, tmp_path):
    open_engine(demo_bundle["bundle"], "extractor_rgb", "fp32", "openvino")
    cached = list((tmp_path / "cache" / "openvino").iterdir())
    assert cached, "OpenVINO wrote nothing to CACHE_DIR"
    sizes = sorted(p.stat().st_size for p in cached)
    open_engine(demo_bundle["bundle"], "extractor_rgb", "fp32", "openvino")  # hits the cache
    assert sorted(p.stat().st_size for p in (tmp_path / "cache" / "openvino").iterdir()) == sizes


def test_compile_failure_falls_back_to_onnx_runtime(demo_bundle, monkeypatch, caplog):
    def broken(path, config):
        raise RuntimeError("simulated OpenVINO crash")

    monkeypatch.setattr(ovmod, "_compile", broken)
    x = demo_bundle["images"]
    with caplog.at_level(logging.WARNING, logger="ssft_deploy.engines"):
        eng = open_engine(demo_bundle["bundle"], "extractor_rgb", "bf16", "openvino")
    assert eng.name == "ort-cpu"
    assert "simulated OpenVINO crash" in eng.fallback_reason
    assert eng.inference_precision == "f32"  # what really runs now, said so
    assert any("falling back to ONNX Runtime" in r.getMessage() for r in caplog.records)
    ref = open_engine(demo_bundle["bundle"], "extractor_rgb", "fp32", "ort-cpu")
    np.testing.assert_array_equal(_extract(eng, x)[0], _extract(ref, x)[0])


def test_run_failure_switches_to_onnx_runtime(demo_bundle, monkeypatch, caplog):
    x = demo_bundle["images"]
    eng = open_engine(demo_bundle["bundle"], "extractor_rgb", "int8", "openvino")
    assert eng.active_backend == "openvino"

    def broken(request, feeds):
        raise RuntimeError("simulated illegal instruction")

    monkeypatch.setattr(ovmod, "_infer", broken)
    with caplog.at_level(logging.WARNING, logger="ssft_deploy.engines"):
        got = _extract(eng, x)
        for _ in range(ovmod.SWITCH_AFTER):  # switches after SWITCH_AFTER failed calls, once
            _extract(eng, x)
    assert eng.active_backend == "ort-cpu" and "illegal instruction" in eng.fallback_reason
    assert eng.inference_precision == "int8+f32"
    assert sum("switching this engine" in r.getMessage() for r in caplog.records) == 1
    ref = open_engine(demo_bundle["bundle"], "extractor_rgb", "int8", "ort-cpu")
    assert _cos(got[0], _extract(ref, x)[0]) >= 0.999


def test_unsupported_precision_is_refused_by_auto(demo_bundle):
    from ssft_deploy.engines.registry import choose_backend

    b = load_bundle(demo_bundle["bundle"])
    manifest = json.loads((b.root / "manifest.json").read_text())
    assert "ov-int8" in manifest["variants"]
    assert ovmod.OpenVINOEngine.supports("fp16") is not None
    with pytest.raises(EngineError, match="openvino"):
        open_engine(b, "extractor_rgb", "fp16", "openvino")
    if "BF16" in ovmod.cpu_capabilities():
        assert choose_backend(b, "extractor_rgb", "bf16").name == "openvino"


def test_openvino_variants_cover_the_graphs_the_source_has(tmp_path):
    """A timing bundle with one extractor gets OpenVINO entries for that graph only."""
    from export.manifest import file_entry

    for name in ("extractor_rgb.onnx", "extractor_rgb.int8.onnx"):
        (tmp_path / name).write_bytes(name.encode())
    variants = {"fp32": {"extractor_rgb": file_entry(tmp_path, "extractor_rgb.onnx")},
                "int8": {"extractor_rgb": file_entry(tmp_path, "extractor_rgb.int8.onnx",
                                                     activations="u8")}}
    out = openvino_variants(tmp_path, variants, say=lambda m: None)
    assert set(out["ov-int8"]) == {"extractor_rgb"}
    assert out["ov-int8"]["extractor_rgb"]["file"] == "extractor_rgb.int8.onnx"
    assert out["ov-int8"]["extractor_rgb"]["activations"] == "u8"
    assert all(e["backend"] == "openvino" for v in out.values() for e in v.values())
    if "BF16" in ovmod.cpu_capabilities():
        assert out["bf16"]["extractor_rgb"]["file"] == "extractor_rgb.onnx"
