"""``edgedet run`` on a network camera stops within 2 s of SIGTERM in every state of the stream.

Real processes, a real GStreamer RTSP camera (killed, or frozen with SIGSTOP so that it keeps its
connections and accepts TCP but never answers) and real signals. After each stop: exit status 0,
no traceback, the events file ends on a complete line, the recording plays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from nethelpers import load_detector

from edgedet.config import SourceConfig
from edgedet.pipeline import Pipeline
from edgedet.sources.network import NetworkSource

STOP_WITHIN_S = 2.0


class Run:
    """``edgedet run --source URL --events ... --record ...`` in the background, its output in a file."""

    def __init__(self, tmp: Path, model: Path, labels: Path, url: str, *extra: str) -> None:
        self.events, self.video, self.log = tmp / "events.jsonl", tmp / "rec.mp4", tmp / "run.log"
        cmd = [sys.executable, "-m", "edgedet", "run", "--model", str(model), "--labels", str(labels),
               "--source", url, "--headless", "--events", str(self.events), "--record", str(self.video), *extra]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what, timeout: float = 30.0) -> None:
        """Wait until ``what()`` is true (or the log contains the text ``what``)."""
        check = what if callable(what) else (lambda: what in self.output())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the run ended early:\n{self.output()[-3000:]}"
            if check():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what!r}:\n{self.output()[-3000:]}")

    def event_count(self) -> int:
        return self.events.read_text().count("\n") if self.events.exists() else 0

    def stop(self, sig: int = signal.SIGTERM) -> float:
        """Send ``sig``; seconds until the process has exited."""
        t0 = time.monotonic()
        os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"still running 30 s after the signal:\n{self.output()[-3000:]}")
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def assert_stopped_cleanly(run: Run, took: float) -> None:
    out = run.output()
    print(f"stopped {took:.2f} s after SIGTERM; {run.event_count()} event lines")
    assert took < STOP_WITHIN_S, out[-3000:]
    assert run.proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    if run.events.exists():
        text = run.events.read_text()
        assert text == "" or text.endswith("\n")
        for line in text.splitlines():
            json.loads(line)
    if run.event_count():
        cap = cv2.VideoCapture(str(run.video))
        ok, _ = cap.read()
        cap.release()
        assert ok, f"the recording {run.video} does not play"


def _reading(run: Run, cam) -> None:
    run.wait_for(lambda: run.event_count() >= 5)


def _stalled(run: Run, cam) -> None:
    """The camera keeps the connection but sends nothing; the reader is blocked in FFmpeg."""
    run.wait_for(lambda: run.event_count() >= 5)
    cam.freeze()
    time.sleep(1.5)


def _backing_off(run: Run, cam) -> None:
    run.wait_for(lambda: run.event_count() >= 5)
    cam.kill()
    run.wait_for("not available yet")


def _reconnecting_to_a_hung_camera(run: Run, cam) -> None:
    """The stall is noticed; FFmpeg's open hangs on a camera that accepts TCP but never answers."""
    run.wait_for(lambda: run.event_count() >= 5)
    cam.freeze()
    run.wait_for("reconnecting")
    time.sleep(1.0)


def _connecting_at_start(run: Run, cam) -> None:
    run.wait_for(": connecting")
    time.sleep(1.0)


STATES = {
    "reading": _reading,
    "stalled": _stalled,
    "backing off": _backing_off,
    "reconnecting to a hung camera": _reconnecting_to_a_hung_camera,
    "connecting at start": _connecting_at_start,
}


@pytest.mark.slow
@pytest.mark.parametrize("state", list(STATES))
def test_sigterm_stops_within_2s(state, gst_camera, v1_model, coco_labels, tmp_path):
    extra = ()
    if state == "connecting at start":
        gst_camera.freeze()  # accepts the connection, never answers
        extra = ("--log-level", "debug")  # the "connecting" line is a debug line
    run = Run(tmp_path, v1_model, coco_labels, gst_camera.url, "--stall-timeout", "2", "--open-timeout", "30", *extra)
    try:
        STATES[state](run, gst_camera)
        took = run.stop()
    finally:
        run.kill()
    assert_stopped_cleanly(run, took)
    if state != "connecting at start":
        assert "SIGTERM: stopping" in run.output()


def catches_sigterm(pid: int) -> bool:
    """The process has a handler for SIGTERM (``SigCgt`` in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:")), 0)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("after", [0.0, 0.2, 0.5])
def test_sigterm_during_start_up(after, gst_camera, v1_model, coco_labels, tmp_path):
    """From the moment Python runs edgedet's code (Python's own start-up, ~0.1 s, is before it),
    through the imports and the model loading: the run ends at once, cleanly."""
    t0 = time.monotonic()
    run = Run(tmp_path, v1_model, coco_labels, gst_camera.url)
    try:
        run.wait_for(lambda: catches_sigterm(run.proc.pid), timeout=10)
        print(f"SIGTERM is caught {time.monotonic() - t0:.2f} s after the start")
        assert ": connected" not in run.output()  # from the start, not only once the stream is open
        time.sleep(after)
        took = run.stop()
    finally:
        run.kill()
    assert_stopped_cleanly(run, took)
    assert "SIGTERM" in run.output()


def test_pipeline_stop_ends_a_run_waiting_for_its_camera(gst_camera, v1_model, coco_labels):
    """``Pipeline.stop()`` from another thread during an outage: ``run()`` returns within 2 s."""
    det = load_detector(v1_model, coco_labels)
    src = NetworkSource(gst_camera.url, SourceConfig())
    pipe = Pipeline(src, det, [], drop=True, handle_signals=False)
    with pipe:
        runner = threading.Thread(target=pipe.run, daemon=True)
        runner.start()
        deadline = time.monotonic() + 20
        while pipe.stats.snapshot()["frames"]["processed"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        gst_camera.kill()
        while src.stats()["state"] != "reconnecting" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        t0 = time.monotonic()
        pipe.stop()
        runner.join(10)
        took = time.monotonic() - t0
    print(f"run() returned {took:.2f} s after stop()")
    assert not runner.is_alive() and took < STOP_WITHIN_S
