"""Per-sample features of the two-stream network: shared H, specific P and the modality code."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ssft_deploy.errors import InputError
from ssft_deploy.modality import IR, RGB, modality_code


def _matrix(name: str, x: object) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D array [N, D], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"{name} must be real numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return a


@dataclass(eq=False)
class Features:
    """Retrieval features of N samples: ``shared [N,Ds]``, ``specific [N,Dp]`` (float32, post-BN)
    and ``modality [N]`` (int64, 0 = RGB, 1 = IR). Inputs are validated and converted on creation;
    bad shapes, dtypes, NaN or unknown modality codes raise InputError."""

    shared: np.ndarray
    specific: np.ndarray
    modality: np.ndarray

    def __post_init__(self) -> None:
        self.shared = _matrix("shared", self.shared)
        self.specific = _matrix("specific", self.specific)
        n = self.shared.shape[0]
        if self.specific.shape[0] != n:
            raise InputError(
                f"shared has {n} rows but specific has {self.specific.shape[0]}")
        mod = self.modality
        if isinstance(mod, (str, int, np.integer)):
            mod = np.full(n, modality_code(mod), dtype=np.int64)
        mod = np.asarray(mod)
        if mod.ndim != 1 or mod.shape[0] != n:
            raise InputError(f"modality must be a vector of {n} codes, got shape {mod.shape}")
        if mod.size and not np.issubdtype(mod.dtype, np.integer):
            raise InputError(f"modality must hold integer codes 0/1, got dtype {mod.dtype}")
        mod = mod.astype(np.int64, copy=False)
        if mod.size and not np.isin(mod, (RGB, IR)).all():
            raise InputError("modality codes must be 0 (RGB) or 1 (IR)")
        self.modality = np.ascontiguousarray(mod)

    def __len__(self) -> int:
        return int(self.shared.shape[0])

    @property
    def dims(self) -> tuple[int, int]:
        """(Ds, Dp)."""
        return int(self.shared.shape[1]), int(self.specific.shape[1])

    @classmethod
    def empty(cls, shared_dim: int, specific_dim: int) -> Features:
        """A zero-length set with the given dimensions."""
        return cls(np.zeros((0, shared_dim), np.float32), np.zeros((0, specific_dim), np.float32),
                   np.zeros(0, np.int64))

    @classmethod
    def concat(cls, parts: Iterable[Features]) -> Features:
        """Rows of all ``parts`` in order; the dimensions must agree."""
        parts = list(parts)
        if not parts:
            raise InputError("Features.concat needs at least one part")
        dims = {p.dims for p in parts}
        if len(dims) != 1:
            raise InputError(f"cannot concatenate features of different dimensions {sorted(dims)}")
        return cls(np.concatenate([p.shared for p in parts]),
                   np.concatenate([p.specific for p in parts]),
                   np.concatenate([p.modality for p in parts]))

    def take(self, index: Sequence[int] | np.ndarray | slice) -> Features:
        """A new set with the rows ``index`` (integer indices, boolean mask or slice)."""
        if isinstance(index, slice):
            return Features(self.shared[index], self.specific[index], self.modality[index])
        ix = np.asarray(index)
        if ix.dtype == bool:
            if ix.shape != (len(self),):
                raise InputError(f"mask of shape {ix.shape} for {len(self)} rows")
            ix = np.flatnonzero(ix)
        ix = ix.astype(np.int64, copy=False).reshape(-1)
        if ix.size and (ix.min() < -len(self) or ix.max() >= len(self)):
            raise InputError(f"row index out of range for {len(self)} rows")
        return Features(self.shared[ix], self.specific[ix], self.modality[ix])

    def of_modality(self, modality: int | str) -> np.ndarray:
        """Row indices (ascending) of the samples of one modality."""
        return np.flatnonzero(self.modality == modality_code(modality))
