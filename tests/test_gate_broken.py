"""Broken exports fail the parity gate, and ``ssft-verify`` exits 2 on each.

Every broken bundle is the real fp32 export of the demo-size model (``exported`` fixture) with one
real ONNX graph edited the way an export can go wrong; the manifest's sha256 is updated as a
consistent (but wrong) export would write it. A gate that raises midway publishes nothing.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from export import variants as reg
from export.bundle_writer import ExportOptions, write_bundle
from export.errors import GateError
from export.parity import row_cos
from export.verify import main as verify_main
from ssft_deploy.bundle import load_bundle, sha256_file
from ssft_deploy.errors import BundleError
from tests.export_models import perturb_weight, scale_output, swap_outputs

FP32 = ("extractor_rgb.onnx", "extractor_ir.onnx", "transfer.onnx")
LAYER = "model.backbone.shared.layer4.1.conv2.weight"
SIGMA = 0.55  # noise / weight std that brings the shared features to a cosine of about 0.98


def _fp32_bundle(exported, dst):
    """The fp32 part of the session's gated export (files, manifest, gate record)."""
    dst.mkdir()
    for f in FP32:
        shutil.copy(exported["bundle"] / f, dst / f)
    man = json.loads((exported["bundle"] / "manifest.json").read_text())
    man["variants"] = {"fp32": man["variants"]["fp32"]}
    man["gate"]["variants"] = {"fp32": man["gate"]["variants"]["fp32"]}
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


def _rewrite(bundle, graph: str, edit) -> None:
    path = bundle / f"{graph}.onnx"
    onnx.save(edit(onnx.load(str(path))), str(path))
    man = json.loads((bundle / "manifest.json").read_text())
    man["variants"]["fp32"][graph]["sha256"] = sha256_file(path)
    (bundle / "manifest.json").write_text(json.dumps(man))


def _other_modality(bundle) -> None:
    shutil.copy(bundle / "extractor_ir.onnx", bundle / "extractor_rgb.onnx")
    _rewrite(bundle, "extractor_rgb", lambda m: m)


BROKEN = {  # case -> (edit, the checks it must miss)
    "transfer outputs zeros": (
        lambda b: _rewrite(b, "transfer", lambda m: scale_output(m, "transferred", 0.0)),
        {"transfer_graph_min_cos", "transferred_min_cos"}),
    "transfer outputs NaN": (
        lambda b: _rewrite(b, "transfer", lambda m: scale_output(m, "transferred", float("nan"))),
        {"transfer_graph_min_cos", "transferred_min_cos", "d_rank1", "d_mAP"}),
    "shared and specific swapped": (
        lambda b: _rewrite(b, "extractor_rgb", swap_outputs), {"extractor_min_cos"}),
    "other modality's extractor": (_other_modality, {"extractor_min_cos"}),
    "weights perturbed to cos ~0.98": (
        lambda b: _rewrite(b, "extractor_rgb", lambda m: perturb_weight(m, LAYER, SIGMA)),
        {"extractor_min_cos"}),
}


def _verify(exported, bundle, *extra):
    return CliRunner().invoke(verify_main, [str(bundle), "--checkpoint",
                                            str(exported["checkpoint"]), "--data",
                                            str(exported["data"]), *extra])


def test_unbroken_copy_passes_ssft_verify(exported, tmp_path):
    bundle = _fp32_bundle(exported, tmp_path / "b")
    res = _verify(exported, bundle)
    assert res.exit_code == 0, res.output
    assert "pass [fp32]" in res.output
    assert load_bundle(bundle).passed_variants() == ["fp32"]


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_export_fails_the_gate_and_ssft_verify_exits_2(exported, tmp_path, case):
    edit, must_miss = BROKEN[case]
    bundle = _fp32_bundle(exported, tmp_path / "b")
    edit(bundle)
    with pytest.raises(BundleError, match="changed since it passed"):  # old verdict is void
        load_bundle(bundle)
    res = _verify(exported, bundle)
    assert res.exit_code == 2, res.output
    assert "FAIL: fp32" in res.output and "Traceback" not in res.output
    rec = json.loads((bundle / "manifest.json").read_text())["gate"]["variants"]["fp32"]
    assert rec["verdict"] == "fail" and rec["tool"] == "ssft-verify"
    assert must_miss <= set(rec["failed"]), rec
    with pytest.raises(BundleError, match="failed the parity gate.*ssft-verify"):
        load_bundle(bundle)


def test_perturbed_weights_are_about_0_98(exported, tmp_path):
    """The perturbation case is the subtle one: features still ~0.98 similar."""
    import onnxruntime as ort

    graph = perturb_weight(onnx.load(str(exported["bundle"] / "extractor_rgb.onnx")), LAYER,
                           SIGMA)
    x = np.random.default_rng(0).standard_normal((16, 3, 64, 32)).astype(np.float32)
    got = ort.InferenceSession(graph.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    with torch.no_grad():
        ref = exported["model"].extract(torch.from_numpy(x), modality="rgb")[0].numpy()
    assert 0.97 <= float(np.median(row_cos(ref, got))) <= 0.99


def _raise_on(variant: str, monkeypatch) -> None:
    real = reg.engine_fns

    def flaky(bundle, name):
        if name == variant:
            raise RuntimeError("engine crashed midway")
        return real(bundle, name)

    monkeypatch.setattr(reg, "engine_fns", flaky)


def test_gate_that_raises_midway_leaves_no_loadable_bundle(exported, tmp_path, monkeypatch):
    out = tmp_path / "b"
    shutil.copytree(exported["bundle"], out)  # an older, valid bundle in the same folder
    variants = json.loads((out / "manifest.json").read_text())["variants"]
    monkeypatch.setattr("export.bundle_writer.export_onnx_variants", lambda *a: variants)
    _raise_on("fp16", monkeypatch)  # fp32 is judged first, then the gate breaks
    opts = ExportOptions(fp16=True, int8=True, verify_data=str(exported["data"]))
    with pytest.raises(GateError, match="variant 'fp16'.*crashed midway"):
        write_bundle(exported["model"], out, opts, say=lambda m: None)
    assert not (out / "manifest.json").exists()
    assert (out / "manifest.staging.json").is_file()
    with pytest.raises(BundleError, match="stopped before its parity gate finished"):
        load_bundle(out)


def test_ssft_verify_that_raises_midway_records_nothing(exported, tmp_path, monkeypatch):
    bundle = tmp_path / "b"
    shutil.copytree(exported["bundle"], bundle)
    before = (bundle / "manifest.json").read_bytes()
    _raise_on("fp16", monkeypatch)
    res = _verify(exported, bundle)
    assert res.exit_code == 2
    assert "stopped while checking variant 'fp16'" in res.output
    assert (bundle / "manifest.json").read_bytes() == before


def test_ssft_verify_refuses_another_model(exported, tmp_path):
    from tests.export_models import tiny_model
    from train.model import save_checkpoint

    other = tmp_path / "other.pth"
    save_checkpoint(tiny_model(48, 32, seed=0), other)
    res = CliRunner().invoke(verify_main, [str(exported["bundle"]), "--checkpoint", str(other)])
    assert res.exit_code == 2 and "not the model" in res.output and "input_size" in res.output
