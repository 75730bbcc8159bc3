"""An unlimited stand-in for an engine with a row limit, opened only when a call exceeds it.

A TensorRT engine takes at most its profile's max rows (``Engine.max_batch``). The transfer graph
of an all-queries search over a larger set can still run on ONNX Runtime over the bundle's ONNX
graph; ``unlimited_fallback`` finds such a backend and opens it at first use, so the common case
(within the limit) never pays for a second engine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ssft_deploy.bundle import Bundle
from ssft_deploy.engines.base import Engine, log
from ssft_deploy.engines.ort import OrtCpuEngine, OrtCudaEngine
from ssft_deploy.engines.registry import _usable, open_engine
from ssft_deploy.errors import EngineError


class LazyEngine:
    """An engine opened by ``open_fn`` at the first :meth:`get` (thread-safe), then reused."""

    def __init__(self, open_fn: Callable[[], Engine], label: str) -> None:
        self._open_fn, self.label = open_fn, label
        self._engine: Engine | None = None
        self._closed = False
        self._lock = threading.Lock()

    def get(self) -> Engine:
        """The engine, opened at the first call; EngineError after :meth:`close`."""
        with self._lock:
            if self._closed:
                raise EngineError(f"the fallback engine {self.label} is closed; open a new "
                                  "runtime")
            if self._engine is None:
                self._engine = self._open_fn()
                log.info("opened the fallback engine %s", self.label)
            return self._engine

    @property
    def opened(self) -> bool:
        return self._engine is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._engine is not None:
                self._engine.close()
                self._engine = None


def unlimited_fallback(bundle: Bundle, graph: str, precision: str, primary: Engine, *,
                       intra_op_threads: int | None = None,
                       device_id: int = 0) -> LazyEngine | None:
    """A lazily opened ONNX Runtime engine (CUDA, else CPU) for ``graph`` when ``primary`` has a
    row limit; None when it has none, or when no ONNX Runtime backend can open the graph here
    (then a call over the limit raises EngineLimitError, which says what to do)."""
    if primary.max_batch is None:
        return None
    reasons = []
    opts = {"intra_op_threads": intra_op_threads, "device_id": device_id}
    for cls in (OrtCudaEngine, OrtCpuEngine):
        for prec in dict.fromkeys((precision, "fp32")):
            reason = _usable(bundle, graph, cls, prec)
            if reason is None:
                return LazyEngine(lambda c=cls, p=prec: open_engine(bundle, graph, p, c.name,
                                                                    **opts),
                                  f"{cls.name} {graph} {prec} ({os.fspath(bundle.root)})")
            reasons.append(f"{cls.name} {prec}: {reason}")
    log.info("%s: no unlimited fallback for rows beyond %d (%s)", graph, primary.max_batch,
             "; ".join(reasons))
    return None
