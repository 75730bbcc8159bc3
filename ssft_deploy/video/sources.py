"""Camera sources: one reader thread per camera filling a bounded frame queue.

A camera is a video file, a stream URL (RTSP / HTTP / anything OpenCV's FFmpeg backend opens), a
folder of images (e.g. 16-bit PNG / TIFF from a radiometric camera, read unchanged) or any
in-process ``open_fn`` returning an object with ``read() -> ndarray | None`` and ``release()``.

Every frame goes through the package's frame contract (:func:`ssft_deploy.frames.to_uint8`, with
the camera's :class:`~ssft_deploy.frames.Stretch`), so later stages see ``uint8`` BGR or grey.
A frame that cannot be decoded, is over the pixel limit (image folders: checked before decoding)
or does not meet the contract is counted (``corrupt``) and skipped; one of another size than the
camera's first frame is resized to it (``resized``). A live camera (a stream URL, or
``live=True``) that stops delivering is reported and reopened with exponential backoff; it never
raises into the pipeline.

Cameras are independent: each open runs in a helper thread and is given up after
``open_timeout_s`` (a stalled server, or a FIFO with no writer, which blocks in ``open(2)`` where
no timeout reaches), and stream reads time out after ``read_timeout_s``. The reader's
:class:`~ssft_deploy.video.health.CameraState` says where the camera stands and why.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ssft_deploy.errors import InputError
from ssft_deploy.features import modality_code
from ssft_deploy.frames import Stretch, fit_size, to_uint8
from ssft_deploy.video.captures import Capture, open_source
from ssft_deploy.video.health import CameraState, RunErrors
from ssft_deploy.video.opener import PendingOpen

log = logging.getLogger("ssft_deploy.video")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass(frozen=True)
class CameraSpec:
    """One camera: ``name``, ``source`` (path / URL / image folder), ``modality`` ('rgb'/'ir'),
    the 16-bit ``stretch``, and ``live`` (reconnect on loss; default: stream URLs are live)."""

    name: str
    source: str
    modality: str
    stretch: Stretch = field(default_factory=Stretch)
    live: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SAFE_NAME.fullmatch(self.name):
            # The name becomes part of output file names: "../x" wrote beside --out.
            raise InputError(f"camera name {self.name!r}: use 1-64 ASCII letters, digits, '.', "
                             "'_' or '-', starting with a letter or digit (it names output files)")
        modality_code(self.modality)  # InputError for anything but rgb / ir

    @property
    def is_live(self) -> bool:
        return self.live if self.live is not None else self.source.lower().startswith(
            _STREAM_SCHEMES)

    @classmethod
    def parse(cls, text: str, stretch: Stretch | str | None = None,
              live: bool | None = None) -> CameraSpec:
        """``NAME=SOURCE:MODALITY`` (SOURCE may contain ':', as URLs do) -> CameraSpec."""
        name, sep, rest = text.partition("=")
        source, _, modality = rest.rpartition(":")
        if not sep or not name.strip() or not source or modality.lower() not in ("rgb", "ir"):
            raise InputError(f"camera {text!r}: write NAME=PATH_OR_URL:rgb or NAME=PATH:ir")
        return cls(name.strip(), source, modality.lower(), Stretch.parse(stretch), live)


@dataclass
class Frame:
    """One decoded frame: ``index`` counts delivered frames from 0; ``time_s`` is the video time
    in seconds (files) or the Unix time (live cameras)."""

    camera: str
    index: int
    time_s: float
    image: np.ndarray           # uint8 BGR HxWx3 or grey HxW (the frame contract)


class FrameQueue:
    """Bounded frame queue. ``policy="drop"`` (live cameras) drops the oldest frame when full
    and counts it; ``"block"`` (files) makes the reader wait, so no frame of a file is lost."""

    def __init__(self, size: int = 8, policy: str = "drop") -> None:
        if size < 1 or policy not in ("drop", "block"):
            raise InputError(f"frame queue needs size >= 1 and policy drop|block, got {size}, "
                             f"{policy!r}")
        self.size, self.policy = int(size), policy
        self.items: deque[Frame] = deque()
        self.cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, frame: Frame, stop: threading.Event | None = None) -> None:
        with self.cond:
            if self.policy == "block":
                while len(self.items) >= self.size and not (stop and stop.is_set()):
                    self.cond.wait(0.1)
            elif len(self.items) >= self.size:
                self.items.popleft()
                self.dropped += 1
            self.items.append(frame)
            self.cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest frame; None once closed and empty (or after ``timeout``)."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.items or self.closed, timeout):
                return None
            if not self.items:
                return None
            frame = self.items.popleft()
            self.cond.notify_all()
            return frame

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


@dataclass
class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum`` seconds; ``tries`` None = forever."""

    initial: float = 0.5
    maximum: float = 10.0
    tries: int | None = None

    def delays(self):
        d, n = self.initial, 0
        while self.tries is None or n < self.tries:
            yield d
            d, n = min(d * 2, self.maximum), n + 1


class CameraReader:
    """The reader thread of one camera: source -> frame contract -> :class:`FrameQueue`.

    ``stats`` counts ``frames``, ``corrupt`` (undecodable or refused frames), ``resized``
    (frames of another size than the camera's first, resized to it), ``dropped``
    (queue full), ``disconnects``, ``reconnects``; ``events`` lists what happened to the
    connection (``on_event`` is called with each, e.g. to print it); ``state`` is where the
    camera stands; a camera that fails is also recorded in ``errors``."""

    #: Failed reads in a row after which a source counts as ended (file) or lost (live).
    MAX_BAD_READS = 3

    def __init__(self, spec: CameraSpec, queue: FrameQueue | None = None,
                 open_fn: Callable[[], Capture] | None = None, backoff: Backoff | None = None,
                 max_frames: int | None = None, loop: bool = False,
                 on_event: Callable[[dict], None] | None = None, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 10.0, errors: RunErrors | None = None) -> None:
        self.spec = spec
        self.queue = queue or FrameQueue(policy="drop" if spec.is_live else "block")
        self.open_fn = open_fn or (lambda: open_source(spec.source, open_timeout_s,
                                                       read_timeout_s))
        self.open_timeout_s = float(open_timeout_s)
        self.errors = errors or RunErrors()
        self.state = CameraState()
        self._pending: PendingOpen | None = None
        self.backoff = backoff or Backoff()
        self.max_frames, self.loop = max_frames, loop
        self.on_event = on_event
        self.stop_event = threading.Event()
        self.stats = {"frames": 0, "corrupt": 0, "resized": 0, "disconnects": 0,
                      "reconnects": 0}
        self.size: tuple[int, int] | None = None    # (h, w) of the first frame
        self.events: list[dict] = []
        self.fps = 25.0
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name=f"ssft-camera-{spec.name}",
                                       daemon=True)
        self.read_seconds = 0.0

    def start(self) -> CameraReader:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def _report(self, kind: str, **info: Any) -> None:
        ev = {"camera": self.spec.name, "event": kind, "time": time.time(), **info}
        self.events.append(ev)
        if len(self.events) > 500:    # a camera flapping for days: keep the first and the latest
            del self.events[250]
        log.warning("camera %s: %s %s", self.spec.name, kind, info or "")
        if self.on_event:
            self.on_event(ev)

    def _fail(self, stage: str, msg: str) -> None:
        self.error = msg
        self.state.set("failed", msg)
        self.errors.add(stage, msg, self.spec.name)

    def _try_open(self) -> Capture:
        """One open attempt in a helper thread (see :class:`PendingOpen`); raises on failure."""
        if self._pending is None:
            self._pending = PendingOpen(self.open_fn, self.spec.name)
        pending = self._pending
        if not pending.wait(self.open_timeout_s, self.stop_event):
            if self.stop_event.is_set():
                pending.abandon()
                self._pending = None
            raise InputError(f"open timed out after {self.open_timeout_s:g} s")
        self._pending = None
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _open(self, first: bool) -> Capture | None:
        """Open the source; live cameras retry with backoff until it opens or we stop."""
        delays = self.backoff.delays()
        while not self.stop_event.is_set():
            try:
                cap = self._try_open()
                self.fps = float(getattr(cap, "fps", 0) or 25.0)
                self.state.set("live")
                if not first:
                    self.stats["reconnects"] += 1
                    self._report("reconnected")
                return cap
            except Exception as exc:  # noqa: BLE001 - any open failure is reported, not raised
                if self.stop_event.is_set():
                    break
                msg = str(exc) if isinstance(exc, InputError) else repr(exc)
                if not self.spec.is_live:
                    self._fail("open", msg)
                    self._report("open-failed", error=msg)
                    return None
                delay = next(delays, None)
                if delay is None:
                    self._fail("open", f"gave up after {self.backoff.tries} reconnect attempts: "
                                       f"{msg}")
                    self._report("gave-up", error=msg)
                    return None
                self.state.set("connecting" if first and not self.stats["frames"]
                               else "reconnecting", msg)
                self._report("retry", error=msg, delay_s=delay)
                self.stop_event.wait(delay)
        return None

    def _run(self) -> None:
        try:
            self._read_all()
        except Exception as exc:  # noqa: BLE001 - a reader never takes the pipeline down
            self._fail("read", repr(exc))
            self._report("failed", error=repr(exc))
        finally:
            if self.state.state == "live":
                self.state.set("stopped" if self.stop_event.is_set() else "ended")
            self.queue.close()

    def _read_all(self) -> None:
        cap, index, bad = self._open(first=True), 0, 0
        while cap is not None and not self.stop_event.is_set():
            if self.max_frames is not None and index >= self.max_frames:
                break
            t = time.perf_counter()
            try:
                raw = cap.read()
            except Exception as exc:  # noqa: BLE001 - a decoder fault is one bad read
                log.debug("camera %s: read raised %r", self.spec.name, exc)
                raw = None
            if raw is None:
                bad += 1
                if bad < self.MAX_BAD_READS:
                    continue
                cap.release()
                if self.loop and not self.spec.is_live and index > 0:
                    cap, bad = self._open(first=True), 0
                    continue
                if not self.spec.is_live:
                    break
                self.stats["disconnects"] += 1
                self.state.set("reconnecting", f"no frame in {bad} reads after {index} frames")
                self._report("disconnected", frames=index)
                cap, bad = self._open(first=False), 0
                continue
            self.stats["corrupt"] += bad    # failed reads followed by a good one: bad frames
            bad = 0
            try:
                image = to_uint8(raw, self.spec.stretch)
            except InputError:
                self.stats["corrupt"] += 1
                continue
            if self.size is None:
                self.size = image.shape[:2]
            elif image.shape[:2] != self.size:
                image = fit_size(image, self.size)
                self.stats["resized"] += 1
            self.read_seconds += time.perf_counter() - t
            ts = time.time() if self.spec.is_live else index / self.fps
            self.queue.put(Frame(self.spec.name, index, ts, image), self.stop_event)
            index += 1
            self.stats["frames"] = index
        if cap is not None:
            cap.release()
