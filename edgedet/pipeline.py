"""The run loop: capture -> preprocess+inference -> decode -> overlay+sinks, each in its own thread.

::

    source.read() ─Frame─▶ [to_infer] ─▶ prepare + invoke ─▶ [to_decode] ─▶ decode ─▶ [to_output] ─▶ overlay, sinks
     capture thread                       infer thread                    decode thread            output thread

The hand-offs (``edgedet.slot``) keep only the newest item when frames may be dropped (live
sources: a slow stage always works on the freshest frame, and every overwritten item is counted
per slot) and are bounded blocking queues otherwise (files: every frame is processed). When
nothing is dropped, frames are preprocessed ahead in the capture thread (into a small ring of
preallocated input arrays), so the inference thread does nothing but invoke; when frames are
dropped, only the frames that are inferred are preprocessed, in the inference thread.

Inference workers: when every frame is processed, ``workers`` interpreters (replicas of the
detector, ``Detector.replica``; by default one single-thread interpreter per interpreter thread)
each invoke a different frame, side by side, and the decode thread puts their results back in
capture order. Single-thread interpreters on different frames never wait for one another, where
one interpreter with a thread on every core stalls all of them whenever another stage takes a
core. Live sources (dropping) keep one interpreter with every thread: the lowest latency.

Lifecycle: ``with Pipeline(...) as p: stats = p.run()``. Entering opens the source, then the
sinks; leaving stops the threads and closes the sinks in reverse order, then the source. ``run``
returns at the end of input, after ``max_frames`` results, on ``stop()``, on SIGINT/SIGTERM
(handled when run from the main thread: the first signal stops gracefully -- every frame already
captured is finished, the recording finalized, the events file complete -- a second one forces
the exit with ``KeyboardInterrupt``), or when a sink raises ``StopRequested`` (window closed).
An exception in any stage stops every stage and is re-raised by ``run``.

``run_from_config(cfg)`` builds the detector, source and sinks from a ``Config`` and runs them.
"""

from __future__ import annotations

import copy
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Optional, Sequence

import numpy as np

from .config import Config
from .detections import Detections
from .errors import ModelError, SinkError
from .frame import Frame, Result
from .sinks.base import Sink, SinkContext
from .sinks.overlay import Overlay
from .sinks.window import StopRequested
from .slot import Closed, make_handoff
from .sources.base import Source
from .stats import PipelineStats, format_text, write_json

log = logging.getLogger("edgedet.pipeline")

__all__ = ["Pipeline", "run_from_config", "StopRequested"]


@dataclass
class _Captured:
    """A frame between capture and inference (already prepared when ``prepare_early``)."""

    frame: Frame
    seq: int
    prepared: Any = None
    preprocess_ms: float = 0.0
    buffer: Optional[np.ndarray] = None  # the pool's array holding the prepared input, until invoked


def _model_image(frame: Frame) -> tuple:
    """What the detector runs on: the lores stream when the source has one."""
    if frame.lores is not None:
        return frame.lores, frame.lores_format
    return frame.image, "BGR"


@dataclass
class _Work:
    """A frame between inference and decoding."""

    frame: Frame
    seq: int
    prepared: Any
    raw: Any
    timings: dict


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


class Pipeline:
    """Runs ``detector`` on every frame of ``source`` (or the newest, with ``drop``) into ``sinks``.

    ``detector`` needs ``prepare(image, fmt)``, ``infer(prepared)`` (raw outputs, optionally with
    ``invoke_ms``), ``decode(raw, prepared) -> Detections`` and ``labels``. ``context`` (optional)
    is the ``SinkContext`` the sinks were built with: the pipeline fills in the source's name and
    fps once it is open, and the live stats callables, before the sinks are opened.
    A sink with a ``poll()`` method (the window) is polled from the thread that calls ``run``
    every 10 ms; ``poll()`` returning False ends the run.
    """

    def __init__(self, source: Source, detector, sinks: Sequence[Sink], *, drop: bool,
                 max_frames: Optional[int] = None, stats_interval: float = 0,
                 queue_size: int = 2, context: Optional[SinkContext] = None,
                 stats_stream: Optional[IO[str]] = None, overlay: Optional[Overlay] = None,
                 handle_signals: bool = True, prepare_early: Optional[bool] = None,
                 workers: Optional[int] = None) -> None:
        self.source = source
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
        self.labels = list(getattr(detector, "labels", None) or []) or None
        self.to_infer = make_handoff("to_infer", self.drop, queue_size)
        self.to_decode = make_handoff("to_decode", self.drop, queue_size)
        self.to_output = make_handoff("to_output", self.drop, queue_size)
        self.slots = (self.to_infer, self.to_decode, self.to_output)
        self.stats = PipelineStats()
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
        self._detector_threads: Optional[int] = getattr(getattr(detector, "info", None), "threads", None)
        self._interp_threads = max(1, int(self._detector_threads or 1))
        self.workers = self._worker_count(workers)
        self.threads_per_worker = (self._interp_threads if self.workers == 1
                                   else max(1, self._interp_threads // self.workers))
        self._infer_detectors: list = []
        self._infer_running = 0
        self._infer_lock = threading.Lock()
        # frames prepared ahead: in the queue, in each worker, and the one being prepared
        self._inputs = _InputPool(getattr(self.to_infer, "maxsize", 1) + self.workers + 1)

    # -- lifecycle ------------------------------------------------------------------------------
    def _worker_count(self, workers: Optional[int]) -> int:
        """Inference workers: several only when every frame is processed (frames finish out of
        order and are put back in order) and the detector can be replicated."""
        if self.drop or not callable(getattr(self.detector, "replica", None)):
            return 1
        if workers is None:
            workers = self._interp_threads
        return max(1, int(workers))

    def __enter__(self) -> Pipeline:
        self._limit_opencv()
        try:
            if self.workers > 1:
                self._infer_detectors = [self.detector.replica(self.threads_per_worker) for _ in range(self.workers)]
            else:
                self._infer_detectors = [self.detector]
            self.source.open()
            self._source_open = True
            if self.context is not None:
                self.context.source_name = self.source.name
                self.context.source_fps = float(getattr(self.source, "fps", 0.0) or 0.0)
                self.context.stats = self.stats.snapshot
                self.context.source_stats = self._source_stats
                if self.labels and not self.context.labels:
                    self.context.labels = list(self.labels)
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
        threads = self._detector_threads
        if not threads:
            return
        from .cpu import available_cores, limit_opencv_threads

        if int(threads) >= len(available_cores()):
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

    def _abort(self) -> None:
        """Stop at once: every hand-off drops what it holds and wakes its waiters."""
        self._stop.set()
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
        return self.stats.snapshot()

    def _report(self) -> None:
        stream = self.stats_stream or sys.stderr
        try:
            stream.write(format_text(self.stats.snapshot()) + "\n")
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
                if early:
                    t1 = clock()
                    prepared = det.prepare(*_model_image(frame))
                    tensor = getattr(prepared, "tensor", None)
                    if tensor is not None:  # the detector reuses its input array: keep a copy per frame
                        buf = self._inputs.take(tensor, self._stop)
                        if buf is None:
                            break
                        np.copyto(buf, tensor)
                        item.buffer = buf
                        prepared = copy.copy(prepared)
                        prepared.tensor = buf
                    item.prepared = prepared
                    item.preprocess_ms = (clock() - t1) * 1000.0
                if not out.put(item):
                    break
                if limit is not None and stats.captured >= limit:
                    break
        finally:
            out.close()

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
                t0 = clock()
                if item.prepared is None:
                    prepared = det.prepare(*_model_image(frame))
                    preprocess_ms = (clock() - t0) * 1000.0
                else:
                    prepared, preprocess_ms = item.prepared, item.preprocess_ms
                t1 = clock()
                try:
                    raw = det.infer(prepared)
                finally:
                    self._inputs.release(item.buffer)
                t2 = clock()
                invoke_ms = getattr(raw, "invoke_ms", None)
                timings = {
                    "preprocess": preprocess_ms,
                    "invoke": float(invoke_ms) if invoke_ms is not None else (t2 - t1) * 1000.0,
                }
                stats.add("preprocess", timings["preprocess"])
                stats.add("invoke", timings["invoke"])
                if not out.put(_Work(frame, item.seq, prepared, raw, timings)):
                    break
        finally:
            with self._infer_lock:
                self._infer_running -= 1
                last = self._infer_running <= 0
            if last:
                out.close()

    def _decode_loop(self) -> None:
        det, stats, src, out, labels = self.detector, self.stats, self.to_decode, self.to_output, self.labels
        clock = time.perf_counter
        pending: dict[int, _Work] = {}  # several workers: results that overtook an earlier frame
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
                    if work.seq != next_seq and self.workers > 1:
                        pending[work.seq] = work
                        continue
                next_seq = work.seq + 1
                t0 = clock()
                dets: Detections = det.decode(work.raw, work.prepared)
                frame = work.frame
                if frame.lores is not None:
                    dets = _lores_to_main(dets, frame)
                work.timings["decode"] = (clock() - t0) * 1000.0
                stats.add("decode", work.timings["decode"])
                stats.processed += 1
                if not out.put(Result(frame=frame, detections=dets, timings=work.timings, labels=labels)):
                    break
        finally:
            out.close()

    def _output_loop(self) -> None:
        stats, src, sinks, overlay = self.stats, self.to_output, self.sinks, self.overlay
        clock = time.perf_counter
        rate = _RateMeter()
        limit = self.max_frames
        while True:
            try:
                result = src.get()
            except Closed:
                break
            if limit is not None and stats.output >= limit:
                continue  # in flight when the limit was reached: not part of the run
            result.fps = rate.tick(time.monotonic())
            if self._needs_annotated:
                t0 = clock()
                image = result.frame.image
                in_place = self._draw_in_place and image.flags.writeable
                result.annotated = overlay.draw(image, result.detections, result.labels, fps=result.fps or None,
                                                infer_ms=result.timings.get("invoke"), out=image if in_place else None)
                result.timings["overlay"] = (clock() - t0) * 1000.0
                stats.add("overlay", result.timings["overlay"])
            t0 = clock()
            try:
                for sink in sinks:
                    sink.write(result)
            finally:
                stats.add("sinks", (clock() - t0) * 1000.0)
                stats.output += 1
                stats.frame_age.add((time.monotonic() - result.frame.timestamp) * 1000.0)
            if limit is not None and stats.output >= limit:
                self.stop("max frames")

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


def _lores_to_main(dets: Detections, frame: Frame) -> Detections:
    """Boxes found on the lores image -> pixels of the main image."""
    lores = frame.lores
    assert lores is not None
    lh, lw = lores.shape[:2]
    if frame.lores_format == "YUV420":  # I420 planes stacked: 3/2 of the height
        lh = lh * 2 // 3
    if (lw, lh) == (frame.width, frame.height) or len(dets) == 0:
        return dets
    return dets.scaled(frame.width / lw, frame.height / lh).clipped(frame.width, frame.height)


# ---------------------------------------------------------------------------------------------
# building a run from the configuration

def build_detector(cfg: Config):
    """The ``Detector`` for ``cfg.model`` (registry name or file path)."""
    mc = cfg.model
    try:
        from .registry import resolve_model
    except ImportError:  # pragma: no cover - the registry ships with the package
        resolve_model = None
    path = resolve_model(mc.path) if resolve_model is not None else Path(mc.path)
    if not Path(path).is_file():
        raise ModelError(f"model file not found: {path}")
    from .detector import Detector

    return Detector.from_path(
        path, threads=mc.threads, labels=mc.labels, score_threshold=mc.score_threshold,
        iou_threshold=mc.iou_threshold, max_detections=mc.max_detections,
        class_agnostic=mc.class_agnostic, postprocess=mc.postprocess, resize=mc.resize, classes=mc.classes,
    )


def run_from_config(cfg: Config, *, stats_stream: Optional[IO[str]] = None) -> dict:
    """Build detector, source and sinks from ``cfg``, run to the end; returns the final stats.

    Prints the stats block on ``stats_stream`` (stderr) at exit (and every ``output.stats``
    seconds) and writes ``output.stats_json`` when set.
    """
    from .sinks import build_sinks
    from .sources import open_source

    open_source(cfg)  # a missing file or a bad --camera is reported before the model loads
    stats_json = cfg.output.stats_json
    if stats_json and not Path(stats_json).resolve().parent.is_dir():
        raise SinkError(f"cannot write stats to {stats_json}: directory {Path(stats_json).parent} does not exist")
    detector = build_detector(cfg)
    source = open_source(cfg, lores_size=tuple(detector.input_size))
    drop = cfg.source.drop if cfg.source.drop is not None else bool(source.live)
    model_name = getattr(getattr(detector, "info", None), "name", None) or Path(str(cfg.model.path)).stem
    ctx = SinkContext(labels=list(detector.labels or []), source_name=source.name, model_name=str(model_name),
                      device=cfg.mqtt.device)
    sinks = build_sinks(cfg, ctx)
    stream = stats_stream or sys.stderr
    pipeline = Pipeline(source, detector, sinks, drop=drop, max_frames=cfg.source.max_frames,
                        stats_interval=cfg.output.stats, context=ctx, stats_stream=stream,
                        workers=cfg.model.workers)
    with pipeline:
        log.info("running %s on %s (%s; %d inference worker(s) x %d thread(s))", model_name, source.name,
                 "newest frame only" if drop else "every frame", pipeline.workers, pipeline.threads_per_worker)
        snap = pipeline.run()
    snap["stop_reason"] = pipeline.stop_reason
    try:
        stream.write(format_text(snap, title=f"stats ({pipeline.stop_reason})") + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass
    if stats_json:
        try:
            write_json(snap, stats_json)
        except OSError as exc:
            raise SinkError(f"cannot write stats to {stats_json}: {exc.strerror or exc}") from exc
    return snap
