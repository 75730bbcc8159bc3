"""The gallery file: checked target, durable atomic write, checksummed read (no pickle).

Layout: ``MAGIC (8 bytes) | sha256(body) (32 bytes) | body`` with ``body = header length (8 bytes,
little endian) | header JSON | raw array bytes``; the header names each array's dtype, shape and
offset. ``write`` refuses a target that exists and is not a regular file (a folder, a device, a
FIFO, a symlink), writes a temporary file in the same folder, fsyncs it, renames it over the
target and fsyncs the folder, so a crash leaves the old file or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from ssft_deploy.errors import GalleryError
from ssft_deploy.fileio import durable_write

MAGIC = b"SSFTGAL\x01"


def check_target(path: str | os.PathLike) -> Path:
    """``path`` if a gallery may be written there, else GalleryError saying why."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise GalleryError(f"cannot save the gallery to {path}: folder {parent} does not exist "
                           "(create it first)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise GalleryError(f"cannot save the gallery to {path}: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a symbolic link" if \
            stat.S_ISLNK(st.st_mode) else "a device or special file"
        raise GalleryError(f"cannot save the gallery to {path}: it is {kind}, not a regular "
                           "file; give a file path")
    return path


def write(path: str | os.PathLike, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
    """Write header + arrays atomically and durably to ``path`` (GalleryError on any failure;
    nothing but a regular file at ``path`` is ever replaced)."""
    path = check_target(path)
    flat = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
    head = json.dumps(header).encode()
    head = len(head).to_bytes(8, "little") + head
    digest = hashlib.sha256(head)
    for a in flat:
        digest.update(a)

    def body(f) -> None:
        f.write(MAGIC + digest.digest() + head)
        for a in flat:
            f.write(a)

    try:
        # check_target again before the rename: the target may have become a non-file meanwhile
        durable_write(path, body, before_replace=check_target)
    except OSError as exc:
        raise GalleryError(f"cannot save the gallery to {path}: {exc.strerror or exc} "
                           "(check the folder exists, is writable and has space)") from exc


def read(path: str | os.PathLike) -> tuple[dict[str, Any], memoryview, os.stat_result]:
    """(header, payload, stat of the file read) of a gallery file; GalleryError when missing,
    foreign, truncated or corrupt."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise GalleryError(f"{path} is not a regular file")
            data = fh.read()
    except OSError as exc:
        raise GalleryError(f"cannot read gallery {path}: {exc}") from exc
    if data[:len(MAGIC)] != MAGIC:
        raise GalleryError(f"{path} is not an ssft-deploy gallery file")
    body = memoryview(data)[len(MAGIC) + 32:]
    if len(data) < len(MAGIC) + 40 or hashlib.sha256(body).digest() != \
            data[len(MAGIC):len(MAGIC) + 32]:
        raise GalleryError(f"gallery {path} is truncated or corrupt (checksum mismatch)")
    try:
        n_head = int.from_bytes(body[:8], "little")
        header = json.loads(bytes(body[8:8 + n_head]))
    except ValueError as exc:
        raise GalleryError(f"gallery {path} has a malformed header: {exc}") from exc
    if not isinstance(header, dict):
        raise GalleryError(f"gallery {path} has a malformed header")
    return header, body[8 + n_head:], st


def array(path: Path, payload: memoryview, spec: dict[str, Any], dtype: np.dtype) -> np.ndarray:
    """One array of the payload, checked against its spec."""
    if np.dtype(spec["dtype"]) != dtype:
        raise GalleryError(f"gallery {path} holds an unexpected array {spec}")
    end = int(spec["offset"]) + int(spec["nbytes"])
    if end > len(payload) or int(spec["offset"]) < 0:
        raise GalleryError(f"gallery {path} is truncated")
    return np.frombuffer(payload[int(spec["offset"]):end], dtype).reshape(spec["shape"]).copy()
