"""The ``precision="auto"`` measurement cache: a file anyone with write access to the cache
folder may have changed, so it is read as untrusted input.

A cache file is ``{"key": <the key it was measured under>, "throughput": {"backend/precision":
images_per_s}}``. :func:`read` accepts it only when it is at most :data:`MAX_BYTES`, parses
(bounded: deep nesting or bad bytes are caught), holds exactly the key asked for and one finite
positive number (not a boolean) per candidate. Anything else is *corrupt*: the caller warns,
measures again and rewrites it with :func:`write`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ssft_deploy.fileio import durable_write

log = logging.getLogger("ssft_deploy.engines.autoselect")

MAX_BYTES = 64 << 10  # a real entry is well under 4 KiB


def cache_path(key: dict[str, Any]) -> Path:
    """``$SSFT_CACHE/autoselect/<sha256 of the key>.json`` (default ~/.cache/ssft_deploy)."""
    root = Path(os.environ.get("SSFT_CACHE", Path.home() / ".cache" / "ssft_deploy"))
    digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:20]
    return root / "autoselect" / f"{digest}.json"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _rate(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def read(path: Path, key: dict[str, Any], names: set[str]) -> tuple[dict[str, float] | None,
                                                                    str | None]:
    """``(throughput, None)`` from a valid cache file; ``(None, None)`` when there is none;
    ``(None, why)`` when it is corrupt (see the module docstring)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if len(raw) > MAX_BYTES:
        return None, f"larger than {MAX_BYTES} bytes"
    try:
        doc = json.loads(raw.decode("utf-8"))
    except RecursionError:
        return None, "nested too deeply to parse"
    except ValueError as exc:  # bad UTF-8 or bad JSON
        return None, f"not JSON ({str(exc)[:80]})"
    if not isinstance(doc, dict) or not isinstance(doc.get("throughput"), dict):
        return None, "not a {key, throughput} object"
    if _canonical(doc.get("key")) != _canonical(key):
        return None, "written for another key"
    thr = doc["throughput"]
    bad = invalid(thr, names)
    if bad:
        return None, bad
    return {n: float(v) for n, v in thr.items()}, None


def invalid(throughput: Any, names: set[str]) -> str | None:
    """Why ``throughput`` is not one finite positive images/s per candidate of ``names``."""
    if not isinstance(throughput, dict) or set(throughput) != names:
        got = sorted(throughput) if isinstance(throughput, dict) else type(throughput).__name__
        return f"candidates {got} instead of {sorted(names)}"
    bad = sorted(n for n, v in throughput.items() if not _rate(v))
    if bad:
        return f"throughput of {', '.join(bad)} is not a finite positive number"
    return None


def write(path: Path, key: dict[str, Any], throughput: dict[str, float]) -> None:
    """Store a measurement; a cache that cannot be written costs a re-measurement next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        durable_write(path, json.dumps({"key": key, "throughput": throughput}, indent=2,
                                       allow_nan=False).encode())
    except (OSError, ValueError) as exc:
        log.info("could not cache the auto-selection in %s: %s", path, exc)
