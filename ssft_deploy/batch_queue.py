"""The frame batcher's per-modality queue: bounded, all-or-none puts under a full policy, and the
worker thread that empties it in batches (``max_batch`` crops or ``max_wait_ms`` after the oldest)
and survives anything its batch raises. ``ssft_deploy.batcher.FrameBatcher`` owns two of these.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ssft_deploy.errors import EngineError, InputError, QueueFullError

if TYPE_CHECKING:
    from ssft_deploy.batcher import FrameBatcher

log = logging.getLogger("ssft_deploy.batcher")


class BatcherClosedError(QueueFullError):
    """The batcher is closed (or closed without draining before this crop ran)."""


@dataclass
class QueueItem:
    image: np.ndarray
    future: Future
    camera_id: Hashable
    tag: Any
    t_submit: float


class ModalityQueue:
    """One modality's bounded queue and the worker thread that empties it in batches."""

    def __init__(self, owner: FrameBatcher, modality: str):
        self.owner = owner
        self.modality = modality
        self.items: deque[QueueItem] = deque()
        self.lock = threading.Lock()
        self.not_empty = threading.Condition(self.lock)
        self.not_full = threading.Condition(self.lock)
        self.max_depth = 0
        self.in_flight: list[QueueItem] = []   # the batch the worker holds (failed if it dies)
        self.thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._work, name=f"ssft-batcher-{self.modality}",
                                daemon=True)

    def put(self, items: list[QueueItem]) -> None:
        """Enqueue all items at once (all or none), honouring the full policy."""
        o = self.owner
        if len(items) > o.max_queue:
            raise InputError(f"{len(items)} crops in one submission exceed max_queue={o.max_queue}")
        with self.lock:
            if o._closed:
                raise BatcherClosedError("the batcher is closed; no new crops are accepted")
            if len(self.items) + len(items) > o.max_queue:
                if o.full_policy == "reject":
                    o._count("rejected", len(items))
                    raise QueueFullError(
                        f"{self.modality} queue full ({len(self.items)}/{o.max_queue} crops); "
                        "submission rejected (full_policy='reject')")
                ok = self.not_full.wait_for(
                    lambda: o._closed or len(self.items) + len(items) <= o.max_queue,
                    timeout=o.block_timeout_s)
                if o._closed:
                    raise BatcherClosedError("the batcher closed while this submission waited")
                if not ok:
                    o._count("rejected", len(items))
                    raise QueueFullError(
                        f"{self.modality} queue stayed full ({o.max_queue} crops) for "
                        f"{o.block_timeout_s:g} s; submission not accepted (full_policy='block')")
            was = len(self.items)
            self.items.extend(items)
            self.max_depth = max(self.max_depth, len(self.items))
            # The worker waits either for a first crop or for a full batch.
            if was == 0 or len(self.items) >= o.max_batch:
                self.not_empty.notify()

    def _next_batch(self) -> list[QueueItem] | None:
        o = self.owner
        with self.lock:
            while not self.items or (o._closed and not o._drain):
                if o._closed:
                    return None
                self.not_empty.wait()
            deadline = self.items[0].t_submit + o.max_wait_s
            while len(self.items) < o.max_batch and not o._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self.not_empty.wait(left)
            n = min(len(self.items), o.max_batch)
            return [self.items.popleft() for _ in range(n)]

    def wake_submitters(self, n: int) -> None:
        """Tell blocked submitters that ``n`` slots are free. Called once the batch is stacked,
        just before the engine runs: camera threads then refill the queue while the engine
        holds no GIL, instead of fighting the worker for it while it stacks. Wakes about ``n``
        waiters (not all of them); an empty queue wakes everyone, so none is left behind."""
        with self.lock:
            if self.items:
                self.not_full.notify(n)
            else:
                self.not_full.notify_all()

    def _work(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                # A caller may have cancelled its future while it waited: skip those crops.
                n = len(batch)
                self.in_flight = [it for it in batch if it.future.set_running_or_notify_cancel()]
                if self.in_flight:
                    self.owner._run_batch(self.modality, self.in_flight,
                                          partial(self.wake_submitters, n))
                else:
                    self.wake_submitters(n)
                self.in_flight = []
        except BaseException as exc:  # noqa: BLE001 - a dead worker would strand every future
            self._restart(exc)

    def _restart(self, exc: BaseException) -> None:
        """The worker loop itself raised: fail the batch it held, start a fresh worker (or, once
        closed, fail what is queued), and count it."""
        log.error("ssft batcher: the %s worker raised %r; restarting it", self.modality, exc)
        err = EngineError(f"the {self.modality} batch worker failed on this crop's batch "
                          f"({exc!r}); the batcher restarted the worker")
        err.__cause__ = exc
        for it in self.in_flight:
            if not it.future.done():
                it.future.set_exception(err)
        self.in_flight = []
        self.owner._count("worker_restarts", 1)
        self.wake_submitters(0)
        with self.lock:
            if not self.owner._closed:
                self.thread = self._new_thread()
                self.thread.start()
                return
        self.fail_pending(err)

    def fail_pending(self, error: Exception) -> int:
        with self.lock:
            pending = list(self.items)
            self.items.clear()
            self.not_full.notify_all()
        for it in pending:
            if it.future.set_running_or_notify_cancel():
                it.future.set_exception(error)
        return len(pending)
