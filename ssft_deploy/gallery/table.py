"""Gallery entries as columns: shared and specific vectors, modality, identity, camera, track,
entry id, timestamp (seconds) and a JSON meta value per entry."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssft_deploy.features import Features

COLUMNS = {"shared": np.float32, "specific": np.float32, "modality": np.int64, "pids": np.int64,
           "camids": np.int64, "tracks": np.int64, "ids": np.int64, "ts": np.float64}
PUBLIC = ("pids", "camids", "tracks", "ids", "ts")  # the columns ``entries`` hands out


@dataclass
class Entries:
    """Rows of a gallery (every column the same length as ``meta``)."""

    cols: dict[str, np.ndarray]
    meta: list[Any]

    @classmethod
    def empty(cls, ds: int, dp: int) -> Entries:
        shapes = {"shared": (0, ds), "specific": (0, dp)}
        return cls({k: np.zeros(shapes.get(k, (0,)), t) for k, t in COLUMNS.items()}, [])

    def __len__(self) -> int:
        return len(self.meta)

    def take(self, index: np.ndarray | slice) -> Entries:
        if isinstance(index, np.ndarray) and index.dtype == bool:
            index = np.flatnonzero(index)
        meta = self.meta[index] if isinstance(index, slice) else [self.meta[i] for i in index]
        return Entries({k: v[index] for k, v in self.cols.items()}, meta)

    @classmethod
    def concat(cls, parts: Sequence[Entries]) -> Entries:
        return cls({k: np.concatenate([p.cols[k] for p in parts]) for k in COLUMNS},
                   [m for p in parts for m in p.meta])

    def features(self) -> Features:
        return Features(self.cols["shared"], self.cols["specific"], self.cols["modality"])

    def public(self) -> dict[str, np.ndarray]:
        return {k: self.cols[k] for k in PUBLIC}

    def mask(self, modalities: Iterable[int], window: tuple[float | None, float | None]
             ) -> np.ndarray:
        """Rows of the given modalities inside ``since <= ts < until``."""
        keep = np.isin(self.cols["modality"], list(modalities))
        since, until = window
        if since is not None:
            keep &= self.cols["ts"] >= since
        if until is not None:
            keep &= self.cols["ts"] < until
        return keep
