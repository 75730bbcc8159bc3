"""ssft-export: graphs match torch at every batch / N, are clean, fp16 / int8 variants hold their
parity, the manifest pins every file, and the runtime refuses tampered or mismatched graphs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from export import parity
from export.bundle_writer import ExportOptions, write_bundle
from export.cli import main as cli_main
from export.images import held_out_images
from export.onnx_graphs import export_extractor, op_counts
from ssft_deploy.bundle import load_bundle, sha256_file
from ssft_deploy.datasets import synthetic
from ssft_deploy.engines import open_engine
from ssft_deploy.errors import BundleError
from ssft_deploy.preprocess import Preprocessor
from tests.export_models import tiny_model
from train.model import save_checkpoint

H, W = 64, 32
GRAPH_FILES = ["extractor_rgb", "extractor_ir", "transfer"]


def _session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return parity.min_cos(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    synthetic.generate_sysu(data, num_train=3, num_val=1, num_test=4, rgb_per_cam=2, size=(H, W))
    model = tiny_model(H, W, seed=0)
    ckpt = root / "model.pth"
    save_checkpoint(model, ckpt)
    bundle = root / "bundle"
    res = CliRunner().invoke(cli_main, [str(ckpt), "--out", str(bundle), "--fp16", "--int8",
                                        "--calib", str(data), "--calib-images", "16",
                                        "--trt", "--no-verify"])
    assert res.exit_code == 0, res.output
    output = res.output
    return {"root": root, "data": data, "model": model, "bundle": bundle, "output": output}


def _extract(model, x: np.ndarray, modality: str):
    with torch.no_grad():
        return [t.numpy() for t in model.extract(torch.from_numpy(x), modality=modality)]


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_extractors_match_torch_at_any_batch(setup, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 3, H, W)).astype(np.float32)
    for modality in ("rgb", "ir"):
        got = _session(setup["bundle"] / f"extractor_{modality}.onnx").run(None, {"images": x})
        for g, r in zip(got, _extract(setup["model"], x, modality)):
            assert g.shape == (batch, 512)
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
            assert _cos(g, r) >= 0.99999


@pytest.mark.parametrize("n", [5, 37, 1000])
def test_transfer_matches_torch_at_any_n(setup, n):
    rng = np.random.default_rng(n)
    z = rng.standard_normal((n, 1536)).astype(np.float32)
    idx = rng.integers(0, n, (n, 8)).astype(np.int64)
    w = rng.random((n, 8)).astype(np.float32)
    w[0] = 0.0  # an isolated row (degree 0) must give the torch result too
    (got,) = _session(setup["bundle"] / "transfer.onnx").run(None, {"z": z, "idx": idx, "w": w})
    with torch.no_grad():
        ref = setup["model"].transfer(*(torch.from_numpy(a) for a in (z, idx, w))).numpy()
    assert got.shape == (n, 512)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("graph", GRAPH_FILES)
def test_graphs_are_clean(setup, graph):
    model = onnx.load(str(setup["bundle"] / f"{graph}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    ops = op_counts(model)
    assert ops["BatchNormalization"] == 0
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if graph == "transfer":
        assert names == (["z", "idx", "w"], ["transferred"])
    else:
        assert names == (["images"], ["shared", "specific"])
        assert ops["Conv"] > 0


def test_manifest_pins_every_file(setup):
    man = json.loads((setup["bundle"] / "manifest.json").read_text())
    assert man["format"] == "ssft-bundle/1"
    assert man["model"]["input_size"] == [H, W] and man["model"]["k"] == 4
    assert set(man["variants"]) == {"fp32", "fp16", "int8"}
    for files in man["variants"].values():
        assert set(files) == set(GRAPH_FILES)
        for entry in files.values():
            assert entry["sha256"] == sha256_file(setup["bundle"] / entry["file"])
    assert torch.__version__.split("+")[0] == man["versions"]["torch"].split("+")[0]
    assert man["versions"]["onnxruntime"] == ort.__version__
    load_bundle(setup["bundle"], verify=True)


def test_trt_without_tensorrt_says_so(setup):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "TensorRT is not importable" in setup["output"]
    else:
        pytest.skip("tensorrt is importable here")


def test_tampered_graph_fails_hash(setup, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(setup["bundle"], copy)
    target = copy / "extractor_rgb.onnx"
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy, verify=True)
    with pytest.raises(BundleError, match="re-export"):
        open_engine(copy, "extractor_rgb", backend="ort-cpu")
    open_engine(copy, "extractor_ir", backend="ort-cpu")  # the untouched graph still opens


def test_graph_of_another_input_size_is_refused(setup, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(setup["bundle"], copy)
    other = tiny_model(48, 32, seed=0)
    export_extractor(other, "rgb", copy / "extractor_rgb.onnx", (48, 32))
    man = json.loads((copy / "manifest.json").read_text())
    man["variants"]["fp32"]["extractor_rgb"]["sha256"] = sha256_file(copy / "extractor_rgb.onnx")
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="input_size"):
        open_engine(copy, "extractor_rgb", backend="ort-cpu")


def test_fp16_variant_parity(setup):
    x = np.random.default_rng(3).standard_normal((8, 3, H, W)).astype(np.float32)
    half = onnx.load(str(setup["bundle"] / "extractor_ir.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in half.graph.input)
    got = _session(setup["bundle"] / "extractor_ir.fp16.onnx").run(None, {"images": x})
    for g, r in zip(got, _extract(setup["model"], x, "ir")):
        assert g.dtype == np.float32
        assert _cos(g, r) >= 0.999
    rng = np.random.default_rng(4)
    z = rng.standard_normal((50, 1536)).astype(np.float32)
    idx, w = rng.integers(0, 50, (50, 8)), rng.random((50, 8)).astype(np.float32)
    (t16,) = _session(setup["bundle"] / "transfer.fp16.onnx").run(None, {"z": z, "idx": idx,
                                                                          "w": w})
    with torch.no_grad():
        ref = setup["model"].transfer(*(torch.from_numpy(a) for a in (z, idx, w))).numpy()
    assert _cos(t16, ref) >= 0.999


def test_int8_qdq_graph_runs_on_ort_cpu(setup):
    q = onnx.load(str(setup["bundle"] / "extractor_rgb.int8.onnx"))
    ops = op_counts(q)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    zero_points = {n.input[2] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    for t in q.graph.initializer:  # symmetric int8 (zero point 0): TensorRT-readable
        if t.name in zero_points:
            assert t.data_type == onnx.TensorProto.INT8
            assert not onnx.numpy_helper.to_array(t).any()
    prep = Preprocessor((H, W))
    images = held_out_images(prep, setup["data"], max_query=8, max_gallery=8).gallery
    got = _session(setup["bundle"] / "extractor_rgb.int8.onnx").run(None, {"images": images})
    for g, r in zip(got, _extract(setup["model"], images, "rgb")):
        assert np.isfinite(g).all()
        assert _cos(g, r) >= 0.99


def test_int8_u8_activations_for_ort_cpu(setup, tmp_path):
    from export.quantize import quantize_int8

    prep = Preprocessor((H, W))
    images = held_out_images(prep, setup["data"], max_query=8, max_gallery=8).gallery
    dst = quantize_int8(setup["bundle"] / "extractor_rgb.onnx", tmp_path / "u8.onnx", images,
                        activations="u8")
    zero_points = {n.input[2] for n in onnx.load(str(dst)).graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    dtypes = {t.data_type for t in onnx.load(str(dst)).graph.initializer if t.name in zero_points}
    assert dtypes == {onnx.TensorProto.UINT8}
    got = _session(dst).run(None, {"images": images})
    assert _cos(got[0], _extract(setup["model"], images, "rgb")[0]) >= 0.99
    with pytest.raises(ValueError, match="activations"):
        quantize_int8(setup["bundle"] / "extractor_rgb.onnx", tmp_path / "x.onnx", images,
                      activations="fp8")


def test_parity_gate_passes_good_variants_and_fails_a_wrong_one(setup, tmp_path):
    prep = Preprocessor((H, W))
    data = held_out_images(prep, setup["data"], max_query=10, max_gallery=10)
    res = parity.verify_bundle(setup["model"], setup["bundle"], ["fp32", "fp16", "int8"], data,
                               4, ("shared", "specific"))
    rows = res["variants"]
    assert rows["fp32"]["extractor_min_cos"] >= 0.99999 and rows["fp32"]["status"] == "pass"
    assert rows["fp16"]["extractor_min_cos"] >= 0.999 and rows["fp16"]["status"] == "pass"
    assert rows["int8"]["status"] in ("pass", "warn")
    assert rows["fp32"]["neighbour_overlap_mean"] == 1.0 and rows["fp32"]["rank1_diff"] == 0.0
    assert parity.failures(res) == []
    assert "fp16" in parity.format_table(res)
    # A "variant" whose RGB extractor comes from another model must fail the gate.
    copy = tmp_path / "bundle"
    shutil.copytree(setup["bundle"], copy)
    export_extractor(tiny_model(H, W, seed=1), "rgb", copy / "extractor_rgb.fp16.onnx", (H, W))
    man = json.loads((copy / "manifest.json").read_text())
    man["variants"]["fp16"]["extractor_rgb"]["sha256"] = sha256_file(
        copy / "extractor_rgb.fp16.onnx")
    (copy / "manifest.json").write_text(json.dumps(man))
    bad = parity.verify_bundle(setup["model"], copy, ["fp16"], data, 4, ("shared", "specific"))
    assert bad["variants"]["fp16"]["status"] == "fail"
    assert parity.failures(bad) == ["fp16"]


def test_failed_gate_refuses_the_bundle(setup, tmp_path, monkeypatch):
    def fake_verify(model, bundle, variants, data, k, parts):
        return {"data": "x", "queries": 1, "gallery": 1, "reference": {"rank1": 1, "mAP": 1},
                "variants": {"fp32": {"extractor_max_abs": 1.0, "extractor_min_cos": 0.5,
                                      "neighbour_overlap_mean": 0.1,
                                      "transfer_graph_min_cos": 0.5, "transferred_min_cos": 0.5,
                                      "rank1_diff": -1.0, "mAP_diff": -1.0,
                                      "threshold": 0.99999, "status": "fail"}}}

    out = tmp_path / "bundle"
    shutil.copytree(setup["bundle"], out)
    variants = json.loads((out / "manifest.json").read_text())["variants"]
    (out / "manifest.json").unlink()
    monkeypatch.setattr("export.bundle_writer.export_onnx_variants", lambda *a: variants)
    monkeypatch.setattr(parity, "verify_bundle", fake_verify)
    monkeypatch.setattr("export.images.held_out_images", lambda prep, root: None)
    with pytest.raises(parity.ParityError, match="fp32"):
        write_bundle(setup["model"], out, ExportOptions(), say=lambda m: None)
    assert not (out / "manifest.json").exists()
    assert json.loads((out / "manifest.failed.json").read_text())["parity"]["variants"]


def test_cli_errors_exit_2_with_a_message(tmp_path):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint")
    res = CliRunner().invoke(cli_main, [str(bad), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2
    assert "error" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli_main, [str(bad), "--int8"])
    assert res.exit_code == 2 and "--calib" in res.output


@pytest.mark.gpu
def test_tensorrt_engines_build_and_match(setup, tmp_path):
    from export.tensorrt_build import build_trt_variants, require_gpu, tensorrt_version

    if tensorrt_version() is None:
        pytest.skip("tensorrt is not importable here")
    try:
        require_gpu()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no usable GPU: {exc}")
    copy = tmp_path / "bundle"
    shutil.copytree(setup["bundle"], copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["variants"].update(build_trt_variants(copy, {"fp16": man["variants"]["fp16"]},
                                              max_batch=32, max_n=1024, workspace=1 << 30))
    (copy / "manifest.json").write_text(json.dumps(man))
    assert (copy / "timing.cache").is_file()
    entry = man["variants"]["trt-fp16"]["extractor_rgb"]
    assert entry["tensorrt"] == tensorrt_version() and entry["compute_capability"]
    x = np.random.default_rng(5).standard_normal((7, 3, H, W)).astype(np.float32)
    out = open_engine(copy, "extractor_rgb", precision="fp16", backend="tensorrt").run(
        {"images": x})
    ref = _extract(setup["model"], x, "rgb")
    assert _cos(out["shared"], ref[0]) >= 0.999
