"""CUDA method: the custom kernel ``topk_affinity.cu`` (normalised inner products fused with a
per-row top-c), compiled at run time by NVRTC, never by nvcc: through CuPy's ``RawModule`` when
CuPy is importable, else NVRTC from cuda-python to PTX that pycuda loads (the driver JIT-compiles
it for the GPU).

The kernel proposes candidates for one modality block at a time (same modality on specific
features, other modality on shared ones, as ``common.assemble`` drives it); the float64 re-ranking
of ``common.refine`` then makes the result identical to ``dense`` (ties to the smaller index).

Any failure to find a GPU, compile or launch falls back to ``dense`` with a logged reason (once
per reason), so a broken CUDA set-up slows a search down but never fails it; after a failure the
device is not tried again in this process (``reset`` forgets that).
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from ssft_deploy.affinity import dense
from ssft_deploy.affinity.common import Candidates
from ssft_deploy.errors import EngineError

log = logging.getLogger("ssft_deploy.affinity")
TILE_Q, THREADS, C_MAX = 32, 256, 32  # must match topk_affinity.cu
KERNELS = ("inv_row_norms", "topk_ip")


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


def _nvrtc() -> Any:
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        try:
            from cuda import nvrtc  # cuda-python < 12.6
        except ImportError as exc:
            raise EngineError("NVRTC needs cuda-python (pip install cuda-python)") from exc
    return nvrtc


def nvrtc_ptx(compute_capability: int = 75) -> bytes:
    """PTX of the kernel compiled by NVRTC (no nvcc, no GPU needed) for the newest virtual
    architecture NVRTC supports that is not above ``compute_capability`` (e.g. 90 for sm_90)."""
    nvrtc = _nvrtc()

    def check(result: Any, what: str) -> Any:
        err, *rest = result
        if int(err) != 0:
            raise EngineError(f"NVRTC {what} failed ({err})")
        return rest[0] if len(rest) == 1 else rest

    archs = list(check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs"))
    arch = max((a for a in archs if a <= compute_capability), default=min(archs))
    prog = check(nvrtc.nvrtcCreateProgram(kernel_source().encode(), b"topk_affinity.cu", 0, [],
                                          []), "nvrtcCreateProgram")
    try:
        (err,) = nvrtc.nvrtcCompileProgram(prog, 1, [f"--gpu-architecture=compute_{arch}"
                                                     .encode()])
        if int(err) != 0:
            size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            text = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, text)
            raise EngineError(f"NVRTC could not compile topk_affinity.cu for compute_{arch}: "
                              f"{text.decode(errors='replace').strip()}")
        size = check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
        ptx = b" " * size
        check(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        return ptx.rstrip(b"\0 ")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


class _PyCudaRunner:
    def __init__(self, drv: Any, device: int) -> None:
        self.drv = drv
        dev = drv.Device(device)
        major, minor = dev.compute_capability()
        self.ctx = dev.retain_primary_context()
        self.ctx.push()
        try:
            mod = drv.module_from_buffer(nvrtc_ptx(10 * major + minor))
            self.norms, self.topk = (mod.get_function(k) for k in KERNELS)
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
            mod = cp.RawModule(code=kernel_source(), backend="nvrtc")
            # get_function compiles: a compile error surfaces here, not at the first search
            self.norms, self.topk = (mod.get_function(k) for k in KERNELS)

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
            return cp.asnumpy(idx_d)  # synchronises: a launch error surfaces here


_LOCK = threading.Lock()
_RUNNERS: dict[int, Any] = {}   # device -> runner, or the str reason it has none
_WARNED: set[str] = set()


def _open_runner(device: int) -> Any:
    """A runner through CuPy, else pycuda; a str saying why neither works."""
    reasons = []
    for label, probe, cls in (("CuPy", _cupy, _CupyRunner), ("pycuda", _pycuda, _PyCudaRunner)):
        lib = probe()
        if lib is None:
            reasons.append(f"{label}: not importable or no GPU")
            continue
        try:
            return cls(lib, device)
        except Exception as exc:  # noqa: BLE001 (compile / module-load errors of either library)
            reasons.append(f"{label}: compiling or loading the kernel failed ({exc})")
    return "; ".join(reasons)


def _runner(device: int) -> Any:
    with _LOCK:
        if device not in _RUNNERS:
            runner = _open_runner(device)
            _RUNNERS[device] = (f"no usable CUDA kernel on device {device} ({runner})"
                                if isinstance(runner, str) else runner)
        return _RUNNERS[device]


def _fall_back(reason: str) -> None:
    with _LOCK:
        if reason in _WARNED:
            return
        _WARNED.add(reason)
    log.warning("affinity method 'cuda' falls back to 'dense': %s", reason)


def reset() -> None:
    """Forget compiled kernels and failures (the next call compiles again)."""
    with _LOCK:
        _RUNNERS.clear()
        _WARNED.clear()
    available.cache_clear()


def candidate_fn(device: int = 0) -> Candidates:
    """The candidates function of ``topk_affinity(method="cuda")``: the kernel on ``device``,
    or ``dense`` (logged) where it cannot compile or launch."""

    def cand(q: np.ndarray, base: np.ndarray, c: int) -> np.ndarray:
        runner = _runner(device)
        if isinstance(runner, str):
            _fall_back(runner)
        elif c > C_MAX:
            _fall_back(f"the kernel keeps at most {C_MAX} candidates per row (k + 4), "
                       f"{c} were asked for")
        else:
            try:
                return runner(np.ascontiguousarray(q, np.float32),
                              np.ascontiguousarray(base, np.float32), c)
            except Exception as exc:  # noqa: BLE001 (launch / memory errors of either library)
                reason = f"the kernel failed to launch on device {device}: {exc}"
                with _LOCK:
                    _RUNNERS[device] = reason
                _fall_back(reason)
        return dense.candidates(q, base, c)

    return cand
