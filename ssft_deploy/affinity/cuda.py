"""CUDA method: the custom kernel ``topk_affinity.cu`` (normalised inner products fused with a
per-row top-c), launched through pycuda when importable, else CuPy's RawModule.

The kernel proposes candidates for one modality block at a time (same modality on specific
features, other modality on shared ones, as ``common.assemble`` drives it); the float64 re-ranking
of ``common.refine`` then makes the result identical to ``dense`` (ties to the smaller index).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from ssft_deploy.affinity.common import Candidates
from ssft_deploy.errors import EngineError

TILE_Q, THREADS, C_MAX = 32, 256, 32  # must match topk_affinity.cu


def kernel_source() -> str:
    """The CUDA C source shipped as package data."""
    return resources.files("ssft_deploy.affinity").joinpath("topk_affinity.cu").read_text()


def _pycuda() -> Any | None:
    try:
        import pycuda.driver as drv
        drv.init()
        return drv if drv.Device.count() > 0 else None
    except Exception:  # noqa: BLE001 (ImportError, or a driver without a usable GPU)
        return None


def _cupy() -> Any | None:
    try:
        import cupy
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # noqa: BLE001 (ImportError, CUDA runtime errors without a GPU)
        return None


@lru_cache(maxsize=1)
def available() -> bool:
    """True when a GPU is usable through pycuda or CuPy (probed once per process)."""
    return _pycuda() is not None or _cupy() is not None


class _PyCudaRunner:
    def __init__(self, drv: Any, device: int) -> None:
        from pycuda.compiler import SourceModule

        self.drv = drv
        self.ctx = drv.Device(device).retain_primary_context()
        self.ctx.push()
        try:
            mod = SourceModule(kernel_source(), no_extern_c=True)
            self.norms, self.topk = mod.get_function("inv_row_norms"), mod.get_function("topk_ip")
        finally:
            self.ctx.pop()

    def __call__(self, q: np.ndarray, base: np.ndarray, c: int) -> np.ndarray:
        drv = self.drv
        nq, nb, dim = q.shape[0], base.shape[0], q.shape[1]
        self.ctx.push()
        try:
            q_d, b_d = drv.to_device(q), drv.to_device(base)
            qi_d, bi_d = drv.mem_alloc(4 * nq), drv.mem_alloc(4 * nb)
            for x_d, inv_d, n in ((q_d, qi_d, nq), (b_d, bi_d, nb)):
                self.norms(x_d, np.int32(n), np.int32(dim), inv_d,
                           block=(THREADS, 1, 1), grid=((n * 32 + THREADS - 1) // THREADS, 1))
            idx = np.empty((nq, c), np.int64)
            score = np.empty((nq, c), np.float32)
            self.topk(q_d, qi_d, np.int32(nq), b_d, bi_d, np.int32(nb), np.int32(dim),
                      np.int32(c), drv.Out(idx), drv.Out(score),
                      block=(THREADS, 1, 1), grid=((nq + TILE_Q - 1) // TILE_Q, 1))
            drv.Context.synchronize()
            return idx
        finally:
            self.ctx.pop()


class _CupyRunner:
    def __init__(self, cp: Any, device: int) -> None:
        self.cp, self.device = cp, device
        with cp.cuda.Device(device):
            mod = cp.RawModule(code=kernel_source())
            self.norms, self.topk = mod.get_function("inv_row_norms"), mod.get_function("topk_ip")

    def __call__(self, q: np.ndarray, base: np.ndarray, c: int) -> np.ndarray:
        cp = self.cp
        nq, nb, dim = q.shape[0], base.shape[0], q.shape[1]
        with cp.cuda.Device(self.device):
            q_d, b_d = cp.asarray(q), cp.asarray(base)
            qi_d, bi_d = cp.empty(nq, cp.float32), cp.empty(nb, cp.float32)
            for x_d, inv_d, n in ((q_d, qi_d, nq), (b_d, bi_d, nb)):
                self.norms(((n * 32 + THREADS - 1) // THREADS,), (THREADS,),
                           (x_d, np.int32(n), np.int32(dim), inv_d))
            idx_d = cp.empty((nq, c), cp.int64)
            score_d = cp.empty((nq, c), cp.float32)
            self.topk(((nq + TILE_Q - 1) // TILE_Q,), (THREADS,),
                      (q_d, qi_d, np.int32(nq), b_d, bi_d, np.int32(nb), np.int32(dim),
                       np.int32(c), idx_d, score_d))
            return cp.asnumpy(idx_d)


@lru_cache(maxsize=4)
def _runner(device: int) -> Any:
    drv = _pycuda()
    if drv is not None:
        return _PyCudaRunner(drv, device)
    cp = _cupy()
    if cp is not None:
        return _CupyRunner(cp, device)
    raise EngineError("affinity method 'cuda' needs a GPU with pycuda or CuPy installed; "
                      "use method='dense' or 'knn' here")


def candidate_fn(device: int = 0) -> Candidates:
    """The candidates function of ``topk_affinity(method="cuda")``."""
    runner = _runner(device)

    def cand(q: np.ndarray, base: np.ndarray, c: int) -> np.ndarray:
        if c > C_MAX:
            raise EngineError(f"the cuda kernel keeps at most {C_MAX} candidates per row "
                              f"(k + 4); use method='dense' or 'knn' for this k")
        return runner(np.ascontiguousarray(q, np.float32),
                      np.ascontiguousarray(base, np.float32), c)

    return cand
