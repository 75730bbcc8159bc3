"""The associator thread of :class:`~ssft_deploy.video.pipeline.VideoPipeline`: ended tracklets
(after stitching, :mod:`~ssft_deploy.video.stitching`) -> settled samples -> gallery or event ->
ranking picture and ``events.jsonl``.

A mixin of the pipeline (it uses the pipeline's queues, associator, output and error record).
Every ended tracklet gets an ``outcome``: ``event``, ``gallery``, ``not in the gallery: ...``,
``association failed: ...`` (that track's fault; the thread goes on) or ``not associated: ...``
(the run stopped on a failed stage). A picture that cannot be written is counted and the event
is still written; an events file that cannot be written stops the run.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import wait as wait_futures

from ssft_deploy.video.tracklets import Tracklet


class AssociationStage:
    """Mixin: the associator thread's methods (see the module docstring)."""

    def _ended_many(self, done: tuple[list[Tracklet], list[Tracklet]]) -> None:
        """The stitcher's verdict: tracklets to associate, and tracklets joined into another
        (recorded, never associated: their samples went with them)."""
        emit, joined = done
        for t in joined:
            self._end(t, queue_it=False)
            self._record(t, f"joined into track {t.joined_into}")
        for t in emit:
            self._end(t)

    def _end(self, t: Tracklet, queue_it: bool = True) -> None:
        self._guessed.pop((t.camera, t.track), None)
        if self.output is not None:
            self.output.labels.pop((t.camera, t.track), None)
        if not queue_it:
            return
        self._in_flight[id(t)] = t
        self._ended.put(t)

    def _settle(self, t: Tracklet, timeout: float = 60.0) -> None:
        futs = [s.future for s in t.samples if s.future is not None]
        if futs:
            wait_futures(futs, timeout)
        book = self.cameras[t.camera_index].book
        for s in t.samples:
            book.settle(s)

    def _associate_guarded(self) -> None:
        """The associator thread's last boundary: a fault outside any one track stops the run,
        and the tracklets still queued are recorded as not associated."""
        try:
            self._associate()
        except Exception as exc:  # noqa: BLE001 - recorded as a failed stage
            self._fatal("associate", exc)
            while True:
                t = self._ended.get()
                if t is None:
                    return
                self._in_flight.pop(id(t), None)
                self._record(t, "not associated: the associator failed")

    def _associate(self) -> None:
        """The associator thread: every ended tracklet gets an outcome, whatever fails."""
        failures, closing = 0, False
        while not closing:
            batch = [self._ended.get()]
            while True:
                try:
                    batch.append(self._ended.get_nowait())
                except queue.Empty:
                    break
            closing = any(t is None for t in batch)
            ready = [t for t in batch if t is not None]
            # gallery tracklets first: a person leaving both cameras at once is then found
            ready.sort(key=lambda t: not self.associator.is_gallery(t))
            for t in ready:
                t0 = time.perf_counter()
                try:
                    if self.errors.fatal:
                        outcome = "not associated: the run stopped on a failed stage"
                    else:
                        outcome = self._associate_one(t)
                        failures = 0
                except Exception as exc:  # noqa: BLE001 - one track fails, not the thread
                    failures += 1
                    self.errors.add("associate", exc, t.camera)
                    outcome = f"association failed: {type(exc).__name__}: {exc}"
                    if failures >= self.cfg.max_associate_errors:
                        self._fatal("associate", f"{failures} tracks in a row failed to "
                                                 f"associate, the last: {exc!r}")
                self._in_flight.pop(id(t), None)
                self._record(t, outcome)
                self.clock.add("associate", time.perf_counter() - t0)

    def _record(self, t: Tracklet, outcome: str) -> None:
        """Keep the ended tracklet's summary, not the tracklet (its thumbnail and samples would
        grow a long run's memory by every track it ever saw)."""
        self.track_records.append((t.camera_index, t.track, {**t.summary(), "outcome": outcome}))

    def _associate_one(self, t: Tracklet) -> str:
        """Settle and associate one tracklet; returns its outcome."""
        self._settle(t)
        event = self.associator.end(t)
        if event is None:
            return "gallery" if t.extracted() else "not in the gallery: no usable crops"
        self._emit(t, event)
        return "event"

    def _fatal(self, stage: str, error: BaseException | str) -> None:
        """A stage that cannot go on: record it and stop the run."""
        self.errors.add(stage, error, fatal=True)
        self.stop()

    def _emit(self, t: Tracklet, event: dict) -> None:
        if self.output is not None:
            try:
                pic = self._picture(t, event)
            except Exception as exc:  # noqa: BLE001 - the event is written without its picture
                self.pictures_failed += 1
                self.errors.add("picture", exc)
                pic = None
            if pic:
                event["picture"] = pic
            try:
                self.output.event(event)
            except Exception as exc:  # noqa: BLE001 - no events file: the run cannot go on
                self._fatal("events", exc)
        self.events.append(event)
        self.n_events += 1
        if self.on_event:
            self.on_event(event)

    def _picture(self, t: Tracklet, event: dict) -> str | None:
        owners = [self.associator.owner(m["identity"]) for m in event["matches"]]
        live = {x.identity: x for x in self._live_tracklets() if x.identity is not None}
        thumbs = [(o or live.get(m["identity"])) for o, m in zip(owners, event["matches"])]
        return self.output.picture(event, t.thumb, [o.thumb if o else None for o in thumbs])
