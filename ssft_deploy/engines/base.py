"""The one engine interface: named inputs in, named outputs out, feeds checked against specs.

Thread-safety: ``Engine.run`` may be called from several threads at once on the same engine.
Backends guarantee it themselves: an ONNX Runtime session's ``run`` is thread-safe; a TensorRT
engine shares one execution context, stream and buffer set, so it serialises calls with a lock
per engine (run one engine per thread / GPU stream for parallelism). Specs are immutable.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ssft_deploy.errors import EngineError, InputError

log = logging.getLogger("ssft_deploy.engines")


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: ``shape`` with -1 for dynamic dims, ``dtype`` a numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def check(self, value: object) -> np.ndarray:
        """Return ``value`` as a C-contiguous array, or raise InputError on rank/dim/dtype."""
        if not isinstance(value, np.ndarray):
            raise InputError(f"input {self.name!r} must be a numpy array, got "
                             f"{type(value).__name__}")
        if value.ndim != len(self.shape):
            raise InputError(f"input {self.name!r} has rank {value.ndim} (shape "
                             f"{list(value.shape)}), expected shape {list(self.shape)}")
        for axis, (want, have) in enumerate(zip(self.shape, value.shape)):
            if want != -1 and want != have:
                raise InputError(f"input {self.name!r} has size {have} on axis {axis}, expected "
                                 f"{want} (shape {list(self.shape)}, -1 = any)")
        if value.dtype != np.dtype(self.dtype):
            raise InputError(f"input {self.name!r} is {value.dtype}, expected {self.dtype}")
        return np.ascontiguousarray(value)


class Engine(ABC):
    """An opened graph or engine file. Subclasses set the class attributes and ``_run``.

    Class attributes used by the registry: ``name`` (backend name), ``formats`` (file formats
    it runs: ``onnx`` / ``tensorrt``), ``priority`` (higher wins under ``backend="auto"``).
    """

    name: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ()
    priority: ClassVar[int] = 0

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    #: Largest leading (batch / N) dimension the engine accepts; ``None`` means no limit.
    max_batch: int | None = None
    #: Set by ``close()``: every later ``run`` raises EngineError.
    closed: bool = False

    @classmethod
    @abstractmethod
    def unavailable_reason(cls) -> str | None:
        """``None`` when this backend can run on this machine, else what is missing."""

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable_reason() is None

    @classmethod
    def variant(cls, precision: str) -> str:
        """The bundle variant this backend runs for ``precision`` (``fp32`` -> ``fp32``)."""
        return precision

    def check_feeds(self, feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Validate names, ranks, static dims and dtypes; returns contiguous arrays."""
        missing = sorted(set(self.inputs) - set(feeds))
        extra = sorted(set(feeds) - set(self.inputs))
        if missing or extra:
            raise InputError(f"engine inputs are {sorted(self.inputs)}; missing {missing}, "
                             f"unexpected {extra}")
        arrays = {n: self.inputs[n].check(v) for n, v in feeds.items()}
        # Dynamic leading dims are one batch / N axis shared by every input of our graphs.
        dyn = {n: a.shape[0] for n, a in arrays.items() if self.inputs[n].shape[:1] == (-1,)}
        leading = set(dyn.values())
        if len(leading) > 1:
            raise InputError(f"inputs disagree on the leading dimension: {dyn}")
        if self.max_batch is not None and leading and max(leading) > self.max_batch:
            raise InputError(f"leading dimension {max(leading)} exceeds this engine's maximum "
                             f"{self.max_batch}; split the batch")
        return arrays

    def run(self, feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Run on ``feeds`` (name -> array); returns name -> array for every output.
        EngineError once the engine is closed."""
        if self.closed:
            raise self.closed_error()
        return self._run(self.check_feeds(feeds))

    def closed_error(self) -> EngineError:
        return EngineError(f"{self.name} engine {getattr(self, 'path', '')} is closed; open "
                           "a new one (ReIDRuntime.open / open_engine)")

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on already checked feeds."""

    def close(self) -> None:
        """Release backend resources (idempotent); later runs raise EngineError."""
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(inputs={list(self.inputs)}, "
                f"outputs={list(self.outputs)})")
