"""The one TensorRT variant builder (runtime's ``trt_build.build_variants``, also behind
``ssft-export --trt``): protocol-sized profiles and the variant bookkeeping, with ``build_plan``
replaced by a recorder (TensorRT itself is not here; see docs/gpu.md)."""

from __future__ import annotations

import json

import pytest

from ssft_deploy.engines import trt_build
from ssft_deploy.errors import EngineError
from tests.bundle_factory import make_bundle


def test_profiles_are_sized_from_the_protocols():
    assert trt_build.PROTOCOL_ROWS == {"sysu-all-single-shot": 4104, "sysu-all-multi-shot": 6813,
                                       "regdb": 4120}
    opt, rows = trt_build.profile_rows("transfer")
    assert (opt, rows) == (4104, 6813)  # opt at the common size, max covers every protocol
    assert all(n <= rows for n in trt_build.PROTOCOL_ROWS.values())
    assert trt_build.profile_rows("transfer", max_n=1000) == (1000, 1000)
    assert trt_build.profile_rows("extractor_rgb") == (32, 64)
    assert trt_build.profile_rows("extractor_ir", max_batch=8) == (8, 8)


@pytest.fixture
def recorded(monkeypatch):
    calls = []

    def fake_build_plan(onnx_path, plan_path, *, max_rows, opt_rows=None, workspace_bytes=0,
                        timing_cache=None):
        from ssft_deploy.bundle import sha256_file

        calls.append((onnx_path.name, plan_path.name, opt_rows, max_rows))
        plan_path.write_bytes(b"plan")
        return {"file": plan_path.name, "sha256": sha256_file(plan_path), "format": "tensorrt",
                "max_rows": max_rows}

    monkeypatch.setattr(trt_build, "build_plan", fake_build_plan)
    return calls


def test_export_and_runtime_share_one_builder(recorded, tmp_path, monkeypatch):
    from export import tensorrt_build

    monkeypatch.setattr(tensorrt_build, "require_gpu", lambda: ("Fake GPU", "9.0"))
    variants = {
        "fp32": {"extractor_rgb": {"file": "extractor_rgb.onnx"},
                 "transfer": {"file": "transfer.onnx"}},
        "int8": {"extractor_rgb": {"file": "extractor_rgb.int8.onnx", "activations": "s8"},
                 "transfer": {"file": "transfer.onnx"}},   # shares the fp32 transfer graph
        "fp16": {"extractor_rgb": {"file": "x.fp16.onnx", "activations": "u8"}},
    }
    said = []
    out = tensorrt_build.build_trt_variants(tmp_path, variants, say=said.append)
    assert sorted(out) == ["trt-fp32", "trt-int8"]  # u8 activations: skipped, with a reason
    assert any("skipping the fp16 variant" in m for m in said)
    assert recorded == [("extractor_rgb.onnx", "extractor_rgb.plan", 32, 64),
                        ("transfer.onnx", "transfer.plan", 4104, 6813),
                        ("extractor_rgb.int8.onnx", "extractor_rgb.int8.plan", 32, 64)]
    assert out["trt-int8"]["transfer"] is out["trt-fp32"]["transfer"]  # built once


def test_add_trt_variant_records_the_engines(recorded, tmp_path, monkeypatch):
    from ssft_deploy.bundle import TrtPlatform

    monkeypatch.setattr(trt_build, "current_trt_platform",
                        lambda: TrtPlatform(tensorrt="10.99", gpu="Fake", compute_capability="9.0"))
    root = make_bundle(tmp_path / "b")
    trt_build.add_trt_variant(root, "fp32", max_n=512)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["variants"]["trt-fp32"]["transfer"]["max_rows"] == 512
    assert manifest["versions"]["tensorrt"] == "10.99"
    assert ("transfer.onnx", "transfer.plan", 512, 512) in recorded  # beside its graph
    with pytest.raises(EngineError, match="no 'fp16' graphs"):
        trt_build.add_trt_variant(root, "fp16")
