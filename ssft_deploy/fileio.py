"""Durable file writes, the one helper every writer uses (bundles, galleries, engines, results).

A crash leaves the old file or the new one, never a mix: write a temporary file in the target's
folder, fsync it, rename it over the target, fsync the folder (so the rename itself survives).
The new file keeps the mode its owner gave the target (a gallery shared through ``chmod 644``
stays shared); a new target gets what ``open`` would give it (0666 less the umask). Callers that
need a private file say so with ``mode=0o600``.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder so a rename inside it is durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux 4.7+:
    /proc/self/status); elsewhere set and restored under a lock (``os.umask`` is the only way)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def target_mode(path: str | os.PathLike) -> int:
    """The permission bits a rewrite of ``path`` keeps: its own if it exists, else 0666 less
    the umask (what ``open`` would create)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def durable_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object],
                  before_replace: Callable[[Path], object] | None = None,
                  mode: int | None = None) -> Path:
    """Replace ``path`` by ``data`` (bytes, or a function writing to the open file) atomically and
    durably: write a temporary file beside it, fsync, rename over it, fsync the folder.
    ``before_replace(path)`` runs just before the rename (a last check of the target). The file
    gets ``mode`` if given (e.g. 0o600 for a secret), else the target's mode (see
    ``target_mode``)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes 0600 (private while being written); the final mode is set before the
        # rename so the target is never visible with other bits
        os.fchmod(fd, target_mode(target) if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace(target)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def durable_rename(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rename ``src`` over ``dst`` and fsync the folder."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)
    return Path(dst)


def durable_unlink(path: str | os.PathLike) -> None:
    """Remove ``path`` if present, durably."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        p.unlink()
        fsync_dir(p.parent)
