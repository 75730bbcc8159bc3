"""The parity gate: every exported variant against the PyTorch fp32 model, stage by stage.

Stages: extractor features (max |diff|, min cosine), affinity neighbours (overlap of the top-k
sets), the transfer graph on identical inputs (min cosine), the transferred features end to end,
and the final ranking (Rank-1 / mAP difference on a small gallery). The gate reads the cosine of
the two graph stages: below its threshold a variant is flagged, and more than ``WIDE`` times
further from 1 than the threshold allows, it fails the export.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from export.images import HeldOut
from ssft_deploy.affinity import topk_affinity
from ssft_deploy.errors import SSFTError
from ssft_deploy.metrics import eval_sysu
from ssft_deploy.transfer import l2_distances, pad

THRESHOLDS = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99}
WIDE = 10.0


class ParityError(SSFTError):
    """An exported variant that does not reproduce the PyTorch model (export refused)."""


def threshold(variant: str) -> float:
    """Cosine threshold of a variant (``trt-fp16`` uses the fp16 one)."""
    return THRESHOLDS[variant.removeprefix("trt-")]


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


ExtractFn = Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]]
TransferFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def torch_fns(model: Any) -> tuple[ExtractFn, TransferFn]:
    """numpy-in / numpy-out extract and transfer of the torch model (fp32, no grad)."""

    def extract(images: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            s, p = model.extract(torch.from_numpy(images), modality=modality)
        return s.numpy(), p.numpy()

    def transfer(z: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.transfer(torch.from_numpy(z), torch.from_numpy(idx),
                                  torch.from_numpy(w)).numpy()

    return extract, transfer


def engine_fns(bundle: str | os.PathLike, variant: str) -> tuple[ExtractFn, TransferFn]:
    """extract / transfer of one bundle variant through ``ssft_deploy.engines``."""
    from ssft_deploy.engines import open_engine

    if variant.startswith("trt-"):
        precision, backend = variant.removeprefix("trt-"), "tensorrt"
    else:
        precision, backend = variant, "ort-cpu"
    engines = {g: open_engine(bundle, g, precision=precision, backend=backend)
               for g in ("extractor_rgb", "extractor_ir", "transfer")}

    def extract(images: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        out = engines[f"extractor_{modality}"].run({"images": images})
        return out["shared"], out["specific"]

    def transfer(z: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        return engines["transfer"].run({"z": z, "idx": idx, "w": w})["transferred"]

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
    idx, w = topk_affinity(shared, specific, modality, k=k, method="dense")
    z = pad(shared, specific, modality, parts)
    return Stages(shared, specific, modality, idx, w, z, transfer(z, idx, w))


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)
    return float(cos.min())


def overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and min over rows of |top-k set a ∩ set b| / |set a| (neighbour agreement)."""
    fr = [len(set(x) & set(y)) / max(len(set(x)), 1) for x, y in zip(a.tolist(), b.tolist())]
    return float(np.mean(fr)), float(np.min(fr))


def ranking(st: Stages, data: HeldOut) -> dict[str, float]:
    """Rank-1 and mAP of IR queries against the RGB gallery with the transferred features."""
    g = len(data.gallery)
    dist = l2_distances(st.transferred[g:], st.transferred[:g])
    cmc, mAP, _ = eval_sysu(dist, data.q_pids, data.g_pids, data.q_camids, data.g_camids,
                            max_rank=min(20, g))
    return {"rank1": float(cmc[0]), "mAP": float(mAP)}


def compare(ref: Stages, got: Stages, transfer: TransferFn, data: HeldOut,
            variant: str) -> dict[str, Any]:
    """One variant's row of the parity table (see the module docstring)."""
    ext_cos = min(min_cos(ref.shared, got.shared), min_cos(ref.specific, got.specific))
    ext_abs = float(max(np.abs(ref.shared - got.shared).max(),
                        np.abs(ref.specific - got.specific).max()))
    graph_cos = min_cos(ref.transferred, transfer(ref.z, ref.idx, ref.w))
    mean_ov, min_ov = overlap(ref.idx, got.idx)
    r_ref, r_got = ranking(ref, data), ranking(got, data)
    thr = threshold(variant)
    gate = min(ext_cos, graph_cos)
    if gate >= thr:
        status = "pass"
    elif 1.0 - gate <= WIDE * (1.0 - thr):
        status = "warn"
    else:
        status = "fail"
    return {"extractor_max_abs": ext_abs, "extractor_min_cos": ext_cos,
            "neighbour_overlap_mean": mean_ov, "neighbour_overlap_min": min_ov,
            "transfer_graph_min_cos": graph_cos,
            "transferred_min_cos": min_cos(ref.transferred, got.transferred),
            "rank1": r_got["rank1"], "mAP": r_got["mAP"],
            "rank1_diff": r_got["rank1"] - r_ref["rank1"], "mAP_diff": r_got["mAP"] - r_ref["mAP"],
            "threshold": thr, "status": status}


def verify_bundle(model: Any, bundle: str | os.PathLike, variants: list[str], data: HeldOut,
                  k: int, parts: tuple[str, ...]) -> dict[str, Any]:
    """The parity results of ``variants`` of ``bundle`` (stored in the manifest's ``parity``)."""
    t_extract, t_transfer = torch_fns(model)
    ref = run_stages(t_extract, t_transfer, data, k, parts)
    result: dict[str, Any] = {
        "data": data.source, "queries": len(data.query), "gallery": len(data.gallery),
        "reference": {"backend": "torch-fp32", **ranking(ref, data)},
        "thresholds": {v: threshold(v) for v in variants}, "wide_margin_factor": WIDE,
        "variants": {}}
    for variant in variants:
        extract, transfer = engine_fns(bundle, variant)
        got = run_stages(extract, transfer, data, k, parts)
        result["variants"][variant] = compare(ref, got, transfer, data, variant)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The parity results as a fixed-width text table."""
    head = (f"{'variant':<10}{'ext max|d|':>11}{'ext cos':>11}{'nbr ovl':>9}{'T graph cos':>13}"
            f"{'T cos':>11}{'dR1':>8}{'dmAP':>8}  status")
    ref = result["reference"]
    lines = [(f"parity vs PyTorch fp32 on {result['queries']} IR queries x {result['gallery']} "
             f"RGB gallery ({result['data']}); reference Rank-1 {ref['rank1']:.3f} "
             f"mAP {ref['mAP']:.3f}"), head, "-" * len(head)]
    for name, r in result["variants"].items():
        lines.append(f"{name:<10}{r['extractor_max_abs']:>11.2e}{r['extractor_min_cos']:>11.7f}"
                     f"{r['neighbour_overlap_mean']:>9.3f}{r['transfer_graph_min_cos']:>13.7f}"
                     f"{r['transferred_min_cos']:>11.7f}{r['rank1_diff']:>+8.3f}"
                     f"{r['mAP_diff']:>+8.3f}  {r['status']} (>= {r['threshold']})")
    return "\n".join(lines)


def failures(result: dict[str, Any]) -> list[str]:
    """Variants that missed their threshold by a wide margin."""
    return [v for v, r in result["variants"].items() if r["status"] == "fail"]
