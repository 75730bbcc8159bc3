"""File I/O of bundles: a bounded manifest read, and paths kept inside the folder.

Writes go through ``ssft_deploy.fileio`` (durable: write, fsync, rename, fsync dir). The manifest is read only when
it is a regular file inside the bundle folder, at most ``MAX_MANIFEST_BYTES`` long and nested at
most ``MAX_MANIFEST_DEPTH`` levels (checked before ``json.loads``, which would otherwise recurse
into a hostile file). A bundle file is read only when its real path (symlinks resolved) lies in
the bundle's real folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ssft_deploy.errors import BundleError
from ssft_deploy.fileio import durable_rename, durable_unlink, durable_write, fsync_dir  # noqa: F401

MANIFEST_FORMAT = "ssft-bundle/1"
MANIFEST_NAME = "manifest.json"
STAGING_NAME = "manifest.staging.json"  # written before the gate has run: never loaded
MAX_MANIFEST_BYTES = 1 << 20  # a real manifest is ~10-30 KB
MAX_MANIFEST_DEPTH = 32       # a real manifest nests 6 levels
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(data: bytes) -> int:
    """Deepest ``[`` / ``{`` nesting of a JSON text (strings ignored), without parsing it."""
    skeleton = np.frombuffer(_STRINGS.sub(b"", data), np.uint8)
    steps = np.zeros(len(skeleton), np.int64)
    steps[(skeleton == ord("[")) | (skeleton == ord("{"))] = 1
    steps[(skeleton == ord("]")) | (skeleton == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def inside(root: Path, name: str | os.PathLike, what: str) -> Path:
    """The real path of ``root / name``; BundleError when it (or a symlink on the way) leaves
    the real folder ``root``."""
    real_root = root.resolve()
    path = (real_root / name).resolve()
    if not path.is_relative_to(real_root):
        raise BundleError(f"{what} {name} resolves to {path}, outside the bundle folder "
                          f"{real_root} (a symlink or '..' leaves it): refused; copy the file "
                          "into the bundle and re-export")
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    """Parse a manifest file within the size and depth bounds; BundleError otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is {size} bytes, more than a manifest can be "
                              f"({MAX_MANIFEST_BYTES}): not a bundle manifest; re-export")
        with open(path, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"{path} is not readable ({exc}); re-export with ssft-export") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is larger than a manifest can be ({MAX_MANIFEST_BYTES} "
                          "bytes): not a bundle manifest; re-export")
    depth = json_depth(data)
    if depth > MAX_MANIFEST_DEPTH:
        raise BundleError(f"{path} nests {depth} levels deep (a manifest nests at most "
                          f"{MAX_MANIFEST_DEPTH}): not a bundle manifest; re-export")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{path} is not readable JSON ({exc}); re-export with "
                          "ssft-export") from exc


def write_manifest(bundle_dir: str | os.PathLike, manifest: Mapping[str, Any], *,
                   staging: bool = False) -> Path:
    """Write ``manifest.json`` (or, with ``staging``, ``manifest.staging.json``) durably: temporary
    file, fsync, rename, fsync of the folder. Returns its path.

    A missing ``format`` is filled in; another format string is refused.
    """
    root = Path(bundle_dir)
    root.mkdir(parents=True, exist_ok=True)
    data = dict(manifest)
    data.setdefault("format", MANIFEST_FORMAT)
    if data["format"] != MANIFEST_FORMAT:
        raise BundleError(f"manifest format {data['format']!r} is not {MANIFEST_FORMAT!r}")
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return durable_write(root / (STAGING_NAME if staging else MANIFEST_NAME),
                         text.encode("utf-8"))


def publish_manifest(bundle_dir: str | os.PathLike) -> Path:
    """Rename the staged manifest to ``manifest.json`` (durably): the bundle's last write."""
    root = Path(bundle_dir)
    if not (root / STAGING_NAME).is_file():
        raise BundleError(f"no staged manifest in {root} to publish")
    return durable_rename(root / STAGING_NAME, root / MANIFEST_NAME)


def unpublish_manifest(bundle_dir: str | os.PathLike) -> None:
    """Remove ``manifest.json`` (durably) before a bundle's files are rewritten in place."""
    durable_unlink(Path(bundle_dir) / MANIFEST_NAME)
