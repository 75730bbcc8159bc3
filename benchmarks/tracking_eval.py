"""Tracking quality with TrackEval's metrics (HOTA, CLEAR MOT, Identity) on in-memory boxes.

Why TrackEval: it is the MOTChallenge / KITTI reference implementation of HOTA, MOTA and IDF1,
and its PyPI release (``trackeval`` 1.3, 2026) runs on numpy 2. ``py-motmetrics`` 1.4.0 (2022,
the latest) has no HOTA and calls ``np.asfarray``, removed in numpy 2. TrackEval's declared
dependencies include ``opencv-python``, which would clash with the project's
``opencv-python-headless``, and ``pycocotools`` / ``matplotlib`` for other metrics and datasets;
the three metrics used here need only numpy and scipy, so the set-up installs it with
``pip install --no-deps trackeval==1.3.0``.

Boxes are ``{frame: [(id, (x, y, w, h)), ...]}`` for truth and hypothesis; the sequence data
TrackEval's metrics take (ids renumbered from 0, IoU per frame) is built here, so none of its
dataset readers (files in its folder layout) are involved.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter

import numpy as np

Boxes = dict[int, list[tuple[int, tuple[float, float, float, float]]]]


def _metrics():
    # TrackEval prints a line per optional dataset whose dependency is missing (BURST: pycocotools)
    with contextlib.redirect_stdout(io.StringIO()):
        from trackeval.metrics import CLEAR, HOTA, Identity
    return HOTA(), CLEAR({"PRINT_CONFIG": False}), Identity({"PRINT_CONFIG": False})


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes a [N,4] x b [M,4]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    a0, a1 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b0, b1 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(-1)
    union = a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter
    return inter / np.maximum(union, 1e-9)


def sequence(truth: Boxes, hyp: Boxes, frames: list[int] | None = None) -> dict:
    """TrackEval's per-sequence data for the frames ``frames`` (default: all in either)."""
    frames = sorted(set(truth) | set(hyp)) if frames is None else list(frames)
    gmap = {g: i for i, g in enumerate(sorted({g for f in frames for g, _ in truth.get(f, [])}))}
    tmap = {t: i for i, t in enumerate(sorted({t for f in frames for t, _ in hyp.get(f, [])}))}
    data = {"num_timesteps": len(frames), "num_gt_ids": len(gmap), "num_tracker_ids": len(tmap),
            "gt_ids": [], "tracker_ids": [], "similarity_scores": [],
            "num_gt_dets": 0, "num_tracker_dets": 0}
    for f in frames:
        g, t = truth.get(f, []), hyp.get(f, [])
        data["gt_ids"].append(np.asarray([gmap[i] for i, _ in g], int))
        data["tracker_ids"].append(np.asarray([tmap[i] for i, _ in t], int))
        data["similarity_scores"].append(iou_xywh([b for _, b in g], [b for _, b in t]))
        data["num_gt_dets"] += len(g)
        data["num_tracker_dets"] += len(t)
    return data


def tracks_per_person(truth: Boxes, hyp: Boxes, min_iou: float = 0.5, min_share: float = 0.5
                      ) -> dict:
    """Each hypothesis track belongs to the true person its boxes overlap (IoU >= ``min_iou``)
    on most of its matched frames, if that is ``min_share`` of its boxes or more (else it is a
    false track); per person, the tracks that belong to them. ``tracks_per_person`` is the mean
    over the people with at least one track."""
    votes: dict[int, Counter] = {}
    sizes: Counter = Counter()
    for f, rows in hyp.items():
        gt = truth.get(f, [])
        iou = iou_xywh([b for _, b in rows], [b for _, b in gt]) if gt else None
        for i, (tid, _) in enumerate(rows):
            sizes[tid] += 1
            votes.setdefault(tid, Counter())
            if iou is not None and iou[i].max() >= min_iou:
                votes[tid][gt[int(iou[i].argmax())][0]] += 1
    owner = {}
    for tid, c in votes.items():
        if c:
            person, n = c.most_common(1)[0]
            if n >= min_share * sizes[tid]:
                owner[tid] = person
    people = sorted({p for rows in truth.values() for p, _ in rows})
    per = {p: sorted(t for t, o in owner.items() if o == p) for p in people}
    found = [len(v) for v in per.values() if v]
    return {"people": len(people), "people_tracked": len(found),
            "tracks": len(votes), "false_tracks": len(votes) - len(owner),
            "tracks_per_person": round(float(np.mean(found)), 4) if found else None,
            "per_person": {str(p): v for p, v in per.items()}}


def evaluate(truth: Boxes, hyp: Boxes, frames: list[int] | None = None) -> dict:
    """HOTA (mean over IoU thresholds 0.05..0.95), DetA, AssA, MOTA, IDF1, ID switches and the
    counts behind them, plus :func:`tracks_per_person`."""
    data = sequence(truth, hyp, frames)
    hota, clear, ident = _metrics()
    h, c, i = (m.eval_sequence(data) for m in (hota, clear, ident))
    out = {"HOTA": float(np.mean(h["HOTA"])), "DetA": float(np.mean(h["DetA"])),
           "AssA": float(np.mean(h["AssA"])), "MOTA": float(c["MOTA"]), "IDF1": float(i["IDF1"]),
           "IDSW": int(c["IDSW"]), "TP": int(c["CLR_TP"]), "FN": int(c["CLR_FN"]),
           "FP": int(c["CLR_FP"]), "IDTP": int(i["IDTP"])}
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
    return {**out, **tracks_per_person(truth, hyp)}
