"""RegDB: one model per trial. ``ssft-train --regdb-trials`` trains one checkpoint per trial, each
recording its trial; ``ssft-eval`` scores a checkpoint on its own trial only, a folder of per-trial
checkpoints trial by trial, and refuses to mix; output paths are checked before the work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from ssft_deploy.datasets import regdb, synthetic
from train.cli import main as train_main
from train.config import SSFTConfig
from train.evaluate import main as eval_main
from train.model import SSFTModel, save_checkpoint

torch.set_num_threads(2)
TINY = ["arch=\"resnet18\"", "height=32", "width=16", "ids_per_batch=3", "rgb_per_id=1",
        "ir_per_id=1", "batches_per_epoch=1", "epochs=1", "num_workers=0", "disc_hidden=16",
        "decoder_channels=8", "transfer_dim=32"]
SETTINGS = ["--settings", "shared-only"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tmp_path_factory.mktemp("regdb")
    synthetic.generate_regdb(data, num_ids=8, images_per_id=2, size=(32, 16), seed=4)
    out = tmp_path_factory.mktemp("runs")
    args = ["--data", str(data), "--out", str(out), "--quiet", "--regdb-trials", "2-3"]
    for s in TINY:
        args += ["--set", s]
    res = CliRunner().invoke(train_main, args)
    assert res.exit_code == 0, res.output
    return data, out


def _eval(*args):
    return CliRunner().invoke(eval_main, [str(a) for a in args])


def test_train_writes_one_checkpoint_per_trial_recording_it(trained) -> None:
    data, out = trained
    for t in (2, 3):
        cfg = json.loads((out / f"trial_{t:02d}" / "config.json").read_text())
        assert (cfg["dataset"], cfg["regdb_trial"]) == ("regdb", t)
        # trained on that trial's training identities
        assert cfg["num_classes"] == len({r.pid for r in regdb.load_split(data, "train", t)})


def test_checkpoint_is_scored_on_its_own_trial_only(trained, tmp_path) -> None:
    data, out = trained
    ckpt = out / "trial_03" / "model.pth"
    res = _eval(ckpt, "--data", data, "--dataset", "regdb", *SETTINGS, "--out", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["trial_numbers"] == [3] and r["trial_models"] == {"3": str(ckpt)}
    rows = r["directions"]["v2t"]["shared-only"]["per_trial"]
    assert [row["trial"] for row in rows] == [3]
    assert "RegDB Visible to Thermal, trial 3" in res.output
    # a RegDB checkpoint with --trials would mix its training identities into the test: refused
    res = _eval(ckpt, "--data", data, "--dataset", "regdb", "--trials", "10")
    assert res.exit_code == 2 and "trained on RegDB trial 3" in res.output


def test_folder_scores_each_trial_with_its_own_model(trained, tmp_path) -> None:
    data, out = trained
    res = _eval(out, "--data", data, "--dataset", "regdb", *SETTINGS, "--out", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["trial_numbers"] == [2, 3]
    assert r["trial_models"] == {str(t): str(out / f"trial_{t:02d}" / "model.pth") for t in (2, 3)}
    single = _eval(out / "trial_03" / "model.pth", "--data", data, "--dataset", "regdb", *SETTINGS,
                   "--out", tmp_path / "s.json")
    assert single.exit_code == 0
    one = json.loads((tmp_path / "s.json").read_text())["directions"]["t2v"]["shared-only"]
    rows = r["directions"]["t2v"]["shared-only"]["per_trial"]
    assert rows[1] == one["per_trial"][0]   # trial 3's figure is trial 3's model's


def test_mixing_is_refused(trained, tmp_path) -> None:
    data, out = trained
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    shutil.copytree(out / "trial_03", mixed / "copy_of_3")        # two models of trial 3
    res = _eval(mixed, "--data", data, "--dataset", "regdb")
    assert res.exit_code == 2 and "both trained on RegDB trial 3" in res.output
    shutil.rmtree(mixed / "copy_of_3")
    cfg = SSFTConfig(arch="resnet18", height=32, width=16, num_classes=4)   # a SYSU model
    save_checkpoint(SSFTModel(cfg), mixed / "sysu.pth")
    res = _eval(mixed, "--data", data, "--dataset", "regdb")
    assert res.exit_code == 2 and "not on a RegDB trial" in res.output
    res = _eval(out, "--data", data, "--dataset", "regdb", "--trials", "2")
    assert res.exit_code == 2 and "--trials does not apply" in res.output
    res = _eval(out, "--data", data)   # SYSU protocol on a folder of checkpoints
    assert res.exit_code == 2 and "is for --dataset regdb" in res.output
    assert "Traceback" not in res.output


def test_bad_outputs_and_contradictory_flags_fail_before_the_work(trained, tmp_path) -> None:
    # issue 15 item 7: --out / --plot that cannot be created, --precision for a checkpoint
    data, out = trained
    ckpt = out / "trial_02" / "model.pth"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for option in ("--out", "--plot"):
        res = _eval(ckpt, "--data", data, "--dataset", "regdb", option, blocker / "r.json")
        assert res.exit_code == 2 and "cannot create folder" in res.output, res.output
        assert "RegDB" not in res.output          # refused before any evaluation ran
    res = _eval(ckpt, "--data", data, "--dataset", "regdb", "--out", tmp_path)
    assert res.exit_code == 2 and "is a folder" in res.output
    res = _eval(ckpt, "--data", data, "--dataset", "regdb", "--precision", "int8")
    assert res.exit_code == 2 and "runs in PyTorch fp32" in res.output
    assert "Traceback" not in res.output
