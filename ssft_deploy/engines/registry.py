"""Backend selection: the only place that decides which engine class opens which bundle file.

Each backend class declares whether it can run here (``unavailable_reason``), which file
formats it runs, which bundle variant holds its files for a precision, and a priority.
``backend="auto"`` takes the highest-priority backend that this machine and the bundle allow.
"""

from __future__ import annotations

import os

from ssft_deploy.bundle import Bundle, load_bundle
from ssft_deploy.engines.base import Engine, log
from ssft_deploy.engines.openvino import OpenVINOEngine, open_openvino
from ssft_deploy.engines.ort import OrtCpuEngine, OrtCudaEngine
from ssft_deploy.engines.tensorrt import TensorRTEngine
from ssft_deploy.errors import BundleError, EngineError, SSFTError
from ssft_deploy.roles import check_role

BACKENDS: dict[str, type[Engine]] = {
    cls.name: cls for cls in sorted(
        (TensorRTEngine, OrtCudaEngine, OrtCpuEngine, OpenVINOEngine), key=lambda c: -c.priority)
}


def backend_status() -> dict[str, str | None]:
    """Backend name -> ``None`` when it can run here, else the reason it cannot."""
    return {name: cls.unavailable_reason() for name, cls in BACKENDS.items()}


def available_backends() -> list[str]:
    """Backends that can run on this machine, best first."""
    return [name for name, reason in backend_status().items() if reason is None]


def _rebuilds(cls: type[Engine], bundle: Bundle, graph: str, precision: str,
              rebuild: bool) -> bool:
    """Whether ``cls`` will build its engine here from the bundle's ONNX graph."""
    return (rebuild and cls is TensorRTEngine and bundle.has(graph, precision)
            and cls.unavailable_reason() is None)


def _usable(bundle: Bundle, graph: str, cls: type[Engine], precision: str,
            rebuild: bool = False) -> str | None:
    """Why ``cls`` cannot open ``graph`` at ``precision`` from this bundle here (None: it can)."""
    variant = cls.variant(precision)
    if _rebuilds(cls, bundle, graph, precision, rebuild):
        return None
    if not bundle.has(graph, variant):
        return f"the bundle has no {variant!r} {graph!r}"
    entry = bundle.entry(graph, variant)
    if entry.format not in cls.formats:
        return f"{entry.file} is {entry.format!r}, this backend runs {cls.formats}"
    reason = _backend_mismatch(bundle, graph, cls, precision) or cls.unavailable_reason()
    if reason is None and entry.format == "tensorrt":
        try:
            bundle.file(graph, variant)  # hash + GPU / TensorRT version check
        except BundleError as exc:
            reason = str(exc)
    return reason


def _backend_mismatch(bundle: Bundle, graph: str, cls: type[Engine], precision: str
                      ) -> str | None:
    """Why ``cls`` must not run this variant: it is meant for another backend (a ``bf16``
    variant holds fp32 graphs that only OpenVINO's bf16 hint turns into bf16), or the backend
    cannot run the precision on this machine."""
    variant = cls.variant(precision)
    if bundle.has(graph, variant):
        meant = bundle.entry(graph, variant).meta.get("backend")
        if meant is not None and meant != cls.name:
            return f"variant {variant!r} is for backend {meant!r}"
    if cls is OpenVINOEngine:
        return OpenVINOEngine.supports(precision)
    return None


def choose_backend(bundle: Bundle, graph: str, precision: str = "fp32",
                   backend: str = "auto", rebuild: bool = False) -> type[Engine]:
    """The engine class that will open ``graph``; EngineError says why none (or the named) can."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise EngineError(f"unknown backend {backend!r}; choose from "
                              f"{['auto', *BACKENDS]}")
        cls = BACKENDS[backend]
        reason = cls.unavailable_reason()
        if reason:
            raise EngineError(f"backend {backend!r} is unavailable here: {reason}")
        reason = _backend_mismatch(bundle, graph, cls, precision)
        if reason:
            raise EngineError(f"backend {backend!r} cannot run {precision!r}: {reason}")
        return cls
    skipped = {}
    for name, cls in BACKENDS.items():
        reason = _usable(bundle, graph, cls, precision, rebuild)
        if reason is None:
            log.info("%s %s: backend %s (skipped: %s)", graph, precision, name,
                     "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "none")
            return cls
        skipped[name] = reason
    raise EngineError(f"no backend can run {graph!r} at {precision!r} here: "
                      + "; ".join(f"{k}: {v}" for k, v in skipped.items()))


def open_engine(bundle: Bundle | str | os.PathLike, graph: str, precision: str = "fp32",
                backend: str = "auto", *, intra_op_threads: int | None = None,
                device_id: int = 0, rebuild: bool = False, allow_ungated: bool = False) -> Engine:
    """Open ``graph`` (``extractor_rgb`` / ``extractor_ir`` / ``transfer``) of a bundle.

    The file's hash (and, for TensorRT, GPU and version) is verified, and the engine's I/O is
    checked against the manifest (input size, dims, dtypes) and its outputs on a fixed probe
    input against the graph's role fingerprint (``ssft_deploy.roles``) -> BundleError on any
    mismatch.
    ``rebuild=True`` lets TensorRT build (and cache) an engine from the ONNX graph when the
    bundle's engine is missing or was built for another GPU / TensorRT version.
    ``allow_ungated=True`` opens a variant without a pass verdict of the parity gate (warning).
    """
    b = load_bundle(bundle, allow_ungated=allow_ungated)
    cls = choose_backend(b, graph, precision, backend, rebuild)
    try:
        path = b.file(graph, cls.variant(precision))
    except BundleError:
        if not _rebuilds(cls, b, graph, precision, rebuild):
            raise
        from ssft_deploy.engines.trt_build import rebuilt_plan

        path = rebuilt_plan(b, graph, precision)
        log.info("%s %s: rebuilt the TensorRT engine for this GPU: %s", graph, precision, path)
    kwargs: dict = {"device_id": device_id}
    if cls is not TensorRTEngine:
        kwargs["intra_op_threads"] = intra_op_threads
    if cls is OpenVINOEngine:  # falls back to ONNX Runtime (logged) when OpenVINO fails
        engine = open_openvino(path, precision, **kwargs)
    else:
        engine = cls(path, **kwargs)
    try:
        b.check_io(graph, engine.inputs, engine.outputs, source=str(path))
        if b.check_roles:  # one probe inference: a graph swapped into this slot is refused
            check_role(b, graph, cls.variant(precision), precision, engine)
    except SSFTError:
        engine.close()
        raise
    return engine
