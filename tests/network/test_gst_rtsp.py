"""NetworkSource against a camera-like GStreamer RTSP server (shared media) and a busy server."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from nethelpers import RefusingRtspServer, load_detector

from edgedet.config import SourceConfig
from edgedet.errors import SourceError
from edgedet.sources.network import NetworkSource


def test_opens_every_time(gst_camera, caplog):
    """Shared media answers a DESCRIBE that follows another client's too closely with 503: nothing
    may talk to the server just before FFmpeg does, and a 503 is retried."""
    caplog.set_level(logging.INFO, logger="edgedet.source")
    opened = 0
    for _ in range(10):
        t0 = time.monotonic()
        with NetworkSource(gst_camera.url, SourceConfig()) as src:
            frame = src.read()
            assert frame is not None and frame.image.shape == (360, 480, 3)
            opened += 1
        print(f"opened and read in {time.monotonic() - t0:.2f} s")
    assert opened == 10
    retries = [r.getMessage() for r in caplog.records if "not available yet" in r.getMessage()]
    assert all("503 Service Unavailable" in m or "answered" in m for m in retries), retries


def test_busy_server_is_retried_and_named(caplog):
    caplog.set_level(logging.INFO, logger="edgedet.source")
    with RefusingRtspServer("503 Service Unavailable") as server:
        t0 = time.monotonic()
        with pytest.raises(SourceError) as err:
            NetworkSource(server.url("cam"), SourceConfig(open_timeout=3.0)).open()
        took = time.monotonic() - t0
    retries = [r.getMessage() for r in caplog.records if "not available yet" in r.getMessage()]
    assert len(retries) >= 2 and all("503 Service Unavailable" in m for m in retries), retries
    assert "503 Service Unavailable" in str(err.value) and "\n" not in str(err.value)
    assert took < 3.0 + 3 * 1.0  # retried within open_timeout, not forever


@pytest.mark.slow
def test_detects_again_after_camera_outages(gst_camera, v1_model, coco_labels, caplog):
    """The camera drops off (killed) for 1, 4 and 12 s: with the default settings (backoff capped at
    30 s) people are detected again within 5 s of its return."""
    caplog.set_level(logging.INFO, logger="edgedet.source")
    det = load_detector(v1_model, coco_labels)
    src = NetworkSource(gst_camera.url, SourceConfig())
    seen: list[float] = []  # capture times of frames with a person in them
    done = threading.Event()

    def consume() -> None:
        while not done.is_set():
            frame = src.read()
            if frame is None:
                return
            if (det.detect(frame.image).class_ids == 0).any():
                seen.append(frame.timestamp)

    def detected_after(t: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            late = [s for s in seen if s > t]
            if late:
                return late[0] - t
            time.sleep(0.05)
        return float("inf")

    src.open()
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    try:
        assert detected_after(time.monotonic() - 1.0, 10) < 10, "no person before the outages"
        delays = []
        for outage in (1.0, 4.0, 12.0):
            gst_camera.kill()
            time.sleep(outage)
            gst_camera.start()
            back = time.monotonic()
            delays.append(detected_after(back, 15))
            print(f"outage {outage:g} s: people detected again {delays[-1]:.2f} s after the camera's return")
        assert max(delays) < 5.0, delays
        assert src.stats()["reconnects_total"] == 3
    finally:
        done.set()
        src.close()
        reader.join(5)
