"""ONNX Runtime backends: CPU and CUDA execution providers over the bundle's ONNX graphs."""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np

from ssft_deploy.engines.base import Engine, TensorSpec, log
from ssft_deploy.errors import EngineError

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8",
    "tensor(int8)": "int8", "tensor(bool)": "bool",
}


def _spec(arg) -> TensorSpec:
    # Symbolic dims come back as strings (or None): those are the dynamic ones.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


def session_options(intra_op_threads: int | None = None):
    """Session options: all graph optimisations, sequential execution, given intra-op threads,
    no spinning once a run returns."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if intra_op_threads is None:
        env = os.environ.get("SSFT_ORT_THREADS") or os.environ.get("OMP_NUM_THREADS")
        intra_op_threads = int(env) if env and env.isdigit() else 0
    opts.intra_op_num_threads = int(intra_op_threads)  # 0 = ONNX Runtime's default
    # Workers spin only while a run is active: the runtime shares its cores with the caller's
    # own work (numpy affinity between transfer runs, decoding), which spinning threads slow.
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.log_severity_level = 3
    return opts


class OrtEngine(Engine):
    """An ONNX Runtime session. ``run`` is thread-safe (ONNX Runtime allows concurrent runs)."""

    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    provider: ClassVar[str] = ""

    def __init__(self, path: str | os.PathLike, intra_op_threads: int | None = None,
                 device_id: int = 0) -> None:
        import onnxruntime as ort

        reason = self.unavailable_reason()
        if reason:
            raise EngineError(f"backend {self.name!r} is unavailable: {reason}")
        providers = self._providers(device_id)
        try:
            self.session = ort.InferenceSession(str(path), session_options(intra_op_threads),
                                                providers=providers)
        except Exception as exc:
            raise EngineError(f"ONNX Runtime could not load {path}: {exc}") from exc
        active = self.session.get_providers()
        if self.provider not in active:
            # ORT silently falls back to CPU when the CUDA provider cannot start.
            raise EngineError(f"backend {self.name!r}: {self.provider} did not start for {path} "
                              f"(active providers {active}); check the CUDA / cuDNN install")
        self.inputs = {a.name: _spec(a) for a in self.session.get_inputs()}
        self.outputs = {a.name: _spec(a) for a in self.session.get_outputs()}
        self._output_names = list(self.outputs)
        self.path = str(path)
        log.debug("opened %s with %s", path, active)

    @classmethod
    def _providers(cls, device_id: int) -> list:
        return [cls.provider]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        have = ort.get_available_providers()
        if cls.provider not in have:
            return f"{cls.provider} is not in this onnxruntime build (providers: {have})"
        return None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.__dict__.get("session")
        if session is None:  # closed by another thread since run() checked
            raise self.closed_error()
        try:
            values = session.run(self._output_names, feeds)
        except Exception as exc:
            raise EngineError(f"ONNX Runtime failed on {self.path}: {exc}") from exc
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        self.closed = True
        self.__dict__.pop("session", None)


class OrtCpuEngine(OrtEngine):
    name = "ort-cpu"
    provider = "CPUExecutionProvider"
    priority = 10


def _cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 where no driver); avoids importing any CUDA Python package."""
    from ssft_deploy.engines.cuda_info import device_count

    return device_count()


class OrtCudaEngine(OrtEngine):
    name = "ort-cuda"
    provider = "CUDAExecutionProvider"
    priority = 20

    @classmethod
    def _providers(cls, device_id: int) -> list:
        # use_tf32=0: on Ampere and newer the CUDA provider otherwise runs fp32 MatMul / Conv in
        # TF32 (10-bit mantissa), which is not the fp32 the parity gate judged
        return [(cls.provider, {"device_id": device_id, "use_tf32": 0}), "CPUExecutionProvider"]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason is None and _cuda_device_count() == 0:
            reason = "no CUDA GPU is visible (CUDA driver missing or no device)"
        return reason
