"""Synthetic generator, image reading and the SYSU-MM01 / RegDB loaders on generated trees."""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from ssft_deploy.datasets import read_image, regdb, synthetic, sysu
from ssft_deploy.errors import DatasetError, InputError

SMALL = {"num_train": 3, "num_val": 2, "num_test": 4, "rgb_per_cam": (2, 4), "size": (32, 16)}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysu")
    return root, synthetic.generate_sysu(root, seed=3, **SMALL)


def test_generator_is_deterministic_from_seed(tmp_path, small):
    root, _ = small
    synthetic.generate_sysu(tmp_path / "again", seed=3, **SMALL)
    synthetic.generate_sysu(tmp_path / "other", seed=4, **SMALL)
    assert _digest(root) == _digest(tmp_path / "again")
    assert _digest(root) != _digest(tmp_path / "other")


def test_sysu_layout_and_split_counts(small):
    root, summary = small
    ids = {s: [int(x) for x in (root / "exp" / f"{s}_id.txt").read_text().strip().split(",")]
           for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [3, 2, 4]
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(range(1, 10))
    train = sysu.load_split(root, "train")
    assert {r.pid for r in train} == set(ids["train"] + ids["val"])
    on_disk = collections.Counter(p.parts[-3] for p in root.glob("cam*/*/*.jpg"))
    loaded = collections.Counter(f"cam{r.camid}" for r in train + sysu.test_records(root))
    assert loaded == on_disk == collections.Counter(summary.images_per_camera)
    assert all(r.modality == (r.camid in (3, 6)) for r in train)
    img = read_image(next(r.path for r in train if r.camid == 3))
    assert img.shape == (32, 16, 3) and img.dtype == np.uint8
    assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() <= 2  # IR: equal channels (JPEG)


def test_sysu_protocol_single_multi_indoor(small):
    root, _ = small
    test = sysu.test_records(root)
    cells = collections.Counter((r.pid, r.camid) for r in test if r.modality == 0)
    q, g = sysu.test_trial(root, "all", shots=1, trial=0)
    assert q == [r for r in test if r.camid in (3, 6)]
    assert collections.Counter((r.pid, r.camid) for r in g) == {c: 1 for c in cells}
    _, g3 = sysu.test_trial(root, "all", shots=3, trial=0)
    assert collections.Counter((r.pid, r.camid) for r in g3) == {c: min(n, 3)
                                                                  for c, n in cells.items()}
    _, gi = sysu.test_trial(root, "indoor", shots=1, trial=0)
    assert {r.camid for r in gi} <= {1, 2} and len(gi) == sum(c[1] in (1, 2) for c in cells)
    # deterministic per trial, different across trials
    assert sysu.test_trial(root, "all", 1, trial=2) == sysu.test_trial(root, "all", 1, trial=2)
    picks = {tuple(r.path for r in sysu.test_trial(root, "all", 1, trial=t)[1]) for t in range(6)}
    assert len(picks) > 1
    with pytest.raises(DatasetError, match="mode"):
        sysu.test_trial(root, "outdoor")


def test_sysu_of_real_test_size_is_generated_fast(tmp_path):
    # SYSU-MM01's test split: 96 ids, 3803 IR queries, 301 / 3010 gallery, 112 indoor pairs of
    # 56 ids, 13-42 images per (id, RGB camera) pair (tiny images here)
    synthetic.generate_sysu(tmp_path, num_train=1, num_val=1, size=(16, 8),
                            **synthetic.SYSU_TEST_SCALE)
    q, g = sysu.test_trial(tmp_path, "all", shots=1, trial=0)
    _, g10 = sysu.test_trial(tmp_path, "all", shots=10, trial=0)
    assert (len(q), len(g), len(g10)) == (3803, 301, 3010)
    assert len({r.pid for r in q}) == 96
    cells = collections.Counter((r.pid, r.camid) for r in sysu.test_records(tmp_path)
                                if r.modality == 0)
    assert min(cells.values()) >= 13 and max(cells.values()) <= 42
    assert len(set(cells.values())) > 10           # varying, so multi-shot's pick is random
    _, gi = sysu.test_trial(tmp_path, "indoor", shots=1, trial=0)
    assert len(gi) == 112 and len({r.pid for r in gi}) == 56
    # all-search: every query has a match once camera 3 drops camera 2
    for r in q:
        assert any(x.pid == r.pid and not (r.camid == 3 and x.camid == 2) for x in g)
    # multi-shot draws differ between trials (cells hold more than 10 images)
    assert sysu.test_trial(tmp_path, "all", 10, trial=1)[1] != g10


def test_every_all_search_query_has_a_match(small, tmp_path):
    # random presence too: an id seen by RGB camera 2 only would leave its camera-3 queries
    # without a match; the generator always adds one of cameras 1, 4, 5
    for seed in range(4):
        root = tmp_path / str(seed)
        synthetic.generate_sysu(root, num_train=1, num_val=1, num_test=12, rgb_per_cam=1,
                                rgb_presence=0.2, size=(16, 8), seed=seed)
        recs = sysu.test_records(root)
        for pid in {r.pid for r in recs}:
            assert {r.camid for r in recs if r.pid == pid} & {1, 4, 5}


def test_sysu_errors(tmp_path, small):
    root, _ = small
    with pytest.raises(DatasetError, match="exp/train_id.txt"):
        sysu.load_split(tmp_path)
    bad = tmp_path / "bad"
    (bad / "exp").mkdir(parents=True)
    for s in ("train", "val"):
        (bad / "exp" / f"{s}_id.txt").write_text("1,2\n")
    (bad / "exp" / "test_id.txt").write_text("1,2\n3,x\n")
    with pytest.raises(DatasetError, match=r"test_id.txt:2: bad person id 'x'"):
        sysu.test_records(bad)
    with pytest.raises(DatasetError, match="missing folder .*cam1"):
        sysu.load_split(bad, "train")
    with pytest.raises(DatasetError, match="unknown SYSU-MM01 camera 7"):
        sysu.camera_records(root, (7,), [1])
    with pytest.raises(DatasetError, match="split"):
        sysu.load_split(root, "val")


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    root = tmp_path_factory.mktemp("regdb")
    synthetic.generate_regdb(root, num_ids=6, images_per_id=3, size=(32, 16), seed=1)
    return root


def test_regdb_layout_and_splits(reg):
    for trial in (1, 10):
        train, test = regdb.load_split(reg, "train", trial), regdb.load_split(reg, "test", trial)
        assert len(train) == len(test) == 2 * 3 * 3
        for recs in (train, test):
            assert collections.Counter(r.modality for r in recs) == {0: 9, 1: 9}
            assert {r.pid for r in recs} == {0, 1, 2}  # labels 0-based per split
            assert all((r.camid, r.modality) in ((1, 0), (2, 1)) for r in recs)
        folders = {Path(r.path).parent.name for r in train} | {Path(r.path).parent.name
                                                                for r in test}
        assert len(folders) == 6
    q, g = regdb.test_trial(reg, 3, "t2v")
    assert {r.modality for r in q} == {1} and {r.modality for r in g} == {0}
    assert [r.pid for r in q] == [r.pid for r in g]


def test_regdb_errors(tmp_path, reg):
    with pytest.raises(DatasetError, match="missing folder .*Visible"):
        regdb.load_split(tmp_path, "train", 1)
    with pytest.raises(DatasetError, match="trial must be 1..10"):
        regdb.load_split(reg, "train", 11)
    with pytest.raises(DatasetError, match="direction"):
        regdb.test_trial(reg, 1, "x2y")
    bad = tmp_path / "bad"
    (bad / "Visible").mkdir(parents=True)
    (bad / "Thermal").mkdir()
    with pytest.raises(DatasetError, match="missing index file"):
        regdb.load_split(bad, "train", 1)
    (bad / "idx").mkdir()
    img = next(reg.glob("Visible/*/*.jpg"))
    (bad / "Visible" / "a.jpg").write_bytes(img.read_bytes())
    idx = bad / "idx" / "train_visible_1.txt"
    idx.write_text("Visible/a.jpg 0\nVisible/a.jpg\n")
    with pytest.raises(DatasetError, match=r"train_visible_1.txt:2: expected 'path label'"):
        regdb.read_index(bad, "train", "visible", 1)
    idx.write_text("Visible/a.jpg zero\n")
    with pytest.raises(DatasetError, match=r"train_visible_1.txt:1: label 'zero'"):
        regdb.read_index(bad, "train", "visible", 1)
    idx.write_text("Visible/a.jpg 0\nVisible/gone.jpg 1\n")
    with pytest.raises(DatasetError, match=r":2: image .*gone.jpg does not exist"):
        regdb.read_index(bad, "train", "visible", 1)


def test_read_image_errors_and_grey(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputError, match="broken.jpg"):
        read_image(tmp_path / "broken.jpg")
    with pytest.raises(InputError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    img = read_image(tmp_path / "grey.png")
    assert img.shape == (3, 4, 3) and (img == grey[..., None]).all()


def test_cli(tmp_path):
    run = CliRunner().invoke(synthetic.main, ["--root", str(tmp_path / "r"), "--regdb",
                                              "--ids", "4", "--per-cam", "2", "--size", "32,16"])
    assert run.exit_code == 0, run.output
    assert len(list((tmp_path / "r").glob("Thermal/*/*.jpg"))) == 8
    assert len(list((tmp_path / "r" / "idx").glob("*.txt"))) == 40
    bad = CliRunner().invoke(synthetic.main, ["--root", str(tmp_path / "s"), "--ids", "1,2"])
    assert bad.exit_code == 2 and "TRAIN,VAL,TEST" in bad.output


def test_varied_training_cameras_keep_the_test_split(tmp_path, small):
    """--vary-train-cameras redraws each camera's conditions per training id only: the test
    split (and the split files) stay byte-identical, the training images change."""
    root, _ = small
    synthetic.generate_sysu(tmp_path / "vary", seed=3, vary_train_cameras=True, **SMALL)
    plain, vary = _digest(root), _digest(tmp_path / "vary")
    assert plain.keys() == vary.keys()
    test_ids = (root / "exp" / "test_id.txt").read_text().strip().split(",")
    test = {k for k in plain if k.split("/")[1].lstrip("0") in test_ids or k.startswith("exp")}
    assert test and all(plain[k] == vary[k] for k in test)
    assert any(plain[k] != vary[k] for k in plain.keys() - test)
    from ssft_deploy.datasets.persons import make_camera

    assert make_camera(3, 1, 7).light != make_camera(3, 1, 8).light
    assert make_camera(3, 1).light == make_camera(3, 1, None).light
