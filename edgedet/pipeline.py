"""The run loop: capture -> preprocess+inference -> decode -> overlay+sinks, each in its own thread.

::

    source.read() ─Frame─▶ [to_infer] ─▶ prepare + invoke ─▶ [to_decode] ─▶ decode ─▶ [to_output] ─▶ overlay, sinks
     capture thread                       infer thread(s)                 decode thread            output thread

The hand-offs (``edgedet.slot``) keep only the newest item when frames may be dropped (live
sources: a slow stage always works on the freshest frame, and every overwritten item is counted
per slot) and are bounded blocking queues otherwise (files: every frame is processed). When
nothing is dropped, frames are preprocessed ahead in the capture thread (into a small pool of
preallocated input arrays), so the inference thread does nothing but invoke; when frames are
dropped, only the frames that are inferred are preprocessed, in the inference thread.

The pipeline needs from a detector only what the ``Detector`` protocol below says: ``prepare``
(the frame's picture, or its lores copy, into the model input: a ``Prepared`` that maps boxes back
to the frame), ``infer``, ``decode`` (final detections in frame pixels), ``replica`` and a few
attributes. ``edgedet.detector.Detector`` is the one for TFLite models.

Inference workers: when every frame is processed, ``workers`` interpreters each invoke a different
frame, side by side, and the decode thread puts their results back in capture order
(``plan_workers``: by default one single-thread interpreter per interpreter thread). The detector
given is worker 0 when it has the per-worker thread count (``run_from_config`` builds it so), the
others are ``detector.replica(threads)``. Single-thread interpreters on different frames never
wait for one another, where one interpreter with a thread on every core stalls all of them
whenever another stage takes a core. Live sources (dropping) keep one interpreter with every
thread: the lowest latency.

Lifecycle: ``with Pipeline(...) as p: stats = p.run()``. Entering opens the source, then the
sinks; leaving stops the threads and closes the sinks in reverse order, then the source. ``run``
returns at the end of input, after ``max_frames`` results, on ``stop()``, on SIGINT/SIGTERM
(handled when run from the main thread: the first signal stops gracefully -- every frame already
captured is finished, the recording finalized, the events file complete -- a second one forces
the exit with ``KeyboardInterrupt``), or when a sink raises ``StopRequested`` (window closed).
An exception in any stage stops every stage and is re-raised by ``run``.

``run_from_config(cfg)`` checks the configuration, resolves the source, then builds the detector,
the source and the sinks once each, and runs them.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from .config import Config, validate
from .detections import Detections
from .errors import ModelError, SinkError
from .frame import Frame, Result
from .motion import MotionGate, MotionSettings
from .postprocess.nms import iou_matrix
from .preprocess import Prepared
from .regions import merge_regions, region_side
from .sinks.base import Sink, SinkContext
from .sinks.overlay import Overlay
from .sinks.window import StopRequested
from .slot import Closed, make_handoff
from .sources.base import Source
from .stats import STAGES, PipelineStats, format_text, write_json
from .tracking import (
    ByteTracker,
    EventSettings,
    ObjectEvent,
    ObjectEvents,
    TrackerSettings,
    ZoneCounter,
    ZoneUpdate,
)

log = logging.getLogger("edgedet.pipeline")

__all__ = ["Detector", "Pipeline", "StopRequested", "TrackingStage", "build_detector", "build_motion",
           "build_tracking", "detector_limits", "plan_workers", "run_from_config"]


class DetectorInfo(Protocol):
    @property
    def name(self) -> str: ...


class Inferred(Protocol):
    """What ``infer`` returns: the raw outputs (read only by the same detector's ``decode``)."""

    @property
    def invoke_ms(self) -> float: ...


@runtime_checkable
class Detector(Protocol):
    """What the pipeline needs from a detector.

    ``prepare`` fits a picture into the model input (``frame_size``: the frame the picture is a
    smaller copy of, e.g. the Pi camera's lores stream); it may reuse one input array, the
    pipeline copies ``Prepared.tensor`` when it prepares frames ahead. ``infer`` runs the model and
    returns outputs that the next ``infer`` does not change. ``decode`` turns them into the final
    detections in frame pixels. ``prepare`` + ``infer`` run in one thread, ``decode`` in another.
    ``replica(threads)`` is another detector of the same model and settings with its own
    interpreter of ``threads`` threads; ``threads`` is this one's. ``labels`` index class ids.
    """

    @property
    def labels(self) -> list[str]: ...

    @property
    def input_size(self) -> tuple[int, int]: ...

    @property
    def threads(self) -> int: ...

    @property
    def info(self) -> DetectorInfo: ...

    def prepare(self, image: np.ndarray, fmt: str = "BGR",
                frame_size: Optional[tuple[int, int]] = None) -> Prepared: ...

    def infer(self, prepared: Prepared) -> Inferred: ...

    def decode(self, raw: Any, prepared: Prepared) -> Detections: ...

    def replica(self, threads: int) -> Detector: ...


def plan_workers(threads: int, workers: Optional[int], drop: bool) -> tuple[int, int]:
    """``(inference workers, threads per worker)`` for ``threads`` interpreter threads in all.

    Dropping frames (live): one interpreter with every thread. Every frame: ``workers``
    interpreters (default: one per thread) sharing the threads.
    """
    threads = max(1, int(threads))
    if drop:
        return 1, threads
    count = max(1, int(workers if workers is not None else threads))
    return count, threads if count == 1 else max(1, threads // count)


@dataclass
class _Captured:
    """A frame between capture and inference (already prepared when ``prepare_early``)."""

    frame: Frame
    seq: int
    prepared: Optional[Prepared] = None
    preprocess_ms: float = 0.0
    buffer: Optional[np.ndarray] = None  # the pool's array holding the prepared input, until invoked
    skip: bool = False  # the motion gate let it pass without the model
    regions: Optional[np.ndarray] = None  # [K, 4] crops of the frame the model also runs on (edgedet.regions)
    parts: list = dataclasses.field(default_factory=list)  # the regions prepared ahead: (Prepared, buffer)


def _model_input(frame: Frame) -> tuple[np.ndarray, str, Optional[tuple[int, int]]]:
    """``prepare``'s arguments: the lores stream when the source has one (its boxes go back to the
    main picture), else the picture itself."""
    if frame.lores is not None:
        return frame.lores, frame.lores_format, (frame.width, frame.height)
    return frame.image, "BGR", None


@dataclass
class _Work:
    """A frame between inference and decoding."""

    frame: Frame
    seq: int
    prepared: Optional[Prepared]  # None with raw: the model did not run (motion gate)
    raw: Optional[Inferred]
    timings: dict
    regions: Optional[np.ndarray] = None  # the crops of ``parts``, in frame pixels
    parts: Sequence[tuple[Prepared, Inferred]] = ()  # each region's input mapping and raw outputs


class _InputPool:
    """Preallocated copies of the model input for frames prepared ahead of inference: ``take``
    gives a free array (waiting while every array is in flight), ``release`` returns one once the
    interpreter has read it. With several inference workers, frames are invoked out of order, so an
    array is reused only after it was released, never by position in a ring."""

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self._free: list = []
        self._count = 0
        self._key: Optional[tuple] = None
        self._cond = threading.Condition()

    def take(self, like: np.ndarray, stop: threading.Event) -> Optional[np.ndarray]:
        key = (like.shape, like.dtype)
        with self._cond:
            if key != self._key:  # first frame, or the model input changed: start a new set
                self._key, self._free, self._count = key, [], 0
            while not self._free and self._count >= self.size:
                if stop.is_set():
                    return None
                self._cond.wait(0.1)
            if self._free:
                return self._free.pop()
            self._count += 1
            return np.empty_like(like)

    def release(self, buf: Optional[np.ndarray]) -> None:
        if buf is None:
            return
        with self._cond:
            if self._key == (buf.shape, buf.dtype):
                self._free.append(buf)
                self._cond.notify()


class _RateMeter:
    """Recent rate (events/s) over the last ``n`` events, from a preallocated ring of times."""

    def __init__(self, n: int = 30) -> None:
        self._times = np.zeros(n, np.float64)
        self._count = 0

    def tick(self, now: float) -> float:
        n = len(self._times)
        self._times[self._count % n] = now
        self._count += 1
        if self._count < 2:
            return 0.0
        k = min(self._count, n)
        oldest = self._times[self._count % n] if self._count >= n else self._times[0]
        span = now - oldest
        return (k - 1) / span if span > 0 else 0.0


class TrackingStage:
    """Detections -> tracked detections, object events and zone occupancy, one frame at a time.

    Runs in the decode thread (frames in capture order). The tracker sees every detection down to
    its ``low_score``; the result's ``detections`` are those at or above ``threshold`` (what the
    detector reports untracked), with their track ids (-1 until an object is confirmed).
    ``clock(frame)`` gives the time the tracker and the object events use: seconds of video for
    files (frame index / fps, so a file processed faster than real time ends tracks on time),
    the capture's wall-clock time for live sources. Zones with normalized coordinates are placed
    on the first frame, when its size is known.

    ``moving`` counts the objects alive that moved within ``stationary_s`` seconds: the tracker's box
    of an object seen in the frame (steadier than the detector's, and counted as at least
    ``STILL_SIDE`` of the frame wide and high) left the place where it last settled (IoU below
    ``STILL_IOU``); a new object is at rest until it moves. The motion gate keeps the model running
    for them, while a parked car is only looked at every keep-alive interval.
    ``pending_frames`` counts the frames with a detection that could start a track
    (``new_track_score``) not on a confirmed track yet: when it grows, the gate runs the model on a
    few frames in a row, so a new object gets the consecutive detections that confirm it.
    """

    STILL_IOU = 0.8
    STILL_SIDE = 0.1  # of the frame: a box 30 pixels of a 300-pixel model input jitters by 2 at IoU 0.88

    def __init__(self, settings: TrackerSettings, labels: Optional[Sequence[str]] = None, *,
                 threshold: Optional[float] = None, events: EventSettings = EventSettings(),
                 zones: Sequence = (), lines: Sequence = (), anchor: str = "bottom_center",
                 stationary_s: float = 3.0) -> None:
        self.tracker = ByteTracker(settings)
        self.events = ObjectEvents(labels, events)
        self.threshold = settings.high_score if threshold is None else float(threshold)
        self.counter: Optional[ZoneCounter] = None
        self._zones = (tuple(zones), tuple(lines), anchor)
        self.fps = 0.0  # > 0: the media clock (set by the pipeline for files)
        self.alive = 0  # confirmed tracks alive after the last frame
        self.moving = 0  # of them, those that moved within stationary_s (read by the motion gate)
        self.pending_frames = 0  # frames with a detection not on a confirmed track yet (read by the motion gate)
        self.stationary_s = float(stationary_s)
        self._ids = np.zeros(0, np.int64)  # live objects (sorted), where each last settled, and when it moved
        self._rest = np.zeros((0, 4), np.float32)
        self._moved_at = np.zeros(0)
        self.objects = 0  # objects seen so far (``new`` events)
        self.last_t = 0.0
        self.last_zones: Optional[ZoneUpdate] = None

    @property
    def has_zones(self) -> bool:
        return bool(self._zones[0] or self._zones[1])

    def clock(self, frame: Frame) -> float:
        return frame.index / self.fps if self.fps > 0 else float(frame.wall_time)

    def apply(self, result: Result) -> None:
        """Track ``result.detections`` in place: ids, public detections, object events, zones."""
        frame = result.frame
        t = self.clock(frame)
        self.last_t = max(self.last_t, t)
        tracker = self.tracker
        tracked = tracker.update(result.detections, t, frame=frame.image)
        ended = tracker.ended_ids
        seen = tracked.track_ids[tracked.track_ids >= 0]
        filtered = tracker.boxes() if self.has_zones or len(seen) else tracked[:0]  # every live track's box
        where = None
        if self.has_zones:
            if self.counter is None:
                zones, lines, anchor = self._zones
                self.counter = ZoneCounter(zones, lines, (frame.width, frame.height), anchor)
            where = self.counter.update(filtered, ended=ended)
            result.line_counts = self.counter.line_counts()
        result.objects = self.events.update(tracked, t, ended=ended, frame=frame.image, zones=where,
                                            first_seen=tracker.first_seen(tracked.track_ids))
        result.zones = where
        self.last_zones = where
        public = tracked.scores >= np.float32(self.threshold)
        result.detections = tracked if public.all() else tracked[public]
        self.alive = len(tracker)
        # the filtered boxes of the objects seen, at least STILL_SIDE of the frame: detector jitter is no motion
        side = self.STILL_SIDE * max(frame.width, frame.height)
        self.moving = self._movement(filtered[np.isin(filtered.track_ids, seen)], ended, t, side)
        unconfirmed = (tracked.track_ids < 0) & (tracked.scores >= tracker.settings.new_track_score)
        self.pending_frames += int(unconfirmed.any())
        self.objects += sum(e.kind == "new" for e in result.objects)

    def _movement(self, tracked: Detections, ended: np.ndarray, t: float, side: float = 0.0) -> int:
        """Fold this frame's tracked boxes into each object's resting place; objects that moved lately.

        Boxes count as at least ``side`` pixels wide and high (grown about their centre): a box a few
        model pixels in size moves by a large part of itself when the detector's output shifts a pixel.
        """
        keep = ~np.isin(self._ids, ended)
        ids, rest, moved_at = self._ids[keep], self._rest[keep], self._moved_at[keep]
        on = tracked.track_ids >= 0
        seen, boxes = tracked.track_ids[on].astype(np.int64), tracked.xyxy[on]
        if side > 0:
            centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, np.maximum(boxes[:, 2:] - boxes[:, :2], side) / 2
            boxes = np.concatenate([centre - half, centre + half], axis=1)
        pos = np.minimum(np.searchsorted(ids, seen), max(len(ids) - 1, 0))
        known = (ids[pos] == seen) if len(ids) else np.zeros(len(seen), bool)
        rows = pos[known]
        if len(rows):
            moved = iou_matrix(rest[rows], boxes[known]).diagonal() < self.STILL_IOU
            rest[rows[moved]] = boxes[known][moved]
            moved_at[rows[moved]] = t
        if not known.all():
            fresh = ~known
            ids = np.concatenate([ids, seen[fresh]])
            rest = np.concatenate([rest, boxes[fresh]])
            moved_at = np.concatenate([moved_at, np.full(int(fresh.sum()), -np.inf)])  # at rest until it moves
            order = np.argsort(ids, kind="stable")
            ids, rest, moved_at = ids[order], rest[order], moved_at[order]
        self._ids, self._rest, self._moved_at = ids, rest, moved_at
        return int(np.count_nonzero(t - moved_at <= self.stationary_s))

    def finish(self) -> list[ObjectEvent]:
        """``end`` for every object still alive (the stream stopped)."""
        return self.events.finish(self.last_t)

    def stats(self) -> dict:
        out: dict = {"objects": self.objects, "alive": self.alive, "moving": self.moving}
        if self.last_zones is not None and self.last_zones.zone_names:
            out["zones"] = self.last_zones.counts(self.events.labels)
        if self.counter is not None and self.counter.lines:
            out["lines"] = self.counter.line_counts()
        return out


class Pipeline:
    """Runs ``detector`` on every frame of ``source`` (or the newest, with ``drop``) into ``sinks``.

    ``detector``: see the ``Detector`` protocol. ``threads``: interpreter threads in all (default:
    the detector's), shared by ``workers`` interpreters (see ``plan_workers``). ``context``
    (optional) is the ``SinkContext`` the sinks were built with: the pipeline fills in the source's
    name and fps once it is open, and the live stats callables, before the sinks are opened.
    A sink with a ``poll()`` method (the window) is polled from the thread that calls ``run``
    every 10 ms; ``poll()`` returning False ends the run.

    ``tracking`` (a ``TrackingStage``) tracks the detections after decoding; sinks with an
    ``on_objects(events)`` method get the object events of each frame, and at the end of the run
    the ``end`` of every object still alive. ``motion`` (a ``MotionGate``) decides in the capture
    thread whether the model runs on a frame; skipped frames go from the capture thread straight to the
    decode thread (no inference worker wakes for them; when frames may be dropped, only while no
    frame is being inferred), still go through the tracker (with no detections, so tracks end on
    time) and reach the sinks in capture order. With ``motion.settings.regions`` the model also runs
    on squares of the frame around the motion (``edgedet.regions``), merged into one set of boxes.
    ``media_time`` (default: when frames are not dropped) times tracks by the frame index and the
    source's fps instead of the clock.
    """

    def __init__(self, source: Source, detector: Detector, sinks: Sequence[Sink], *, drop: bool,
                 max_frames: Optional[int] = None, stats_interval: float = 0,
                 queue_size: int = 2, context: Optional[SinkContext] = None,
                 stats_stream: Optional[IO[str]] = None, overlay: Optional[Overlay] = None,
                 handle_signals: bool = True, prepare_early: Optional[bool] = None,
                 workers: Optional[int] = None, threads: Optional[int] = None,
                 tracking: Optional[TrackingStage] = None, motion: Optional[MotionGate] = None,
                 media_time: Optional[bool] = None) -> None:
        self.source = source
        self.tracking = tracking
        self.motion = motion
        self.media_time = (not drop) if media_time is None else bool(media_time)
        self._pending_seen = 0
        self.detector = detector
        self.sinks = list(sinks)
        self.drop = bool(drop)
        self.max_frames = max_frames
        self.stats_interval = float(stats_interval or 0)
        self.context = context
        self.stats_stream = stats_stream
        self.overlay = overlay or Overlay()
        self.handle_signals = handle_signals
        # files (no dropping): preprocess in the capture thread so the inference thread only invokes;
        # live (dropping): preprocess only the frames that are actually inferred
        self.prepare_early = (not self.drop) if prepare_early is None else bool(prepare_early)
        self.labels = list(detector.labels or []) or None
        self.to_infer = make_handoff("to_infer", self.drop, queue_size)
        self.to_decode = make_handoff("to_decode", self.drop, queue_size)
        self.to_output = make_handoff("to_output", self.drop, queue_size)
        self.slots = (self.to_infer, self.to_decode, self.to_output)
        self.stats = PipelineStats((*STAGES, "motion", "track"))
        self.stats.attach(self.slots, self._source_stats)
        self.stop_reason: Optional[str] = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._error: Optional[BaseException] = None
        self._error_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._opened_sinks: list[Sink] = []
        self._source_open = False
        self._signals = 0
        self._old_handlers: dict = {}
        self._needs_annotated = any(getattr(s, "needs_annotated", False) for s in self.sinks)
        # no sink reads the picture as captured: draw the overlay onto it instead of onto a copy
        self._draw_in_place = self._needs_annotated and not any(getattr(s, "reads_frame", True) for s in self.sinks)
        self._opencv_threads: Optional[int] = None
        self.threads = max(1, int(threads or detector.threads or 1))
        self.workers, self.threads_per_worker = plan_workers(self.threads, workers, self.drop)
        self._infer_detectors: list[Detector] = []
        self._infer_running = 0
        self._in_inference = 0  # frames sent to the workers and not yet handed on to the decode thread
        self._emitted = 0  # frames the decode thread handed on to the output
        # frames between capture and output: as many as wait for or in the workers, so that the motion gate
        # runs no further ahead of the tracker's news (busy, pending) than when every frame went through them
        self._max_in_flight = getattr(self.to_infer, "maxsize", 1) + self.workers + 1
        self._flight = threading.Condition()
        self._capture_waits = False
        self._infer_lock = threading.Lock()
        # frames prepared ahead: in the queue, in each worker, and the one being prepared
        per_frame = 1 + (motion.settings.regions if motion is not None else 0)  # the frame and its regions
        self._inputs = _InputPool((getattr(self.to_infer, "maxsize", 1) + self.workers + 1) * per_frame)

    # -- lifecycle ------------------------------------------------------------------------------
    def _interpreters(self) -> list[Detector]:
        """The detectors of the inference workers: the given one first when it has the threads of a
        worker (no second copy of the model in memory), replicas for the others."""
        det, per_worker = self.detector, self.threads_per_worker
        if self.workers == 1:
            return [det]
        first = [det] if det.threads == per_worker else []
        return first + [det.replica(per_worker) for _ in range(self.workers - len(first))]

    def __enter__(self) -> Pipeline:
        self._limit_opencv()
        try:
            self._infer_detectors = self._interpreters()
            self.source.open()
            self._source_open = True
            if self.context is not None:
                self.context.source_name = self.source.name
                self.context.source_fps = float(getattr(self.source, "fps", 0.0) or 0.0)
                self.context.stats = self.snapshot
                self.context.source_stats = self._source_stats
                if self.labels and not self.context.labels:
                    self.context.labels = list(self.labels)
            if self.tracking is not None and self.media_time:
                self.tracking.fps = float(getattr(self.source, "fps", 0.0) or 0.0)
            for sink in self.sinks:
                sink.open()
                self._opened_sinks.append(sink)
        except BaseException:
            self._close_all()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
        else:
            self.stop()
        self._join(timeout=10.0 if exc_type is None else 2.0)
        self._close_all()

    def _limit_opencv(self) -> None:
        """OpenCV's own thread pool (resize, colour, drawing) and the video decoder's threads only
        compete with the interpreter when the interpreter already has a thread on every core: run
        them single-threaded then (OpenCV's pool is restored when the pipeline closes)."""
        from .cpu import available_cores, limit_opencv_threads

        if self.threads >= len(available_cores()):
            self._opencv_threads = limit_opencv_threads(1)
            if hasattr(self.source, "decoder_threads") and self.source.decoder_threads is None:
                self.source.decoder_threads = 1

    def _close_all(self) -> None:
        if self._opencv_threads is not None:
            from .cpu import limit_opencv_threads

            limit_opencv_threads(self._opencv_threads)
            self._opencv_threads = None
        errors = []
        for sink in reversed(self._opened_sinks):
            try:
                sink.close()
            except Exception as exc:  # keep closing the others; report the first
                errors.append(exc)
        self._opened_sinks.clear()
        if self._source_open:
            self._source_open = False
            try:
                self.source.close()
            except Exception as exc:
                errors.append(exc)
        if errors and self._error is None and sys.exc_info()[0] is None:
            raise errors[0]

    def stop(self, reason: str = "stopped") -> None:
        """Stop gracefully: no new frames; frames already captured are finished and written."""
        if not self._stop.is_set():
            self.stop_reason = self.stop_reason or reason
            self._stop.set()
            self.source.interrupt()  # a source waiting for its stream (an outage) returns None now

    def _abort(self) -> None:
        """Stop at once: every hand-off drops what it holds and wakes its waiters."""
        self._stop.set()
        self.source.interrupt()
        for slot in self.slots:
            slot.abort()

    def _fail(self, exc: BaseException) -> None:
        with self._error_lock:
            if self._error is None:
                self._error = exc
                self.stop_reason = "error"
        self._abort()

    def _source_stats(self) -> dict:
        try:
            return dict(self.source.stats() or {})
        except Exception:  # noqa: BLE001 - a source's counters must not break the run
            return {}

    # -- running --------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run until the end; returns the final stats snapshot (re-raises a stage's exception)."""
        if self._threads:
            raise RuntimeError("a Pipeline runs once")
        self._install_signals()
        try:
            self.stats.start()
            dets = self._infer_detectors or [self.detector]
            self._infer_running = len(dets)
            stages: list[tuple[str, Callable[..., None], tuple]] = [("capture", self._capture_loop, ())]
            stages += [(f"infer{i}" if len(dets) > 1 else "infer", self._infer_loop, (d,)) for i, d in enumerate(dets)]
            stages += [("decode", self._decode_loop, ()), ("output", self._output_loop, ())]
            for name, target, args in stages:
                thread = threading.Thread(target=self._guard, args=(target, *args), name=f"edgedet-{name}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
            next_report = time.monotonic() + self.stats_interval if self.stats_interval > 0 else None
            pollers = [s.poll for s in self._opened_sinks if callable(getattr(s, "poll", None))]
            while any(t.is_alive() for t in self._threads):
                timeout = 0.01 if pollers else 0.25
                for poll in pollers:  # GUI sinks are driven from the main thread
                    if not poll():
                        self.stop("window closed")
                        self._abort()
                        pollers = []
                        break
                if next_report is not None:
                    timeout = max(0.0, min(timeout, next_report - time.monotonic()))
                alive = next((t for t in self._threads if t.is_alive()), None)
                if alive is not None:
                    alive.join(timeout)
                if next_report is not None and time.monotonic() >= next_report:
                    self._report()
                    next_report += self.stats_interval
            self._join(timeout=5.0)
        finally:
            self.stats.stop()
            self._restore_signals()
        if self._error is not None:
            raise self._error
        if self.stop_reason is None:
            self.stop_reason = "end of input"
        return self.snapshot()

    def snapshot(self) -> dict:
        """The stats snapshot (``edgedet.stats``), with ``tracking`` and ``motion`` when they run."""
        snap = self.stats.snapshot()
        if self.tracking is not None:
            snap["tracking"] = self.tracking.stats()
        if self.motion is not None:
            snap["motion"] = self.motion.stats()
        return snap

    def _report(self) -> None:
        stream = self.stats_stream or sys.stderr
        try:
            stream.write(format_text(self.snapshot()) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def _join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("stage threads still running after stop: %s", ", ".join(alive))

    def _guard(self, target: Callable[..., None], *args) -> None:
        try:
            target(*args)
        except StopRequested:  # the user closed the window: what is in flight is not wanted
            self.stop("stop requested by a sink")
            self._abort()
        except BaseException as exc:  # noqa: BLE001 - handed to run() in the main thread
            self._fail(exc)

    # -- stages ---------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        stats, out, source, det = self.stats, self.to_infer, self.source, self.detector
        limit = self.max_frames if not self.drop else None
        early = self.prepare_early
        clock = time.perf_counter
        try:
            while not self._stop.is_set():
                t0 = clock()
                frame = source.read()
                if frame is None:
                    self.stop_reason = self.stop_reason or "end of input"
                    break
                stats.add("capture", (clock() - t0) * 1000.0)
                stats.captured += 1
                item = _Captured(frame, stats.captured - 1)
                if self.motion is not None:
                    self._gate(item)
                if early and not item.skip:
                    t1 = clock()
                    if not self._prepare_item(det, item):
                        break
                    item.preprocess_ms = (clock() - t1) * 1000.0
                if not self._send(item):
                    break
                if limit is not None and stats.captured >= limit:
                    break
        finally:
            out.close()

    def _send(self, item: _Captured) -> bool:
        """``item`` to the inference workers, or a frame the gate skips straight to the decode thread (it
        wakes no worker): always when every frame is processed (the decode thread puts frames back in
        capture order), when frames may be dropped only while no frame is in the workers' hands
        (nothing it could overtake). False once the run is ending."""
        if not self.drop and not self._room(item.seq):
            return False
        if item.skip and (not self.drop or self._in_inference == 0):
            return self.to_decode.put(_Work(item.frame, item.seq, None, None, {}))
        out = self.to_infer
        with self._infer_lock:
            self._in_inference += 1
        dropped = out.dropped
        if not out.put(item):
            return False
        if out.dropped != dropped:  # the newest-only slot replaced a frame no worker took
            self._left_inference()
        return True

    def _room(self, seq: int) -> bool:
        """Wait while ``max_in_flight`` frames are between capture and the decode thread's output (frames
        sent past a slow inference wait in the decode thread); False when the run was aborted."""
        if seq - self._emitted < self._max_in_flight:
            return True
        with self._flight:
            self._capture_waits = True
            while seq - self._emitted >= self._max_in_flight and not self.to_decode.closed:
                self._flight.wait(0.1)
            self._capture_waits = False
        return not self.to_decode.closed

    def _left_inference(self) -> None:
        with self._infer_lock:
            self._in_inference -= 1

    def _prepare_ahead(self, det: Detector, image: np.ndarray, fmt: str = "BGR",
                       frame_size: Optional[tuple[int, int]] = None) -> Optional[tuple[Prepared, np.ndarray]]:
        """``image`` prepared into an array of the pool (the detector reuses its input array: one copy
        per input until it is invoked); None when stopped while waiting for a free array."""
        prepared = det.prepare(image, fmt, frame_size)
        buf = self._inputs.take(prepared.tensor, self._stop)
        if buf is None:
            return None
        np.copyto(buf, prepared.tensor)
        return dataclasses.replace(prepared, tensor=buf), buf

    def _prepare_item(self, det: Detector, item: _Captured) -> bool:
        """Prepare ``item``'s model input and its regions' ahead of inference; False when stopped."""
        ahead = self._prepare_ahead(det, *_model_input(item.frame))
        if ahead is None:
            return False
        item.prepared, item.buffer = ahead
        for x1, y1, x2, y2 in item.regions if item.regions is not None else ():
            part = self._prepare_ahead(det, item.frame.image[y1:y2, x1:x2])
            if part is None:  # stopped: the regions prepared so far
                item.regions = item.regions[:len(item.parts)]
                return False
            item.parts.append(part)
        return True

    def _gate(self, item: _Captured) -> None:
        """The motion gate's decision for ``item`` (``skip`` the model?) and its regions, timed as the
        ``motion`` stage."""
        assert self.motion is not None
        t0 = time.perf_counter()
        frame, tracking, motion = item.frame, self.tracking, self.motion
        t = tracking.clock(frame) if tracking is not None else frame.timestamp
        busy = pending = False
        if tracking is not None:  # what the decode thread last knew (a few frames behind)
            busy, seen = tracking.moving > 0, tracking.pending_frames
            pending, self._pending_seen = seen != self._pending_seen, seen
        item.skip = not motion.wants(frame.image, t, busy=busy, pending=pending)
        if not item.skip and motion.settings.regions:
            size = (frame.width, frame.height)
            side = region_side(tuple(self.detector.input_size), size)
            item.regions = motion.regions(size, side) if side else None
        self.stats.add("motion", (time.perf_counter() - t0) * 1000.0)

    def _infer_loop(self, det) -> None:
        stats, src, out = self.stats, self.to_infer, self.to_decode
        clock = time.perf_counter
        try:
            while True:
                try:
                    item = src.get()
                except Closed:
                    break
                frame = item.frame
                if item.skip:
                    if not out.put(_Work(frame, item.seq, None, None, {})):
                        break
                    self._left_inference()
                    continue
                t0 = clock()
                if item.prepared is None:
                    prepared = det.prepare(*_model_input(frame))
                    preprocess_ms = (clock() - t0) * 1000.0
                else:
                    prepared, preprocess_ms = item.prepared, item.preprocess_ms
                try:
                    raw = det.infer(prepared)
                finally:
                    self._inputs.release(item.buffer)
                invoke_ms = float(raw.invoke_ms)
                parts: list = []
                if item.regions is not None and len(item.regions):  # the model on each region's crop too
                    parts, region_ms = self._infer_regions(det, item)
                    preprocess_ms += region_ms
                    invoke_ms += sum(float(r.invoke_ms) for _, r in parts)
                timings = {"preprocess": preprocess_ms, "invoke": invoke_ms}
                stats.add("preprocess", timings["preprocess"])
                stats.add("invoke", timings["invoke"])
                if not out.put(_Work(frame, item.seq, prepared, raw, timings, item.regions, parts)):
                    break
                self._left_inference()  # after the put: a skipped frame sent past the workers now comes after it
        finally:
            with self._infer_lock:
                self._infer_running -= 1
                last = self._infer_running <= 0
            if last:
                out.close()

    def _infer_regions(self, det: Detector, item: _Captured) -> tuple[list, float]:
        """``(Prepared, raw outputs)`` of each region of ``item`` (prepared now unless prepared ahead),
        and the milliseconds spent preparing them here."""
        assert item.regions is not None
        parts, prep_ms, ahead = [], 0.0, list(item.parts)
        try:
            for i, (x1, y1, x2, y2) in enumerate(item.regions):
                if i < len(ahead):
                    prepared = ahead[i][0]
                else:
                    t0 = time.perf_counter()
                    prepared = det.prepare(item.frame.image[y1:y2, x1:x2])
                    prep_ms += (time.perf_counter() - t0) * 1000.0
                parts.append((prepared, det.infer(prepared)))
        finally:
            for _, buf in ahead:
                self._inputs.release(buf)
        return parts, prep_ms

    def _decode_loop(self) -> None:
        det, src, out, labels = self.detector, self.to_decode, self.to_output, self.labels
        pending: dict[int, _Work] = {}  # frames that overtook an earlier one (several workers, skipped frames)
        next_seq = 0
        try:
            while True:
                if next_seq in pending:
                    work = pending.pop(next_seq)
                else:
                    try:
                        work = src.get()
                    except Closed:
                        if not pending:
                            break
                        next_seq = min(pending)  # an earlier frame was lost to an abort
                        continue
                    if work.seq != next_seq and (self.workers > 1 or not self.drop):
                        pending[work.seq] = work
                        continue
                next_seq = work.seq + 1
                result = self._decoded(det, work, labels)
                if not out.put(result):
                    break
                self._emitted += 1
                if self._capture_waits:
                    with self._flight:
                        self._flight.notify()
        finally:
            out.close()

    def _decoded(self, det: Detector, work: _Work, labels: Optional[list[str]]) -> Result:
        """The frame's ``Result``: decoded (unless the model was skipped), then tracked."""
        stats, clock = self.stats, time.perf_counter
        if work.raw is None or work.prepared is None:
            result = Result(frame=work.frame, detections=Detections.empty(), timings=work.timings, labels=labels,
                            inferred=False)
        else:
            t0 = clock()
            dets: Detections = det.decode(work.raw, work.prepared)  # in frame pixels
            if work.parts:
                frame = work.frame
                dets = merge_regions(dets, [det.decode(r, p) for p, r in work.parts], work.regions,
                                     (frame.width, frame.height))
            work.timings["decode"] = (clock() - t0) * 1000.0
            stats.add("decode", work.timings["decode"])
            stats.processed += 1
            result = Result(frame=work.frame, detections=dets, timings=work.timings, labels=labels)
        if self.tracking is not None:
            t0 = clock()
            self.tracking.apply(result)
            work.timings["track"] = (clock() - t0) * 1000.0
            stats.add("track", work.timings["track"])
        return result

    def _output_loop(self) -> None:
        stats, src, sinks, overlay = self.stats, self.to_output, self.sinks, self.overlay
        clock = time.perf_counter
        rate = _RateMeter()
        limit = self.max_frames
        object_sinks = [s.on_objects for s in sinks if callable(getattr(s, "on_objects", None))]
        while True:
            try:
                result = src.get()
            except Closed:
                self._finish_objects(object_sinks)
                break
            if limit is not None and stats.output >= limit:
                continue  # in flight when the limit was reached: not part of the run
            result.fps = rate.tick(time.monotonic())
            if self._needs_annotated:
                t0 = clock()
                image = result.frame.image
                in_place = self._draw_in_place and image.flags.writeable
                result.annotated = overlay.draw(image, result.detections, result.labels, fps=result.fps or None,
                                                infer_ms=result.timings.get("invoke"), out=image if in_place else None,
                                                zones=result.zones, line_counts=result.line_counts,
                                                counter=self.tracking.counter if self.tracking is not None else None)
                result.timings["overlay"] = (clock() - t0) * 1000.0
                stats.add("overlay", result.timings["overlay"])
            t0 = clock()
            try:
                for sink in sinks:
                    sink.write(result)
                if result.objects:
                    for on_objects in object_sinks:
                        on_objects(result.objects)
            finally:
                stats.add("sinks", (clock() - t0) * 1000.0)
                stats.output += 1
                stats.frame_age.add((time.monotonic() - result.frame.timestamp) * 1000.0)
            if limit is not None and stats.output >= limit:
                self.stop("max frames")

    def _finish_objects(self, object_sinks: list) -> None:
        """At the end of the run (input ended, stopped, a signal): ``end`` for every object alive."""
        if self.tracking is None or self._error is not None:
            return
        events = self.tracking.finish()
        if events:
            for on_objects in object_sinks:
                on_objects(events)

    # -- signals --------------------------------------------------------------------------------
    def _install_signals(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter
                pass

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError, TypeError):  # pragma: no cover
                pass
        self._old_handlers.clear()

    def _on_signal(self, signum, _frame) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("%s: stopping (finishing frames in flight; again to force)", name)
            self.stop(name)
            return
        self.stop_reason = f"forced by {name}"
        self._abort()
        raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# building a run from the configuration

def detector_limits(cfg: Config) -> tuple[float, Optional[int]]:
    """``(score threshold, max detections)`` the detector runs at: the user's, or when tracking, down
    to ``tracking.low_score`` (weaker boxes keep tracks alive; the results still report only boxes at
    ``model.score_threshold``) with room for ``tracking.max_detections`` boxes (unless the user set
    ``model.max_detections`` or decodes with the model's own op, whose count is fixed)."""
    mc, tc = cfg.model, cfg.tracking
    if not tc.enabled:
        return mc.score_threshold, mc.max_detections
    limit = mc.max_detections
    if limit is None and mc.decoder != "op":
        limit = tc.max_detections
    return min(mc.score_threshold, tc.low_score), limit


def build_tracking(cfg: Config, labels: Optional[Sequence[str]] = None) -> Optional[TrackingStage]:
    """The ``TrackingStage`` of ``cfg.tracking`` and ``cfg.zones`` (None with tracking off)."""
    from .config import check_zones

    tc = cfg.tracking
    if not tc.enabled:
        return None
    high = cfg.model.score_threshold
    settings = TrackerSettings(high_score=high, low_score=min(tc.low_score, high),
                               new_track_score=max(high, min(1.0, high + 0.1)), min_hits=tc.min_hits,
                               confirm_s=tc.confirm_s, confirm_gap_s=tc.confirm_gap_s,
                               max_unseen_s=tc.max_unseen_s)
    events = EventSettings(snapshot=tc.snapshot, update_interval_s=tc.update_interval_s)
    return TrackingStage(settings, labels, events=events, zones=check_zones(cfg.zones.polygons, "zones.polygons"),
                         lines=check_zones(cfg.zones.lines, "zones.lines"), anchor=cfg.zones.anchor)


def build_motion(cfg: Config) -> Optional[MotionGate]:
    mc = cfg.motion
    if not mc.enabled:
        return None
    return MotionGate(MotionSettings(threshold=mc.threshold, keepalive_s=mc.keepalive_s, pixel_delta=mc.pixel_delta,
                                     burst=cfg.tracking.min_hits + 1, burst_s=2 * cfg.tracking.confirm_s,
                                     regions=mc.regions))


def build_detector(cfg: Config, threads: Optional[int] = None) -> Detector:
    """The TFLite ``Detector`` for ``cfg.model`` (registry name or file path) with ``threads``
    interpreter threads (default: ``model.threads``, else the big cores), at ``detector_limits``."""
    from . import detector as tflite_detector
    from .registry import resolve_model

    mc = cfg.model
    path = resolve_model(mc.path)
    if not Path(path).is_file():
        raise ModelError(f"model file not found: {path}")
    score, limit = detector_limits(cfg)
    return tflite_detector.Detector.from_path(
        path, threads=threads or mc.threads, labels=mc.labels, score_threshold=score,
        iou_threshold=mc.iou_threshold, max_detections=limit,
        class_agnostic=mc.class_agnostic, decoder=mc.decoder, resize=mc.resize, classes=mc.classes,
    )


def _check_stats_json(path: Optional[str]) -> None:
    if path and not Path(path).resolve().parent.is_dir():
        raise SinkError(f"cannot write stats to {path}: directory {Path(path).parent} does not exist")


def run_from_config(cfg: Config, *, stats_stream: Optional[IO[str]] = None) -> dict:
    """Build detector, source and sinks from ``cfg``, run to the end; returns the final stats.

    In this order, so that what the user got wrong is reported before the slow work: every check
    of the configuration, the source resolved (a missing file, a bad --camera), then the model
    (resolved, maybe downloaded, loaded once: the other inference workers are replicas of it), the
    source built, the sinks. Prints the stats block on ``stats_stream`` (stderr) at exit (and every
    ``output.stats`` seconds) and writes ``output.stats_json`` when set.
    """
    from .cpu import default_inference_threads
    from .sinks import build_sinks
    from .sources import resolve_source

    validate(cfg)
    resolved = resolve_source(cfg)
    _check_stats_json(cfg.output.stats_json)
    drop = cfg.source.drop if cfg.source.drop is not None else resolved.live
    threads = int(cfg.model.threads or default_inference_threads())
    workers, per_worker = plan_workers(threads, cfg.model.workers, drop)
    detector = build_detector(cfg, threads=per_worker)
    source = resolved.build(cfg, lores_size=tuple(detector.input_size))
    model_name = detector.info.name or Path(str(cfg.model.path)).stem
    ctx = SinkContext(labels=list(detector.labels or []), source_name=source.name, model_name=str(model_name),
                      device=cfg.mqtt.device, live=resolved.live)
    stream = stats_stream or sys.stderr
    tracking = build_tracking(cfg, detector.labels)
    pipeline = Pipeline(source, detector, build_sinks(cfg, ctx), drop=drop, max_frames=cfg.source.max_frames,
                        stats_interval=cfg.output.stats, context=ctx, stats_stream=stream, workers=workers,
                        threads=threads, tracking=tracking, motion=build_motion(cfg), media_time=not resolved.live)
    with pipeline:
        log.info("running %s on %s (%s; %d inference worker(s) x %d thread(s))", model_name, source.name,
                 "newest frame only" if drop else "every frame", pipeline.workers, pipeline.threads_per_worker)
        snap = pipeline.run()
    snap["stop_reason"] = pipeline.stop_reason
    _final_report(snap, stream, pipeline.stop_reason, cfg.output.stats_json)
    return snap


def _final_report(snap: dict, stream: IO[str], reason: Optional[str], stats_json: Optional[str]) -> None:
    try:
        stream.write(format_text(snap, title=f"stats ({reason})") + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass
    if stats_json:
        try:
            write_json(snap, stats_json)
        except OSError as exc:
            raise SinkError(f"cannot write stats to {stats_json}: {exc.strerror or exc}") from exc
