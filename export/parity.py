"""What the parity gate measures: one variant against a reference, stage by stage.

Stages: extractor features (min cosine, max |diff|), affinity neighbours (overlap of the top-k
sets, Eq. 6), the transfer graph on the reference's own inputs (min cosine), the transferred
features end to end (min cosine), and the ranking of IR queries against the RGB gallery
(Rank-1 / mAP difference in points). ``export.thresholds`` judges the figures; ``export.gate``
runs the whole gate. No torch at import: the reference may be numpy (the test bundles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from export.images import HeldOut
from export.thresholds import judge
from ssft_deploy.affinity import topk_affinity
from ssft_deploy.metrics import eval_sysu
from ssft_deploy.transfer import l2_distances, pad

ExtractFn = Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]]
TransferFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Stages:
    """Features of one pipeline run: extractor outputs, neighbours, transferred features."""

    shared: np.ndarray
    specific: np.ndarray
    modality: np.ndarray
    idx: np.ndarray
    w: np.ndarray
    z: np.ndarray
    transferred: np.ndarray
    trial_transferred: list[np.ndarray] = field(default_factory=list)  # [trial gallery; queries]


def torch_fns(model: Any) -> tuple[ExtractFn, TransferFn]:
    """numpy-in / numpy-out extract and transfer of the torch model (fp32, no grad)."""
    import torch

    def extract(images: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            s, p = model.extract(torch.from_numpy(images), modality=modality)
        return s.numpy(), p.numpy()

    def transfer(z: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.transfer(torch.from_numpy(z), torch.from_numpy(idx),
                                  torch.from_numpy(w)).numpy()

    return extract, transfer


def run_stages(extract: ExtractFn, transfer: TransferFn, data: HeldOut, k: int,
               parts: tuple[str, ...], batch: int = 16) -> Stages:
    """Gallery (RGB) then query (IR) through extract -> affinity -> pad -> transfer."""
    feats = []
    for images, modality in ((data.gallery, "rgb"), (data.query, "ir")):
        outs = [extract(images[i:i + batch], modality) for i in range(0, len(images), batch)]
        feats.append((np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])))
    shared = np.concatenate([feats[0][0], feats[1][0]]).astype(np.float32)
    specific = np.concatenate([feats[0][1], feats[1][1]]).astype(np.float32)
    modality = np.r_[np.zeros(len(data.gallery), np.int64), np.ones(len(data.query), np.int64)]
    with np.errstate(all="ignore"):  # broken (NaN / inf) features are measured, not raised on
        idx, w = topk_affinity(shared, specific, modality, k=k, method="dense")
    z = pad(shared, specific, modality, parts)
    st = Stages(shared, specific, modality, idx, w, z, np.asarray(transfer(z, idx, w)))
    queries = len(data.gallery) + np.arange(len(data.query))
    for rows in data.trials:  # each trial's own transductive graph (Sec. 4.5, all queries)
        sel = np.concatenate([rows, queries])
        with np.errstate(all="ignore"):
            i, w = topk_affinity(shared[sel], specific[sel], modality[sel], k=k, method="dense")
        z_t = pad(shared[sel], specific[sel], modality[sel], parts)
        st.trial_transferred.append(np.asarray(transfer(z_t, i, w)))
    return st


def row_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair; 0 where either row is zero or not finite (never 1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        return np.zeros(max(len(a), 1))
    with np.errstate(all="ignore"):
        num = (a * b).sum(1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = num / den
    good = np.isfinite(a).all(1) & np.isfinite(b).all(1) & (den > 0) & np.isfinite(cos)
    return np.where(good, cos, 0.0)


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row cosine (see :func:`row_cos`)."""
    return float(row_cos(a, b).min(initial=1.0)) if len(a) else 0.0


def overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and min over rows of |top-k set a ∩ set b| / |set a| (neighbour agreement)."""
    fr = [len(set(x) & set(y)) / max(len(set(x)), 1) for x, y in zip(a.tolist(), b.tolist())]
    return float(np.mean(fr)), float(np.min(fr))


def ranking(st: Stages, data: HeldOut) -> dict[str, float]:
    """Rank-1 and mAP (points) of IR queries against the RGB gallery with the transferred
    features, the mean over ``data.trials`` (or of the whole gallery without trials); NaN when
    those features are not all finite."""
    trials = list(zip(data.trials, st.trial_transferred)) or [
        (np.arange(len(data.gallery)), st.transferred)]
    r1, mAP = [], []
    for rows, t in trials:
        g = len(rows)
        if not np.isfinite(t).all():
            return {"rank1": float("nan"), "mAP": float("nan"), "trials": len(trials)}
        cmc, ap, _ = eval_sysu(l2_distances(t[g:], t[:g]), data.q_pids, data.g_pids[rows],
                               data.q_camids, data.g_camids[rows], max_rank=min(20, g))
        r1.append(100.0 * float(cmc[0]))
        mAP.append(100.0 * float(ap))
    return {"rank1": float(np.mean(r1)), "mAP": float(np.mean(mAP)), "trials": len(trials),
            "rank1_trial_std": float(np.std(r1))}


def measure(ref: Stages, got: Stages, transfer: TransferFn, data: HeldOut) -> dict[str, float]:
    """The figures of one variant (keys: ``export.thresholds.CHECKS`` and a few for reading)."""
    with np.errstate(all="ignore"):
        ext_abs = float(max(np.abs(ref.shared - got.shared).max(),
                            np.abs(ref.specific - got.specific).max()))
    mean_ov, min_ov = overlap(ref.idx, got.idx)
    r_ref, r_got = ranking(ref, data), ranking(got, data)
    return {"extractor_min_cos": min(min_cos(ref.shared, got.shared),
                                     min_cos(ref.specific, got.specific)),
            "extractor_max_abs": ext_abs,
            "transfer_graph_min_cos": min_cos(ref.transferred, transfer(ref.z, ref.idx, ref.w)),
            "transferred_min_cos": min_cos(ref.transferred, got.transferred),
            "neighbour_overlap_mean": mean_ov, "neighbour_overlap_min": min_ov,
            "rank1": r_got["rank1"], "mAP": r_got["mAP"],
            "d_rank1": r_got["rank1"] - r_ref["rank1"], "d_mAP": r_got["mAP"] - r_ref["mAP"]}


def compare(ref: Stages, got: Stages, transfer: TransferFn, data: HeldOut,
            precision: str) -> dict[str, Any]:
    """Figures of one variant with its verdict against the ``precision`` row of the table."""
    figures = measure(ref, got, transfer, data)
    verdict, failed, row = judge(figures, precision)
    return {**figures, "thresholds": row, "failed": failed, "verdict": verdict}
