"""OpenVINO CPU backend over the bundle's ONNX graphs, with its precision stated, not implied.

OpenVINO picks bf16 by itself on CPUs with AVX512_BF16 or AMX: an fp32 graph run with default
settings is *not* fp32 there. So the inference precision is always set explicitly
(``INFERENCE_PRECISION_HINT``): ``fp32`` -> f32, ``bf16`` -> bf16 (a variant of its own, gated
like the others), ``int8`` -> the QDQ graph's quantised layers in int8, everything else f32.
After compiling, :attr:`OpenVINOEngine.inference_precision` reports what the compiled model
really runs (from its runtime graph), e.g. ``"bf16"`` or ``"int8+f32"``.

Compiled models are cached under ``$SSFT_CACHE/openvino`` (``CACHE_DIR``) so a second process
starts fast. :func:`open_openvino` falls back to ONNX Runtime with a logged reason when OpenVINO
cannot open a graph. A call that fails at run time is retried once on a fresh infer request, then
served by ONNX Runtime CPU (same graph, same threads): that call only. After
:data:`SWITCH_AFTER` consecutive failed calls the engine stays on ONNX Runtime for good (there are
reports of OpenVINO crashing on some CPUs). ``openvino`` is imported lazily.

Thread-safety: ``run`` may be called from several threads; each thread gets its own infer
request on the one compiled model (OpenVINO's own pattern for concurrent inference).
"""

from __future__ import annotations

import functools
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ssft_deploy.engines.base import Engine, TensorSpec, log
from ssft_deploy.errors import EngineError

#: bundle precision -> OpenVINO inference precision hint (the precision of non-int8 layers)
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
#: precision -> the bundle variant OpenVINO runs (``bf16`` / ``ov-int8``: gated on OpenVINO)
VARIANTS = {"fp32": "fp32", "bf16": "bf16", "int8": "ov-int8"}
#: OpenVINO runtime layer types that carry the arithmetic (the ones whose precision matters)
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution")
_INT8 = {"u8", "i8"}
#: consecutive failed calls (each retried once) after which an engine stays on ONNX Runtime
SWITCH_AFTER = 3


def cache_dir() -> Path:
    """Where compiled models are cached: ``$SSFT_CACHE/openvino`` (default ~/.cache/ssft_deploy)."""
    root = Path(os.environ.get("SSFT_CACHE", Path.home() / ".cache" / "ssft_deploy"))
    return root / "openvino"


@functools.lru_cache(maxsize=1)
def _core_and_caps() -> tuple[Any, tuple[str, ...]]:
    import openvino as ov

    core = ov.Core()
    caps = tuple(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return core, caps


def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's CPU optimisation capabilities here (``BF16``, ``INT8``, ``FP32``...); () when
    OpenVINO cannot start."""
    try:
        return _core_and_caps()[1]
    except Exception:  # noqa: BLE001  (no openvino, or its CPU plugin failed: no capabilities)
        return ()


def _threads(intra_op_threads: int | None) -> int:
    if intra_op_threads is None:
        env = os.environ.get("SSFT_ORT_THREADS") or os.environ.get("OMP_NUM_THREADS")
        intra_op_threads = int(env) if env and env.isdigit() else 0
    return int(intra_op_threads)  # 0 = OpenVINO's default


def _spec(port) -> TensorSpec:
    shape = tuple(-1 if d.is_dynamic else int(d.get_length()) for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()).name)


def runtime_precisions(compiled) -> dict[str, int]:
    """Compute layers of a compiled model counted by the precision they run in (``f32``...)."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or "runtimePrecision" not in info:
            continue
        if str(info["layerType"].value) in COMPUTE_LAYERS:
            counts[str(info["runtimePrecision"].value).lower()] += 1
    return dict(counts)


def summarize_precision(counts: dict[str, int]) -> str:
    """``{"u8": 20, "f32": 1}`` -> ``"int8+f32"``; ``{"bf16": 21}`` -> ``"bf16"``."""
    names = []
    for p in sorted(counts, key=lambda p: -counts[p]):
        name = "int8" if p in _INT8 else p
        if name not in names:
            names.append(name)
    return "+".join(names) or "unknown"


class OpenVINOEngine(Engine):
    """One compiled OpenVINO model on the CPU at an explicit inference precision.

    ``streams``: how many calls from different threads run at once (OpenVINO streams; the
    ``intra_op_threads`` are shared among them). The default, one, suits one caller that batches;
    a model called by several cameras' threads at once needs one per core."""

    name = "openvino"
    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    priority = 5  # below ONNX Runtime: backend="auto" picks it only through a measurement

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (pip install 'ssft-deploy[openvino]')"
        try:
            _core_and_caps()
        except Exception as exc:  # noqa: BLE001  (any plugin failure means "cannot run here")
            return f"OpenVINO's CPU plugin did not start ({exc})"
        return None

    @classmethod
    def variant(cls, precision: str) -> str:
        return VARIANTS.get(precision, precision)

    @classmethod
    def supports(cls, precision: str) -> str | None:
        """``None`` when this CPU runs ``precision`` natively, else why not."""
        if precision not in HINTS:
            return f"OpenVINO runs {sorted(HINTS)} here, not {precision!r}"
        if precision == "bf16" and "BF16" not in cpu_capabilities():
            return "this CPU has no native bf16 (AVX512_BF16 or AMX)"
        return None

    def __init__(self, path: str | os.PathLike, precision: str = "fp32",
                 intra_op_threads: int | None = None, device_id: int = 0,
                 cache: str | os.PathLike | None = None, streams: int = 1) -> None:
        reason = self.unavailable_reason() or self.supports(precision)
        if reason:
            raise EngineError(f"backend 'openvino' cannot run {precision}: {reason}")
        self.path, self.precision, self._threads = str(path), precision, intra_op_threads
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[precision],
                                  "PERFORMANCE_HINT": "LATENCY"}
        threads = _threads(intra_op_threads)
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        if streams > 1:
            # one stream runs one request at a time: callers on several threads would queue
            # behind each other on a single core's worth of work (threads are split over streams)
            config["NUM_STREAMS"] = int(streams)
        cache = Path(cache) if cache is not None else cache_dir()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache)
        except OSError as exc:  # a read-only home only costs start-up time
            log.info("OpenVINO model cache disabled (%s): %s", cache, exc)
        try:
            self.compiled = _compile(self.path, config)
            self.inputs = {p.get_any_name(): _spec(p) for p in self.compiled.inputs}
            self.outputs = {p.get_any_name(): _spec(p) for p in self.compiled.outputs}
            self.layer_precisions = runtime_precisions(self.compiled)
        except EngineError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise EngineError(f"OpenVINO could not compile {path} at {precision}: "
                              f"{exc}") from exc
        self.inference_precision = summarize_precision(self.layer_precisions)
        self._ports = [(p.get_any_name(), p) for p in self.compiled.outputs]
        self._local = threading.local()
        self._lock = threading.Lock()
        self._fallback: Engine | None = None  # set once OpenVINO is given up for good
        self._ort: Engine | None = None  # ONNX Runtime on the same graph, opened at a failure
        self._failures = 0  # consecutive failed calls
        self.fallback_reason: str | None = None
        log.info("OpenVINO %s: asked %s, runs %s (compute layers %s)", path, precision,
                 self.inference_precision, self.layer_precisions)

    def _request(self):
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._fallback is not None:
            return self._fallback._run(feeds)
        error: Exception | None = None
        for _ in range(2):  # a failed infer request is replaced and the call tried once more
            if self.__dict__.get("compiled") is None:  # closed by another thread
                raise self.closed_error()
            try:
                res = _infer(self._request(), feeds)
                out = {name: np.asarray(res[port]) for name, port in self._ports}
            except Exception as exc:  # noqa: BLE001  (any OpenVINO failure)
                error, self._local.request = exc, None
                continue
            self._failures = 0
            return out
        return self._failed_call(feeds, f"OpenVINO failed at run time: {error}")

    def _failed_call(self, feeds: dict[str, np.ndarray], reason: str) -> dict[str, np.ndarray]:
        """Serve one call OpenVINO failed (twice) on ONNX Runtime; give OpenVINO up for good
        after :data:`SWITCH_AFTER` consecutive failed calls."""
        with self._lock:
            if self.closed:
                raise self.closed_error()
            if self._ort is None:
                from ssft_deploy.engines.ort import OrtCpuEngine

                self._ort = OrtCpuEngine(self.path, intra_op_threads=self._threads)
            self._failures += 1
            if self._failures >= SWITCH_AFTER and self._fallback is None:
                log.warning("%s: %s (%d calls in a row); switching this engine to ONNX Runtime "
                            "CPU", self.path, reason, self._failures)
                self._fallback, self.fallback_reason = self._ort, reason
                self.inference_precision = ort_precision(self.precision)
            elif self._fallback is None:
                log.warning("%s: %s, retried; this call runs on ONNX Runtime CPU (%d of %d "
                            "failed calls in a row before switching for good)", self.path,
                            reason, self._failures, SWITCH_AFTER)
            ort = self._ort
        return ort._run(feeds)

    @property
    def active_backend(self) -> str:
        """``openvino``, or ``ort-cpu`` after a run-time fallback."""
        return "openvino" if self._fallback is None else self._fallback.name

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self.__dict__.pop("compiled", None)
            self._local = threading.local()
            if self._ort is not None:
                self._ort.close()


# Indirections the tests replace to force an OpenVINO failure.
def _compile(path: str, config: dict[str, Any]):
    core, _ = _core_and_caps()
    return core.compile_model(path, "CPU", config)


def _infer(request, feeds: dict[str, np.ndarray]):
    return request.infer(feeds, share_inputs=True)


def ort_precision(precision: str) -> str:
    """What ONNX Runtime CPU really runs for a bundle precision (bf16 files are fp32 graphs)."""
    return {"fp32": "f32", "bf16": "f32", "int8": "int8+f32", "fp16": "f16"}.get(precision,
                                                                                 precision)


def open_openvino(path: str | os.PathLike, precision: str = "fp32",
                  intra_op_threads: int | None = None, **_: Any) -> Engine:
    """An :class:`OpenVINOEngine`, or ONNX Runtime CPU on the same graph when OpenVINO cannot
    open it (the reason is logged as a warning and kept in ``engine.fallback_reason``)."""
    try:
        return OpenVINOEngine(path, precision, intra_op_threads)
    except EngineError as exc:
        from ssft_deploy.engines.ort import OrtCpuEngine

        log.warning("%s; falling back to ONNX Runtime CPU for %s", exc, path)
        eng = OrtCpuEngine(path, intra_op_threads=intra_op_threads)
        eng.fallback_reason = str(exc)  # type: ignore[attr-defined]
        eng.inference_precision = ort_precision(precision)  # type: ignore[attr-defined]
        return eng
