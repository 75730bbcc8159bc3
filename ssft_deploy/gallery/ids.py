"""Validation of the integer columns (identities, cameras, tracks, entry ids) and timestamps.

Values are checked, never coerced: a float (even 1.0), a bool, or an integer outside int64 is
refused with InputError instead of being truncated (``remove(pids=[1.7])`` must not remove pid 1)
or wrapped (uint64 2^64-1 must not become -1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ssft_deploy.errors import InputError

UNKNOWN = -1  # the identity of an entry nobody has named yet
MAX_ENTRY_ID = 2**62  # entry ids are 0 <= id < this: counting on from any of them cannot overflow
_I64 = np.iinfo(np.int64)


def int_ids(name: str, x: Any, n: int | None = None) -> np.ndarray:
    """int64 vector of ``n`` values (a scalar is repeated when ``n`` is given)."""
    a = np.asarray(x)
    if a.ndim == 0:
        a = a.reshape(1) if n is None else np.full(n, a.item(), dtype=a.dtype)
    if a.ndim != 1 or (n is not None and a.shape != (n,)):
        raise InputError(f"{name} must be {'' if n is None else n} integers, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.dtype == object:  # Python ints too large for any numpy integer
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in a):
            raise InputError(f"{name} must be integers, got {a[:3].tolist()}...")
        if any(not _I64.min <= int(v) <= _I64.max for v in a):
            raise InputError(f"{name} holds a value outside int64 [{_I64.min}, {_I64.max}]")
        return a.astype(np.int64)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} must be integers, got dtype {a.dtype} "
                         f"(e.g. {a.reshape(-1)[0]!r}); round or map them explicitly")
    if np.issubdtype(a.dtype, np.unsignedinteger) and a.max() > _I64.max:
        raise InputError(f"{name} holds {int(a.max())}, outside int64 (max {_I64.max})")
    return a.astype(np.int64)


def entry_ids(x: Any, n: int | None = None) -> np.ndarray:
    """Entry ids to store: integers in ``[0, MAX_ENTRY_ID)`` (-1 means "no entry" in k-NN
    answers, and ids count on from the largest without overflow)."""
    a = int_ids("entry_ids", x, n)
    if a.size and (a.min() < 0 or a.max() >= MAX_ENTRY_ID):
        bad = int(a.min()) if a.min() < 0 else int(a.max())
        raise InputError(f"entry_ids must be in [0, 2**62), got {bad}")
    return a


def identities(x: Any, n: int) -> np.ndarray:
    """Identities to store: integers >= -1 (-1: unknown; other negative values would collide with
    the ranking's keys for unknown entries)."""
    a = int_ids("pids", x, n)
    if a.size and a.min() < UNKNOWN:
        raise InputError(f"pids must be >= {UNKNOWN} ({UNKNOWN}: unknown identity), got "
                         f"{int(a.min())}")
    return a


def timestamps(x: Any, n: int) -> np.ndarray:
    """float64 vector of ``n`` finite timestamps (seconds; a scalar is repeated)."""
    a = np.asarray(x)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"timestamps must be real numbers (seconds), got dtype {a.dtype}")
    a = np.broadcast_to(a.astype(np.float64), (n,)) if a.ndim == 0 else a.astype(np.float64)
    if a.shape != (n,) or not np.isfinite(a).all():
        raise InputError(f"timestamps must be {n} finite numbers, got shape {a.shape}")
    return np.ascontiguousarray(a)


def window(since: Any, until: Any) -> tuple[float | None, float | None]:
    """A time window ``since <= ts < until`` (either end open when None)."""
    out = []
    for name, v in (("since", since), ("until", until)):
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(v):
                raise InputError(f"{name} must be a finite number of seconds, got {v!r}")
            v = float(v)
        out.append(v)
    return out[0], out[1]
