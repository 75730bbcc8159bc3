"""Durable file writes, the one helper every writer uses (bundles, galleries, engines, results).

A crash leaves the old file or the new one, never a mix: write a temporary file in the target's
folder, fsync it, rename it over the target, fsync the folder (so the rename itself survives).
"""

from __future__ import annotations

import os
import tempfile
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


def durable_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object],
                  before_replace: Callable[[Path], object] | None = None) -> Path:
    """Replace ``path`` by ``data`` (bytes, or a function writing to the open file) atomically and
    durably: write a temporary file beside it, fsync, rename over it, fsync the folder.
    ``before_replace(path)`` runs just before the rename (a last check of the target)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
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
