"""Bundle loading and verification: manifest format, hashes, input size, TensorRT platform."""

from __future__ import annotations

import json
import shutil

import pytest

from ssft_deploy import bundle as bundle_mod
from ssft_deploy.bundle import (
    MANIFEST_FORMAT,
    TrtPlatform,
    check_engine_platform,
    load_bundle,
    sha256_file,
    write_manifest,
)
from ssft_deploy.errors import BundleError
from tests.bundle_factory import DP, DS, DT, K, make_bundle


def test_load_reads_model_info(tmp_path):
    b = load_bundle(make_bundle(tmp_path / "b", input_size=(16, 8)), verify=True)
    assert b.input_size == (16, 8)
    assert b.dims == {"shared": DS, "specific": DP, "transfer": DT}
    assert b.k == K and b.transfer_parts == ("shared", "specific")
    assert b.file("extractor_rgb", "fp32") == tmp_path / "b" / "extractor_rgb.onnx"
    assert sorted(b.variants) == ["fp32"]


def test_write_manifest_is_atomic_and_leaves_no_temp(tmp_path):
    write_manifest(tmp_path, {"format": MANIFEST_FORMAT, "a": 1})
    write_manifest(tmp_path, {"format": MANIFEST_FORMAT, "a": 2})
    assert json.loads((tmp_path / "manifest.json").read_text())["a"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    with pytest.raises(BundleError):
        write_manifest(tmp_path, {"format": "other/9"})


def test_missing_manifest_and_wrong_format(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    root = make_bundle(tmp_path / "b")
    m = json.loads((root / "manifest.json").read_text())
    m["format"] = "ssft-bundle/99"
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="ssft-bundle/99"):
        load_bundle(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        load_bundle(root)


def test_tampered_file_fails_hash_check(tmp_path):
    root = make_bundle(tmp_path / "b")
    with open(root / "transfer.onnx", "ab") as fh:
        fh.write(b"\0")
    b = load_bundle(root)  # lazy: loading works, first use of the file fails
    assert b.file("extractor_rgb").is_file()
    with pytest.raises(BundleError, match="sha256.*re-export with ssft-export"):
        b.file("transfer")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(root, verify=True)


def test_missing_file_and_unknown_variant(tmp_path):
    root = make_bundle(tmp_path / "b")
    (root / "extractor_ir.onnx").unlink()
    b = load_bundle(root)
    with pytest.raises(BundleError, match="missing"):
        b.file("extractor_ir")
    with pytest.raises(BundleError, match="no 'fp16' variant"):
        b.file("extractor_rgb", "fp16")


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    data = bytes(range(256)) * 5000
    (tmp_path / "x").write_bytes(data)
    assert sha256_file(tmp_path / "x") == hashlib.sha256(data).hexdigest()


def _with_trt_variant(root, **meta):
    """Add a ``trt-fp16`` variant whose (fake) plan is the RGB graph file, so its hash holds."""
    m = json.loads((root / "manifest.json").read_text())
    fp32 = m["variants"]["fp32"]["extractor_rgb"]
    m["variants"]["trt-fp16"] = {"extractor_rgb": {**fp32, "format": "tensorrt", **meta}}
    write_manifest(root, m)
    return root


def test_trt_engine_for_another_gpu_is_refused(tmp_path, monkeypatch):
    meta = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.9.0"}
    root = _with_trt_variant(make_bundle(tmp_path / "b"), **meta)
    b = load_bundle(root, allow_ungated=True)  # the fake engine has no gate verdict
    a100 = TrtPlatform(tensorrt="10.9.0", gpu="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
    monkeypatch.setattr(bundle_mod, "current_trt_platform", lambda: a100)
    with pytest.raises(BundleError, match="compute capability 9.0.*rebuild with ssft-export --trt"):
        b.file("extractor_rgb", "trt-fp16")
    same = TrtPlatform(tensorrt="10.9.0", gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    assert b.file("extractor_rgb", "trt-fp16", platform=lambda: same).is_file()
    other_trt = TrtPlatform(tensorrt="11.0.0", gpu="NVIDIA H100 80GB HBM3",
                            compute_capability="9.0")
    with pytest.raises(BundleError, match="TensorRT 10.9.0"):
        b.file("extractor_rgb", "trt-fp16", platform=lambda: other_trt)
    ent = b.entry("extractor_rgb", "trt-fp16")
    with pytest.raises(BundleError, match="not importable"):
        check_engine_platform(ent, TrtPlatform(None, None, None))


def test_check_io_refuses_other_input_size(tmp_path):
    from ssft_deploy.engines.base import TensorSpec

    b = load_bundle(make_bundle(tmp_path / "b", input_size=(16, 8)))
    good_in = {"images": TensorSpec("images", (-1, 3, 16, 8), "float32")}
    outs = {"shared": TensorSpec("shared", (-1, DS), "float32"),
            "specific": TensorSpec("specific", (-1, DP), "float32")}
    b.check_io("extractor_rgb", good_in, outs)
    bad_in = {"images": TensorSpec("images", (-1, 3, 32, 16), "float32")}
    with pytest.raises(BundleError, match=r"input_size is \[16, 8\]"):
        b.check_io("extractor_rgb", bad_in, outs)
    with pytest.raises(BundleError, match="outputs"):
        b.check_io("extractor_rgb", good_in, {"shared": outs["shared"]})


# -- bundles never read outside their folder (issue 15 item 6) ----------------------------------

def _point_entry(root, graph: str, name: str) -> None:
    """Manifest entry ``fp32/graph`` -> ``name`` with the sha256 of what ``name`` resolves to, and
    the gate record updated alike (so only the folder check can refuse it)."""
    m = json.loads((root / "manifest.json").read_text())
    digest = sha256_file(root / name)
    m["variants"]["fp32"][graph].update(file=name, sha256=digest)
    m["gate"]["variants"]["fp32"]["files"][graph] = digest
    write_manifest(root, m)


def test_graph_symlinked_outside_the_folder_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    outside = tmp_path / "elsewhere.onnx"
    (root / "extractor_rgb.onnx").rename(outside)  # same bytes, same sha256: only the path differs
    (root / "extractor_rgb.onnx").symlink_to(outside)
    b = load_bundle(root)
    with pytest.raises(BundleError, match="outside the bundle folder"):
        b.file("extractor_rgb")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_bundle(root, verify=True)
    (root / "passwd").symlink_to("/etc/passwd")
    _point_entry(root, "extractor_ir", "passwd")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_bundle(root).file("extractor_ir")


def test_symlinked_folder_leaving_the_bundle_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(root / "transfer.onnx", outside / "transfer.onnx")
    (root / "graphs").symlink_to(outside, target_is_directory=True)
    _point_entry(root, "transfer", "graphs/transfer.onnx")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_bundle(root).file("transfer")


def test_symlinks_that_stay_inside_are_fine(tmp_path):
    root = make_bundle(tmp_path / "real")
    (root / "sub").mkdir()
    (root / "transfer.onnx").rename(root / "sub" / "transfer.onnx")
    (root / "transfer.onnx").symlink_to(root / "sub" / "transfer.onnx")
    link = tmp_path / "current"  # a bundle folder reached through a symlink (a deploy's "current")
    link.symlink_to(root, target_is_directory=True)
    b = load_bundle(link, verify=True)
    assert b.file("transfer") == root.resolve() / "sub" / "transfer.onnx"


def test_manifest_symlinked_outside_the_folder_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    outside = tmp_path / "manifest.json"
    (root / "manifest.json").rename(outside)
    (root / "manifest.json").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_bundle(root)


def test_deeply_nested_manifest_is_a_bundle_error(tmp_path):
    (tmp_path / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(BundleError, match="nests 100000 levels"):
        load_bundle(tmp_path)


def test_oversize_manifest_is_refused_before_parsing(tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT,
                                                        "pad": "x" * (2 << 20)}))
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed an oversize file"))
    with pytest.raises(BundleError, match="bytes"):
        load_bundle(tmp_path)


def test_strings_with_brackets_do_not_count_as_depth(tmp_path):
    from ssft_deploy.bundle_io import json_depth

    assert json_depth(b'{"a": "[[[[{{{{\\"]]]", "b": [[1]]}') == 3
