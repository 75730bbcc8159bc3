"""Top-k affinity of the SSTN (Eq. 6-8) as neighbour lists, by three interchangeable methods.

``topk_affinity(shared, specific, modality, k=4, method="dense")`` -> ``idx int64 [N,2k]``,
``w float32 [N,2k]``. Row i: columns 0..k-1 are the k same-modality samples with the largest
``d(P_i, P_j)`` (i itself included), columns k..2k-1 the k other-modality samples with the largest
``d(H_i, H_j)``; each half in descending d, ties to the smaller index; ``w = d`` with
``d(a, b) = 1 - 0.5 * |a/|a| - b/|b||`` (Eq. 7). A half with fewer than k candidates is padded with
``idx = i, w = 0``.

Weights are computed from float64 unit vectors of the candidates (``1 - 0.5*sqrt(2 - 2cos)`` in
float64, equivalent to the difference norm), never from float32 cosines, whose rounding would move
``d`` near 1 by ~1e-4. A twin implementation must do the same to match to float32 precision.

Methods: ``dense`` (numpy, blocked), ``knn`` (faiss, exact flat or approximate), ``cuda`` (custom
kernel via pycuda or CuPy), ``auto`` (cuda if a GPU is usable, else knn when faiss is installed and
N is large, else dense).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ssft_deploy.affinity import dense, joint
from ssft_deploy.affinity.common import assemble, check_inputs, single_threaded_blas
from ssft_deploy.errors import InputError

METHODS = ("dense", "knn", "cuda", "auto")
AUTO_KNN_MIN_N = 20000
OPTIONS = {"dense": {"row_block", "col_block"}, "cuda": {"device"},
           "knn": {"index", "nprobe", "ef_search", "nlist", "m", "ef_construction", "seed"}}


def resolve_method(method: str, n: int) -> str:
    """The concrete method ``auto`` stands for here (others are returned unchanged)."""
    if method not in METHODS:
        raise InputError(f"unknown affinity method {method!r}: use one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    from ssft_deploy.affinity import cuda, knn

    if cuda.available():
        return "cuda"
    if n >= AUTO_KNN_MIN_N and knn.available():
        return "knn"
    return "dense"


def topk_affinity(shared: Any, specific: Any, modality: Any, k: int = 4, method: str = "dense",
                  **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists of Eq. 8 (see the module docstring). ``options`` go to the method:
    dense ``row_block``/``col_block``; knn ``index`` ("flat" | "ivf" | "hnsw") and its parameters;
    cuda ``device``."""
    feats = check_inputs(shared, specific, modality, k)
    method = resolve_method(method, len(feats))
    unknown = set(options) - OPTIONS[method]
    if unknown:
        raise InputError(f"unknown option(s) {sorted(unknown)} for affinity method {method!r}; "
                         f"it takes {sorted(OPTIONS[method])}")
    if method == "dense":
        cand = DenseCandidates(**options)
        if not options:  # the joint products: one BLAS limit for the whole call (their nested
            with single_threaded_blas():  # limits then cost nothing; see common.BlasOwner)
                return assemble(feats, k, cand)
    elif method == "knn":
        from ssft_deploy.affinity import knn

        cand = knn.candidate_fn(**options)
    else:
        from ssft_deploy.affinity import cuda

        cand = cuda.candidate_fn(**options)
    return assemble(feats, k, cand)


class DenseCandidates:
    """The dense method for ``assemble``: the symmetric and mirrored blocks from fewer products
    (``joint``) unless tile sizes are given, which pin the plain blocked path."""

    def __init__(self, **tiles: Any) -> None:
        self.tiles = tiles
        if not tiles:
            self.symmetric, self.pair = joint.self_candidates, joint.pair_candidates

    def __call__(self, q: np.ndarray, base: np.ndarray, c: int):
        return dense.candidates(q, base, c, with_scores=True, **self.tiles)


__all__ = ["METHODS", "resolve_method", "topk_affinity"]
