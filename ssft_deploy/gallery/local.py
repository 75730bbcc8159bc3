"""The local store: a gallery file shared by several processes on one machine.

The file is a log (``fileio``): a snapshot, then one checksummed record per add / remove. Every
write takes an exclusive lock on ``PATH.lock`` (``filelock``: maintained, portable), reads the
records other processes appended since it last looked, appends its own and fsyncs, so a write
costs O(its rows), a batch is visible entirely or not at all and a writer killed mid-record
leaves the last committed state (the torn record is ignored, then cut off by the next writer).
Readers take no lock: they read the records appended since they last looked (a compaction, a
new file, makes them reload it whole). The faiss indexes follow the table (``indexes``).

The file is compacted (rewritten as one snapshot, temporary file + rename) when the rows its
records dropped outnumber the live ones, or after ``MAX_RECORDS`` records, or on ``compact()``.
Opening cleans up the temporary files of writers killed mid-compaction (under the lock: no live
writer has one) and converts a format 1/2 file once; it writes nothing else.
"""

from __future__ import annotations

import glob
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
from ssft_deploy.gallery.records import Op, encode
from ssft_deploy.gallery.table import Entries

LOCK_TIMEOUT_S = 60.0
MAX_RECORDS = 4096  # records replayed by a new reader before the file is compacted
MIN_DEAD = 1024     # dropped rows kept in the file at least (a small gallery is not rewritten
                    # for every few removals)


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class LocalGallery(Gallery):
    """A Gallery kept in sync with the file at ``path`` across processes."""

    def __init__(self, path: str | os.PathLike, binding: GalleryBinding | None = None,
                 lock_timeout_s: float = LOCK_TIMEOUT_S, **options: Any) -> None:
        super().__init__(uri=str(path), **options)
        self.path = fileio.check_target(path)
        self._flock = FileLock(f"{self.path}.lock", timeout=lock_timeout_s)
        self._seen: tuple[int, ...] | None = None  # the file as last looked at
        self._end = 0                                # end of the last record applied
        self._legacy = False                         # the file is format 1/2 (no records)
        with self._locked():
            for tmp in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
                tmp.unlink(missing_ok=True)  # a killed writer's: live ones hold the lock
            if self.path.exists():
                self._sync()
                if binding is not None:
                    before = self._binding
                    self.bind(binding)  # refuses another bundle's gallery
                    if self._binding != before:  # records the hash when the file had none
                        self._commit(Op("bind", self._next_id, binding=self._binding))
            else:
                self._binding = binding
                self._compact()

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
        """Apply what other processes wrote since the last look."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError as exc:
                raise GalleryError(f"gallery file {self.path} was removed") from exc
            if _signature(st) == self._seen:
                return
            fh, st = fileio.open_read(self.path)
            with fh:
                whole = self._seen is None or _signature(st)[:2] != self._seen[:2] or \
                    st.st_size < self._end
                self._end, self._legacy = self._read_log(
                    self.path, fh, 0 if whole else self._end, st.st_size)
            self._seen = _signature(st)

    def _commit(self, op: Op) -> None:
        """Append ``op``'s record (the caller holds the lock and synced), then apply it."""
        if self._legacy:  # a format 1/2 file becomes a log (once) before the first record
            self._compact()
        self._end = fileio.append(self.path, self._end, encode(op))
        self._seen = _signature(os.stat(self.path))
        self._apply(op)
        if self._records > MAX_RECORDS or self._dead > max(len(self._table()), MIN_DEAD):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the file as one snapshot (the caller holds the lock and synced)."""
        fileio.write(self.path, encode(self._snapshot()))
        st = os.stat(self.path)
        self._seen, self._end, self._records, self._dead = _signature(st), st.st_size, 1, 0
        self._legacy = False

    def compact(self) -> None:
        """Rewrite the file as one snapshot now (other processes reload it once)."""
        with self._locked():
            self._sync()
            self._compact()

    def _write(self, entries: Entries, assign_ids: bool) -> np.ndarray:
        with self._locked():
            self._sync()
            return Gallery._write(self, entries, assign_ids)

    def _delete(self, sel: dict[str, np.ndarray]) -> int:
        with self._locked():
            self._sync()
            return Gallery._delete(self, sel)

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
