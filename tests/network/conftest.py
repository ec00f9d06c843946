"""Fixtures of the network tests: real servers on 127.0.0.1, each started and stopped by its fixture.

The servers and helpers themselves live in ``nethelpers.py`` (see its docstring for what each needs).
"""

from __future__ import annotations

import shutil

import pytest
from nethelpers import (
    GstCamera,
    Publisher,
    RtspServer,
    gst_rtsp_available,
    make_broker,
    make_results,
    need,
    node_modules,
    wait_published,
)

_RESULTS_CACHE: dict = {}


@pytest.fixture
def rtsp_server(tmp_path):
    mods = node_modules()
    need(shutil.which("node") is not None and mods is not None,
         "node + npm rtsp-streaming-server (run tools/setup-network-tests)")
    need(shutil.which("ffmpeg") is not None, "ffmpeg")
    server = RtspServer(mods, tmp_path / "rtsp_server.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def publisher(rtsp_server, pedestrians_video, tmp_path):
    """The pedestrian video published at ``rtsp_server.read_url('cam')``."""
    pub = Publisher(pedestrians_video, rtsp_server.publish_url("cam"), tmp_path / "publisher.log")
    pub.start()
    try:
        wait_published(rtsp_server.read_url("cam"))
        yield pub
    finally:
        pub.stop()


@pytest.fixture
def gst_camera(pedestrians_video, tmp_path):
    """A camera-like GStreamer RTSP server (shared media) streaming the pedestrian video at ``.url``."""
    need(gst_rtsp_available(), "GstRtspServer for the system Python (run tools/setup-dev as root)")
    cam = GstCamera(pedestrians_video, tmp_path / "gst_rtsp_server.log").start()
    try:
        yield cam
    finally:
        cam.stop()


@pytest.fixture
def mosquitto(tmp_path):
    broker = make_broker(tmp_path).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_auth(tmp_path):
    broker = make_broker(tmp_path, {"cam": "s3cret"}).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def pedestrian_results(pedestrians_video, v1_model, coco_labels):
    """30 real results on the pedestrian video (people detected by SSD MobileNet v1), made once."""
    key = (str(pedestrians_video), str(v1_model))
    if key not in _RESULTS_CACHE:
        _RESULTS_CACHE[key] = make_results(pedestrians_video, v1_model, coco_labels)
    return _RESULTS_CACHE[key]
