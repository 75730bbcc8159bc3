"""Cameras -> detector -> tracker -> tracklets -> ReID (one FrameBatcher) -> association -> events.

An ended tracklet waits ``stitch.window`` processed frames in its camera's ``Stitcher``, where
one person split into two tracks is joined before association (issue 22).

Threads: a reader per camera (:class:`~ssft_deploy.video.sources.CameraReader`), a worker per
camera (detect, track, sample crops, annotate), the batcher's workers (one extractor call per
batch of crops from all cameras), and one associator thread that settles ended tracklets and
writes events. :meth:`VideoPipeline.stop` (or Ctrl-C in :meth:`run`) stops the readers; every
tracklet still open then ends, is associated, and everything is flushed.

Every thread catches at its boundary (issue 19): a frame whose detection / tracking fails is
skipped and counted, a camera fails alone after ``max_frame_errors`` such frames in a row, a track
whose association fails ends with that reason, a ranking picture that cannot be written is
counted (the event is still written), and a stage that cannot go on (the events file cannot be
written, ``max_associate_errors`` tracks in a row failed) stops the run. All of it lands in the
summary's ``errors``; every ended track has an ``outcome``; ``exit_code`` says how the run went
(:mod:`ssft_deploy.video.health`).

``reid="direct"``: one ``extract_boxes`` call per crop instead of the batcher (the benchmark's
baseline). ``stage_seconds``: thread-seconds per stage, overlapping in wall time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ssft_deploy.batcher import CropFeatures, FrameBatcher
from ssft_deploy.errors import InputError
from ssft_deploy.frames import to_bgr
from ssft_deploy.video.associate_stage import AssociationStage
from ssft_deploy.video.association import DEFAULT_MAX_AGE_S, DEFAULT_MAX_SIZE, Associator
from ssft_deploy.video.detectors import Detector, make_detector
from ssft_deploy.video.health import RunErrors, exit_code
from ssft_deploy.video.outputs import RunOutput, check_paths
from ssft_deploy.video.sources import Backoff, CameraReader, CameraSpec, Capture, FrameQueue
from ssft_deploy.video.stitching import StitchConfig, Stitcher
from ssft_deploy.video.tracker import ByteTracker
from ssft_deploy.video.tracklets import Ledger, SamplingConfig, Tracklet, TrackletBook

STAGES = ("read", "detect", "track", "reid", "associate", "annotate")


class StageClock:
    """Thread-seconds spent per stage (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: Counter = Counter()

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.seconds[stage] += seconds

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            return {s: round(self.seconds.get(s, 0.0), 4) for s in STAGES}


@dataclass
class PipelineConfig:
    """Knobs of a run (CLI flags map onto these)."""

    every: int = 5
    detect_every: int = 1             # detect every N-th frame (not motion: its background
    #                                   model needs them all); the tracker predicts between
    gallery_modality: str = "rgb"
    mode: str = "rolling"
    top: int = 5
    max_distance: float = 1.0
    include_live: bool = True
    lost_frames: int = 30
    reid: str = "batcher"
    max_batch: int = 32
    max_wait_ms: float = 10.0
    batcher_queue: int = 1024
    frame_queue: int = 8
    max_frames: int | None = None
    loop: bool = False
    provisional_every: int = 4        # samples between provisional identity labels (0: off)
    open_timeout_s: float = 10.0      # a camera open (or reopen) is given up after this
    read_timeout_s: float = 10.0      # a stream read that gets nothing for this long fails
    max_frame_errors: int = 25        # failed frames in a row after which a camera fails
    max_associate_errors: int = 10    # failed tracks in a row after which the run stops
    keep_events: int = 1000           # latest events kept in memory (all are in events.jsonl)
    gallery_max_size: int = DEFAULT_MAX_SIZE        # entries; the least recently updated go
    gallery_max_age_s: float = DEFAULT_MAX_AGE_S    # seconds without an update, then it goes
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stitch: StitchConfig = field(default_factory=StitchConfig)   # window=0: no stitching
    backoff: Backoff = field(default_factory=Backoff)


class _Camera:
    def __init__(self, spec: CameraSpec, index: int, reader: CameraReader, detector: Detector,
                 book: TrackletBook, tracker: ByteTracker) -> None:
        self.spec, self.index, self.reader, self.detector = spec, index, reader, detector
        self.book, self.tracker = book, tracker
        self.stitcher: Stitcher | None = None
        self.processed = 0
        self.frame_errors = 0
        self.writing = True            # False once this camera's video / MOT writer failed
        self.error: str | None = None
        self.thread: threading.Thread | None = None


def _done(result: object = None, error: BaseException | None = None) -> Future:
    fut: Future = Future()
    fut.set_running_or_notify_cancel()
    fut.set_exception(error) if error is not None else fut.set_result(result)
    return fut


class VideoPipeline(AssociationStage):
    """Run cameras through detection, tracking and cross-modality ReID with one runtime."""

    def __init__(self, runtime, cameras: list[CameraSpec], detector: str | dict = "motion",
                 out: str | None = None, config: PipelineConfig | None = None,
                 open_fns: dict[str, Callable[[], Capture]] | None = None,
                 annotate: bool = True, pictures: bool = True, progress: bool = False,
                 on_event: Callable[[dict], None] | None = None, overwrite: bool = False
                 ) -> None:
        names = [c.name for c in cameras]
        if not cameras or len(set(names)) != len(names):
            raise InputError(f"need one or more cameras with distinct names, got {names}")
        self.rt, self.cfg = runtime, config or PipelineConfig()
        if self.cfg.reid not in ("batcher", "direct"):
            raise InputError(f"reid must be 'batcher' or 'direct', got {self.cfg.reid!r}")
        self.clock, self.ledger, self.errors = StageClock(), Ledger(), RunErrors()
        self.pictures_failed = 0
        # inputs that can be checked are checked before anything is written
        detectors = detector if isinstance(detector, dict) else make_detector(detector, names)
        if out:
            check_paths(out, names, annotate)
        self.output = RunOutput(out, annotate, pictures, overwrite) if out else None
        self.on_event, self.progress = on_event, progress
        self.events: deque[dict] = deque(maxlen=self.cfg.keep_events)   # the latest events
        self.n_events = 0
        self.track_records: list[tuple[int, int, dict]] = []   # ended tracks' summaries
        self.stop_event = threading.Event()
        self._interrupt_requested = False  # set by interrupt() (a signal handler)
        self._ended: queue.Queue = queue.Queue()
        self._guessed: dict[tuple[str, int], int] = {}
        self._in_flight: dict[int, Tracklet] = {}   # ended, not yet associated
        self.batcher = None
        if self.cfg.reid == "batcher":
            self.batcher = FrameBatcher(self._timed_extract, runtime.preprocess_fn,
                                        max_batch=self.cfg.max_batch,
                                        max_wait_ms=self.cfg.max_wait_ms,
                                        max_queue=self.cfg.batcher_queue, full_policy="block",
                                        block_timeout_s=5.0)
        self.cameras: list[_Camera] = []
        self.associator = Associator(runtime, self.cfg.gallery_modality, self.cfg.mode,
                                     self.cfg.top, self.cfg.max_distance, self.cfg.include_live,
                                     self._live_tracklets, self.cfg.gallery_max_size,
                                     self.cfg.gallery_max_age_s)
        for i, spec in enumerate(cameras):
            reader = CameraReader(spec, FrameQueue(self.cfg.frame_queue,
                                                   "drop" if spec.is_live else "block"),
                                  (open_fns or {}).get(spec.name), self.cfg.backoff,
                                  self.cfg.max_frames, self.cfg.loop,
                                  open_timeout_s=self.cfg.open_timeout_s,
                                  read_timeout_s=self.cfg.read_timeout_s, errors=self.errors)
            gallery = self.associator.is_gallery(Tracklet(spec.name, i, spec.modality, 0, 0, 0))
            book = TrackletBook(spec.name, i, spec.modality, self._submit, self.ledger,
                                self.cfg.sampling, self.cfg.every, self.cfg.lost_frames,
                                self.associator.new_identity if gallery else None)
            cam = _Camera(spec, i, reader, detectors[spec.name], book,
                          ByteTracker(lost_frames=self.cfg.lost_frames,
                                      detect_every=self._stride(detectors[spec.name])))
            cam.stitcher = Stitcher(self.cfg.stitch, self.associator.forget,
                                    lambda e, n=spec.name: self.errors.add("stitch", e, n),
                                    book.settle)
            self.cameras.append(cam)

    def _stride(self, detector: Detector) -> int:
        """``detect_every``, or 1 for a detector that must see every frame (``every_frame``)."""
        return 1 if getattr(detector, "every_frame", False) else self.cfg.detect_every

    # -- ReID ---------------------------------------------------------------------------------
    def _timed_extract(self, x: np.ndarray, modality: str):
        t = time.perf_counter()
        try:
            return self.rt.extract_array(x, modality)
        finally:
            self.clock.add("reid", time.perf_counter() - t)

    def _submit(self, frame8: np.ndarray, boxes: list, camera: str, modality: str,
                tags: list) -> list[Future]:
        t = time.perf_counter()
        try:
            if self.batcher is not None:
                return self.batcher.submit_boxes(frame8, boxes, camera, modality, tags)
            out = []
            for box, tag in zip(boxes, tags):   # the baseline: one engine call per crop
                ex = self.rt.extract_boxes_batch(frame8, [box], modality)
                if ex.errors:
                    out.append(_done(error=ex.errors[0]))
                    continue
                f = ex.features
                out.append(_done(CropFeatures(f.shared[0], f.specific[0], int(f.modality[0]),
                                              camera, tag, 0.0)))
            return out
        finally:
            self.clock.add("reid", time.perf_counter() - t)

    # -- camera workers -----------------------------------------------------------------------
    def _live_tracklets(self) -> list[Tracklet]:
        """Tracklets not yet associated: still in view, or ended and queued."""
        return ([t for cam in self.cameras for t in list(cam.book.live.values())]
                + [t for cam in self.cameras for t, _ in list(cam.stitcher.held)]
                + list(self._in_flight.values()))

    def _work(self, cam: _Camera, bar) -> None:
        failures = 0        # frames in a row that failed
        try:
            while True:
                fr = cam.reader.queue.get(timeout=0.2)
                if fr is None:
                    if cam.reader.queue.closed and not cam.reader.queue.items:
                        break
                    if self.stop_event.is_set():
                        break
                    continue
                stage = ["detect"]
                try:
                    self._frame(cam, fr, stage)
                    failures = 0
                except Exception as exc:  # one bad frame is skipped and counted
                    failures += 1
                    cam.frame_errors += 1
                    self.errors.add(stage[0], exc, cam.spec.name)
                    if failures >= self.cfg.max_frame_errors:
                        raise
                    continue
                cam.processed += 1
                if bar is not None:
                    bar.update(1)
                if self.stop_event.is_set():
                    break
        except Exception as exc:  # noqa: BLE001 - one camera's fault must not stop the others
            cam.error = f"stopped after {failures} failed frames in a row: {exc!r}"
            cam.reader.state.set("failed", cam.error)
            self.errors.add("camera", cam.error, cam.spec.name)
        finally:
            cam.reader.stop()
            self._ended_many(cam.stitcher.flush(cam.book.end_all()))

    def _frame(self, cam: _Camera, fr, stage: list[str]) -> None:
        """Detect, track, sample and write one frame; ``stage[0]`` names the step running."""
        clock, out = self.clock, self.output
        t0 = time.perf_counter()
        bgr = to_bgr(fr.image)
        detect = cam.processed % cam.tracker.detect_every == 0
        det = cam.detector(bgr, fr.index) if detect else None
        t1 = time.perf_counter()
        stage[0] = "track"
        xyxy, scores, ids = cam.tracker.update(det, bgr) if detect else cam.tracker.predict(bgr)
        t2 = time.perf_counter()
        clock.add("detect", t1 - t0)
        clock.add("track", t2 - t1)
        stage[0] = "tracklets"
        cam.book.observe(fr.index, fr.time_s, fr.image, xyxy, scores, ids)
        self._ended_many(cam.stitcher.step(cam.book.expire(), list(cam.book.live.values()),
                                           cam.book.steps))
        t3 = time.perf_counter()
        if out is not None and cam.writing:
            stage[0] = "annotate"
            self._label(cam, ids)
            try:
                out.boxes(cam.spec.name, fr.index, xyxy, scores, ids)
                out.frame(cam.spec.name, cam.spec.modality, bgr, xyxy, ids, cam.reader.fps)
            except Exception as exc:  # noqa: BLE001 - the writer stops, the camera goes on
                cam.writing = False
                self.errors.add("write", exc, cam.spec.name)
        clock.add("annotate", time.perf_counter() - t3)

    def _label(self, cam: _Camera, ids: np.ndarray) -> None:
        """Identity labels for the annotated video: gallery tracks show theirs; query tracks a
        provisional best match (shared features, no transfer) every few samples."""
        labels = self.output.labels
        for tid in ids.tolist():
            t = cam.book.live.get(tid)
            if t is None:
                continue
            if t.identity is not None:
                labels[(cam.spec.name, tid)] = f"id {t.identity}"
                continue
            n = len(t.extracted())
            every = self.cfg.provisional_every
            if every and n and n % every == 1 and self._guessed.get((cam.spec.name, tid)) != n:
                self._guessed[(cam.spec.name, tid)] = n
                guess = self.associator.provisional(t)
                if guess is not None:
                    labels[(cam.spec.name, tid)] = f"-> id {guess}?"

    # -- running ------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Ask :meth:`run` to stop as interrupted; safe in a signal handler (it only sets a flag
        that the run loop reads, so the handler never waits on a lock the interrupted code holds)."""
        self._interrupt_requested = True

    def stop(self) -> None:
        """Stop reading; open tracklets end and are associated; outputs are flushed."""
        self.stop_event.set()
        for cam in self.cameras:
            cam.reader.stop()

    def run(self, duration_s: float | None = None) -> dict:
        """Run until every camera ends (files), ``duration_s`` passes, :meth:`stop` or Ctrl-C;
        returns the summary also written to ``tracks.json``."""
        from tqdm import tqdm

        t_start = time.perf_counter()
        assoc = threading.Thread(target=self._associate_guarded, name="ssft-associate",
                                 daemon=True)
        assoc.start()
        bars = []
        for cam in self.cameras:
            bar = (tqdm(desc=f"{cam.spec.name} ({cam.spec.modality})", unit="frame",
                        position=cam.index, total=self.cfg.max_frames, leave=True)
                   if self.progress else None)
            bars.append(bar)
            cam.reader.start()
            cam.thread = threading.Thread(target=self._work, args=(cam, bar),
                                          name=f"ssft-worker-{cam.spec.name}", daemon=True)
            cam.thread.start()
        interrupted = False
        try:
            while any(c.thread.is_alive() for c in self.cameras):
                if not assoc.is_alive():       # its boundary recorded why; nothing to wait for
                    self.stop()
                if self._interrupt_requested and not interrupted:
                    interrupted = True
                    self.stop()
                if duration_s is not None and time.perf_counter() - t_start >= duration_s:
                    self.stop()
                for c in self.cameras:
                    c.thread.join(0.05)
        except KeyboardInterrupt:
            interrupted = True
            self.stop()
            for c in self.cameras:
                c.thread.join()
        self._ended.put(None)
        assoc.join()
        if self.batcher is not None:
            self.batcher.close(drain=True)
        for bar in bars:
            if bar is not None:
                bar.close()
        for cam in self.cameras:
            cam.reader.thread.join(5)
        for cam in self.cameras:
            self.clock.add("read", cam.reader.read_seconds)
            st = cam.reader.state
            # stopped while reconnecting after a normal end of a looped file is no outage
            outage = time.time() - st.since > self.cfg.open_timeout_s + self.cfg.backoff.maximum
            if st.state in ("connecting", "reconnecting") and (outage or not cam.processed):
                self.errors.add("connection", f"not connected when the run ended ({st.state} "
                                              f"for {time.time() - st.since:.0f} s): {st.reason}",
                                cam.spec.name)
        summary = self.summary(time.perf_counter() - t_start, interrupted)
        if self.output is not None:
            for stage, write in (("tracks", lambda: self.output.tracks(summary)),
                                 ("close", self.output.close)):
                try:
                    write()
                except Exception as exc:  # noqa: BLE001 - reported in the returned summary
                    self.errors.add(stage, exc, fatal=True)
                    summary["errors"] = self.errors.snapshot()
                    summary["exit_code"] = exit_code(summary)
        return summary

    def summary(self, wall_s: float, interrupted: bool = False) -> dict:
        cams = {}
        for c in self.cameras:
            r = c.reader
            cams[c.spec.name] = {"modality": c.spec.modality, "source": c.spec.source,
                                 "processed": c.processed, **r.stats, "dropped": r.dropped,
                                 "invalid_boxes": c.tracker.invalid, "error": c.error or r.error,
                                 "frame_errors": c.frame_errors, **r.state.as_dict(),
                                 "connection": r.events}
        ended = sorted(self.track_records, key=lambda r: r[:2])
        out = {"wall_s": round(wall_s, 3), "interrupted": interrupted,
               "frames": sum(c.processed for c in self.cameras), "cameras": cams,
               "crops": self.ledger.snapshot(), "stage_seconds": self.clock.snapshot(),
               "events": self.n_events, "pictures_failed": self.pictures_failed,
               "batcher": self.batcher.stats() if self.batcher is not None else None,
               "errors": self.errors.snapshot(),
               "tracks": [r[2] for r in ended]}
        out["exit_code"] = exit_code(out)
        return out
