"""Ranking pictures (visrank): tiles, borders, query choice, and ``ssft-eval --visrank``."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from ssft_deploy.errors import InputError
from ssft_deploy.visrank import (
    BLUE,
    GREEN,
    GREY,
    RED,
    Tile,
    eval_pictures,
    pick_queries,
    ranking_picture,
)


def crop(v):
    return np.full((40, 20, 3), v, np.uint8)


def test_picture_layout_and_border_colours():
    pic = ranking_picture(Tile(crop(10), ["q"]), [Tile(crop(50), ["a", "b"], True),
                                                  Tile(crop(90), ["c"], False),
                                                  Tile(np.full((30, 30), 7, np.uint8), ["d"])],
                          height=64, width=32, border=4, gap=12)
    tile_w = 32 + 8
    assert pic.shape == (64 + 8 + 2 * 14 + 4, tile_w * 4 + 24 + 3 * 4, 3)
    starts = [0, tile_w + 24, 2 * tile_w + 28, 3 * tile_w + 32]
    for x, colour in zip(starts, (BLUE, GREEN, RED, GREY)):
        assert tuple(pic[1, x + 1]) == colour
    assert tuple(pic[20, starts[1] + 10]) == (50, 50, 50)          # the crop itself
    with pytest.raises(InputError, match="uint8"):
        ranking_picture(Tile(np.zeros((4, 4), np.float32), ["q"]), [])


def test_pick_queries_worst_and_best():
    g = np.array([1, 2, 3])
    q = np.array([1, 2, 3, 9])           # query 3 has no true match: skipped
    dist = np.array([[0.1, 0.5, 0.6],    # true match first, gap 0
                     [0.1, 0.9, 0.3],    # true match last (rank 3)
                     [0.2, 0.1, 0.3],    # true match third... its own id is 3 -> rank 3
                     [0.1, 0.2, 0.3]])
    worst, best = pick_queries(dist, q, g, 2)
    assert best[0] == 0 and 3 not in worst + best
    assert set(worst) == {1, 2} and worst[0] == 1      # same rank: the larger gap is worse


@dataclass
class Rec:
    path: str
    pid: int
    camid: int
    modality: int


def test_eval_pictures_write_files(tmp_path):
    recs = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), crop(40 * i))
        recs.append(Rec(str(p), i % 2, 1 + i, i % 2))
    dist = np.array([[0.3, 0.1], [0.2, 0.4]])
    paths = eval_pictures(dist, recs[:2], recs[2:], 1, tmp_path / "out", top=2)
    assert [p.name.split("_")[0] for p in paths] == ["worst", "best"]
    assert all(cv2.imread(str(p)) is not None for p in paths)


def test_ssft_eval_visrank(tmp_path, tiny_bundle):
    from ssft_deploy.datasets import synthetic
    from train.evaluate import main

    data = tmp_path / "sysu"
    synthetic.generate_sysu(data, num_train=1, num_val=1, num_test=3, rgb_per_cam=2,
                            size=(32, 16), seed=1)
    out = tmp_path / "pics"
    res = CliRunner().invoke(main, [str(tiny_bundle), "--data", str(data), "--trials", "1",
                                    "--settings", "shared-only", "--visrank", "2",
                                    "--visrank-dir", str(out)])
    assert res.exit_code == 0, res.output
    pics = sorted(p.name for p in out.iterdir())
    assert len(pics) == 4 and sum(p.startswith("worst") for p in pics) == 2
    assert "ranking pictures: 4" in res.output
