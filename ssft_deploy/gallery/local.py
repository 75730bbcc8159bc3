"""The local store: a gallery file shared by several processes on one machine.

Every write takes an exclusive lock on ``PATH.lock`` (``filelock``: maintained, portable), reloads
the file if another process changed it, applies the batch in memory and rewrites the file
atomically (``fileio.write``: temporary file, fsync, rename), so a batch is visible entirely or
not at all and a writer killed mid-batch leaves the previous file. Readers take no lock: they
reload when the file's identity (inode, mtime, size) changed; each search reads one snapshot.
A write costs O(gallery) (the whole file is rewritten): the store suits one machine's galleries;
many writers at city scale belong in Milvus.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from ssft_deploy.errors import GalleryError
from ssft_deploy.gallery import fileio
from ssft_deploy.gallery.binding import GalleryBinding
from ssft_deploy.gallery.memory import Gallery
from ssft_deploy.gallery.table import Entries

LOCK_TIMEOUT_S = 60.0


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_size


class LocalGallery(Gallery):
    """A Gallery kept in sync with the file at ``path`` across processes."""

    def __init__(self, path: str | os.PathLike, binding: GalleryBinding | None = None,
                 lock_timeout_s: float = LOCK_TIMEOUT_S, **options: Any) -> None:
        super().__init__(uri=str(path), **options)
        self.path = fileio.check_target(path)
        self._flock = FileLock(f"{self.path}.lock", timeout=lock_timeout_s)
        self._sig: tuple[int, int, int] | None = None
        with self._locked():
            if self.path.exists():
                self._sync()
                if binding is not None:
                    self.bind(binding)  # refuses another bundle's gallery
                    self._persist()     # records the hash when the file had none
            else:
                self._binding = binding
                self._persist()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            try:
                with self._flock:
                    yield
            except Timeout as exc:
                raise GalleryError(f"gallery {self.path} stayed locked by another writer for "
                                   f"{self._flock.timeout} s ({self._flock.lock_file})") from exc
            except PermissionError as exc:
                raise GalleryError(f"cannot lock gallery {self.path}: {exc}") from exc

    def _sync(self) -> None:
        """Reload when another process replaced the file."""
        with self._lock:
            try:
                sig = _signature(os.stat(self.path))
            except FileNotFoundError as exc:
                raise GalleryError(f"gallery file {self.path} was removed") from exc
            if sig != self._sig:
                self._sig = _signature(self._load(self.path))

    def _persist(self) -> None:
        header, arrays = self._serialise()
        fileio.write(self.path, header, arrays)
        self._sig = _signature(os.stat(self.path))

    def _mutate(self, apply: Any) -> Any:
        with self._locked():
            self._sync()
            before = (self._t, self._next_id)
            result = apply()
            try:
                self._persist()
            except BaseException:  # the file did not change: neither does this view
                self._t, self._next_id = before
                self._ver, self._aux = self._ver + 1, {}
                raise
            return result

    def _write(self, entries: Entries, assign_ids: bool) -> np.ndarray:
        return self._mutate(lambda: Gallery._write(self, entries, assign_ids))

    def _delete(self, sel: dict[str, np.ndarray]) -> int:
        return self._mutate(lambda: Gallery._delete(self, sel))

    @contextmanager
    def _pinned(self) -> Iterator[None]:
        if getattr(self._pin, "view", None) is None:
            self._sync()
        with super()._pinned():
            yield

    def _view(self) -> tuple[Entries, int]:
        if getattr(self._pin, "view", None) is None:
            self._sync()
        return super()._view()

    def __len__(self) -> int:
        self._sync()
        return super().__len__()

    def save(self, path: str | os.PathLike) -> None:
        """A copy elsewhere (this store's own file is always current)."""
        if Path(path).resolve() == self.path.resolve():
            return
        self._sync()
        super().save(path)
