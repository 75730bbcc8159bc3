"""The Triton model repository written for a bundle parses with Triton's own ModelConfig schema."""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.triton import write_repository
from ssft_deploy.bundle import load_bundle, sha256_file, write_manifest
from ssft_deploy.errors import BundleError

MODEL = {"arch": "resnet18", "input_size": [64, 32], "mean": [0.485, 0.456, 0.406],
         "std": [0.229, 0.224, 0.225], "shared_dim": 512, "specific_dim": 256,
         "transfer_dim": 384, "k": 4, "transfer_parts": ["shared", "specific"]}
GRAPHS = ("extractor_rgb", "extractor_ir", "transfer")


@pytest.fixture
def bundle(tmp_path):
    """A bundle whose files are placeholders: the repository only copies and hash-checks them
    (so it has no gate verdict: the tests write it with allow_ungated=True)."""
    root = tmp_path / "bundle"
    root.mkdir()
    variants: dict = {"fp32": {}, "trt-fp16": {}}
    for g in GRAPHS:
        for variant, name, fmt in (("fp32", f"{g}.onnx", "onnx"),
                                   ("trt-fp16", f"{g}.fp16.plan", "tensorrt")):
            (root / name).write_bytes(f"{variant} {g}".encode())
            variants[variant][g] = {"file": name, "sha256": sha256_file(root / name),
                                    "format": fmt}
    write_manifest(root, {"model": MODEL, "variants": variants})
    return root


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("variant,platform,filename", [
    ("fp32", "onnxruntime_onnx", "model.onnx"), ("trt-fp16", "tensorrt_plan", "model.plan")])
def test_repository_configs_parse_with_triton_schema(bundle, tmp_path, variant, platform,
                                                     filename):
    repo = write_repository(bundle, tmp_path / "repo", variant, max_batch=32,
                            preferred=(4, 8, 16, 64), delay_us=1500, allow_ungated=True)
    tensor = model_config_pb2.DataType
    for g in GRAPHS:
        cfg = _parse(repo / g / "config.pbtxt")
        assert cfg.name == g and cfg.platform == platform
        copied = repo / g / "1" / filename
        entry = load_bundle(bundle, allow_ungated=True).entry(g, variant)
        assert copied.read_bytes() == (bundle / entry.file).read_bytes()
        if g == "transfer":
            assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
            dims = {t.name: (list(t.dims), t.data_type) for t in cfg.input}
            assert dims == {"z": ([-1, 2 * 256 + 512], tensor.TYPE_FP32),
                            "idx": ([-1, 8], tensor.TYPE_INT64),
                            "w": ([-1, 8], tensor.TYPE_FP32)}
            assert [(o.name, list(o.dims)) for o in cfg.output] == [("transferred", [-1, 384])]
        else:
            assert cfg.max_batch_size == 32
            assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16]  # <= max batch
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 1500
            assert [(t.name, list(t.dims)) for t in cfg.input] == [("images", [3, 64, 32])]
            assert [(o.name, list(o.dims)) for o in cfg.output] == [("shared", [512]),
                                                                     ("specific", [256])]


def test_repository_refuses_missing_variant_and_tampered_file(bundle, tmp_path):
    with pytest.raises(BundleError, match="int8"):
        write_repository(bundle, tmp_path / "repo", "int8", allow_ungated=True)
    (bundle / "transfer.onnx").write_bytes(b"changed")
    with pytest.raises(BundleError, match="sha256"):
        write_repository(bundle, tmp_path / "repo2", "fp32", allow_ungated=True)


def test_repository_refuses_a_variant_the_gate_did_not_pass(bundle, tmp_path):
    with pytest.raises(BundleError, match="parity gate.*ssft-verify"):
        write_repository(bundle, tmp_path / "repo", "fp32")
    assert not (tmp_path / "repo").exists()


def test_manifest_fixture_is_a_valid_bundle(bundle):
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["format"] == "ssft-bundle/1"
    assert load_bundle(bundle, allow_ungated=True).model.input_size == (64, 32)
