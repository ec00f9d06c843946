"""RTSP out without a server, or with one that refuses the stream: attempts back off (1, 2, 4 s ...),
nothing claims to be publishing, and every failure is counted."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from nethelpers import HOST, RefusingRtspServer, free_port

from edgedet.config import OutputConfig, RtspOutConfig
from edgedet.frame import Frame, Result
from edgedet.sinks.base import SinkContext
from edgedet.sinks.rtsp_out import RtspOutSink

WATCH_S = 10.0


def feed(sink: RtspOutSink, seconds: float, fps: float = 10.0) -> None:
    """Real-time frames into the sink for ``seconds``."""
    image = np.full((360, 480, 3), 90, np.uint8)
    end = time.monotonic() + seconds
    index = 0
    while time.monotonic() < end:
        frame = Frame(image=image, index=index, timestamp=time.monotonic(), wall_time=time.time())
        sink.write(Result(frame=frame, detections=None, annotated=image))
        index += 1
        time.sleep(1.0 / fps)


def failure_times(caplog) -> list[float]:
    return [r.created for r in caplog.records if r.name == "edgedet.rtsp_out" and "retrying in" in r.getMessage()]


def check_backoff(times: list[float]) -> None:
    gaps = np.diff(times)
    print(f"{len(times)} attempts in {WATCH_S:g} s; gaps {np.round(gaps, 2).tolist()} s")
    # 1, 2, 4 s between attempts (plus the time an attempt takes): 4 attempts in 10 s, not 10+
    assert 3 <= len(times) <= 5
    for k, gap in enumerate(gaps):
        assert 0.95 * 2 ** k <= gap <= 2 ** k + 1.5, gaps


@pytest.fixture
def sink_for(caplog):
    caplog.set_level(logging.INFO, logger="edgedet.rtsp_out")
    sinks = []

    def make(url: str) -> RtspOutSink:
        sink = RtspOutSink(RtspOutConfig(url=url, fps=10), OutputConfig(encoder="software"), SinkContext())
        sink.open()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def test_no_server_backs_off(sink_for, caplog):
    sink = sink_for(f"rtsp://{HOST}:{free_port()}/out")  # nothing listens there
    feed(sink, WATCH_S)
    times = failure_times(caplog)
    check_backoff(times)
    stats = sink.stats()
    assert stats["failures"] == len(times) and stats["reconnects"] == 0 and not stats["connected"]
    assert stats["state"] == "waiting" and "refused" in stats["last_error"].lower()
    # the same counters reach the web view's /stats and /metrics
    (report,) = [provider() for provider in sink.ctx.outputs()]
    assert report["rtsp_out"]["failures"] == len(times)
    (metrics,) = [provider() for provider in sink.ctx.metrics()]
    assert metrics["edgedet_rtsp_out_failures"][2] == len(times) and metrics["edgedet_rtsp_out_connected"][2] == 0
    assert not any("publishing" in r.getMessage() for r in caplog.records)


def test_refusing_server_backs_off(sink_for, caplog):
    with RefusingRtspServer("403 Forbidden") as server:
        sink = sink_for(server.url("out"))
        feed(sink, WATCH_S)
        connections = list(server.connections)
    times = failure_times(caplog)
    check_backoff(times)
    assert len(connections) == len(times)  # one connection per attempt, no hidden retries
    stats = sink.stats()
    assert stats["failures"] == len(times) and not stats["connected"]
    assert "403 Forbidden" in stats["last_error"]
    assert not any("publishing" in r.getMessage() for r in caplog.records)


def test_close_is_prompt_while_waiting(sink_for):
    sink = sink_for(f"rtsp://{HOST}:{free_port()}/out")
    feeder = threading.Thread(target=feed, args=(sink, 2.5), daemon=True)
    feeder.start()
    feeder.join()
    t0 = time.monotonic()
    sink.close()
    assert time.monotonic() - t0 < 1.0
