"""The transfer step (top-k affinity + transfer graph) against the GEMMs it is made of.

The step's floating-point core is the dense affinity of Eq. 6-8, four block products of unit
vectors (``P_R P_R^T``, ``H_R H_I^T``, ``H_I H_R^T``, ``P_I P_I^T``), and the ``Z W`` product of
Eq. 10. Timing those GEMMs alone, interleaved with the full step in the same run, says how much the
rest (top-k selection, exact re-ranking, propagation, padding, graph overhead) costs on top. The
dense method computes fewer products than that (symmetric and mirrored blocks, ``affinity.joint``);
those are timed too, so the step's own overhead is reported apart from what symmetry saves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import numpy as np

from benchmarks.common import Case, run_interleaved, summarize

TransferFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def unit_features(n: int, dims: dict[str, int], n_rgb: int, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random unit shared [n,Ds] / specific [n,Dp] features; the first ``n_rgb`` rows are RGB."""
    rng = np.random.default_rng(seed)
    out = []
    for part in ("shared", "specific"):
        x = rng.standard_normal((n, dims[part]), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out.append(x)
    modality = np.ones(n, dtype=np.int64)
    modality[:n_rgb] = 0
    return out[0], out[1], modality


def transfer_fn(bundle, dims: dict[str, int], seed: int = 0) -> TransferFn:
    """``(z, idx, w) -> T``: the bundle's transfer graph on ORT CPU fp32, or without a bundle its
    numpy equivalent sigma(D^-1/2 A D^-1/2 Z W) (Eq. 10-11 before Feat^t) with a random W."""
    if bundle is not None:
        from ssft_deploy.engines import open_engine
        from ssft_deploy.transfer import transfer_feeds

        eng = open_engine(bundle, "transfer", precision="fp32", backend="ort-cpu")
        return lambda z, idx, w: eng.run(transfer_feeds(eng, z, idx, w))["transferred"]
    from ssft_deploy.transfer import propagate

    dz = 2 * dims["specific"] + dims["shared"]
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((dz, dims["transfer"]), dtype=np.float32) / np.float32(np.sqrt(dz))
    return lambda z, idx, w: np.maximum(propagate(z, idx, w) @ weight, 0.0)


def step_case(name: str, feats, k: int, parts: tuple[str, ...], method: str,
              transfer: TransferFn) -> Case:
    """The whole step as the runtime runs it: affinity, Eq. 5 padding, transfer."""
    from ssft_deploy.affinity import topk_affinity
    from ssft_deploy.transfer import pad

    shared, specific, modality = feats

    def run() -> np.ndarray:
        idx, w = topk_affinity(shared, specific, modality, k=k, method=method)
        return transfer(pad(shared, specific, modality, parts=parts), idx, w)

    return Case(name, run, items=len(modality))


def gemm_only_case(feats, dims: dict[str, int], name: str = "gemms", performed: bool = False
                   ) -> Case:
    """The step's GEMMs alone on preallocated buffers: the 4 affinity blocks and Z W. With
    ``performed``, the products the dense method actually computes instead: the symmetric blocks'
    tiles on and above the diagonal and one product for both cross blocks (``affinity.joint``)."""
    from ssft_deploy.affinity import joint

    shared, specific, modality = feats
    rgb, ir = modality == 0, modality == 1
    if performed:
        blocks = [(shared[rgb], shared[ir])]
        for x in (specific[rgb], specific[ir]):
            edges = joint.block_edges(len(x), joint.SYM_BLOCK)
            blocks += [(x[a0:a1], x[b0:b1]) for i, (a0, a1) in enumerate(edges)
                       for (b0, b1) in edges[i:]]
    else:
        blocks = [(specific[rgb], specific[rgb]), (shared[rgb], shared[ir]),
                  (shared[ir], shared[rgb]), (specific[ir], specific[ir])]
    blocks = [(np.ascontiguousarray(a), np.ascontiguousarray(b.T)) for a, b in blocks]
    outs = [np.empty((a.shape[0], bt.shape[1]), np.float32) for a, bt in blocks]
    n = len(modality)
    dz = 2 * dims["specific"] + dims["shared"]
    rng = np.random.default_rng(1)
    z = rng.standard_normal((n, dz), dtype=np.float32)
    weight = rng.standard_normal((dz, dims["transfer"]), dtype=np.float32)
    zw = np.empty((n, dims["transfer"]), np.float32)
    flops = 2.0 * (sum(a.shape[0] * a.shape[1] * bt.shape[1] for a, bt in blocks)
                   + n * dz * dims["transfer"])

    def run() -> None:
        for (a, bt), o in zip(blocks, outs):
            np.matmul(a, bt, out=o)
        np.matmul(z, weight, out=zw)

    return Case(name, run, items=n, flops=flops)


def measure_transfer(bundle, dims: dict[str, int], k: int, parts: tuple[str, ...], n_rgb: int,
                     n_ir: int, methods: tuple[str, ...] = ("dense", "knn"), rounds: int = 3,
                     warmup: int = 1, budget_s: float = 1.0) -> dict[str, Any]:
    """Step time per affinity method and GEMM time, interleaved; ratio = dense step / GEMMs (the
    four block products and Z W), and dense step / the GEMMs it actually performs."""
    from ssft_deploy.errors import SSFTError

    feats = unit_features(n_rgb + n_ir, dims, n_rgb)
    transfer = transfer_fn(bundle, dims)
    cases = [gemm_only_case(feats, dims),
             gemm_only_case(feats, dims, "gemms-performed", performed=True)]
    skipped = []
    for method in methods:
        case = step_case(f"step-{method}", feats, k, parts, method, transfer)
        try:
            case.fn()  # also proves the method runs here (faiss / GPU present)
        except (ImportError, SSFTError) as exc:
            skipped.append({"name": case.name, "reason": str(exc)})
            continue
        cases.append(case)
    samples = run_interleaved(cases, rounds=rounds, warmup=warmup, budget_s=budget_s)
    stats = {c.name: summarize(samples[c.name], c.items, c.flops) for c in cases}
    gemm_s = stats["gemms"]["p50_ms"] / 1e3
    out: dict[str, Any] = {
        "n": n_rgb + n_ir, "n_rgb": n_rgb, "n_ir": n_ir, "dims": dims, "k": k,
        "transfer_parts": list(parts), "gemms_s": gemm_s, "gemms_gflops": stats["gemms"]["gflops"],
        "gemms_performed_s": stats["gemms-performed"]["p50_ms"] / 1e3,
        "steps": {c.name.removeprefix("step-"): stats[c.name]["p50_ms"] / 1e3
                  for c in cases[2:]},
        "skipped": skipped, "stats": stats,
    }
    dense = out["steps"].get("dense")
    out["ratio_dense_to_gemms"] = dense / gemm_s if dense is not None and gemm_s > 0 else None
    done = out["gemms_performed_s"]
    out["ratio_dense_to_performed_gemms"] = dense / done if dense is not None and done > 0 else None
    return out


@click.command()
@click.option("--n-rgb", default=301, show_default=True, help="RGB rows (SYSU's gallery)")
@click.option("--n-ir", default=3803, show_default=True, help="IR rows (SYSU's queries)")
@click.option("--dim", default=512, show_default=True, help="shared = specific = transfer dims")
@click.option("--rounds", default=3, show_default=True)
@click.option("--budget-s", default=2.0, show_default=True, help="seconds per case per round")
@click.option("--out", type=click.Path(dir_okay=False), help="JSON results file")
def main(n_rgb: int, n_ir: int, dim: int, rounds: int, budget_s: float, out: str | None) -> None:
    """The transfer step (dense, numpy transfer graph) against its GEMMs, without a bundle."""
    import json
    import os

    from benchmarks.common import header

    res = header("transfer_cost")
    dims = {"shared": dim, "specific": dim, "transfer": dim}
    res["transfer"] = measure_transfer(None, dims, 4, ("shared", "specific"), n_rgb, n_ir,
                                       methods=("dense",), rounds=rounds, budget_s=budget_s)
    res["load_avg_after"] = list(os.getloadavg())
    t = res["transfer"]
    click.echo(f"dense step {t['steps'].get('dense', 0) * 1e3:.1f} ms, GEMMs "
               f"{t['gemms_s'] * 1e3:.1f} ms, ratio {t['ratio_dense_to_gemms']:.3f}; load "
               f"{res['machine']['load_avg_1m']} -> {res['load_avg_after'][0]:.2f}")
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=2, default=str)


if __name__ == "__main__":
    main()
