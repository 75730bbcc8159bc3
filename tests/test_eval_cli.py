"""``ssft-eval`` end to end on a tiny untrained checkpoint and generated SYSU / RegDB trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ssft_deploy.datasets import synthetic
from train.config import SSFTConfig
from train.evaluate import TorchFeatureSource, main
from train.model import SSFTModel, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = SSFTConfig(arch="resnet18", height=32, width=16, num_classes=4, transfer_dim=32)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    save_checkpoint(SSFTModel(cfg), path)
    return path


def test_sysu_cli_json_plot_and_aux_sweep(tmp_path, checkpoint):
    data = tmp_path / "sysu"
    synthetic.generate_sysu(data, num_train=1, num_val=1, num_test=3, rgb_per_cam=2,
                            size=(32, 16), seed=1)
    out, plot = tmp_path / "r.json", tmp_path / "cmc.png"
    run = CliRunner().invoke(main, [str(checkpoint), "--data", str(data), "--trials", "2",
                                    "--aux-sizes", "1,all", "--out", str(out),
                                    "--plot", str(plot)])
    assert run.exit_code == 0, run.output
    res = json.loads(out.read_text())
    assert set(res["settings"]) == {"transfer", "single-query", "shared-only"}
    assert res["queries"] == 3 * 2 * 2 and set(res["aux_sweep"]) == {"1", "all"}
    for row in res["settings"].values():
        assert 0 <= row["rank1"]["mean"] <= row["rank10"]["mean"] <= 100
        assert len(row["per_trial"]) == 2
    assert "shared-only" in run.output and "rank1" in run.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regdb_cli(tmp_path, checkpoint):
    data = tmp_path / "regdb"
    synthetic.generate_regdb(data, num_ids=4, images_per_id=2, size=(32, 16), seed=1)
    run = CliRunner().invoke(main, [str(checkpoint), "--data", str(data), "--dataset", "regdb",
                                    "--trials", "1", "--settings", "transfer,shared-only"])
    assert run.exit_code == 0, run.output
    assert "RegDB Visible to Thermal" in run.output and "Thermal to Visible" in run.output


def test_extract_matches_model_and_errors_are_clean(tmp_path, checkpoint):
    data = tmp_path / "sysu"
    synthetic.generate_sysu(data, num_train=1, num_val=1, num_test=1, rgb_per_cam=1,
                            size=(32, 16), seed=2)
    from ssft_deploy.datasets import sysu
    from ssft_deploy.datasets.images import read_image
    from ssft_deploy.preprocess import Preprocessor

    recs = sysu.test_records(data)
    src = TorchFeatureSource(checkpoint, batch_size=2, progress=False)
    feats = src.extract(recs)
    r = next(i for i, x in enumerate(recs) if x.modality == 1)
    x = Preprocessor((32, 16)).normalise(read_image(recs[r].path)[None])
    with torch.no_grad():
        h, p = src.model.extract(torch.from_numpy(x), "ir")
    assert torch.allclose(torch.from_numpy(feats.shared[r]), h[0], atol=1e-5)
    assert torch.allclose(torch.from_numpy(feats.specific[r]), p[0], atol=1e-5)
    assert feats.modality.tolist() == [x.modality for x in recs]
    # a corrupt image and a foreign checkpoint: exit 2 with the package's message
    Path(recs[0].path).write_bytes(b"junk")
    run = CliRunner().invoke(main, [str(checkpoint), "--data", str(data), "--trials", "1"])
    assert run.exit_code == 2 and "cannot decode image" in run.output
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    run = CliRunner().invoke(main, [str(bad), "--data", str(data)])
    assert run.exit_code == 2 and "error:" in run.output
    run = CliRunner().invoke(main, [str(checkpoint), "--data", str(data), "--aux-sizes", "0"])
    assert run.exit_code == 2 and "--aux-sizes" in run.output


def test_reconstructions_picture_fig3(tmp_path, checkpoint):
    """--reconstructions N writes Fig. 3: per image the original and the decoders' outputs from
    shared only, specific only and both, which differ (each part carries something)."""
    from ssft_deploy.datasets import sysu
    from train.model import load_model
    from train.reconstruct import pick, reconstructions

    data = tmp_path / "sysu"
    synthetic.generate_sysu(data, num_train=1, num_val=1, num_test=3, rgb_per_cam=2,
                            size=(32, 16), seed=1)
    pic = tmp_path / "fig3.png"
    run = CliRunner().invoke(main, [str(checkpoint), "--data", str(data), "--trials", "1",
                                    "--settings", "shared-only", "--reconstructions", "2",
                                    "--reconstructions-path", str(pic)])
    assert run.exit_code == 0, run.output
    assert pic.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "Fig. 3" in run.output
    chosen = pick(sysu.test_records(data), 2)
    assert [r.modality for r in chosen] == [0, 0, 1, 1] and chosen[0].pid != chosen[1].pid
    x = torch.randn(2, 3, 32, 16)
    orig, shared, specific, both = reconstructions(load_model(checkpoint), x, 1)
    assert orig is x and all(o.shape == x.shape for o in (shared, specific, both))
    assert not torch.allclose(shared, both) and not torch.allclose(specific, both)
