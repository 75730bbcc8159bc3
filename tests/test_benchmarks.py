"""Benchmarks smoke tests: helpers compute the right numbers, the scripts run and write their keys.

The timings themselves are not asserted (they are machine-dependent); counts, FLOPs, percentiles
and the JSON layout `make demo` reads are.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from benchmarks import common, flops
from benchmarks.transfer_cost import gemm_only_case, measure_transfer, unit_features
from tests.bundle_factory import make_bundle


def test_summarize_percentiles_and_throughput():
    s = common.summarize([0.01, 0.02, 0.03, 0.04], items=8, flops=1e9)
    assert s["calls"] == 4
    assert s["p50_ms"] == pytest.approx(25.0)
    assert s["mean_ms"] == pytest.approx(25.0)
    assert s["p99_ms"] == pytest.approx(39.7)
    assert s["throughput"] == pytest.approx(8 * 4 / 0.1)
    assert s["gflops"] == pytest.approx(4 / 0.1)


def test_interleaved_rounds_rotate_and_exclude_warmup():
    log: list[str] = []
    cases = [common.Case(n, (lambda n=n: log.append(n))) for n in "abc"]
    samples = common.run_interleaved(cases, rounds=3, warmup=2, budget_s=0.0, settle_s=0.0)
    assert log[:6] == list("aabbcc")  # warm-up, not recorded
    assert "".join(log[6:]) == "abc" + "bca" + "cab"
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_check_target_directions():
    assert common.check_target("x", 1.6, 1.5)["met"] is True
    low = common.check_target("x", 0.75, 1.5)
    assert low["met"] is False and "50%" in low["note"]
    assert common.check_target("t", 1.2, 1.3, higher_is_better=False)["met"] is True
    assert common.check_target("t", 2.6, 1.3, higher_is_better=False)["met"] is False
    assert common.check_target("x", None, 1.5)["met"] is None


def test_graph_flops_conv_group_and_gemm(tmp_path):
    # Conv 3->8 k3 pad1 on 6x4, grouped Conv 8->8 (g=2) k1, Flatten, Gemm (transB) -> 5.
    w1 = np.zeros((8, 3, 3, 3), np.float32)
    w2 = np.zeros((8, 4, 1, 1), np.float32)
    w3 = np.zeros((5, 8 * 6 * 4), np.float32)
    nodes = [helper.make_node("Conv", ["images", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], group=2),
             helper.make_node("Flatten", ["c2"], ["f"]),
             helper.make_node("Gemm", ["f", "w3"], ["shared"], transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, 6, 4])],
        [helper.make_tensor_value_info("shared", TensorProto.FLOAT, ["B", 5])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    total, gemms = flops.extractor_flops(path, (6, 4), batch=2)
    hw = 6 * 4
    expect = 2 * (2 * hw * 8 * 27) + 2 * (2 * hw * 4 * 4 * 2) + 2 * (2 * 5 * 8 * hw)
    assert total == expect
    assert flops.representative_gemm(gemms) == (2 * hw, 8, 27)


def test_transfer_gemms_and_ratio(monkeypatch):
    from ssft_deploy.affinity import joint

    dims = {"shared": 16, "specific": 8, "transfer": 12}
    feats = unit_features(50, dims, n_rgb=10)
    assert np.allclose(np.linalg.norm(feats[0], axis=1), 1.0, atol=1e-5)
    case = gemm_only_case(feats, dims)
    blocks = 10 * 10 * 8 + 10 * 40 * 16 + 40 * 10 * 16 + 40 * 40 * 8
    assert case.flops == 2.0 * (blocks + 50 * (2 * 8 + 16) * 12)
    res = measure_transfer(None, dims, 4, ("shared", "specific"), n_rgb=10, n_ir=40,
                           methods=("dense",), rounds=1, warmup=0, budget_s=0.0)
    assert res["n"] == 50 and res["steps"]["dense"] > 0 and res["gemms_s"] > 0
    assert res["ratio_dense_to_gemms"] == pytest.approx(res["steps"]["dense"] / res["gemms_s"])
    # the products dense performs: one cross product, the symmetric blocks' upper tiles
    monkeypatch.setattr(joint, "SYM_BLOCK", 16)            # 40 IR rows -> 3 blocks, 6 tiles
    done = gemm_only_case(feats, dims, performed=True)
    tiles = sum((b - a) * (d - c) for i, (a, b) in enumerate(joint.block_edges(40, 16))
                for (c, d) in joint.block_edges(40, 16)[i:])
    assert done.flops == 2.0 * (10 * 40 * 16 + 10 * 10 * 8 + tiles * 8 + 50 * (2 * 8 + 16) * 12)
    assert res["ratio_dense_to_performed_gemms"] > 0


def test_latency_cli_quick(tmp_path):
    from benchmarks import latency

    bundle = make_bundle(tmp_path / "bundle")
    out = tmp_path / "bench"
    res = CliRunner().invoke(latency.main, [
        "--bundle", str(bundle), "--checkpoint", str(tmp_path / "none.pth"), "--quick",
        "--batch-sizes", "1,4", "--no-transfer", "--no-autoselect", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "latency.json").read_text())
    assert (out / "latency.png").stat().st_size > 0
    assert data["summary"]["reference_batch"] == 4
    assert data["config"]["process_per_variant"] is True
    assert set(data["machine"]["isa"]) >= {"amx_tile", "avx512_bf16", "avx512_vnni", "avx2"}
    model = data["models"][0]
    names = {r["name"] for r in model["results"]}
    assert "ort-cpu/fp32" in names and set(data["summary"]["throughput"]) == names
    assert [r["batch"] for r in model["results"] if r["name"] == "ort-cpu/fp32"] == [1, 4]
    for r in model["results"]:  # real precision and the load record on every row
        assert r["actual_precision"] and r["rounds"] == 2 and 0 <= r["rounds_under_load"] <= 2
        assert len(r["load_before"]) == len(r["load_after"]) == 2
    assert all({"load_before", "load_after", "under_load"} <= set(rec) for rec in model["rounds"])
    assert model["parity"]["ort-cpu/fp32"]["min_cos"] == pytest.approx(1.0)
    assert {s["name"] for s in model["skipped"]} >= {"torch/fp32", "ort-cpu/int8"}
    assert {"best_gated_cpu_vs_torch", "openvino_int8_vs_ort_int8", "auto_picks_fastest",
            "transfer_vs_gemms"} <= set(data["targets"])
    # the tiny graph is GlobalAveragePool + two [B,3] @ [3,D] MatMuls
    assert model["gflop_per_image"] == pytest.approx(2 * 3 * (6 + 5) / 1e9)


def test_latency_with_a_missing_bundle_says_make_demo(tmp_path):
    from benchmarks import latency

    res = CliRunner().invoke(latency.main, ["--bundle", str(tmp_path / "missing")])
    assert res.exit_code == 2
    assert "make demo" in res.output


def test_slices_under_load_are_flagged(monkeypatch):
    from benchmarks import workers

    spec = {"kind": "gemm", "m_per_image": 8, "n": 8, "k": 8, "input_size": [4, 4],
            "mean": [0, 0, 0], "std": [1, 1, 1]}
    w = workers.Worker("gemm", spec)
    try:
        assert w.ok, w.reason
        busy = iter([100.0, 100.0])  # nobody else busy
        monkeypatch.setattr(workers, "busy_seconds", lambda: next(busy))
        quiet = w.time(batch=1, budget_s=0.05, warmup=0)
        busy = iter([100.0, 200.0])  # others took 100 CPU-seconds during the slice
        loaded = w.time(batch=1, budget_s=0.05, warmup=0)
    finally:
        w.close()
    assert quiet["others_cores"] == 0.0 and not quiet["under_load"]
    assert loaded["others_cores"] > workers.LOAD_FLAG_CORES and loaded["under_load"]
    assert quiet["samples"] and quiet["load_before"] is not None


def test_figures_come_from_clean_rounds_when_there_are_some():
    from benchmarks.latency_report import summarize_slices

    def sl(t, loaded):
        return {"samples": [t] * 4, "under_load": loaded, "others_cores": 1.0 if loaded else 0.0,
                "load_before": 1.0, "load_after": 1.0}

    mixed = summarize_slices([sl(0.1, False), sl(1.0, True)], items=10, flops=None)
    assert mixed["throughput"] == pytest.approx(100.0) and mixed["from_rounds"] == "clean"
    assert mixed["rounds_under_load"] == 1 and mixed["throughput_all_rounds"] < 100.0
    loaded = summarize_slices([sl(1.0, True)], items=10, flops=None)
    assert loaded["throughput"] == pytest.approx(10.0) and loaded["from_rounds"].startswith("all")


def test_targets_use_only_gated_cpu_variants(tmp_path):
    from benchmarks.latency_report import targets
    from ssft_deploy.bundle import write_manifest
    from tests.bundle_factory import gate

    bundle = make_bundle(tmp_path / "bundle")
    man = json.loads((bundle / "manifest.json").read_text())
    fp32 = man["variants"]["fp32"]
    man["variants"]["int8"] = {g: dict(e) for g, e in fp32.items()}
    for v in ("ov-int8", "bf16"):
        man["variants"][v] = {g: {**e, "backend": "openvino"} for g, e in fp32.items()}
    write_manifest(bundle, man)
    gate(bundle, variants=["int8", "ov-int8", "bf16"])
    man = json.loads((bundle / "manifest.json").read_text())
    man["gate"]["variants"]["bf16"]["verdict"] = "fail"
    write_manifest(bundle, man)

    def row(name, thr):
        b, p = name.split("/")
        return {"name": name, "backend": b, "precision": p, "batch": 32, "throughput": thr}

    speeds = {"torch/fp32": 5.0, "ort-cpu/fp32": 10.0, "ort-cpu/int8": 30.0,
              "openvino/int8": 45.0, "openvino/bf16": 60.0}  # bf16 failed its gate
    prod = {"kind": "arch", "label": "r50", "results": [row(n, t) for n, t in speeds.items()],
            "parity": {}, "gemm": []}
    demo = {"kind": "bundle", "label": "bundle", "bundle": str(bundle), "parity": {},
            "results": [row("ort-cpu/fp32", 300.0)], "gemm": []}
    tgt = targets([demo, prod], None, {"ratio": 1.0}, 32)
    best = tgt["best_gated_cpu_vs_torch"]
    assert best["value"] == pytest.approx(45.0 / 5.0) and "openvino/int8" in best["target"]
    assert "failed the parity gate" in best["gated"]["openvino/bf16"]
    # the paper-size rows are random-weight graphs: labelled ungated, the bundle's verdict quoted
    assert all(why.startswith("UNGATED") for why in best["gated"].values())
    assert tgt["openvino_int8_vs_ort_int8"]["value"] == pytest.approx(1.5)
    assert tgt["auto_picks_fastest"]["met"] is True
    assert tgt["transfer_vs_gemms"]["met"] is None
    # without a bundle nothing is gated: no figure rather than an unverified one
    assert targets([prod], None, None, 32)["best_gated_cpu_vs_torch"]["value"] is None
    # a variant that passed its gate but lost more than a point of Rank-1 is not the best one
    man = json.loads((bundle / "manifest.json").read_text())
    man["gate"]["variants"]["ov-int8"]["figures"]["d_rank1"] = -1.5
    write_manifest(bundle, man)
    best = targets([demo, prod], None, {"ratio": 1.0}, 32)["best_gated_cpu_vs_torch"]
    assert best["value"] == pytest.approx(30.0 / 5.0) and "ort-cpu/int8" in best["target"]
    assert "-1.50" in best["gated"]["openvino/int8"]


def test_transfer_scaling_subprocess_point(tmp_path):
    from benchmarks import transfer_scaling

    out = tmp_path / "scale"
    res = CliRunner().invoke(transfer_scaling.main, [
        "--ns", "300", "--methods", "dense,nosuch", "--dim", "32", "--repeats", "1",
        "--out", str(out)])
    assert res.exit_code == 0, res.output
    points = json.loads((out / "transfer_scaling.json").read_text())["points"]
    ok = next(p for p in points if p["method"] == "dense")
    assert ok["status"] == "ok" and ok["n"] == 300 and ok["peak_rss_mib"] > 0
    bad = next(p for p in points if p["method"] == "nosuch")
    assert bad["status"] == "unavailable" and "nosuch" in bad["reason"]


class _FactoryTwin:
    """Torch twin of the tiny factory bundle's graphs (GAP + MatMul; z @ Wt + sum(w * idx))."""

    def extract(self, images, modality="rgb"):
        import torch

        from tests.bundle_factory import SEEDS, weights

        wt = weights(SEEDS[f"extractor_{modality}"])
        flat = images.mean(dim=(2, 3))
        return flat @ torch.from_numpy(wt["ws"]), flat @ torch.from_numpy(wt["wp"])

    def transfer(self, z, idx, w):
        import torch

        from tests.bundle_factory import weights

        wt = torch.from_numpy(weights(7)["wt"])
        return z @ wt + (idx.to(torch.float32) * w).sum(dim=1, keepdim=True)


class _TwinSource:
    """FeatureSource of the twin, fed by the runtime's preprocessing."""

    def __init__(self, info):
        from ssft_deploy.preprocess import Preprocessor

        self.prep, self.twin, self.k, self.parts = (Preprocessor.from_bundle(info), _FactoryTwin(),
                                                    info.k, info.transfer_parts)

    def extract(self, records):
        import torch

        shared, specific = [], []
        for r in records:
            batch = self.prep.crops([r.path])
            batch.raise_errors()
            s, p = self.twin.extract(torch.from_numpy(batch.array), ("rgb", "ir")[r.modality])
            shared.append(s.numpy()[0])
            specific.append(p.numpy()[0])
        return np.stack(shared), np.stack(specific)

    def transfer(self, z, idx, w):
        import torch

        return self.twin.transfer(*(torch.from_numpy(a) for a in (z, idx, w))).numpy()


def test_parity_gate_and_accuracy_against_torch_twin(tmp_path):
    from benchmarks import parity
    from ssft_deploy.bundle import load_bundle
    from ssft_deploy.datasets import synthetic

    info = load_bundle(make_bundle(tmp_path / "bundle"))
    data = tmp_path / "sysu"
    synthetic.generate_sysu(data, num_train=1, num_val=0, num_test=4, rgb_per_cam=2,
                            size=(16, 8), seed=3)
    variants = [("ort-cpu", "fp32"), ("ort-cpu", "int8")]
    gate, skipped = parity.gate_rows(_FactoryTwin(), info, data, variants)
    row = gate["variants"]["ort-cpu/fp32"]
    assert row["verdict"] == "pass" and row["extractor_min_cos"] > 0.99999
    assert row["neighbour_overlap_mean"] == 1.0
    assert [s["name"] for s in skipped] == ["ort-cpu/int8"]  # the factory bundle has no int8
    acc = parity.accuracy(_TwinSource(info), info, data, ["ort-cpu/fp32"], trials=1,
                          settings=("transfer",))
    got = acc["variants"]["ort-cpu/fp32"]["transfer"]
    assert 0.0 <= acc["reference"]["transfer"]["rank1"] <= 100.0
    assert got["d_rank1"] == pytest.approx(0.0, abs=1e-6)
    assert got["d_mAP"] == pytest.approx(0.0, abs=1e-4)


def test_train_speed_runs_variants_side_by_side(tmp_path):
    """benchmarks/train_speed.py: each variant in its own process, steps/s and the speed-up
    over the first variant, the machine and the rounds' load recorded."""
    from benchmarks import train_speed
    from ssft_deploy.datasets import synthetic

    data = tmp_path / "sysu"
    synthetic.generate_sysu(data, num_train=3, num_val=1, num_test=1, rgb_per_cam=2,
                            size=(32, 16), seed=0)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"arch": "resnet18", "height": 32, "width": 16, "ids_per_batch": 2,
                               "rgb_per_id": 1, "ir_per_id": 1, "num_workers": 0,
                               "disc_hidden": 8, "decoder_channels": 8}))
    res = train_speed.run(str(cfg), str(data), rounds=1, budget_s=0.0, threads=1, extra=[],
                          variants={"a": ["fused_optimizer=false"], "b": ["bf16=true"],
                                    "c": [train_speed.NAN_FILL]})   # the worker's, not a key
    assert list(res["variants"]) == ["a", "b", "c"] and not res["skipped"]
    assert res["variants"]["a"]["speedup"] == 1.0 and res["variants"]["b"]["steps_per_s"] > 0
    assert res["machine"]["cpu"] and res["rounds"][0]["load_before"] is not None
    with pytest.raises(common.BenchError, match="no variant could start"):
        train_speed.run(str(cfg), str(tmp_path), rounds=1, budget_s=0.0, threads=1, extra=[],
                        variants={"a": []})   # no dataset there


def test_gallery_writes_point_and_side_by_side_ratios():
    pytest.importorskip("faiss")
    from benchmarks import gallery_writes

    row = gallery_writes.point(300, 8, 6, batch=20, batches=2)
    assert row["n"] == 300 and len(row["rounds"]) == 2
    assert all(r["reader_len"] in (320, 340) for r in row["rounds"])  # the reader saw each add
    assert row["add_entries_per_s"] > 0 and row["median_search_after_add_s"] > 0
    old = {**row, "code_label": "old", "add_entries_per_s": row["add_entries_per_s"] / 4}
    (r,) = gallery_writes.ratios([old, {**row, "code_label": "new"}])
    assert r["n"] == 300 and r["add_throughput_new_over_old"] == pytest.approx(4.0)
