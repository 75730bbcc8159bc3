"""Tiles for a small-input detector, and boxes merged back across tiles.

A 300x300 detector sees a 768x576 frame shrunk 2.6x: people under ~100 px tall become too small
to find. Overlapping tiles (each shrunk less) find them; the full frame still finds the large
people that no tile holds whole. :func:`tile_grid` chooses the layout from the frame size;
:func:`merge_tiles` lets a box that a tile cut (it touches an inner tile edge: the person goes
on outside the tile) give way to a whole box of the same person, and suppresses duplicates with
``supervision``'s NMS (the tracker's library, already a dependency); :func:`majority_vote` keeps
the boxes most of the passes that see them agree on.
"""

from __future__ import annotations

import math

import numpy as np

from ssft_deploy.errors import InputError


def _splits(length: int, max_tile: int, overlap: int) -> list[tuple[int, int]]:
    """Equal spans covering ``[0, length)``, each <= ``max_tile``, neighbours sharing
    >= ``overlap`` pixels."""
    if length <= max_tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (max_tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)
    starts = np.linspace(0, length - size, n).round().astype(int)
    return [(int(s), int(s) + size) for s in starts]


def tile_grid(height: int, width: int, max_tile: int, overlap: float = 0.25
              ) -> list[tuple[int, int, int, int]]:
    """Tiles ``(x0, y0, x1, y1)`` of a ``height`` x ``width`` frame: as few as keep every tile
    side <= ``max_tile`` px, neighbours overlapping by ``overlap`` of ``max_tile``. A frame that
    fits in one tile gets none (the full-frame pass covers it)."""
    if max_tile < 16 or not 0 <= overlap < 0.9:
        raise InputError(f"tiles need max_tile >= 16 and 0 <= overlap < 0.9, got {max_tile}, "
                         f"{overlap}")
    if height <= max_tile and width <= max_tile:
        return []
    ov = round(overlap * max_tile)
    return [(x0, y0, x1, y1) for y0, y1 in _splits(height, max_tile, ov)
            for x0, x1 in _splits(width, max_tile, ov)]


def cut_by_tile(xyxy: np.ndarray, tile: tuple[int, int, int, int], frame_hw: tuple[int, int],
                margin: float = 2.0) -> np.ndarray:
    """Mask of boxes (frame pixels) touching an edge of ``tile`` that is not a frame edge."""
    x0, y0, x1, y1 = tile
    h, w = frame_hw
    cut = np.zeros(len(xyxy), bool)
    if x0 > 0:
        cut |= xyxy[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= xyxy[:, 1] <= y0 + margin
    if x1 < w:
        cut |= xyxy[:, 2] >= x1 - margin
    if y1 < h:
        cut |= xyxy[:, 3] >= y1 - margin
    return cut


def _nms(xyxy: np.ndarray, sc: np.ndarray, iou: float, contain: float) -> np.ndarray:
    """Indices kept by NMS at IoU ``iou``, then of boxes lying ``contain`` or more inside a
    larger one, only the larger (a part of a person, e.g. the upper body a tile saw at a higher
    score than the whole person, goes)."""
    import supervision as sv

    idx = np.arange(len(sc))
    if len(idx) > 1:
        idx = idx[sv.box_non_max_suppression(np.c_[xyxy, sc], iou_threshold=iou)]
    if len(idx) > 1 and contain < 1:
        area = np.prod(xyxy[idx, 2:] - xyxy[idx, :2], axis=1)   # ranks the larger first
        keep = sv.box_non_max_suppression(np.c_[xyxy[idx], area], iou_threshold=contain,
                                          overlap_metric=sv.OverlapMetric.IOS)
        idx = idx[keep]
    return idx


def _overlaps(a: np.ndarray, b: np.ndarray, iou: float, contain: float) -> np.ndarray:
    """Mask over ``a``: boxes with IoU > ``iou`` or intersection / smaller > ``contain`` with
    any box of ``b``."""
    if not len(a) or not len(b):
        return np.zeros(len(a), bool)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)[:, None]
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)[None, :]
    ious = inter / np.maximum(area_a + area_b - inter, 1e-9)
    ios = inter / np.maximum(np.minimum(area_a, area_b), 1e-9)
    return ((ious > iou) | (ios > contain)).any(axis=1)


def merge_tiles(parts: list[tuple[np.ndarray, np.ndarray, tuple[int, int, int, int] | None]],
                frame_hw: tuple[int, int], iou: float = 0.5, contain: float = 0.8
                ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes from the full frame (tile ``None``) and tiles (frame pixels) -> one set.

    Whole boxes (the full frame's, and tile boxes off their tile's inner edges) go through NMS
    (:func:`_nms`). A tile box cut by an inner tile edge is a part of a person: it goes when it
    overlaps a kept whole box, whatever its score; the cut boxes left (people no pass saw whole)
    go through the same NMS and join."""
    whole_b, whole_s, cut_b, cut_s = [], [], [], []
    for xyxy, sc, tile in parts:
        xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        sc = np.asarray(sc, np.float32).reshape(-1)
        cut = (cut_by_tile(xyxy, tile, frame_hw) if tile is not None
               else np.zeros(len(sc), bool))
        whole_b.append(xyxy[~cut])
        whole_s.append(sc[~cut])
        cut_b.append(xyxy[cut])
        cut_s.append(sc[cut])
    wb, ws = np.concatenate(whole_b), np.concatenate(whole_s)
    keep = _nms(wb, ws, iou, contain)
    wb, ws = wb[keep], ws[keep]
    cb, cs = np.concatenate(cut_b), np.concatenate(cut_s)
    alone = ~_overlaps(cb, wb, iou, contain)
    cb, cs = cb[alone], cs[alone]
    keep = _nms(cb, cs, iou, contain)
    return np.concatenate([wb, cb[keep]]), np.concatenate([ws, cs[keep]])


def majority_vote(xyxy: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray,
                                                      tuple[int, int, int, int] | None]],
                  frame_hw: tuple[int, int], input_size: int, min_height: float,
                  iou: float = 0.5, margin: float = 2.0) -> np.ndarray:
    """Mask over merged boxes ``xyxy``: a strict majority of the passes that could have found
    the box did (a box of theirs at IoU > ``iou``). A tile could when it holds the box whole
    (within ``margin`` px); the full frame (tile ``None``) when the box is at least
    ``min_height`` px tall in its ``input_size`` input: shrunk further, a person is below what
    the detector finds, and the full frame is no witness. A box no pass could witness is kept.
    ``parts`` as in :func:`merge_tiles`, with every box each pass scored above the vote's own
    (low) score. A box one view finds and the other views able to see it do not is the typical
    false box on real footage (a sign with legs below it, a box spanning two people)."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    height = xyxy[:, 3] - xyxy[:, 1]
    seen = np.zeros(len(xyxy), int)
    hits = np.zeros(len(xyxy), int)
    for boxes, _, tile in parts:
        if tile is None:
            able = height * input_size / frame_hw[0] >= min_height
        else:
            x0, y0, x1, y1 = tile
            able = ((xyxy[:, 0] >= x0 - margin) & (xyxy[:, 1] >= y0 - margin)
                    & (xyxy[:, 2] <= x1 + margin) & (xyxy[:, 3] <= y1 + margin))
        seen += able
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if able.any() and len(boxes):
            hits += able & _overlaps(xyxy, boxes, iou, contain=1.1)
    return (2 * hits > seen) | (seen == 0)     # no pass able to witness: no case against it
