"""Camera-frame batcher: many camera threads submit person crops, one future per crop.

Crops are preprocessed in the submitting thread (so camera threads share that cost), queued per
modality, and a worker per modality runs ``extract_fn`` on a batch that leaves at ``max_batch``
crops or ``max_wait_ms`` after its oldest crop arrived, whichever comes first. The batcher knows
nothing of engines: ``extract_fn(batch[B,3,H,W] float32, modality) -> (shared[B,Ds],
specific[B,Dp])`` is all it calls (``ReIDRuntime`` provides one).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ssft_deploy.batch_queue import BatcherClosedError, ModalityQueue, QueueItem
from ssft_deploy.errors import ConfigError, EngineError, InputError, SSFTError
from ssft_deploy.frames import Stretch, to_uint8
from ssft_deploy.modality import NAMES, modality_name
from ssft_deploy.preprocess import clip_box

if TYPE_CHECKING:
    from typing_extensions import Self

ExtractFn = Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]]
PreprocessFn = Callable[[np.ndarray], np.ndarray]

_LATENCY_WINDOW = 20000  # latencies kept for the percentiles (a ring buffer, so memory is bounded)
log = logging.getLogger("ssft_deploy.batcher")


@dataclass(frozen=True)
class CropFeatures:
    """What a crop's future completes with: its post-BN shared and specific features."""

    shared: np.ndarray      # [Ds] float32
    specific: np.ndarray    # [Dp] float32
    modality: int           # 0 RGB, 1 IR
    camera_id: Hashable
    tag: Any                # whatever the caller passed to submit (track id, frame index, ...)
    latency_s: float        # submit -> result


def _check_chw(image: np.ndarray) -> np.ndarray:
    """Default preprocess: the crop is already a normalised float32 [3,H,W] array."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != np.float32:
        raise InputError(
            f"without a preprocess_fn a crop must be float32 [3,H,W]; got {image.dtype} "
            f"{list(image.shape)} (pass preprocess_fn to accept raw HxWx3 crops)")
    return image


def _int_option(name: str, value: object, low: int, low_name: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low_name or low}, got {value!r}")
    return int(value)


def _seconds_option(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def crop_box(frame: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Crop an ``(x, y, w, h)`` box from an 8-bit frame (``ssft_deploy.frames``), clipped to
    the frame; InputError if empty."""
    x0, y0, x1, y1 = clip_box(box, frame.shape[1], frame.shape[0])
    return frame[y0:y1, x0:x1]


class FrameBatcher:
    """Batch crops from many camera threads into per-modality extractor calls.

    ``submit`` / ``submit_boxes`` return ``concurrent.futures.Future`` objects completing with a
    ``CropFeatures`` (or an ``InputError`` for a bad crop, an ``EngineError`` if the extractor failed
    on that crop's batch). When a queue holds ``max_queue`` crops, ``full_policy="block"`` waits up
    to ``block_timeout_s`` and then raises ``QueueFullError``; ``"reject"`` raises it at once.
    Bad options raise ``ConfigError``. An engine raising anything (``SystemExit`` included) fails
    that batch's futures with ``EngineError`` and the worker carries on; it is logged and counted.
    """

    def __init__(self, extract_fn: ExtractFn, preprocess_fn: PreprocessFn | None = None, *,
                 max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 1024,
                 full_policy: str = "block", block_timeout_s: float = 1.0):
        self.max_batch = _int_option("max_batch", max_batch, 1)
        self.max_queue = _int_option("max_queue", max_queue, self.max_batch,
                                     f"max_batch ({self.max_batch})")
        if full_policy not in ("block", "reject"):
            raise ConfigError(f"full_policy must be 'block' or 'reject', got {full_policy!r}")
        self.extract_fn = extract_fn
        self.preprocess_fn = preprocess_fn or _check_chw
        self.max_wait_s = _seconds_option("max_wait_ms", max_wait_ms) / 1000.0
        self.full_policy = full_policy
        self.block_timeout_s = _seconds_option("block_timeout_s", block_timeout_s)
        self._closed = False
        self._drain = True
        self._stats_lock = threading.Lock()
        self._counts = {"submitted": 0, "completed": 0, "failed": 0, "rejected": 0, "batches": 0,
                        "failed_batches": 0, "engine_faults": 0, "worker_restarts": 0}
        self._batch_sizes: dict[int, int] = {}
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._queues = {m: ModalityQueue(self, m) for m in NAMES}
        for q in self._queues.values():
            q.thread.start()

    @classmethod
    def for_runtime(cls, runtime: Any, **kwargs: Any) -> FrameBatcher:
        """A batcher over ``ReIDRuntime.extract_array`` / ``preprocess_fn`` (BGR uint8 crops)."""
        return cls(runtime.extract_array, runtime.preprocess_fn, **kwargs)

    # -- submission -----------------------------------------------------------------------------
    def submit(self, crop: np.ndarray, camera_id: Hashable = None, modality: str | int = "rgb",
               tag: Any = None) -> Future:
        """Queue one crop; returns a future (already failed with InputError for a bad crop)."""
        return self._submit_many([crop], camera_id, modality, [tag])[0]

    def submit_boxes(self, frame: np.ndarray, boxes: Sequence[Sequence[float]],
                     camera_id: Hashable = None, modality: str | int = "rgb",
                     tags: Sequence[Any] | None = None,
                     stretch: Stretch | str | None = None) -> list[Future]:
        """Queue every ``(x, y, w, h)`` box of a frame; one future per box, in order. Frames
        follow ``ssft_deploy.frames`` (BGR, grey, or 16-bit / float mapped by ``stretch``); a
        bad frame fails every box's future."""
        tags = list(tags) if tags is not None else [None] * len(boxes)
        if len(tags) != len(boxes):
            raise InputError(f"{len(boxes)} boxes but {len(tags)} tags")
        try:
            frame8: np.ndarray | InputError = to_uint8(np.asarray(frame), stretch)
        except InputError as exc:
            frame8 = exc
        crops: list[Any] = []
        for box in boxes:
            try:
                if isinstance(frame8, InputError):
                    raise frame8
                crops.append(crop_box(frame8, box))
            except InputError as exc:
                crops.append(exc)
        return self._submit_many(crops, camera_id, modality, tags)

    def _submit_many(self, crops: list[Any], camera_id: Hashable, modality: str | int,
                     tags: list[Any]) -> list[Future]:
        queue = self._queues[modality_name(modality)]
        if self._closed:
            raise BatcherClosedError("the batcher is closed; no new crops are accepted")
        now = time.perf_counter()
        futures, items = [], []
        for crop, tag in zip(crops, tags):
            fut: Future = Future()
            futures.append(fut)
            try:
                if isinstance(crop, SSFTError):
                    raise crop
                image = self.preprocess_fn(crop)
            except SSFTError as exc:
                fut.set_exception(exc)
                self._count("failed", 1)
                continue
            except Exception as exc:  # noqa: BLE001 - a preprocess bug must not kill the camera thread
                fut.set_exception(InputError(f"could not preprocess crop: {exc!r}"))
                self._count("failed", 1)
                continue
            items.append(QueueItem(image, fut, camera_id, tag, now))
        if items:
            queue.put(items)
            self._count("submitted", len(items))
        return futures

    # -- the worker side ------------------------------------------------------------------------
    def _run_batch(self, modality: str, batch: list[QueueItem], stacked: Callable[[], None]) -> None:
        n = len(batch)
        try:
            try:
                x = np.stack([it.image for it in batch])
            finally:
                stacked()
            shared, specific = self.extract_fn(x, modality)
            shared, specific = np.asarray(shared), np.asarray(specific)
            if shared.shape[:1] != (n,) or specific.shape[:1] != (n,):
                raise EngineError(f"extractor returned {list(shared.shape)} / "
                                  f"{list(specific.shape)} for a batch of {n}")
        except BaseException as exc:  # noqa: BLE001 - any engine fault fails this batch only
            # SystemExit / KeyboardInterrupt from an engine too: re-raised here they would only
            # end this worker thread and strand every queued future.
            err = exc if isinstance(exc, SSFTError) else EngineError(
                f"{modality} extractor failed on a batch of {n} crops: {exc!r}")
            if err is not exc:
                err.__cause__ = exc
            if not isinstance(exc, Exception):
                log.error("ssft batcher: the %s extractor raised %r; its batch of %d failed, "
                          "the worker carries on", modality, exc, n)
                self._count("engine_faults", 1)
            for it in batch:
                it.future.set_exception(err)
            self._record(n, failed=True, latencies=())
            return
        code = NAMES.index(modality)
        done = time.perf_counter()
        for i, it in enumerate(batch):
            it.future.set_result(CropFeatures(shared[i], specific[i], code, it.camera_id, it.tag,
                                              done - it.t_submit))
        self._record(n, failed=False, latencies=[done - it.t_submit for it in batch])

    def _count(self, key: str, n: int) -> None:
        with self._stats_lock:
            self._counts[key] += n

    def _record(self, n: int, failed: bool, latencies: Sequence[float]) -> None:
        with self._stats_lock:
            self._counts["batches"] += 1
            self._counts["failed" if failed else "completed"] += n
            self._counts["failed_batches"] += int(failed)
            self._batch_sizes[n] = self._batch_sizes.get(n, 0) + 1
            self._latencies.extend(latencies)

    # -- observability and lifetime -------------------------------------------------------------
    def stats(self) -> dict:
        """Counters: queue depth (now and max), batch size histogram, latency percentiles (ms);
        ``engine_faults``: batches whose engine raised a non-``Exception`` (``SystemExit``, ...),
        ``worker_restarts``: workers that died outside the engine call and were restarted."""
        depth = {m: len(q.items) for m, q in self._queues.items()}
        max_depth = {m: q.max_depth for m, q in self._queues.items()}
        with self._stats_lock:
            out = dict(self._counts)
            hist = dict(sorted(self._batch_sizes.items()))
            lat = np.asarray(self._latencies, dtype=np.float64) * 1000.0
        p = np.percentile(lat, [50, 95, 99]) if lat.size else [float("nan")] * 3
        out.update(queue_depth=depth, max_queue_depth=max_depth, max_queue=self.max_queue,
                   batch_sizes=hist, mean_batch=(sum(k * v for k, v in hist.items()) /
                                                 max(sum(hist.values()), 1)),
                   latency_ms={"p50": float(p[0]), "p95": float(p[1]), "p99": float(p[2])})
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting crops; ``drain=True`` finishes queued crops, ``False`` fails them."""
        for q in self._queues.values():
            with q.lock:
                self._drain = self._drain and drain
                self._closed = True
                q.not_empty.notify_all()
                q.not_full.notify_all()
        if not drain:
            for q in self._queues.values():
                q.fail_pending(BatcherClosedError(
                    "the batcher was closed with drain=False before this crop was processed"))
        for q in self._queues.values():
            q.thread.join(timeout)
            if q.thread.is_alive():
                raise EngineError(f"the {q.modality} batch worker did not stop within {timeout} s")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(drain=True)
