"""Checkpoint I/O: ssft/1 .pth read with weights_only=True in a fresh process, the safetensors
twin, and a clear CheckpointError for missing, truncated, foreign or mismatched files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from ssft_deploy.errors import CheckpointError
from train.config import SSFTConfig
from train.model import FORMAT, SSFTModel, load_model, read_checkpoint, save_checkpoint

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    cfg = SSFTConfig(arch="resnet18", height=32, width=16, num_classes=5, disc_hidden=16,
                     decoder_channels=8, transfer_dim=64)
    model = SSFTModel(cfg).eval()
    out = tmp_path_factory.mktemp("ckpt")
    pth, twin = save_checkpoint(model, out / "model.pth")
    return model, pth, twin


def test_checkpoint_loads_in_a_fresh_process_weights_only(saved) -> None:
    model, pth, _ = saved
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        ref = torch.cat(model.extract(x, "ir"), dim=1)
    torch.save(x, pth.parent / "x.pt")
    code = textwrap.dedent(f"""
        import json, torch
        raw = torch.load({str(pth)!r}, weights_only=True)
        assert raw["format"] == "ssft/1" and isinstance(raw["config"], dict)
        from train.model import load_model
        m = load_model({str(pth)!r})
        assert not m.training
        x = torch.load({str(pth.parent / 'x.pt')!r}, weights_only=True)
        with torch.no_grad():
            y = torch.cat(m.extract(x, "ir"), dim=1)
        torch.save(y, {str(pth.parent / 'y.pt')!r})
        print(json.dumps(m.dims))
    """)
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"shared": 512, "specific": 512, "transfer": 64}
    torch.testing.assert_close(torch.load(pth.parent / "y.pt", weights_only=True), ref)


def test_safetensors_twin_carries_config_and_weights(saved) -> None:
    model, pth, twin = saved
    from safetensors import safe_open

    with safe_open(str(twin), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == FORMAT
    assert json.loads(meta["config"]) == model.config.to_dict()
    loaded = load_model(twin)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert read_checkpoint(twin)["config"] == read_checkpoint(pth)["config"]


def test_bad_checkpoints_raise_checkpoint_error(saved, tmp_path) -> None:
    _, pth, twin = saved
    data = pth.read_bytes()
    cases = {
        "missing.pth": None,
        "truncated.pth": data[: len(data) // 2],
        "empty.pth": b"",
        "text.pth": b"hello, not a checkpoint\n",
        "truncated.safetensors": twin.read_bytes()[:1000],
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError):
            load_model(tmp_path / name)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pth")          # no format tag
    torch.save(SSFTModel(saved[0].config).state_dict(), tmp_path / "bare.pth")  # bare state dict
    torch.save({"format": "ssft/99", "config": {}, "state_dict": {}}, tmp_path / "future.pth")
    for name in ("foreign.pth", "bare.pth", "future.pth"):
        with pytest.raises(CheckpointError, match="not an ssft checkpoint"):
            load_model(tmp_path / name)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_refused(tmp_path) -> None:
    torch.save({"format": FORMAT, "config": {}, "state_dict": {}, "x": _Evil()},
               tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(tmp_path / "evil.pth")


def test_config_and_weight_mismatches(saved, tmp_path) -> None:
    _, pth, _ = saved
    raw = torch.load(pth, weights_only=True)
    raw["config"]["arch"] = "resnet50"
    torch.save(raw, tmp_path / "mismatch.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "mismatch.pth")
    raw["config"]["arch"] = "vgg"
    torch.save(raw, tmp_path / "badcfg.pth")
    with pytest.raises(CheckpointError, match="config"):
        load_model(tmp_path / "badcfg.pth")
