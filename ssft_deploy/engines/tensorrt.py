"""TensorRT backend (TensorRT 10 / 11 named-tensor API, pycuda buffers).

One engine = one deserialised ``ICudaEngine``, one execution context, one CUDA stream, and one
set of device + page-locked host buffers sized for the largest shape of optimisation profile 0,
allocated once and reused by every call. Calls are serialised by a lock per engine (the context,
stream and buffers are shared state). ``tensorrt`` and ``pycuda`` are imported lazily, so this
module imports on machines without them.
"""

from __future__ import annotations

import os
import threading
from typing import ClassVar

import numpy as np

from ssft_deploy.engines.base import Engine, TensorSpec, log
from ssft_deploy.errors import EngineError


def _import_trt():
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError(f"backend 'tensorrt' needs the tensorrt and pycuda packages ({exc}); "
                          "pip install 'ssft-deploy[gpu]' on a CUDA machine") from exc
    return trt, cuda


class TensorRTEngine(Engine):
    """A serialised TensorRT engine (``.plan``) with reusable pinned/device buffers."""

    name = "tensorrt"
    formats: ClassVar[tuple[str, ...]] = ("tensorrt",)
    priority = 30

    @classmethod
    def variant(cls, precision: str) -> str:
        return f"trt-{precision}"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _, cuda = _import_trt()
        except EngineError as exc:
            return str(exc)
        try:
            cuda.init()
            if cuda.Device.count() == 0:
                return "no CUDA GPU is visible"
        except Exception as exc:  # noqa: BLE001  (pycuda raises its own LogicError etc.)
            return f"CUDA driver did not initialise ({exc})"
        return None

    def __init__(self, path: str | os.PathLike, device_id: int = 0) -> None:
        trt, cuda = _import_trt()
        self._trt, self._cuda = trt, cuda
        self.path = str(path)
        self._lock = threading.Lock()
        cuda.init()
        # The primary context is shared with other CUDA users of the process (ORT, CuPy).
        self._ctx = cuda.Device(device_id).retain_primary_context()
        self._ctx.push()
        try:
            self._open(trt, cuda)
        finally:
            cuda.Context.pop()

    def _open(self, trt, cuda) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(self.path, "rb") as fh:
            self._engine = self._runtime.deserialize_cuda_engine(fh.read())
        if self._engine is None:
            raise EngineError(f"TensorRT could not deserialise {self.path} (built by another "
                              "TensorRT version or for another GPU?); rebuild with ssft-export "
                              "--trt")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"TensorRT could not create an execution context for {self.path} "
                              "(out of GPU memory?)")
        self._stream = cuda.Stream()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        specs = {n: TensorSpec(n, tuple(int(d) for d in self._engine.get_tensor_shape(n)),
                               np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))).name)
                 for n in names}
        self.inputs = {n: s for n, s in specs.items() if is_input[n]}
        self.outputs = {n: s for n, s in specs.items() if not is_input[n]}
        # Largest shapes of profile 0: inputs from the profile, outputs by shape inference.
        max_shapes: dict[str, tuple[int, ...]] = {}
        for n in self.inputs:
            shape = self.inputs[n].shape
            if -1 in shape:
                _, _, shape = self._engine.get_tensor_profile_shape(n, 0)
                shape = tuple(int(d) for d in shape)
            max_shapes[n] = shape
            self._context.set_input_shape(n, shape)
        for n in self.outputs:
            max_shapes[n] = tuple(int(d) for d in self._context.get_tensor_shape(n))
        dyn = [max_shapes[n][0] for n, s in self.inputs.items() if s.shape[:1] == (-1,)]
        self.max_batch = min(dyn) if dyn else None
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, object] = {}
        for n in names:
            dtype = np.dtype(specs[n].dtype)
            count = max(1, int(np.prod(max_shapes[n])))
            self._host[n] = cuda.pagelocked_empty(count, dtype)
            self._device[n] = cuda.mem_alloc(self._host[n].nbytes)
            # Addresses never change, so they are bound once for all calls.
            self._context.set_tensor_address(n, int(self._device[n]))
        log.debug("TensorRT %s: max batch %s, io %s", self.path, self.max_batch, max_shapes)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        with self._lock:
            if self._device is None:  # closed by another thread since run() checked
                raise self.closed_error()
            self._ctx.push()
            try:
                for n, x in feeds.items():
                    if not self._context.set_input_shape(n, x.shape):
                        raise EngineError(f"TensorRT rejected shape {list(x.shape)} for {n!r} "
                                          f"(outside the engine's optimisation profile)")
                    host = self._host[n][: x.size]
                    host[...] = x.ravel()
                    cuda.memcpy_htod_async(self._device[n], host, self._stream)
                if not self._context.execute_async_v3(self._stream.handle):
                    raise EngineError(f"TensorRT execution failed for {self.path}")
                shapes = {n: tuple(int(d) for d in self._context.get_tensor_shape(n))
                          for n in self.outputs}
                for n, shape in shapes.items():
                    size = int(np.prod(shape))
                    cuda.memcpy_dtoh_async(self._host[n][:size], self._device[n], self._stream)
                self._stream.synchronize()
                # Copy out: the pinned buffers are overwritten by the next call.
                return {n: self._host[n][: int(np.prod(s))].reshape(s).copy()
                        for n, s in shapes.items()}
            finally:
                cuda.Context.pop()

    def close(self) -> None:
        self.closed = True
        with self._lock:
            if getattr(self, "_device", None) is None:
                return
            self._ctx.push()
            try:
                for buf in self._device.values():
                    buf.free()
                self._device = None  # type: ignore[assignment]
                self._context = self._engine = None
            finally:
                self._cuda.Context.pop()
            self._ctx.detach()
