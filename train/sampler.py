"""Identity-balanced cross-modality batches (Sec. 4.1): P identities x (K RGB + K IR images)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ssft_deploy.errors import DatasetError


class CrossModalitySampler:
    """Batch sampler: each batch lists ``ids_per_batch * rgb_per_id`` RGB indices (grouped by
    identity), then ``ids_per_batch * ir_per_id`` IR indices in the same identity order.

    Only identities with images of both modalities are drawn; an identity with fewer images than
    asked for in a modality is sampled with replacement. Epoch ``e`` is a pure function of
    ``(seed, e)``, so a resumed run draws the same batches.
    """

    def __init__(self, pids: Sequence[int], modalities: Sequence[int], ids_per_batch: int = 8,
                 rgb_per_id: int = 4, ir_per_id: int = 4, batches_per_epoch: int | None = None,
                 seed: int = 0) -> None:
        pids, mods = np.asarray(pids), np.asarray(modalities)
        self.index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for pid in np.unique(pids):
            rgb = np.flatnonzero((pids == pid) & (mods == 0))
            ir = np.flatnonzero((pids == pid) & (mods == 1))
            if rgb.size and ir.size:
                self.index[int(pid)] = (rgb, ir)
        if len(self.index) < ids_per_batch:
            raise DatasetError(f"need at least {ids_per_batch} identities with both RGB and IR "
                               f"images for a batch, found {len(self.index)}")
        self.ids, self.rgb_k, self.ir_k = ids_per_batch, rgb_per_id, ir_per_id
        num_rgb = int((mods == 0).sum())
        self.batches = batches_per_epoch or max(1, num_rgb // (ids_per_batch * rgb_per_id))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    @staticmethod
    def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
        return rng.choice(pool, size=n, replace=pool.size < n)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        pids = np.array(sorted(self.index))
        order = rng.permutation(pids)
        pos = 0
        for _ in range(self.batches):
            if pos + self.ids > len(order):   # a fresh pass over the identities
                order, pos = rng.permutation(pids), 0
            chosen = order[pos:pos + self.ids]
            pos += self.ids
            rgb = [self._draw(rng, self.index[int(p)][0], self.rgb_k) for p in chosen]
            ir = [self._draw(rng, self.index[int(p)][1], self.ir_k) for p in chosen]
            yield [int(i) for i in np.concatenate(rgb + ir)]


class SeededBatches:
    """``sampler``'s batches as ``(index, augmentation seed)`` pairs; the seed of a sample is a
    pure function of ``(seed, epoch, batch, position)``, so augmentation does not depend on the
    number of loader workers, on which worker loads what, or on resuming."""

    def __init__(self, sampler: CrossModalitySampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.sampler
        for b, batch in enumerate(s):
            seeds = np.random.SeedSequence([s.seed, s.epoch, b, 17]).generate_state(len(batch))
            yield [(i, int(x)) for i, x in zip(batch, seeds)]
