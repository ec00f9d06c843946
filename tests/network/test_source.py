"""NetworkSource against a real RTSP server and a real ffmpeg publisher on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from nethelpers import HOST, Publisher, free_port, load_detector, wait_published

from edgedet.config import SourceConfig
from edgedet.errors import SourceError
from edgedet.sources.network import NetworkSource


def udp_cfg(**kw) -> SourceConfig:
    # our test server carries RTP over UDP only
    return SourceConfig(rtsp_transport="udp", **kw)


@pytest.mark.parametrize("url, expected", [
    ("rtsp://", "malformed URL"),
    ("rtsp:///cam", "no host name"),
    ("gopher://cam/x", "unsupported scheme"),
    ("rtsp://127.0.0.1:99999/cam", "bad port"),
    ("rtsp://127.0.0.1:port/cam", "bad port"),
])
def test_malformed_urls_are_one_line_errors(url, expected):
    with pytest.raises(SourceError) as err:
        NetworkSource(url, udp_cfg()).open()
    msg = str(err.value)
    assert expected in msg and "\n" not in msg


def test_refused_port_names_host_and_masks_password():
    port = free_port()  # nothing listens there
    src = NetworkSource(f"rtsp://admin:hunter2@{HOST}:{port}/cam", udp_cfg())
    with pytest.raises(SourceError) as err:
        src.open()
    msg = str(err.value)
    assert "connection refused" in msg and f"{HOST}:{port}" in msg
    assert "hunter2" not in msg and "admin:***@" in msg
    assert "hunter2" not in src.name


def test_silent_server_times_out_with_clear_error():
    """A host that accepts TCP but never answers (a hung camera): open gives up after open_timeout."""
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(SourceError) as err:
            NetworkSource(f"rtsp://{HOST}:{port}/cam", udp_cfg(open_timeout=1.0)).open()
        assert time.monotonic() - t0 < 10
        assert "did not answer" in str(err.value)
    finally:
        srv.close()


def test_unpublished_path_is_a_clear_error(rtsp_server):
    with pytest.raises(SourceError) as err:
        NetworkSource(rtsp_server.read_url("nothing-here"), udp_cfg(open_timeout=3)).open()
    assert "no stream at path /nothing-here" in str(err.value)


def test_reads_newest_frames_and_detects_people(publisher, rtsp_server, v1_model, coco_labels):
    src = NetworkSource(rtsp_server.read_url("cam"), udp_cfg())
    det = load_detector(v1_model, coco_labels)
    with src:
        assert src.live and src.fps == pytest.approx(10.0, abs=0.5)
        people = 0
        last_index = -1
        for _ in range(15):
            frame = src.read()
            assert frame is not None and frame.image.shape == (360, 480, 3)
            assert frame.index > last_index
            last_index = frame.index
            dets = det.detect(frame.image)
            people += int((dets.class_ids == 0).sum())
        stats = src.stats()
    assert people >= 15  # several pedestrians in every frame
    assert stats["connected"] and stats["state"] == "connected" and stats["reconnects_total"] == 0
    assert 0 <= stats["last_frame_age_s"] < 1.0


def test_keeps_only_the_newest_frame(publisher, rtsp_server):
    """A slow consumer gets a fresh frame, not the backlog."""
    with NetworkSource(rtsp_server.read_url("cam"), udp_cfg()) as src:
        src.read()
        time.sleep(2.0)  # ~20 frames arrive meanwhile
        frame = src.read()
        assert time.monotonic() - frame.timestamp < 0.5
        assert src.stats()["frames_skipped"] >= 10


@pytest.mark.slow
def test_reconnects_after_publisher_outage(rtsp_server, pedestrians_video, tmp_path, caplog):
    """Publisher killed for 10 s then restarted: reading resumes within 5 s of the stream's return."""
    caplog.set_level(logging.INFO, logger="edgedet.source")
    pub = Publisher(pedestrians_video, rtsp_server.publish_url("cam"), tmp_path / "pub.log").start()
    cfg = udp_cfg(stall_timeout=2.0, read_timeout=2.0, reconnect_max_backoff=2.0)
    src = NetworkSource(rtsp_server.read_url("cam"), cfg)
    frames = []
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            f = src.read()
            if f is None:
                return
            frames.append((time.monotonic(), f))

    try:
        wait_published(rtsp_server.read_url("cam"))
        src.open()
        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        time.sleep(3)
        assert frames, "no frames before the outage"
        pub.stop()
        outage_start = time.monotonic()
        time.sleep(10)
        n_before_return = len(frames)
        assert src.stats()["connected"] is False
        # nothing is handed out during the outage once the stall is noticed
        late = [t - outage_start for t, _ in frames if t > outage_start]
        print(f"frames handed out after the publisher stopped: {len(late)}, last at +{max(late or [0]):.2f} s")
        assert max(late or [0]) < cfg.stall_timeout + cfg.read_timeout
        pub.start()
        back = time.monotonic()
        deadline = back + 20
        while time.monotonic() < deadline and len(frames) == n_before_return:
            time.sleep(0.05)
        assert len(frames) > n_before_return, "no frame after the stream came back"
        first_after = frames[n_before_return]
        reconnect_s = first_after[0] - back
        print(f"reconnected {reconnect_s:.2f} s after the stream returned")
        assert reconnect_s < 5.0
        # the first frame after the outage is new, not a buffered one from before it
        assert first_after[1].timestamp > back
        time.sleep(1)
        stats = src.stats()
        assert stats["reconnects_total"] >= 1 and stats["connected"] and stats["state"] == "connected"
        assert any("reconnecting" in r.getMessage() for r in caplog.records)
        assert any("reconnected" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        src.close()
        pub.stop()
