"""The CUDA top-k kernel: NVRTC (the run-time compiler, no nvcc) and nvcc -ptx compile it; a CPU
emulation (one std::thread per CUDA thread, std::barrier for __syncthreads) checks its logic
against dense; every compile / launch failure falls back to dense (forced through stand-ins of
CuPy and pycuda); on a GPU it runs for real."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ssft_deploy.affinity import cuda, dense, topk_affinity
from ssft_deploy.affinity.common import unit
from tests.test_affinity import random_inputs

SOURCE = Path(cuda.__file__).with_name("topk_affinity.cu")

SHIM = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <thread>
#include <vector>
using std::min;
struct dim3_ { unsigned x, y, z; };
thread_local dim3_ threadIdx, blockIdx, blockDim;
static std::barrier<>* g_bar;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(x)
#define __shared__ static
#define __syncthreads() g_bar->arrive_and_wait()
static inline float __shfl_down_sync(unsigned, float v, int) { return v; }
"""

HARNESS = r"""
extern "C" void emulate_topk(const float* q, const float* q_inv, int nq, const float* base,
                             const float* b_inv, int nb, int dim, int c, long long* out_idx,
                             float* out_score) {
    for (int b = 0; b * TILE_Q < nq; ++b) {
        std::barrier<> bar(THREADS);
        g_bar = &bar;
        std::vector<std::thread> threads;
        for (int t = 0; t < THREADS; ++t)
            threads.emplace_back([=] {
                threadIdx = {(unsigned)t, 0, 0};
                blockIdx = {(unsigned)b, 0, 0};
                topk_ip(q, q_inv, nq, base, b_inv, nb, dim, c, out_idx, out_score);
            });
        for (auto& th : threads) th.join();
    }
}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_kernel_compiles_with_nvcc_ptx(tmp_path):
    ptx = tmp_path / "topk_affinity.ptx"
    subprocess.run(["nvcc", "-ptx", str(SOURCE), "-o", str(ptx)], check=True,
                   capture_output=True, timeout=120)
    text = ptx.read_text()
    assert ".entry topk_ip(" in text and ".entry inv_row_norms(" in text


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (needed for the CPU emulation of the kernel)")
    out = tmp_path_factory.mktemp("emu")
    src = out / "emu.cpp"
    src.write_text(SHIM + SOURCE.read_text() + HARNESS)
    lib = out / "emu.so"
    subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", str(src),
                    "-o", str(lib)], check=True, capture_output=True, timeout=120)
    fn = ctypes.CDLL(str(lib)).emulate_topk
    fn.restype = None

    def run(q, base, c):
        q, base = np.ascontiguousarray(q, np.float32), np.ascontiguousarray(base, np.float32)
        inv = [np.ascontiguousarray(1.0 / np.maximum(np.linalg.norm(x, axis=1), 1e-12),
                                    np.float32) for x in (q, base)]
        idx = np.full((len(q), c), -1, np.int64)
        score = np.zeros((len(q), c), np.float32)
        ptr = [a.ctypes.data_as(ctypes.c_void_p) for a in (q, inv[0], base, inv[1], idx, score)]
        fn(ptr[0], ptr[1], ctypes.c_int(len(q)), ptr[2], ptr[3], ctypes.c_int(len(base)),
           ctypes.c_int(q.shape[1]), ctypes.c_int(c), ptr[4], ptr[5])
        return idx, score

    return run


def test_emulated_kernel_matches_dense_candidates(emulated):
    rng = np.random.default_rng(0)
    # sizes that are not multiples of the tiles (32 rows, 64 columns, 16 dims)
    q = rng.standard_normal((45, 37)).astype(np.float32)
    base = rng.standard_normal((150, 37)).astype(np.float32) * 3.0   # not unit: kernel normalises
    idx, score = emulated(q, base, 9)
    np.testing.assert_array_equal(idx, dense.candidates(unit(q), unit(base), 9))
    ref = (unit(q, np.float64) @ unit(base, np.float64).T)
    np.testing.assert_allclose(score, np.take_along_axis(ref, idx, axis=1), atol=1e-5)


def test_emulated_kernel_breaks_ties_by_smaller_index(emulated):
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((5, 16)).astype(np.float32)
    base = np.concatenate([rows, rows, rows])          # every score appears three times
    idx, _ = emulated(rows, base, 4)
    for i in range(5):
        assert list(idx[i, :3]) == [i, i + 5, i + 10]
    # the fewer-than-c case never happens (the host caps c at the base size), but c == nb works
    idx, _ = emulated(rows, rows, 5)
    assert sorted(idx[0]) == list(range(5)) and idx[0, 0] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not cuda.available(), reason="no GPU usable through pycuda or CuPy")
def test_cuda_matches_dense_on_gpu():
    shared, specific, modality = random_inputs(n=700, ds=96, dp=80, seed=4)
    i_dense, w_dense = topk_affinity(shared, specific, modality, k=4, method="dense")
    i_cuda, w_cuda = topk_affinity(shared, specific, modality, k=4, method="cuda")
    np.testing.assert_array_equal(i_cuda, i_dense)
    np.testing.assert_allclose(w_cuda, w_dense, rtol=0, atol=1e-7)


# -- NVRTC compile (no nvcc) and the fallback to dense -------------------------------------------

def _has_nvrtc() -> bool:
    try:
        cuda._nvrtc()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _has_nvrtc(), reason="cuda-python's NVRTC binding is not installed")
def test_kernel_compiles_through_nvrtc_without_nvcc(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvcc (nor anything else) on the PATH
    ptx = cuda.nvrtc_ptx(90)
    assert b".entry topk_ip(" in ptx and b".entry inv_row_norms(" in ptx
    assert b".target sm_90" in ptx
    assert b".target sm_75" in cuda.nvrtc_ptx(61)  # older than NVRTC's oldest: its oldest


@pytest.fixture
def fresh():
    cuda.reset()
    yield
    cuda.reset()


def _fake_cupy(compile_error=None, launch_error=None):
    """A stand-in for CuPy whose RawModule compile or kernel launch can be made to fail."""
    import types

    calls = {"compile": 0, "launch": 0}

    class Module:
        def __init__(self, code, backend):
            assert backend == "nvrtc" and "topk_ip" in code
            calls["compile"] += 1
            if compile_error:
                raise RuntimeError(compile_error)

        def get_function(self, name):
            def launch(grid, block, args):
                calls["launch"] += 1
                raise RuntimeError(launch_error or "launch failed")
            return launch

    class Device:
        def __init__(self, i):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    cp = types.SimpleNamespace(RawModule=Module, float32=np.float32, int64=np.int64,
                               asarray=np.asarray, empty=np.empty, asnumpy=np.asarray,
                               cuda=types.SimpleNamespace(Device=Device))
    return cp, calls


def _affinity_falls_back(caplog, expect):
    shared, specific, modality = random_inputs(n=60, ds=16, dp=12, seed=7)
    with caplog.at_level("WARNING", logger="ssft_deploy.affinity"):
        got = topk_affinity(shared, specific, modality, k=4, method="cuda")
        again = topk_affinity(shared, specific, modality, k=4, method="cuda")
    want = topk_affinity(shared, specific, modality, k=4, method="dense")
    for g in (got, again):
        np.testing.assert_array_equal(g[0], want[0])
        np.testing.assert_array_equal(g[1], want[1])
    msgs = [r.getMessage() for r in caplog.records if "falls back to 'dense'" in r.getMessage()]
    assert len(msgs) == 1 and expect in msgs[0], msgs  # logged once, with the reason


def test_compile_failure_falls_back_to_dense(fresh, monkeypatch, caplog):
    cp, calls = _fake_cupy(compile_error="NVRTC_ERROR_COMPILATION (forced)")
    monkeypatch.setattr(cuda, "_cupy", lambda: cp)
    monkeypatch.setattr(cuda, "_pycuda", lambda: None)
    _affinity_falls_back(caplog, "NVRTC_ERROR_COMPILATION (forced)")
    assert calls["compile"] == 1  # not retried on every block or call


def test_launch_failure_falls_back_to_dense(fresh, monkeypatch, caplog):
    cp, calls = _fake_cupy(launch_error="cudaErrorLaunchFailure (forced)")
    monkeypatch.setattr(cuda, "_cupy", lambda: cp)
    monkeypatch.setattr(cuda, "_pycuda", lambda: None)
    _affinity_falls_back(caplog, "cudaErrorLaunchFailure (forced)")
    assert calls["launch"] == 1  # the device is not tried again after a failed launch


def test_no_gpu_falls_back_to_dense(fresh, monkeypatch, caplog):
    monkeypatch.setattr(cuda, "_cupy", lambda: None)
    monkeypatch.setattr(cuda, "_pycuda", lambda: None)
    _affinity_falls_back(caplog, "CuPy: not importable or no GPU; pycuda: not importable")


def test_pycuda_loads_nvrtc_ptx_and_its_failures_fall_back(fresh, monkeypatch, caplog):
    import types

    loaded = []

    def module_from_buffer(ptx):
        loaded.append(ptx)
        raise RuntimeError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION (forced)")

    class Ctx:
        def push(self):
            pass

        def pop(self):
            pass

    dev = types.SimpleNamespace(compute_capability=lambda: (9, 0),
                                retain_primary_context=lambda: Ctx())
    drv = types.SimpleNamespace(Device=lambda i: dev, module_from_buffer=module_from_buffer)
    monkeypatch.setattr(cuda, "_cupy", lambda: None)
    monkeypatch.setattr(cuda, "_pycuda", lambda: drv)
    monkeypatch.setattr(cuda, "nvrtc_ptx", lambda cc: f"// ptx for {cc}".encode())
    _affinity_falls_back(caplog, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION (forced)")
    assert loaded == [b"// ptx for 90"]  # NVRTC's PTX for the device, no SourceModule / nvcc


def test_too_many_candidates_fall_back_to_dense(fresh, monkeypatch, caplog):
    cp, calls = _fake_cupy()
    monkeypatch.setattr(cuda, "_cupy", lambda: cp)
    shared, specific, modality = random_inputs(n=80, ds=16, dp=12, seed=8)
    with caplog.at_level("WARNING", logger="ssft_deploy.affinity"):
        got = topk_affinity(shared, specific, modality, k=30, method="cuda")
    want = topk_affinity(shared, specific, modality, k=30, method="dense")
    np.testing.assert_array_equal(got[0], want[0])
    assert calls["launch"] == 0 and "at most 32 candidates" in caplog.text
