"""The TensorRT engine's own logic (I/O discovery, profile-sized buffers reused across calls,
shapes, selection, GPU checks) against a numpy stand-in for ``tensorrt`` + ``pycuda``.

This does not test TensorRT itself (see the gpu-marked test in test_engines.py); it exercises
every call our code makes, with the documented TensorRT 10 signatures, on a CPU machine.
"""

from __future__ import annotations

import json
import logging
import sys
import types

import numpy as np
import pytest

from ssft_deploy.bundle import load_bundle, write_manifest
from ssft_deploy.engines import open_engine
from ssft_deploy.errors import InputError
from tests.bundle_factory import (
    DP,
    DS,
    DT,
    K,
    make_bundle,
    reference_extract,
    reference_transfer,
)

GPU, CC, VERSION = "Fake GPU 9000", (9, 0), "10.99.0"
_MEMORY: dict[int, np.ndarray] = {}  # "device" address -> bytes
# What a fake transfer engine computes (the ONNX graph it stands for), by the plan's "ref".
TRANSFER_REFS = {"factory": reference_transfer}


def _fake_pycuda():
    class Buf:
        def __init__(self, nbytes):
            self.data = np.zeros(nbytes, np.uint8)
            _MEMORY[id(self)] = self.data

        def __int__(self):
            return id(self)

        def free(self):
            _MEMORY.pop(id(self), None)

    class Ctx:
        def push(self):
            drv.pushed += 1

        def detach(self):
            drv.detached = True

    class Device:
        def __init__(self, i):
            self.i = i

        @staticmethod
        def count():
            return 1

        def name(self):
            return GPU

        def compute_capability(self):
            return CC

        def retain_primary_context(self):
            return Ctx()

    class Context:
        @staticmethod
        def pop():
            drv.pushed -= 1

    class Stream:
        handle = 1234

        def synchronize(self):
            pass

    def htod(dev, host, stream):
        dev.data[: host.nbytes] = host.view(np.uint8)

    def dtoh(host, dev, stream):
        host.view(np.uint8)[:] = dev.data[: host.nbytes]

    drv = types.SimpleNamespace(
        init=lambda: None, Device=Device, Context=Context, Stream=Stream, pushed=0,
        pagelocked_empty=lambda n, dtype: np.empty(n, dtype), mem_alloc=Buf,
        memcpy_htod_async=htod, memcpy_dtoh_async=dtoh)
    return drv


def _io(spec):
    """(name, mode, shape, dtype) of the engine's tensors, as our exported graphs have them."""
    if spec["g"] == "transfer":
        return [("z", "in", (-1, 2 * DP + DS), "float32"), ("idx", "in", (-1, 2 * K), "int64"),
                ("w", "in", (-1, 2 * K), "float32"), ("transferred", "out", (-1, DT), "float32")]
    return [("images", "in", (-1, 3, *spec["hw"]), "float32"), ("shared", "out", (-1, DS),
                                                                  "float32"),
            ("specific", "out", (-1, DP), "float32")]


def _fake_tensorrt():
    trt = types.SimpleNamespace(__version__=VERSION)
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.nptype = lambda t: np.dtype(t).type

    class Context:
        def __init__(self, spec):
            self.spec, self.shapes, self.addr = spec, {}, {}
            self.io = {n: (m, s, d) for n, m, s, d in _io(spec)}

        def set_input_shape(self, name, shape):
            if not 1 <= shape[0] <= self.spec["max"]:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            rows = {s[0] for s in self.shapes.values()}
            assert len(rows) == 1, f"inputs disagree on rows: {self.shapes}"
            return (rows.pop(), *self.io[name][1][1:])

        def set_tensor_address(self, name, addr):
            self.addr[name] = addr

        def _tensor(self, name, shape):
            n = int(np.prod(shape))
            return _MEMORY[self.addr[name]].view(self.io[name][2])[:n].reshape(shape)

        def execute_async_v3(self, handle):
            x = {n: self._tensor(n, s) for n, s in self.shapes.items()}
            if self.spec["g"] == "transfer":
                ref = TRANSFER_REFS[self.spec.get("ref", "factory")]
                out = {"transferred": ref(x["z"], x["idx"], x["w"])}
            else:
                out = dict(zip(("shared", "specific"),
                               reference_extract(x["images"], self.spec["g"])))
            for name, val in out.items():
                self._tensor(name, val.shape)[...] = val
            return True

    class Engine:
        def __init__(self, spec):
            self.spec, self.io = spec, _io(spec)
            self.num_io_tensors = len(self.io)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def get_tensor_mode(self, name):
            return {n: m for n, m, _, _ in self.io}[name]

        def get_tensor_shape(self, name):
            return {n: s for n, _, s, _ in self.io}[name]

        def get_tensor_dtype(self, name):
            return {n: d for n, _, _, d in self.io}[name]

        def get_tensor_profile_shape(self, name, profile):
            rest = self.get_tensor_shape(name)[1:]
            return [(1, *rest), (self.spec["opt"], *rest), (self.spec["max"], *rest)]

        def create_execution_context(self):
            return Context(self.spec)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return Engine(json.loads(blob))

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def fake_gpu(monkeypatch):
    drv = _fake_pycuda()
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    return drv


def _bundle_with_plan(tmp_path, gpu=GPU, plans=(("extractor_rgb", 8),), transfer=None):
    """The tiny bundle plus a fake ``trt-fp32`` engine per (graph, profile max rows);
    ``transfer``: (name in TRANSFER_REFS, ONNX model) replacing the bundle's transfer graph."""
    import onnx

    from ssft_deploy.bundle import sha256_file
    from ssft_deploy.roles import fingerprints

    root = make_bundle(tmp_path / "b", input_size=(16, 8))
    m = json.loads((root / "manifest.json").read_text())
    ref = "factory"
    if transfer is not None:
        ref, model = transfer
        onnx.save(model, root / "transfer.onnx")
        m["variants"]["fp32"]["transfer"]["sha256"] = sha256_file(root / "transfer.onnx")
        m["model"]["probe"] = fingerprints({g: root / e["file"]
                                            for g, e in m["variants"]["fp32"].items()}, m["model"])
    m["variants"]["trt-fp32"] = {}
    for graph, rows in plans:
        plan = root / f"{graph}.fp32.plan"
        plan.write_text(json.dumps({"g": graph, "hw": [16, 8], "max": rows,
                                    "opt": max(1, rows // 2), "ref": ref}))
        m["variants"]["trt-fp32"][graph] = {
            "file": plan.name, "sha256": sha256_file(plan), "format": "tensorrt", "gpu": gpu,
            "compute_capability": "9.0", "tensorrt": VERSION, "source": f"{graph}.onnx",
            "max_rows": rows}
    write_manifest(root, m)
    return root


def test_trt_engine_reuses_buffers_across_batch_sizes(fake_gpu, tmp_path):
    eng = open_engine(_bundle_with_plan(tmp_path), "extractor_rgb", backend="auto",
                      allow_ungated=True)  # a one-graph stand-in plan: no gate verdict
    assert eng.name == "tensorrt" and eng.max_batch == 8
    assert eng.inputs["images"].shape == (-1, 3, 16, 8)
    buffers = dict(eng._device)
    rng = np.random.default_rng(0)
    for n in (8, 1, 5, 3):
        x = rng.standard_normal((n, 3, 16, 8)).astype(np.float32)
        out = eng.run({"images": x})
        ref_s, ref_p = reference_extract(x, "extractor_rgb")
        np.testing.assert_allclose(out["shared"], ref_s, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["specific"], ref_p, rtol=1e-5, atol=1e-5)
    assert eng._device == buffers  # allocated once, for the profile's max shape
    assert eng._host["images"].size == 8 * 3 * 16 * 8
    assert fake_gpu.pushed == 0  # every push was popped
    with pytest.raises(InputError, match="exceeds"):
        eng.run({"images": np.zeros((9, 3, 16, 8), np.float32)})
    eng.close()
    eng.close()  # idempotent


def test_auto_skips_engine_for_other_gpu(fake_gpu, tmp_path, caplog):
    root = _bundle_with_plan(tmp_path, gpu="NVIDIA H100 80GB HBM3")
    with caplog.at_level(logging.INFO, logger="ssft_deploy.engines"):
        eng = open_engine(root, "extractor_rgb", backend="auto")
    assert eng.name == "ort-cpu"  # no CUDA provider in this onnxruntime build
    assert any("H100" in r.getMessage() and "rebuild" in r.getMessage() for r in caplog.records)
    from ssft_deploy.errors import BundleError

    with pytest.raises(BundleError, match="rebuild with ssft-export --trt"):
        open_engine(root, "extractor_rgb", backend="tensorrt")
    assert load_bundle(root).has("extractor_rgb", "trt-fp32")


def test_trt_transfer_engine_three_inputs_int64_idx_and_row_limit(fake_gpu, tmp_path):
    root = _bundle_with_plan(tmp_path, plans=(("transfer", 64),))
    eng = open_engine(root, "transfer", backend="auto", allow_ungated=True)  # stand-in plan
    assert eng.name == "tensorrt" and eng.max_batch == 64
    assert eng.inputs["idx"].dtype == "int64" and eng.inputs["idx"].shape == (-1, 2 * K)
    assert eng._host["idx"].dtype == np.int64 and eng._host["idx"].size == 64 * 2 * K
    assert eng._host["z"].size == 64 * (2 * DP + DS) and eng._host["transferred"].size == 64 * DT
    rng = np.random.default_rng(1)
    for n in (64, 1, 37):
        z = rng.standard_normal((n, 2 * DP + DS)).astype(np.float32)
        # indices above 2**31 would be cut by a 32-bit buffer: the factory graph sums w * idx
        idx = rng.integers(0, 1 << 40, (n, 2 * K)).astype(np.int64)
        w = rng.random((n, 2 * K)).astype(np.float32)
        got = eng.run({"z": z, "idx": idx, "w": w})["transferred"]
        assert got.shape == (n, DT)
        np.testing.assert_allclose(got, reference_transfer(z, idx, w), rtol=1e-5)
    with pytest.raises(InputError, match="exceeds this engine's maximum 64"):
        eng.run({"z": np.zeros((65, 2 * DP + DS), np.float32),
                 "idx": np.zeros((65, 2 * K), np.int64), "w": np.zeros((65, 2 * K), np.float32)})
    with pytest.raises(InputError, match="int64"):
        eng.run({"z": np.zeros((3, 2 * DP + DS), np.float32),
                 "idx": np.zeros((3, 2 * K), np.int32), "w": np.zeros((3, 2 * K), np.float32)})
    assert fake_gpu.pushed == 0
    eng.close()
