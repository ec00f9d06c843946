"""File, image, directory and camera sources, and the ``open_source`` factory."""

from __future__ import annotations

import os
import shutil
import threading
import time

import cv2
import numpy as np
import pytest

from edgedet.config import config_from_dict
from edgedet.errors import ConfigError, SourceError
from edgedet.sources import mask_credentials, open_source
from edgedet.sources.camera import CameraSource, CaptureSource
from edgedet.sources.file import VideoFileSource
from edgedet.sources.images import ImageSource


def _read_all(src, limit=10_000):
    frames = []
    while len(frames) < limit:
        f = src.read()
        if f is None:
            break
        frames.append(f)
    return frames


def test_video_file_reads_every_frame_with_metadata(pedestrians_video):
    with VideoFileSource(pedestrians_video) as src:
        assert src.fps == pytest.approx(10.0) and not src.live
        assert (src.width, src.height) == (480, 360)
        frames = _read_all(src)
    assert len(frames) == 795
    assert [f.index for f in frames[:3]] == [0, 1, 2]
    f = frames[0]
    assert f.image.shape == (360, 480, 3) and f.image.dtype == np.uint8
    assert f.timestamp <= frames[-1].timestamp and abs(f.wall_time - time.time()) < 60


def test_stream_options_in_the_environment_do_not_lose_frames_of_a_file(pedestrians_video, monkeypatch):
    # low-delay options users set for their RTSP cameras make FFmpeg drop frames of a file
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    cap = cv2.VideoCapture(str(pedestrians_video))
    first = cap.read()[1]
    cap.release()
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "fflags;nobuffer|flags;low_delay")
    with VideoFileSource(pedestrians_video) as src:
        frames = iter(src.read, None)
        np.testing.assert_array_equal(next(frames).image, first)
        assert 1 + sum(1 for _ in frames) == 795
    assert os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "fflags;nobuffer|flags;low_delay"  # the user's, kept


def test_video_file_loop_restarts(pedestrians_video):
    with VideoFileSource(pedestrians_video, loop=True) as src:
        frames = _read_all(src, limit=800)
        assert len(frames) == 800 and src.stats()["loops"] == 1
        np.testing.assert_array_equal(frames[795].image, frames[0].image)


def test_video_file_realtime_paces_and_is_live(pedestrians_video):
    with VideoFileSource(pedestrians_video, realtime=True, fps=50) as src:
        assert src.live and src.fps == 50
        t0 = time.monotonic()
        _read_all(src, limit=11)
        assert time.monotonic() - t0 >= 0.19  # 10 intervals of 20 ms


def test_video_file_errors(tmp_path):
    with pytest.raises(SourceError, match="source not found"):
        VideoFileSource(tmp_path / "nope.mp4").open()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match="junk.mp4"):
        VideoFileSource(junk).open()
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="empty.avi"):
        VideoFileSource(empty).open()


def test_single_image_is_one_frame(grace_hopper):
    with ImageSource(grace_hopper) as src:
        frames = _read_all(src)
    assert len(frames) == 1 and frames[0].image.ndim == 3


def test_directory_of_images_in_name_order_skips_undecodable(tmp_path, asset):
    d = tmp_path / "imgs"
    d.mkdir()
    shutil.copy(asset("images/coral/cat.bmp"), d / "b.bmp")
    shutil.copy(asset("images/coral/grace_hopper.bmp"), d / "a.bmp")
    (d / "c.jpg").write_bytes(b"broken")
    (d / "notes.txt").write_text("not an image")
    with ImageSource(d) as src:
        assert [p.name for p in src.files] == ["a.bmp", "b.bmp", "c.jpg"]
        frames = _read_all(src)
        assert len(frames) == 2 and src.stats()["skipped"] == 1
    assert frames[0].image.shape == cv2.imread(str(d / "a.bmp")).shape


def test_image_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images in directory"):
        ImageSource(tmp_path / "empty").open()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(SourceError, match="cannot decode image .*bad.jpg"):
        ImageSource(bad).open()


def test_camera_index_that_does_not_exist_is_a_clear_error():
    with pytest.raises(SourceError, match="cannot open camera 57"):
        CameraSource(57).open()


def test_camera_reader_read_loop_on_a_recorded_file(pedestrians_video):
    """The camera class's read loop, fed by a video file through the same OpenCV capture."""
    cam = CameraSource(str(pedestrians_video), live=False, width=480, height=360)
    with cam:
        frames = _read_all(cam)
    assert len(frames) == 795 and frames[-1].index == 794


def test_camera_that_stops_delivering_is_an_error_not_end_of_input(pedestrians_video, tmp_path):
    short = tmp_path / "short.avi"
    w = cv2.VideoWriter(str(short), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(3):
        w.write(np.full((48, 64, 3), i * 50, np.uint8))
    w.release()
    cam = CameraSource(str(short), max_failures=3)  # live: a camera never "ends"
    with cam:
        assert len([cam.read() for _ in range(3)]) == 3
        with pytest.raises(SourceError, match="stopped delivering frames"):
            cam.read()


def _read_in_thread(src):
    got = {}

    def run():
        got["frame"] = src.read()
        got["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def test_interrupt_ends_the_wait_of_a_slowly_paced_file(pedestrians_video):
    """A file played at its pace (one frame every 5 s here): a stop does not wait for the next frame."""
    with VideoFileSource(pedestrians_video, realtime=True, fps=0.2) as src:
        assert src.read() is not None  # the first frame is due at once
        thread, got = _read_in_thread(src)
        time.sleep(0.3)
        t0 = time.monotonic()
        src.interrupt()
        thread.join(2.0)
        assert not thread.is_alive() and got["frame"] is None and got["at"] - t0 < 0.5
        assert src.read() is None  # and later reads too, until it is opened again
    with src:
        assert src.read() is not None


def test_interrupt_stops_a_camera_that_delivers_nothing_from_retrying(tmp_path):
    short = tmp_path / "short.avi"
    w = cv2.VideoWriter(str(short), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    w.write(np.zeros((48, 64, 3), np.uint8))
    w.release()
    cam = CameraSource(str(short), max_failures=10**6)  # would retry (every 50 ms) for ~14 hours
    with cam:
        assert cam.read() is not None
        thread, got = _read_in_thread(cam)
        time.sleep(0.3)
        t0 = time.monotonic()
        cam.interrupt()
        thread.join(2.0)
        assert not thread.is_alive() and got["frame"] is None and got["at"] - t0 < 0.5


def test_every_source_can_be_interrupted(grace_hopper):
    """Sources whose ``read`` never waits long take the protocol's default: nothing to do."""
    with ImageSource(grace_hopper) as src:
        src.interrupt()
        assert src.read() is not None


def _cfg(**source):
    return config_from_dict({"source": source})


def test_open_source_factory_picks_the_kind(pedestrians_video, grace_hopper, tmp_path):
    assert isinstance(open_source(_cfg(uri=str(pedestrians_video))), VideoFileSource)
    assert isinstance(open_source(_cfg(uri=str(grace_hopper))), ImageSource)
    assert isinstance(open_source(_cfg(uri=str(grace_hopper.parent))), ImageSource)
    cam = open_source(_cfg(uri="3"))
    assert isinstance(cam, CameraSource) and cam.target == 3 and cam.live
    cam = open_source(_cfg(camera="2", width=640, height=480))
    assert isinstance(cam, CameraSource) and cam.target == 2 and cam.req_width == 640
    rt = open_source(_cfg(uri=str(pedestrians_video), realtime=True, fps=30))
    assert rt.live and rt.req_fps == 30


def test_open_source_factory_errors(tmp_path):
    with pytest.raises(ConfigError, match="no input"):
        open_source(_cfg())
    with pytest.raises(ConfigError, match="not both"):
        open_source(_cfg(uri="a.mp4", camera="0"))
    with pytest.raises(ConfigError, match="camera index"):
        open_source(_cfg(camera="front"))
    with pytest.raises(SourceError, match="source not found: .*missing.mp4"):
        open_source(_cfg(uri=str(tmp_path / "missing.mp4")))
    with pytest.raises(SourceError, match="/dev/video99"):
        open_source(_cfg(uri="/dev/video99"))


def test_url_source_never_shows_the_password():
    src = open_source(_cfg(uri="rtsp://admin:hunter2@127.0.0.1:1/stream"))
    assert src.live and "hunter2" not in src.name and "admin:***@" in src.name
    assert mask_credentials("rtsp://u:p@h/x") == "rtsp://u:***@h/x"
    assert mask_credentials("video.mp4") == "video.mp4"


def test_generic_capture_source_error_names_the_target(tmp_path):
    with pytest.raises(SourceError, match="cannot open source .*nothing.mkv"):
        CaptureSource(str(tmp_path / "nothing.mkv")).open()
