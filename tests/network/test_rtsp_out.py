"""RtspOutSink publishing to a real RTSP server, read back by an independent OpenCV client."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np
import pytest
from nethelpers import colour_pixels, overlay_colour, wait_published

from edgedet.config import OutputConfig, RtspOutConfig
from edgedet.errors import ConfigError, SinkError
from edgedet.frame import Result
from edgedet.sinks.base import SinkContext
from edgedet.sinks.rtsp_out import HW_ENCODER, SW_ENCODER, RtspOutSink, choose_encoder

BITS = 12
STRIP = 24  # pixels: the frame code is drawn as 12 black/white blocks in the top strip


def stamp(image: np.ndarray, code: int) -> np.ndarray:
    out = image.copy()
    w = out.shape[1] // BITS
    for b in range(BITS):
        out[:STRIP, b * w:(b + 1) * w] = 255 if (code >> b) & 1 else 0
    return out


def read_code(image: np.ndarray) -> int:
    w = image.shape[1] // BITS
    means = [image[4:STRIP - 4, b * w + 4:(b + 1) * w - 4].mean() for b in range(BITS)]
    return sum(1 << b for b, m in enumerate(means) if m > 128)


def box_pixels(img: np.ndarray) -> int:
    """Pixels in the overlay's colour for people (its boxes and tags)."""
    return colour_pixels(img, overlay_colour(0))


class Feeder(threading.Thread):
    """Writes stamped real results at ``fps``, remembering when each code was handed to the sink."""

    def __init__(self, sink, results, fps: float) -> None:
        super().__init__(daemon=True)
        self.sink, self.results, self.fps = sink, results, fps
        self.sent: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        code = 1
        while not self.stop.is_set():
            r = self.results[code % len(self.results)]
            res = Result(r.frame, r.detections, r.timings, r.labels, stamp(r.annotated, code), r.fps)
            self.sent[code] = time.monotonic()
            self.sink.write(res)
            code = code % (2 ** BITS - 1) + 1
            time.sleep(1.0 / self.fps)


class Reader(threading.Thread):
    """An independent RTSP client: plain cv2.VideoCapture (low-delay FFmpeg flags, UDP)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.received: dict[int, float] = {}
        self.boxes: list[int] = []
        self.frames = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 3000])
            while not self.stop.is_set() and cap.isOpened():
                ok, img = cap.read()
                if not ok:
                    break
                now = time.monotonic()
                self.frames += 1
                self.received.setdefault(read_code(img), now)
                if self.frames % 5 == 0:
                    self.boxes.append(box_pixels(img))
            cap.release()
            self.stop.wait(0.5)


@pytest.fixture
def udp_reader_env(monkeypatch):
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS",
                       "rtsp_transport;udp|fflags;nobuffer|flags;low_delay|analyzeduration;500000")


def latencies(feeder: Feeder, reader: Reader) -> np.ndarray:
    common = sorted(set(feeder.sent) & set(reader.received))
    return np.array([reader.received[c] - feeder.sent[c] for c in common]) * 1000


def test_published_stream_shows_boxes_and_latency(rtsp_server, pedestrian_results, udp_reader_env, caplog):
    caplog.set_level(logging.INFO, logger="edgedet.rtsp_out")
    cfg = RtspOutConfig(url=rtsp_server.publish_url("out"), transport="udp", fps=15, bitrate="2M")
    sink = RtspOutSink(cfg, OutputConfig(encoder="auto"), SinkContext(source_fps=10.0))
    sink.open()
    assert sink.encoder == SW_ENCODER  # no V4L2 M2M encoder on this machine
    feeder = Feeder(sink, pedestrian_results, fps=15)
    reader = Reader(rtsp_server.read_url("out"))
    try:
        feeder.start()
        wait_published(rtsp_server.read_url("out"))
        reader.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and reader.frames < 60:
            time.sleep(0.1)
        write_ms = []
        for r in pedestrian_results[:10]:  # write() only stores the frame
            t0 = time.perf_counter()
            sink.write(r)
            write_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        reader.stop.set()
        feeder.stop.set()
        feeder.join(5)
        sink.close()
        reader.join(10)
    assert reader.frames >= 60, f"only {reader.frames} frames read back"
    assert max(reader.boxes) > 500  # the overlay's boxes survive the encoding
    lat = latencies(feeder, reader)
    assert len(lat) >= 30
    p50, p95 = np.percentile(lat, [50, 95])
    print(f"RTSP out end-to-end latency (write -> decoded by a client): p50 {p50:.0f} ms, p95 {p95:.0f} ms "
          f"over {len(lat)} frames")
    assert 0 < p50 < 1000
    assert max(write_ms) < 20
    assert sink.stats()["frames_sent"] > 50
    assert any("publishing 480x360" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_survives_the_server_going_away(rtsp_server, pedestrian_results, udp_reader_env, caplog):
    caplog.set_level(logging.INFO, logger="edgedet.rtsp_out")
    cfg = RtspOutConfig(url=rtsp_server.publish_url("out"), transport="udp", fps=10)
    sink = RtspOutSink(cfg, OutputConfig(encoder="software"), SinkContext())
    sink.open()
    feeder = Feeder(sink, pedestrian_results, fps=10)
    try:
        feeder.start()
        wait_published(rtsp_server.read_url("out"))
        deadline = time.monotonic() + 10
        while not sink.stats()["connected"] and time.monotonic() < deadline:  # the server took the stream
            time.sleep(0.05)
        rtsp_server.stop()
        time.sleep(4)  # the server is away: the sink keeps running, retrying
        assert sink.stats()["failures"] >= 1 and feeder.is_alive()
        rtsp_server.start()
        wait_published(rtsp_server.read_url("out"), timeout=40)
        reader = Reader(rtsp_server.read_url("out"))
        reader.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and reader.frames < 10:
            time.sleep(0.1)
        reader.stop.set()
        reader.join(10)
        assert reader.frames >= 10
        assert sink.stats()["reconnects"] >= 1
        msgs = [r.getMessage() for r in caplog.records]
        assert any("lost RTSP out" in m or "cannot publish to" in m for m in msgs)
        assert any("publishing again" in m for m in msgs)
    finally:
        feeder.stop.set()
        feeder.join(5)
        sink.close()


def test_pyav_backend_publishes_too(rtsp_server, pedestrian_results, udp_reader_env):
    pytest.importorskip("av")
    cfg = RtspOutConfig(url=rtsp_server.publish_url("pyav"), transport="udp", fps=10)
    sink = RtspOutSink(cfg, OutputConfig(encoder="software"), SinkContext(), backend="pyav")
    sink.open()
    feeder = Feeder(sink, pedestrian_results, fps=10)
    reader = Reader(rtsp_server.read_url("pyav"))
    try:
        feeder.start()
        wait_published(rtsp_server.read_url("pyav"))
        reader.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and reader.frames < 20:
            time.sleep(0.1)
    finally:
        reader.stop.set()
        feeder.stop.set()
        feeder.join(5)
        sink.close()
        reader.join(10)
    assert reader.frames >= 20 and max(reader.boxes) > 500


def test_encoder_choice_and_bad_settings(tmp_path):
    # no /dev/video11 here: auto falls back to software, hardware is a clear error
    assert choose_encoder("auto", "ffmpeg", hw_device=str(tmp_path / "video11")) == SW_ENCODER
    assert choose_encoder("software", "ffmpeg") == SW_ENCODER
    with pytest.raises(SinkError, match="hardware"):
        choose_encoder("hardware", "ffmpeg", hw_device=str(tmp_path / "video11"))
    fake = tmp_path / "video11"
    fake.touch()  # with the device node present and FFmpeg's encoder listed, auto picks it
    assert choose_encoder("auto", "ffmpeg", hw_device=str(fake)) == HW_ENCODER
    with pytest.raises(ConfigError, match="expected rtsp://"):  # a configuration error: exit 2
        RtspOutSink(RtspOutConfig(url="http://x/y"))
    with pytest.raises(ConfigError, match="bitrate"):
        RtspOutSink(RtspOutConfig(url="rtsp://127.0.0.1:8554/x", bitrate="fast"))
    msg = ""
    try:
        RtspOutSink(RtspOutConfig(url="rtsp://u:pw@h:port/x"))
    except ConfigError as exc:
        msg = str(exc)
    assert "bad port" in msg and "pw" not in msg.replace("***", "")
