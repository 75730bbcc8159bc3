"""The parity gate's rules on tiny bundles (numpy reference): cosines of broken rows, the
thresholds table, verdicts bound to files and model, ungated variants refused unless allowed,
and a variant added by one registry entry."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import onnx
import pytest

from export import variants as reg
from export.errors import GateError
from export.parity import min_cos, row_cos
from export.thresholds import CHECKS, THRESHOLDS, judge
from ssft_deploy.bundle import load_bundle, sha256_file, write_manifest
from ssft_deploy.engines import open_engine
from ssft_deploy.errors import BundleError
from ssft_deploy.runtime import ReIDRuntime
from tests.bundle_factory import gate, make_bundle
from tests.export_models import scale_output


def test_zero_nan_inf_rows_have_cosine_zero():
    ref = np.ones((4, 3), np.float32)
    got = ref.copy()
    got[1] = 0.0
    got[2, 0] = np.nan
    got[3, 2] = np.inf
    np.testing.assert_allclose(row_cos(ref, got), [1.0, 0.0, 0.0, 0.0], atol=1e-12)
    assert min_cos(np.zeros((2, 3)), np.zeros((2, 3))) == 0.0  # zero vs zero is not "equal"
    assert min_cos(ref, ref[:, :2]) == 0.0  # a wrong shape is no match either


def test_every_precision_has_every_bound_and_nan_misses_them():
    assert set(THRESHOLDS) == {"fp32", "fp16", "bf16", "int8"}
    good = {"extractor_min_cos": 1.0, "transfer_graph_min_cos": 1.0, "transferred_min_cos": 1.0,
            "neighbour_overlap_mean": 1.0, "d_rank1": 0.0, "d_mAP": 0.0}
    assert set(good) == set(CHECKS)
    for precision in THRESHOLDS:
        assert judge(good, precision)[:2] == ("pass", [])
        for name in good:
            for bad in (float("nan"), None):
                verdict, failed, _ = judge({**good, name: bad}, precision)
                assert verdict == "fail" and failed == [name]
    assert judge({**good, "d_rank1": -3.0}, "fp32")[1] == ["d_rank1"]
    # issue 23's paired bounds: fp32 0.25 / 0.1, fp16 0.5 / 0.3, bf16 1.0 / 0.5, int8 1.0 / 0.7
    assert judge({**good, "d_rank1": -0.3}, "fp32")[1] == ["d_rank1"]
    assert judge({**good, "d_rank1": -0.3, "d_mAP": 0.2}, "fp16")[0] == "pass"
    assert judge({**good, "d_mAP": 0.6}, "bf16")[1] == ["d_mAP"]
    assert judge({**good, "d_rank1": 1.0, "d_mAP": -0.7}, "int8")[0] == "pass"
    assert judge({**good, "d_rank1": 1.25}, "int8")[1] == ["d_rank1"]
    with pytest.raises(GateError, match="no thresholds for precision 'fp8'"):
        judge(good, "fp8")


def test_tiny_bundle_passed_the_real_gate(tiny_bundle):
    b = load_bundle(tiny_bundle)
    rec = b.gate_record("fp32")
    assert b.passed_variants() == ["fp32"]
    assert rec["verdict"] == "pass" and rec["reference"]["name"] == "numpy-tiny"
    assert rec["figures"]["extractor_min_cos"] >= THRESHOLDS["fp32"].extractor_min_cos
    assert rec["data"]["queries"] == 8 and rec["time"] and rec["backend"] == "ort-cpu"


def test_verdict_is_bound_to_the_files_and_the_model_section(tmp_path, caplog):
    root = make_bundle(tmp_path / "b")
    man = json.loads((root / "manifest.json").read_text())
    man["model"]["k"] = 1  # a runtime would now run another SSTN than the one gated
    write_manifest(root, man)
    with pytest.raises(BundleError, match="'model' section changed"):
        load_bundle(root)
    with caplog.at_level(logging.WARNING, logger="ssft_deploy.bundle"):
        b = load_bundle(root, allow_ungated=True)
        assert open_engine(b, "extractor_rgb", backend="ort-cpu").name == "ort-cpu"
    assert any("allow_ungated" in r.getMessage() for r in caplog.records)


def test_ungated_bundle_is_refused_until_verified(tmp_path, caplog):
    root = make_bundle(tmp_path / "b", gated=False)
    with pytest.raises(BundleError, match="has not been through the parity gate.*ssft-verify.*"
                                          "allow_ungated=True"):
        ReIDRuntime.open(root, backend="ort-cpu")
    with pytest.raises(BundleError, match="not been through the parity gate"):
        open_engine(root, "transfer", backend="ort-cpu")
    with (caplog.at_level(logging.WARNING, logger="ssft_deploy.bundle"),
          ReIDRuntime.open(root, backend="ort-cpu", allow_ungated=True) as rt):
        assert rt.extract_array(np.zeros((2, 3, 16, 8), np.float32), "ir")[0].shape[0] == 2
    assert any("no pass verdict" in r.getMessage() for r in caplog.records)
    assert gate(root)["fp32"]["verdict"] == "pass"
    assert load_bundle(root).passed_variants() == ["fp32"]


def _add_variant(root, name: str, files: dict[str, str]) -> None:
    man = json.loads((root / "manifest.json").read_text())
    man["variants"][name] = {g: {"file": f, "sha256": sha256_file(root / f), "format": "onnx"}
                             for g, f in files.items()}
    write_manifest(root, man)


def test_failed_variant_is_refused_while_the_passed_one_opens(tmp_path):
    root = make_bundle(tmp_path / "b")
    for g in ("extractor_rgb", "extractor_ir"):
        shutil.copy(root / f"{g}.onnx", root / f"{g}.fp16.onnx")
    zeros = scale_output(onnx.load(str(root / "transfer.onnx")), "transferred", 0.0)
    onnx.save(zeros, str(root / "transfer.fp16.onnx"))
    _add_variant(root, "fp16", reg.VARIANTS["fp16"].files)
    recs = gate(root)
    assert recs["fp32"]["verdict"] == "pass" and recs["fp16"]["verdict"] == "fail"
    assert "transfer_graph_min_cos" in recs["fp16"]["failed"]
    with pytest.raises(BundleError, match="'fp16' failed the parity gate \\(missed transfer"):
        ReIDRuntime.open(root, precision="fp16", backend="ort-cpu")
    ReIDRuntime.open(root, precision="fp32", backend="ort-cpu").close()


def test_a_registry_entry_adds_a_gated_variant(tmp_path, monkeypatch):
    """The contract a new variant (e.g. OpenVINO bf16 on the fp32 graphs) follows."""
    twin = reg.VariantSpec("fp32", "ort-cpu", reg.FP32_FILES, run_as="fp32-twin")
    monkeypatch.setitem(reg.VARIANTS, "fp32-twin", twin)
    root = make_bundle(tmp_path / "b")
    _add_variant(root, "fp32-twin", reg.FP32_FILES)
    with pytest.raises(BundleError, match="'fp32-twin' has not been through"):
        ReIDRuntime.open(root, precision="fp32-twin", backend="ort-cpu")
    assert gate(root, ["fp32-twin"])["fp32-twin"]["verdict"] == "pass"
    ReIDRuntime.open(root, precision="fp32-twin", backend="ort-cpu").close()
    monkeypatch.setitem(reg.VARIANTS, "fp32-twin",
                        reg.VariantSpec("fp32", "ort-cpu", reg.FP32_FILES, run_as="fp32"))
    with pytest.raises(GateError, match="opens variant 'fp32'"):
        gate(root, ["fp32-twin"])


def test_gate_ranks_the_mean_of_single_shot_trials():
    """The gate's Rank-1 / mAP are the mean over SYSU single-shot galleries drawn from the pool
    (one image per identity and camera each), each trial its own transductive graph."""
    from export.images import HeldOut, single_shot_trials
    from export.parity import ranking, run_stages
    from ssft_deploy.metrics import eval_sysu
    from ssft_deploy.transfer import l2_distances
    from tests.bundle_factory import K, held_out, numpy_reference

    pids, cams = np.array([1, 1, 1, 2, 2, 3, 3, 3]), np.array([1, 1, 2, 1, 1, 2, 2, 2])
    trials = single_shot_trials(pids, cams, 4, seed=5)
    for rows in trials:
        assert sorted(zip(pids[rows], cams[rows])) == [(1, 1), (1, 2), (2, 1), (3, 2)]
    assert len({tuple(r) for r in trials}) > 1                  # draws differ
    assert all((a == b).all() for a, b in zip(trials, single_shot_trials(pids, cams, 4, seed=5)))

    base = held_out((16, 8), ids=4, per_id=3)
    data = HeldOut(**{**base.__dict__, "trials": single_shot_trials(base.g_pids, base.g_camids, 3)})
    ref = numpy_reference()
    st = run_stages(ref.extract, ref.transfer, data, K, ("shared", "specific"))
    r1 = []
    for rows, t in zip(data.trials, st.trial_transferred):
        assert len(t) == len(rows) + len(data.query)
        cmc, _, _ = eval_sysu(l2_distances(t[len(rows):], t[:len(rows)]), data.q_pids,
                              data.g_pids[rows], data.q_camids, data.g_camids[rows],
                              max_rank=len(rows))
        r1.append(100 * cmc[0])
    got = ranking(st, data)
    assert got["trials"] == 3 and got["rank1"] == pytest.approx(np.mean(r1))
