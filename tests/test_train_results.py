"""The accuracy figures docs/results.md reports are the seed sweep's (docs/results/), and `make demo`
compares its own run with that sweep's band."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.accuracy import markdown_table, seed_row, summarise
from train.config import load
from train.demo_summary import band

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _eval(t: float, s: float) -> dict:
    row = lambda r1: {m: {"mean": r1 + d} for m, d in (("rank1", 0), ("mAP", 5), ("mINP", 2))}
    return {"settings": {"transfer": row(t), "single-query": row(t - 1), "shared-only": row(s)}}


def test_summary_is_over_seeds_with_per_seed_gains() -> None:
    rows = [seed_row(_eval(t, s)) for t, s in ((30, 20), (34, 26), (32, 20))]
    out = summarise(rows)
    assert out["transfer"]["rank1"]["mean"] == pytest.approx(32)
    assert out["transfer"]["rank1"]["std"] == pytest.approx(2.0)          # sample std (ddof=1)
    gain = out["gain"]["transfer_minus_shared"]["rank1"]
    assert gain["mean"] == pytest.approx(10) and gain["std"] == pytest.approx(2.0)
    assert out["transfer_gain_rank1_clearly_positive"] is True
    assert "| gain: transfer - shared only | +10.00 +- 2.00 |" in markdown_table(
        {"summary": out})


def test_demo_prints_the_band_of_its_config(tmp_path, capsys) -> None:
    rows = [seed_row(_eval(t, 20)) for t in (30, 34, 32)]
    cfg = load(ROOT / "configs" / "demo.json").to_dict()
    sweep = {"config": cfg, "seeds": rows, "machine": {"cpu": "test CPU"},
             "summary": summarise(rows)}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep))
    got = band({"transfer": {"rank1": 33.0, "mAP": 60.0}}, ROOT / "configs" / "demo.json", path)
    assert got["transfer/rank1"] == {"low": 28.0, "high": 36.0, "inside": True}
    assert got["transfer/mAP"]["inside"] is False
    assert "28.00 ..  36.00" in capsys.readouterr().out
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**cfg, "epochs": 99}))
    assert band({"transfer": {"rank1": 33.0}}, other, path) == {}


@pytest.mark.parametrize("name", ["accuracy_demo.json", "accuracy_demo_resnet18.json",
                                  "accuracy_demo_no_affinity_grad.json"])
def test_readme_accuracy_table_is_the_sweep_file(name) -> None:
    result = json.loads((RESULTS / name).read_text())
    assert len(result["seeds"]) >= 2 and result["machine"]["cpu"]
    now = load(ROOT / result["config_file"], result["overrides"]).to_dict()
    assert {k: v for k, v in result["config"].items() if k != "extra"} == \
        {k: v for k, v in now.items() if k not in ("seed", "extra")}   # not stale
    page = (ROOT / "docs" / "results.md").read_text()
    for line in markdown_table(result).splitlines()[2:]:
        assert line in page, f"docs/results.md lacks the row of {name}: {line}"


def test_sweep_reports_other_seed_rows_and_each_gain_against_2_std() -> None:
    """The sweep's figures on another generator seed's test set sit in its table and in the
    README headline beside the main ones; every metric's gain is judged against 2 std."""
    from benchmarks.headline import accuracy_rows

    rows = [seed_row(_eval(t, s)) for t, s in ((30, 20), (34, 26), (32, 20))]
    other = [seed_row(_eval(t, 20)) for t in (25, 27, 29)]
    cfg = load(ROOT / "configs" / "demo.json").to_dict()
    result = {"config": cfg, "config_file": "configs/demo.json", "seeds": rows,
              "summary": summarise(rows), "other": {"s1": {"summary": summarise(other)}}}
    assert result["summary"]["transfer_gain_clearly_positive"] == {
        "rank1": True, "mAP": True, "mINP": True}
    assert "| gain: transfer - shared only [s1] | +7.00 +- 2.00 |" in markdown_table(result)
    head = accuracy_rows(result)
    steps = cfg["epochs"] * cfg["batches_per_epoch"]
    assert len(head) == 6 and head[0].startswith(
        f"| demo (MobileNetV2, ImageNet start, {steps} steps), 3 seeds | cm-SSFT transfer")
    assert head[5].startswith(f"| demo (MobileNetV2, ImageNet start, {steps} steps), 3 seeds, test "
                              "set of another generator seed (s1) | gain of the transfer | "
                              "Rank-1 +7.0 +- 2.0")
