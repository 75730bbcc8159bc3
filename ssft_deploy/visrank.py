"""Pictures of rankings, as ReID users know them from torchreid's visrank: the query crop, then
the top-k gallery crops, each tagged (modality, camera, distance) and framed green (same
identity) / red (another identity) where identities are known, grey where they are not.

Used by ``ssft-video`` (one picture per event) and ``ssft-eval --visrank N`` (the N worst and N
best queries of trial 0). OpenCV drawing only; torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ssft_deploy.errors import InputError

GREEN, RED, GREY, BLUE = (40, 170, 40), (40, 40, 220), (150, 150, 150), (200, 120, 30)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class Tile:
    """One crop of a picture: BGR (or grey) ``uint8`` image, caption lines, and ``correct``:
    True / False when the identity is known, None when not."""

    image: np.ndarray
    lines: Sequence[str]
    correct: bool | None = None


def _tile(t: Tile, h: int, w: int, border: int, colour) -> np.ndarray:
    img = np.asarray(t.image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or img.size == 0:
        raise InputError(f"a ranking tile must be a non-empty uint8 image, got {img.dtype} "
                         f"{list(img.shape)}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    img = cv2.resize(img[:, :, :3], (w, h))
    framed = cv2.copyMakeBorder(img, border, border, border, border, cv2.BORDER_CONSTANT,
                                value=colour)
    line_h = 14
    caption = np.full((line_h * len(t.lines) + 4, framed.shape[1], 3), 255, np.uint8)
    for i, line in enumerate(t.lines):
        cv2.putText(caption, str(line)[:24], (2, line_h * (i + 1) - 2), _FONT, 0.36,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([framed, caption])


def ranking_picture(query: Tile, gallery: Sequence[Tile], height: int = 128, width: int = 64,
                    border: int = 4, gap: int = 12) -> np.ndarray:
    """One row: the query (blue frame), a gap, then the ranked gallery tiles -> BGR image."""
    nlines = max([len(query.lines), *(len(g.lines) for g in gallery)])

    def pad(t: Tile) -> Tile:
        return Tile(t.image, list(t.lines) + [""] * (nlines - len(t.lines)), t.correct)

    tiles = [_tile(pad(query), height, width, border, BLUE)]
    for g in gallery:
        colour = GREY if g.correct is None else GREEN if g.correct else RED
        tiles.append(_tile(pad(g), height, width, border, colour))
    th = tiles[0].shape[0]
    spacer = np.full((th, gap, 3), 255, np.uint8)
    row = [tiles[0], spacer, spacer]
    for t in tiles[1:]:
        row += [t, spacer[:, : gap // 3]]
    return np.concatenate(row, axis=1)


def save_picture(path: str | Path, image: np.ndarray) -> Path:
    """Write a picture (format from the suffix); InputError if OpenCV cannot write it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise InputError(f"cannot write picture {path} (check the folder and the suffix)")
    return path


def pick_queries(dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, n: int
                 ) -> tuple[list[int], list[int]]:
    """The ``n`` worst and ``n`` best queries by the rank of their first true match (ties: the
    distance gap to it). Queries without a true match in the gallery are skipped."""
    order = np.argsort(dist, axis=1, kind="stable")
    hits = g_pids[order] == q_pids[:, None]
    has = hits.any(axis=1)
    first = np.where(has, hits.argmax(axis=1), dist.shape[1])
    gap = dist[np.arange(len(dist)), order[np.arange(len(dist)), np.minimum(
        first, dist.shape[1] - 1)]] - dist[np.arange(len(dist)), order[:, 0]]
    cand = np.flatnonzero(has)
    key = np.lexsort((gap[cand], first[cand]))
    ranked = cand[key].tolist()
    n = min(n, len(ranked))
    return ranked[::-1][:n], ranked[:n]


def eval_rankings(source, root: str | Path, n: int, out_dir: str | Path, dataset: str = "sysu",
                  setting: str = "transfer", mode: str = "all", shots: int = 1, seed: int = 0,
                  affinity: str = "dense") -> list[Path]:
    """``ssft-eval --visrank N``: trial 0 of the protocol (SYSU-MM01, or RegDB visible to
    thermal, trial 1) in ``setting``, then :func:`eval_pictures` of its N worst and N best."""
    from ssft_deploy.datasets import regdb, sysu
    from ssft_deploy.evaluation import FeatureCache, distances, make_sstn

    query, gallery = (sysu.test_trial(root, mode, shots, 0, seed) if dataset == "sysu"
                      else regdb.test_trial(root, 1, "v2t"))
    feats = FeatureCache(source)
    dist = distances(make_sstn(source, affinity), setting, feats(query), feats(gallery))
    return eval_pictures(dist, query, gallery, n, out_dir)


def eval_pictures(dist: np.ndarray, query: Sequence, gallery: Sequence, n: int,
                  out_dir: str | Path, top: int = 10) -> list[Path]:
    """Pictures of the ``n`` worst and ``n`` best queries of an evaluation (``query`` /
    ``gallery``: records with ``path``, ``pid``, ``camid``, ``modality``)."""
    from ssft_deploy.datasets.images import read_image

    names = ("RGB", "IR")
    q_pids = np.asarray([r.pid for r in query])
    g_pids = np.asarray([r.pid for r in gallery])
    worst, best = pick_queries(dist, q_pids, g_pids, n)
    out = []
    for kind, rows in (("worst", worst), ("best", best)):
        for i, qi in enumerate(rows):
            q = query[qi]
            order = np.argsort(dist[qi], kind="stable")[:top]
            tiles = [Tile(cv2.cvtColor(read_image(gallery[g].path), cv2.COLOR_RGB2BGR),
                          [f"{names[gallery[g].modality]} cam{gallery[g].camid}",
                           f"id {gallery[g].pid} d={dist[qi, g]:.3f}"],
                          bool(gallery[g].pid == q.pid)) for g in order]
            qt = Tile(cv2.cvtColor(read_image(q.path), cv2.COLOR_RGB2BGR),
                      [f"query {names[q.modality]} cam{q.camid}", f"id {q.pid}"])
            out.append(save_picture(Path(out_dir) / f"{kind}_{i:02d}_query{qi}.jpg",
                                    ranking_picture(qt, tiles)))
    return out
