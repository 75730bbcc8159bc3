"""The gallery file: a checked target, an append-only log of checksummed records (no pickle).

Layout (format 3): ``MAGIC (8 bytes) | record | record | ...`` with ``record = payload length
(8 bytes, little endian) | sha256(payload) (32 bytes) | payload`` and ``payload = header length
(8 bytes) | header JSON | raw array bytes`` (the header names each array's dtype, shape and
offset). The first record is a snapshot ("base"); later ones are appended batches. A record
counts once it is whole and its checksum holds: a writer killed mid-append leaves a torn tail
that readers ignore and the next writer cuts off, so a crash keeps the last committed state.
A new file, or a compacted one, is written whole beside the target and renamed over it
(``ssft_deploy.fileio.durable_write``). Format 1/2 files (``MAGIC_V1``: one checksummed body)
are still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ssft_deploy.errors import GalleryError
from ssft_deploy.fileio import durable_write

MAGIC_V1 = b"SSFTGAL\x01"
MAGIC = b"SSFTGAL\x03"
_PREFIX = MAGIC[:7]
_REC = 40  # length + sha256


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


def record(header: dict[str, Any], arrays: list[np.ndarray]) -> list[Any]:
    """The pieces of one record (header + arrays; ``header["arrays"]`` is filled in)."""
    flat = [np.ascontiguousarray(a) for a in arrays]
    specs, offset = [], 0
    for name, a in zip(header.pop("names", [None] * len(flat)), flat):
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape),
                      "offset": offset, "nbytes": a.nbytes})
        offset += a.nbytes
    head = json.dumps({**header, "arrays": specs}).encode()
    head = len(head).to_bytes(8, "little") + head
    bufs = [a.reshape(-1).view(np.uint8) for a in flat]
    digest = hashlib.sha256(head)
    for b in bufs:
        digest.update(b)
    size = len(head) + offset
    return [size.to_bytes(8, "little") + digest.digest() + head, *bufs]


def write(path: str | os.PathLike, pieces: list[Any]) -> None:
    """A new file holding one record, written whole and renamed over ``path`` (GalleryError on
    any failure; nothing but a regular file at ``path`` is ever replaced)."""
    path = check_target(path)

    def body(f) -> None:
        f.write(MAGIC)
        for p in pieces:
            f.write(p)

    try:
        # check_target again before the rename: the target may have become a non-file meanwhile
        durable_write(path, body, before_replace=check_target)
    except OSError as exc:
        raise GalleryError(f"cannot save the gallery to {path}: {exc.strerror or exc} "
                           "(check the folder exists, is writable and has space)") from exc


def append(path: Path, end: int, pieces: list[Any]) -> int:
    """Append one record at ``end`` (cutting off any torn tail a killed writer left), fsync;
    returns the new end. The caller holds the writers' lock."""
    try:
        with open(path, "r+b") as fh:
            fh.truncate(end)
            fh.seek(end)
            try:
                fh.writelines(pieces)
                fh.flush()
                os.fsync(fh.fileno())
            except BaseException:
                fh.truncate(end)  # best effort: readers ignore a torn record anyway
                raise
            return end + sum(len(memoryview(p).cast("B")) for p in pieces)
    except OSError as exc:
        raise GalleryError(f"cannot write gallery {path}: {exc.strerror or exc} (check the "
                           "file is writable and the disk has space)") from exc


def open_read(path: Path) -> tuple[Any, os.stat_result]:
    """An open file handle and its stat; GalleryError when missing or not a regular file."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 (the caller closes it)
        st = os.fstat(fh.fileno())
    except OSError as exc:
        raise GalleryError(f"cannot read gallery {path}: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        fh.close()
        raise GalleryError(f"{path} is not a regular file")
    return fh, st


def kind(fh: Any, path: Path) -> int:
    """The file format's major version (1 for format 1/2 files, 3 now); GalleryError for a
    foreign file or one written by a newer ssft-deploy."""
    fh.seek(0)
    magic = fh.read(len(MAGIC))
    if magic == MAGIC_V1:
        return 1
    if magic == MAGIC:
        return 3
    if len(magic) == len(MAGIC) and magic[:7] == _PREFIX:
        raise GalleryError(f"gallery {path} has file format {magic[7]}, newer than this "
                           f"ssft-deploy reads ({MAGIC[7]}): upgrade ssft-deploy")
    raise GalleryError(f"{path} is not an ssft-deploy gallery file")


def records(fh: Any, path: Path, start: int, end: int
            ) -> Iterator[tuple[dict[str, Any], memoryview, int]]:
    """(header, payload, end offset) of each whole, intact record in ``[start, end)``; stops at
    a torn or unfinished tail (a writer killed or still writing). A bad record with more data
    after it is corruption: GalleryError."""
    fh.seek(start)
    data = memoryview(fh.read(max(0, end - start)))
    pos = 0
    while pos + _REC <= len(data):
        size = int.from_bytes(data[pos:pos + 8], "little")
        stop = pos + _REC + size
        if stop > len(data):
            return  # unfinished
        payload = data[pos + _REC:stop]
        if hashlib.sha256(payload).digest() != data[pos + 8:pos + _REC]:
            if stop == len(data):
                return  # the last record, torn or still being written
            raise GalleryError(f"gallery {path} is corrupt (record at byte {start + pos})")
        header, arrays = _header(path, payload)
        yield header, arrays, start + stop
        pos = stop


def _header(path: Path, payload: memoryview) -> tuple[dict[str, Any], memoryview]:
    try:
        n_head = int.from_bytes(payload[:8], "little")
        if n_head > len(payload) - 8:
            raise ValueError("header longer than its record")
        header = json.loads(bytes(payload[8:8 + n_head]))
    except ValueError as exc:
        raise GalleryError(f"gallery {path} has a malformed header: {exc}") from exc
    if not isinstance(header, dict):
        raise GalleryError(f"gallery {path} has a malformed header")
    return header, payload[8 + n_head:]


def read_v1(fh: Any, path: Path) -> tuple[dict[str, Any], memoryview]:
    """(header, payload) of a format 1/2 file (one checksummed body)."""
    fh.seek(0)
    data = fh.read()
    body = memoryview(data)[len(MAGIC) + 32:]
    if len(data) < len(MAGIC) + 40 or hashlib.sha256(body).digest() != \
            data[len(MAGIC):len(MAGIC) + 32]:
        raise GalleryError(f"gallery {path} is truncated or corrupt (checksum mismatch)")
    return _header(path, body)


def array(path: Path, payload: memoryview, spec: dict[str, Any], dtype: np.dtype) -> np.ndarray:
    """One array of the payload, checked against its spec."""
    if np.dtype(spec["dtype"]) != dtype:
        raise GalleryError(f"gallery {path} holds an unexpected array {spec}")
    end = int(spec["offset"]) + int(spec["nbytes"])
    shape = [int(v) for v in spec["shape"]]
    if end > len(payload) or int(spec["offset"]) < 0 or min(shape, default=0) < 0 or \
            int(np.prod(shape)) * dtype.itemsize != int(spec["nbytes"]):
        raise GalleryError(f"gallery {path} is truncated or holds a malformed array {spec}")
    # a read-only view on the bytes read (no copy: a table is never changed in place)
    return np.frombuffer(payload[int(spec["offset"]):end], dtype).reshape(shape)
