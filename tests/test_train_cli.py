"""ssft-train end to end on a tiny synthetic SYSU-MM01 tree: outputs, log, resume, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ssft_deploy.datasets import synthetic
from train.cli import main
from train.model import load_model

torch.set_num_threads(2)
TINY = ["arch=\"resnet18\"", "height=32", "width=16", "ids_per_batch=3", "rgb_per_id=1",
        "ir_per_id=1", "batches_per_epoch=2", "num_workers=0", "disc_hidden=16",
        "decoder_channels=8", "checkpoint_every=1", "milestones=[1]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu")
    synthetic.generate_sysu(root, num_train=3, num_val=1, num_test=1, rgb_per_cam=1,
                            size=(32, 16), seed=0)
    return root


def _train(data, out, *extra):
    args = ["--data", str(data), "--out", str(out), "--quiet"]
    for s in TINY:
        args += ["--set", s]
    return CliRunner().invoke(main, args + list(extra))


def test_train_writes_checkpoint_log_and_resumes(data, tmp_path) -> None:
    res = _train(data, tmp_path, "--epochs", "1")
    assert res.exit_code == 0, res.output
    assert f"checkpoint: {tmp_path / 'model.pth'}" in res.output
    for name in ("model.pth", "model.safetensors", "checkpoint.pth", "log.json", "config.json"):
        assert (tmp_path / name).is_file(), name
    log = json.loads((tmp_path / "log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [0, 1] and len(log["epochs"]) == 1
    assert {"id_shared", "id_specific", "id_transfer", "re", "ma_max", "pa_min", "min"} <= set(
        log["steps"][0])
    model = load_model(tmp_path / "model.pth")
    assert model.config.num_classes == 4   # 3 train + 1 val ids
    first = {k: v.clone() for k, v in model.state_dict().items()}
    res = _train(data, tmp_path, "--epochs", "2", "--resume")
    assert res.exit_code == 0, res.output
    log = json.loads((tmp_path / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [0, 1]
    assert log["steps"][-1]["lr"] == pytest.approx(3.5e-5)   # x0.1 after milestone 1
    resumed = load_model(tmp_path / "model.pth").state_dict()
    assert any(not torch.equal(first[k], resumed[k]) for k in first)


@pytest.mark.parametrize("extra,match", [
    (["--set", "epochs=many"], "epochs: expected an integer"),
    (["--set", "ids_per_batch=9"], "need at least 9 identities"),
    (["--resume"], "no trainer state"),
    (["--config", "/nonexistent/config.json"], "does not exist"),
])
def test_user_errors_exit_2_with_a_message(data, tmp_path, extra, match) -> None:
    res = _train(data, tmp_path, *extra)
    assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output


def test_bad_output_and_config_paths_fail_before_any_work(data, tmp_path) -> None:
    # issue 15 item 7: a folder as --config, an existing file as --out, an --out that cannot be
    # created: exit 2 with a message, no traceback, nothing trained
    existing = tmp_path / "model.pth"
    existing.write_bytes(b"keep me")
    cases = [(["--config", str(tmp_path)], tmp_path / "a", "is a folder"),
             ([], existing, "existing file, not a folder"),
             ([], existing / "sub", "cannot create folder")]
    for extra, out, match in cases:
        args = ["--data", str(data), "--out", str(out), "--quiet", *extra]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and match in res.output, res.output
        assert "Traceback" not in res.output and not isinstance(res.exception, Exception) or \
            isinstance(res.exception, SystemExit)
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "a" / "model.pth").exists()


@pytest.mark.parametrize("text,match", [("0-3", "1..10"), ("2-x", "range like 1-10"),
                                        ("", "1..10")])
def test_bad_regdb_trials(data, tmp_path, text, match) -> None:
    res = _train(data, tmp_path, "--regdb-trials", text)
    assert res.exit_code == 2 and match in res.output


def test_missing_dataset_is_a_clear_error(tmp_path) -> None:
    res = CliRunner().invoke(main, ["--data", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "does not exist" in res.output
