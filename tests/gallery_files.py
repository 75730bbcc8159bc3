"""Helpers for tests that craft gallery files: edit a file's base record and write it back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ssft_deploy.gallery import fileio


def base_record(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays by name) of the first record of a format-3 gallery file."""
    fh, st = fileio.open_read(path)
    with fh:
        header, payload, _ = next(fileio.records(fh, path, len(fileio.MAGIC), st.st_size))
    arrays = {s["name"]: np.frombuffer(payload[s["offset"]:s["offset"] + s["nbytes"]],
                                       s["dtype"]).reshape(s["shape"]).copy()
              for s in header.pop("arrays")}
    return header, arrays


def write_records(path: Path, records: list[tuple[dict, dict[str, np.ndarray]]]) -> None:
    """A format-3 file of these (header, arrays) records, checksums and all."""
    out = bytearray(fileio.MAGIC)
    for header, arrays in records:
        pieces = fileio.record({**header, "names": list(arrays)}, list(arrays.values()))
        out += b"".join(bytes(p) for p in pieces)
    path.write_bytes(bytes(out))


def edit_base(path: Path, edit: Callable[[dict, dict[str, np.ndarray]], object]) -> Path:
    """Rewrite ``path`` as its base record after ``edit(header, arrays)`` (in place)."""
    header, arrays = base_record(path)
    edit(header, arrays)
    write_records(path, [(header, arrays)])
    return path
