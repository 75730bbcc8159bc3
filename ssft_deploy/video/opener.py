"""Opening a camera in a helper thread, so that an open that hangs never holds up its reader.

Network opens honour OpenCV's ``CAP_PROP_OPEN_TIMEOUT_MSEC``, but some opens hang where no
timeout reaches: a FIFO with no writer blocks in ``open(2)``. The reader waits for the helper
thread at most its open timeout and then goes on (reports, retries or fails the camera).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class PendingOpen:
    """One open running in a helper thread. A hung open is abandoned, never waited on past
    the timeout nor started twice: a retry waits on the same one again; a capture it returns
    after it was abandoned is released."""

    def __init__(self, open_fn: Callable[[], Any], name: str) -> None:
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.result: Any = None
        self.error: BaseException | None = None
        self.abandoned = False
        threading.Thread(target=self._run, args=(open_fn,), name=f"ssft-open-{name}",
                         daemon=True).start()

    def _run(self, open_fn: Callable[[], Any]) -> None:
        result, error = None, None
        try:
            result = open_fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the reader thread
            error = exc
        with self.lock:
            self.result, self.error = result, error
            self.done.set()
            if self.abandoned and result is not None:
                result.release()

    def wait(self, timeout_s: float, stop: threading.Event) -> bool:
        """True once the open finished; False after ``timeout_s`` or when ``stop`` is set."""
        deadline = time.monotonic() + timeout_s
        while not self.done.wait(min(0.05, max(deadline - time.monotonic(), 0))):
            if stop.is_set() or time.monotonic() >= deadline:
                return self.done.is_set()
        return True

    def abandon(self) -> None:
        with self.lock:
            self.abandoned = True
            if self.result is not None:
                self.result.release()
