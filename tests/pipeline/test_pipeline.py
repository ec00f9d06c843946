"""The pipeline machinery with a stand-in detector (real sources, real sinks, real threads)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from standin import StandinDetector

from edgedet.detections import Detections
from edgedet.frame import Frame
from edgedet.pipeline import Pipeline, StopRequested
from edgedet.sinks.base import BaseSink, SinkContext
from edgedet.sinks.events import EventsSink
from edgedet.sources.base import BaseSource
from edgedet.sources.file import VideoFileSource
from edgedet.sources.images import ImageSource


class Collect(BaseSink):
    def __init__(self, needs_annotated=False, stop_after=None, fail_at=None):
        self.needs_annotated = needs_annotated
        self.results = []
        self.opened = self.closed = 0
        self.stop_after = stop_after
        self.fail_at = fail_at

    def open(self):
        self.opened += 1

    def write(self, result):
        if self.fail_at is not None and len(self.results) >= self.fail_at:
            raise OSError("disk full")
        self.results.append(result)
        if self.stop_after is not None and len(self.results) >= self.stop_after:
            raise StopRequested("user closed the window")

    def close(self):
        self.closed += 1


class SyntheticSource(BaseSource):
    """A live-like source producing numbered frames at ``fps`` (or as fast as asked)."""

    def __init__(self, n=100, fps=0.0, live=True, size=(64, 48), lores=None):
        self.n, self.fps, self.live, self.name = n, fps, live, "synthetic"
        self.size, self.lores = size, lores
        self.i = 0
        self.opened = self.closed = 0

    def open(self):
        self.opened += 1

    def close(self):
        self.closed += 1

    def stats(self):
        return {"frames_read": self.i}

    def read(self):
        if self.i >= self.n:
            return None
        if self.fps:
            time.sleep(1.0 / self.fps)
        w, h = self.size
        img = np.full((h, w, 3), self.i % 255, np.uint8)
        lores = None if self.lores is None else np.zeros((self.lores[1], self.lores[0], 3), np.uint8)
        f = Frame(img, self.i, time.monotonic(), time.time(), lores=lores)
        self.i += 1
        return f


def test_file_without_drop_processes_every_frame_in_order(pedestrians_video):
    sink = Collect()
    with Pipeline(VideoFileSource(pedestrians_video), StandinDetector(), [sink], drop=False) as p:
        snap = p.run()
    idx = [r.frame.index for r in sink.results]
    assert idx == list(range(795))
    assert snap["frames"] == {"captured": 795, "processed": 795, "output": 795}
    assert snap["dropped"]["total"] == 0
    assert p.stop_reason == "end of input"
    assert sink.opened == 1 and sink.closed == 1
    r = sink.results[0]
    assert r.labels == ["person", "car"] and len(r.detections) == 1
    assert set(r.timings) >= {"preprocess", "invoke", "decode"}
    assert r.annotated is None  # no sink asked for the overlay


def test_live_slow_detector_drops_and_counts_every_dropped_frame():
    src = SyntheticSource(n=60, fps=200)
    sink = Collect()
    with Pipeline(src, StandinDetector(infer_s=0.03), [sink], drop=True) as p:
        snap = p.run()
    dropped = snap["dropped"]
    assert dropped["to_infer"] > 20
    # every captured frame is either output or counted as dropped at one of the slots
    assert snap["frames"]["captured"] == 60
    assert snap["frames"]["output"] + dropped["total"] == 60
    idx = [r.frame.index for r in sink.results]
    assert idx == sorted(idx) and idx[-1] == 59  # newest wins: the last frame is always processed


def test_max_frames_exact_without_drop(pedestrians_video):
    sink = Collect()
    with Pipeline(VideoFileSource(pedestrians_video), StandinDetector(), [sink], drop=False, max_frames=17) as p:
        snap = p.run()
    assert len(sink.results) == 17 and snap["frames"]["output"] == 17
    assert snap["frames"]["captured"] == 17


def test_max_frames_with_drop_outputs_exactly_that_many():
    sink = Collect()
    with Pipeline(SyntheticSource(n=10_000, fps=500), StandinDetector(infer_s=0.005), [sink], drop=True,
                  max_frames=20) as p:
        snap = p.run()
    assert len(sink.results) == 20 and snap["frames"]["output"] == 20
    assert p.stop_reason == "max frames"


def test_stop_from_another_thread_finishes_in_flight_frames(tmp_path):
    events = tmp_path / "e.jsonl"
    src = SyntheticSource(n=10**9, fps=100)
    with Pipeline(src, StandinDetector(infer_s=0.01), [EventsSink(str(events))], drop=False) as p:
        threading.Timer(0.5, p.stop).start()
        t0 = time.monotonic()
        snap = p.run()
        assert time.monotonic() - t0 < 3
    lines = events.read_text().splitlines()
    assert len(lines) == snap["frames"]["output"] == snap["frames"]["captured"] > 10
    assert all(json.loads(line)["detections"] for line in lines)  # every line is complete


class WaitingSource(BaseSource):
    """A live source whose stream has gone: ``read`` waits up to a minute unless interrupted."""

    live, fps, name = True, 10.0, "waiting"

    def __init__(self):
        self.wake = threading.Event()
        self.sent = False

    def read(self):
        if not self.sent:
            self.sent = True
            return Frame(np.zeros((48, 64, 3), np.uint8), 0, time.monotonic(), time.time())
        self.wake.wait(60)
        return None

    def interrupt(self):
        self.wake.set()


def test_stop_wakes_a_source_waiting_for_its_stream():
    sink = Collect()
    with Pipeline(WaitingSource(), StandinDetector(), [sink], drop=True) as p:
        threading.Timer(0.5, p.stop).start()
        t0 = time.monotonic()
        snap = p.run()
        assert time.monotonic() - t0 < 2
    assert snap["frames"]["output"] == 1 and len(sink.results) == 1


def test_stage_error_stops_everything_and_is_raised():
    src = SyntheticSource(n=10**9, fps=0)
    sink = Collect()
    with pytest.raises(RuntimeError, match="stand-in failure"):
        with Pipeline(src, StandinDetector(fail_at=5), [sink], drop=False) as p:
            p.run()
    assert sink.closed == 1 and src.closed == 1


def test_sink_error_is_raised_and_sinks_closed():
    sink, other = Collect(fail_at=3), Collect()
    with pytest.raises(OSError, match="disk full"):
        with Pipeline(SyntheticSource(n=1000), StandinDetector(), [other, sink], drop=False) as p:
            p.run()
    assert sink.closed == 1 and other.closed == 1


def test_stop_requested_by_a_sink_is_a_clean_stop():
    sink = Collect(stop_after=5)
    with Pipeline(SyntheticSource(n=10**9, fps=200), StandinDetector(), [sink], drop=True) as p:
        p.run()
    assert p.stop_reason == "stop requested by a sink"
    assert len(sink.results) == 5


def test_overlay_drawn_once_when_a_sink_needs_it():
    a, b = Collect(needs_annotated=True), Collect()
    with Pipeline(SyntheticSource(n=5, size=(320, 240)), StandinDetector(), [a, b], drop=False) as p:
        snap = p.run()
    r = a.results[0]
    assert r.annotated is not None and r.annotated is b.results[0].annotated
    assert r.annotated.shape == r.frame.image.shape
    assert not np.array_equal(r.annotated, r.frame.image)  # the box was drawn on a copy
    assert snap["stages_ms"]["overlay"]["n"] == 5


def test_overlay_drawn_on_the_frame_when_no_sink_reads_the_raw_picture():
    shown = Collect(needs_annotated=True)
    shown.reads_frame = False  # like the window, HTTP and RTSP sinks
    with Pipeline(SyntheticSource(n=3, size=(320, 240)), StandinDetector(), [shown], drop=False) as p:
        p.run()
    r = shown.results[0]
    assert r.annotated is r.frame.image  # no copy of the picture
    assert (r.annotated != 0).any(axis=2).sum() > 100  # the box is on it


def test_raw_recording_next_to_an_annotated_view_keeps_the_raw_picture(tmp_path):
    from edgedet.sinks.recorder import RecorderSink

    shown = Collect(needs_annotated=True)
    shown.reads_frame = False
    raw = RecorderSink(tmp_path / "raw.mp4", fps=10, annotated=False)
    src = SyntheticSource(n=3, size=(320, 240))
    with Pipeline(src, StandinDetector(), [shown, raw], drop=False) as p:
        p.run()
    r = shown.results[0]
    assert r.annotated is not r.frame.image
    assert not r.frame.image.any()  # frame 0 is all zeros: nothing was drawn on it


def test_opencv_runs_single_threaded_only_while_the_interpreter_fills_every_core(monkeypatch):
    import cv2

    from edgedet import cpu

    monkeypatch.setattr(cpu, "available_cores", lambda: [0, 1])
    before = cv2.getNumThreads()

    class Seen(Collect):
        def write(self, result):
            self.results.append(cv2.getNumThreads())

    for threads, expected in ((2, 1), (1, before)):
        det = StandinDetector(threads=threads)
        sink = Seen()
        src = SyntheticSource(n=2)
        src.decoder_threads = None
        with Pipeline(src, det, [sink], drop=False) as p:
            p.run()
        assert sink.results == [expected, expected]
        assert cv2.getNumThreads() == before
        # and the video decoder does not start a thread per core either
        assert src.decoder_threads == (1 if expected == 1 else None)


class ReplicableStandin(StandinDetector):
    """A stand-in whose workers each sleep a different time per frame, so frames finish out of order."""

    pause_s = 0.004

    def __init__(self, threads=4, infer_s=0.0, fail_at=None, seed=0):
        super().__init__(infer_s=infer_s, fail_at=fail_at, threads=threads)
        self.rng = np.random.default_rng(seed)

    def replica(self, threads):
        twin = type(self)(threads, infer_s=self.infer_s, fail_at=self.fail_at, seed=len(self.replicas) + 1)
        self.replicas.append(twin)
        return twin

    def infer(self, prepared):
        time.sleep(float(self.rng.uniform(0, self.pause_s)))
        return super().infer(prepared)


def test_workers_infer_frames_side_by_side_and_results_come_out_in_order(tmp_path):
    det = ReplicableStandin(threads=4)
    sink = Collect()
    events = tmp_path / "e.jsonl"
    ev = EventsSink(str(events))
    with Pipeline(SyntheticSource(n=200, live=False), det, [sink, ev], drop=False) as p:
        assert (p.workers, p.threads_per_worker) == (4, 1)
        snap = p.run()
    assert [r.frame.index for r in sink.results] == list(range(200))
    assert [json.loads(line)["frame"] for line in events.read_text().splitlines()] == list(range(200))
    assert snap["frames"] == {"captured": 200, "processed": 200, "output": 200}
    assert len(det.replicas) == 4 and all(r.calls > 0 for r in det.replicas)
    assert det.calls == 0  # a 4-thread detector is no worker of 1 thread: the replicas do the inference
    assert sum(r.calls for r in det.replicas) == 200


def test_a_detector_with_the_threads_of_a_worker_is_worker_zero():
    det = ReplicableStandin(threads=1)
    sink = Collect()
    with Pipeline(SyntheticSource(n=120, live=False), det, [sink], drop=False, threads=3) as p:
        assert (p.workers, p.threads_per_worker) == (3, 1)
        p.run()
    assert len(det.replicas) == 2 and [r.threads for r in det.replicas] == [1, 1]
    assert det.calls > 0 and det.calls + sum(r.calls for r in det.replicas) == 120
    assert [r.frame.index for r in sink.results] == list(range(120))


class TensorStandin(ReplicableStandin):
    """Prepares a real input array (the frame's grey level) and reads it only after a random pause,
    like an interpreter descheduled before it copies its input."""

    pause_s = 0.006

    def __init__(self, threads=4, **kw):
        super().__init__(threads, **kw)
        self._input = np.empty((8, 8, 3), np.uint8)  # reused array, as the real detector does

    def prepare(self, image, fmt="BGR", frame_size=None):
        prepared = super().prepare(image, fmt, frame_size)
        self._input[...] = image[0, 0, 0]
        prepared.tensor = self._input
        return prepared

    def infer(self, prepared):
        raw = super().infer(prepared)  # pauses first, then reads its input
        raw.index = int(prepared.tensor[0, 0, 0])
        return raw

    def decode(self, raw, prepared):
        dets = super().decode(raw, prepared)
        return Detections(dets.xyxy, dets.scores, np.array([raw.index], np.int32))


def test_frames_prepared_ahead_keep_their_input_until_invoked():
    sink = Collect()
    with Pipeline(SyntheticSource(n=150, live=False), TensorStandin(threads=3), [sink], drop=False) as p:
        assert p.workers == 3
        p.run()
    assert [r.frame.index for r in sink.results] == list(range(150))
    assert [int(r.detections.class_ids[0]) for r in sink.results] == [i % 255 for i in range(150)]


def test_input_pool_reuses_an_array_only_after_its_release():
    from edgedet.pipeline import _InputPool

    pool, stop = _InputPool(2), threading.Event()
    like = np.zeros((4, 4), np.uint8)
    a, b = pool.take(like, stop), pool.take(like, stop)
    assert a is not b
    got = []
    t = threading.Thread(target=lambda: got.append(pool.take(like, stop)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and not got  # both arrays in flight: the next frame waits
    pool.release(b)
    t.join(2)
    assert got == [b]
    stop.set()
    assert pool.take(like, stop) is None  # stopping: nobody waits for a release that will not come


def test_workers_setting_and_live_sources_keep_one_interpreter():
    det = ReplicableStandin(threads=4)
    with Pipeline(SyntheticSource(n=5, live=False), det, [], drop=False, workers=2) as p:
        assert (p.workers, p.threads_per_worker) == (2, 2)
        p.run()
    assert [r_.threads for r_ in det.replicas] == [2, 2]
    det = ReplicableStandin(threads=4)
    with Pipeline(SyntheticSource(n=5), det, [], drop=True, workers=3) as p:
        assert (p.workers, p.threads_per_worker) == (1, 4)  # newest frame only: latency first
        p.run()
    assert det.replicas == [] and det.calls > 0
    det = StandinDetector(threads=1)
    with Pipeline(SyntheticSource(n=5, live=False), det, [], drop=False, workers=3) as p:
        assert (p.workers, p.threads_per_worker) == (3, 1)
    assert len(det.replicas) == 2  # the detector itself is the first of the three


def test_workers_stop_cleanly_on_max_frames_and_on_errors(pedestrians_video):
    sink = Collect()
    with Pipeline(VideoFileSource(pedestrians_video), ReplicableStandin(threads=2), [sink], drop=False,
                  max_frames=33) as p:
        snap = p.run()
    assert [r.frame.index for r in sink.results] == list(range(33)) and snap["frames"]["output"] == 33

    class Failing(ReplicableStandin):
        def replica(self, threads):
            twin = super().replica(threads)
            twin.fail_at = 5
            return twin

    with pytest.raises(RuntimeError, match="stand-in failure"):
        with Pipeline(SyntheticSource(n=100, live=False), Failing(threads=2), [Collect()], drop=False) as p:
            p.run()


def test_lores_frames_are_detected_on_lores_and_mapped_to_main():
    det = StandinDetector()
    sink = Collect()
    src = SyntheticSource(n=3, size=(1280, 720), lores=(320, 180))
    with Pipeline(src, det, [sink], drop=False) as p:
        p.run()
    box = sink.results[0].detections.xyxy[0]
    np.testing.assert_allclose(box, [320, 180, 960, 540], atol=0.5)


def test_context_gets_source_fps_and_live_stats(pedestrians_video):
    ctx = SinkContext()
    seen = {}

    class Peek(BaseSink):
        def open(self):
            seen["fps"] = ctx.source_fps
            seen["name"] = ctx.source_name

        def write(self, result):
            seen["stats"] = ctx.stats()

    with Pipeline(VideoFileSource(pedestrians_video), StandinDetector(), [Peek()], drop=False, max_frames=5,
                  context=ctx) as p:
        p.run()
    assert seen["fps"] == pytest.approx(10.0)
    assert seen["name"].endswith("pedestrians_480x360.avi")
    assert seen["stats"]["frames"]["captured"] >= 1
    assert ctx.labels == ["person", "car"]


def test_source_that_cannot_open_closes_nothing_twice(tmp_path):
    sink = Collect()
    from edgedet.errors import SourceError

    with pytest.raises(SourceError):
        with Pipeline(ImageSource(tmp_path / "missing"), StandinDetector(), [sink], drop=False) as p:
            p.run()
    assert sink.opened == 0 and sink.closed == 0


def test_periodic_stats_are_printed(capsys):
    import io

    buf = io.StringIO()
    with Pipeline(SyntheticSource(n=40, fps=100), StandinDetector(), [], drop=True, stats_interval=0.1,
                  stats_stream=buf) as p:
        p.run()
    blocks = [line for line in buf.getvalue().splitlines() if line.startswith("edgedet stats")]
    assert len(blocks) >= 2


def test_sink_polled_from_main_thread_can_end_the_run():
    main_thread = threading.main_thread()

    class Gui(BaseSink):
        needs_annotated = True

        def __init__(self):
            self.polls = 0
            self.threads = set()

        def poll(self):
            self.threads.add(threading.current_thread())
            self.polls += 1
            return self.polls < 20

    gui = Gui()
    with Pipeline(SyntheticSource(n=10**9, fps=100), StandinDetector(), [gui], drop=True) as p:
        p.run()
    assert p.stop_reason == "window closed"
    assert gui.threads == {main_thread} and gui.polls == 20
