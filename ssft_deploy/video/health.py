"""What went wrong in a video run, and the exit code that says so.

:class:`RunErrors` collects every error a pipeline thread caught at its boundary, grouped by
(stage, camera, exception type) with a count and the first and latest message, so a fault
repeated on every frame of a long run is one entry, not a growing list. :class:`CameraState` is one camera's connection state
(``connecting`` / ``live`` / ``reconnecting`` / ``failed`` / ``ended`` / ``stopped``) with the
reason. :func:`exit_code` maps a run's summary onto ``ssft-video``'s exit codes.
"""

from __future__ import annotations

import threading
import time

#: ``ssft-video`` exit codes (docs: docs/pending/v19a.md).
EXIT_OK = 0             # every camera ran to its end (or the duration / Ctrl-C), no errors
EXIT_USAGE = 2          # bad arguments or inputs, found before any work started
EXIT_CAMERAS = 3        # every camera failed (none could be opened or read)
EXIT_STAGE = 4          # a stage that cannot go on (associator, event writer) stopped the run
EXIT_DEGRADED = 5       # the run went on, but with errors (a camera failed, pictures not written)

CAMERA_STATES = ("connecting", "live", "reconnecting", "failed", "ended", "stopped")


class RunErrors:
    """Thread-safe record of caught errors; at most ``max_kinds`` distinct entries (the rest
    are counted in ``overflow``)."""

    def __init__(self, max_kinds: int = 100) -> None:
        self.lock = threading.Lock()
        self.entries: dict[tuple, dict] = {}
        self.max_kinds, self.overflow = int(max_kinds), 0

    def add(self, stage: str, error: BaseException | str, camera: str | None = None,
            fatal: bool = False) -> None:
        msg = error if isinstance(error, str) else _describe(error)
        key = (stage, camera, msg if isinstance(error, str) else type(error).__name__)
        now = round(time.time(), 3)
        with self.lock:
            e = self.entries.get(key)
            if e is None:
                if len(self.entries) >= self.max_kinds:
                    self.overflow += 1
                    return
                e = self.entries[key] = {"stage": stage, "camera": camera, "error": msg,
                                         "count": 0, "fatal": False, "first": now}
            e["count"] += 1
            e["fatal"] = e["fatal"] or fatal
            e["last"], e["last_error"] = now, msg

    @property
    def fatal(self) -> bool:
        with self.lock:
            return any(e["fatal"] for e in self.entries.values())

    def snapshot(self) -> list[dict]:
        with self.lock:
            out = [dict(e) for e in self.entries.values()]
            if self.overflow:
                out.append({"stage": "errors", "camera": None, "count": self.overflow,
                            "error": f"{self.overflow} more errors of other kinds not listed",
                            "fatal": False})
            return out


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CameraState:
    """A camera's connection state and why; ``set`` is called by its reader thread only."""

    def __init__(self) -> None:
        self.state, self.reason, self.since = "connecting", None, time.time()

    def set(self, state: str, reason: str | None = None) -> None:
        """Enter ``state`` (``since`` is kept when it is the current one: a retry updates the
        reason, the outage goes on)."""
        if state not in CAMERA_STATES:
            raise ValueError(f"unknown camera state {state!r}")
        if state != self.state:
            self.since = time.time()
        self.state, self.reason = state, reason

    def as_dict(self) -> dict:
        return {"state": self.state, "reason": self.reason, "state_since": round(self.since, 3)}


def exit_code(summary: dict) -> int:
    """The exit code of a finished run from its summary (see the ``EXIT_*`` constants)."""
    if any(e["fatal"] for e in summary["errors"]):
        return EXIT_STAGE
    states = [c["state"] for c in summary["cameras"].values()]
    if states and all(s == "failed" for s in states):
        return EXIT_CAMERAS
    if summary["errors"] or "failed" in states:
        return EXIT_DEGRADED
    return EXIT_OK
