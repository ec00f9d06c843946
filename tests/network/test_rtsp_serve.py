"""``--rtsp-serve``: edgedet serves the annotated stream over RTSP itself; FFmpeg and OpenCV play it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from nethelpers import HOST, SYSTEM_PYTHON, colour_pixels, free_port, gst_rtsp_available, need, overlay_colour
from test_rtsp_out import Feeder, latencies, read_code

from edgedet.config import HttpConfig, OutputConfig, RtspOutConfig
from edgedet.sinks.base import SinkContext
from edgedet.sinks.rtsp_serve import WRITE_TIMEOUT, RtspServeSink

SERVER_SCRIPT = "rtsp_server_gst.py"


@pytest.fixture
def gst_serve(monkeypatch):
    """The system Python with GStreamer's RTSP server, for edgedet's child (``$EDGEDET_GST_PYTHON``)."""
    need(gst_rtsp_available(), "GstRtspServer for the system Python (run tools/setup-dev as root)")
    monkeypatch.setenv("EDGEDET_GST_PYTHON", SYSTEM_PYTHON)
    return SYSTEM_PYTHON


def start_edgedet(model: Path, labels: Path, video: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgedet", "run", "--model", str(model), "--labels", str(labels),
           "--source", str(video), "--realtime", "--loop", "--headless", *extra]
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_CAPTURE_OPTIONS"}  # the readers' only
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def server_children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` running the RTSP server script."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and SERVER_SCRIPT.encode() in cmdline:
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(pred, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


def ffprobe(url: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries",
                           "stream=codec_name,width,height", "-of", "csv=p=0", url],
                          capture_output=True, text=True, timeout=30)


def ready(proc: subprocess.Popen, url: str) -> str:
    """Wait until ``url`` is served (ffprobe answers); the probe's output."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        probe = ffprobe(url)
        if probe.returncode == 0 and probe.stdout.strip():
            return probe.stdout.strip()
        time.sleep(0.5)
    raise AssertionError(f"{url} never served: {proc.stderr.read() if proc.poll() is not None else ''}")


def read_with_opencv(url: str, count: int = 20) -> list[np.ndarray]:
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG,
                           [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000])
    frames = []
    try:
        while cap.isOpened() and len(frames) < count:
            ok, img = cap.read()
            if not ok:
                break
            frames.append(img)
    finally:
        cap.release()
    return frames


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


@pytest.fixture
def opencv_tcp(monkeypatch):
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


def test_ffmpeg_and_opencv_play_it_and_sigterm_ends_the_server(gst_serve, opencv_tcp, v1_model, coco_labels,
                                                               pedestrians_video):
    port = free_port()
    url = f"rtsp://{HOST}:{port}/detections"
    proc = start_edgedet(v1_model, coco_labels, pedestrians_video, "--rtsp-serve", str(port))
    try:
        assert ready(proc, url) == "h264,480,360"
        children = server_children(proc.pid)
        assert len(children) == 1
        decoded = subprocess.run(["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-i", url, "-frames:v", "20",
                                  "-f", "rawvideo", "-pix_fmt", "bgr24", "-"], capture_output=True, timeout=60)
        assert decoded.returncode == 0, decoded.stderr[-300:]
        assert len(decoded.stdout) == 20 * 480 * 360 * 3  # 20 whole frames of the source's size
        frames = read_with_opencv(url, 30)
        assert len(frames) == 30 and {f.shape for f in frames} == {(360, 480, 3)}
        assert max(colour_pixels(f, overlay_colour(0)) for f in frames) > 500  # the annotated picture
    finally:
        code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert "RTSP serve: rtsp://127.0.0.1:" in err and "x264enc" in err
    assert not any(alive(pid) for pid in children)


def test_http_auth_applies_and_sigkill_ends_the_server(gst_serve, opencv_tcp, v1_model, coco_labels,
                                                       pedestrians_video):
    port = free_port()
    url = f"rtsp://{HOST}:{port}/cam"
    proc = start_edgedet(v1_model, coco_labels, pedestrians_video, "--rtsp-serve", f"{HOST}:{port}/cam",
                         "--http-auth", "viewer:s3cret")
    try:
        assert ready(proc, f"rtsp://viewer:s3cret@{HOST}:{port}/cam") == "h264,480,360"
        refused = ffprobe(url)
        assert refused.returncode != 0 and "401" in refused.stderr
        wrong = ffprobe(f"rtsp://viewer:nope@{HOST}:{port}/cam")
        assert wrong.returncode != 0 and "401" in wrong.stderr
        assert not read_with_opencv(url, 1)
        frames = read_with_opencv(f"rtsp://viewer:s3cret@{HOST}:{port}/cam", 10)
        assert len(frames) == 10 and frames[0].shape == (360, 480, 3)
        children = server_children(proc.pid)
        assert len(children) == 1
        assert b"s3cret" not in Path(f"/proc/{children[0]}/cmdline").read_bytes()
    finally:
        code, err = stop(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert wait_for(lambda: not any(alive(pid) for pid in children), 5.0)  # its stdin closed: it ended
    assert "s3cret" not in err


@pytest.mark.parametrize("spec", ["rtsp://127.0.0.1:8554/x", "70000/x", "8554/a b", "host/path"])
def test_bad_value_is_one_line_before_the_model(spec, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgedet", "run", "--model", str(tmp_path / "missing.tflite"),
                           "--source", str(tmp_path / "missing.mp4"), "--headless", "--rtsp-serve", spec],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgedet: error: rtsp_out.serve: "), proc.stderr


@pytest.mark.parametrize("case, expected", [
    ("no-gi", "--rtsp-serve needs GStreamer's RTSP server for Python"),
    ("busy", "--rtsp-serve: cannot listen on 127.0.0.1:"),
    ("hardware", "--rtsp-serve: no hardware H.264 encoder in GStreamer"),
])
def test_what_cannot_serve_is_one_line_at_start(case, expected, gst_serve, v1_model, pedestrians_video):
    import socket

    env = dict(os.environ)
    if case == "no-gi":
        env["EDGEDET_GST_PYTHON"] = sys.executable  # this venv has no gi
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        port = busy.getsockname()[1] if case == "busy" else free_port()
        extra = ["--encoder", "hardware"] if case == "hardware" else []  # no V4L2 encoder here
        proc = subprocess.run([sys.executable, "-m", "edgedet", "run", "--model", str(v1_model), "--source",
                               str(pedestrians_video), "--headless", "--max-frames", "5",
                               "--rtsp-serve", f"{port}/x", *extra],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)
    assert proc.returncode == 6 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"edgedet: error: {expected}"), proc.stderr
    if case == "no-gi":
        assert "python3-gi" in last


class CodeReader(threading.Thread):
    """An OpenCV client over TCP noting when each stamped frame code is decoded."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.received: dict[int, float] = {}
        self.frames = 0
        self.stop = threading.Event()

    def run(self) -> None:
        cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000])
        while not self.stop.is_set() and cap.isOpened():
            ok, img = cap.read()
            if not ok:
                break
            self.frames += 1
            self.received.setdefault(read_code(img), time.monotonic())
        cap.release()


@pytest.fixture
def low_delay_tcp(monkeypatch):
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS",
                       "rtsp_transport;tcp|fflags;nobuffer|flags;low_delay|analyzeduration;500000")


def test_nothing_is_sent_without_a_viewer(gst_serve, pedestrian_results):
    port = free_port()
    sink = RtspServeSink(RtspOutConfig(serve=f"{port}/det", fps=15), HttpConfig(), OutputConfig(),
                         SinkContext(source_fps=15.0))
    with sink:
        for r in pedestrian_results[:20]:
            sink.write(r)
            time.sleep(1 / 15)
        assert sink.stats()["frames_sent"] == 0 and sink.stats()["clients"] == 0
        probe = ffprobe(f"rtsp://{HOST}:{port}/det")  # a viewer comes: frames flow to it
        assert probe.returncode == 0 and probe.stdout.strip() == "h264,480,360", probe.stderr
    assert sink.stats()["frames_sent"] > 0


def test_latency_and_a_frozen_server_never_block_the_pipeline(gst_serve, low_delay_tcp, pedestrian_results):
    port = free_port()
    sink = RtspServeSink(RtspOutConfig(serve=f"{port}/det", fps=15), HttpConfig(), OutputConfig(),
                         SinkContext(source_fps=15.0))
    sink.open()
    feeder = Feeder(sink, pedestrian_results, fps=15)
    reader = CodeReader(f"rtsp://{HOST}:{port}/det")
    try:
        feeder.start()
        reader.start()
        assert wait_for(lambda: reader.frames >= 60, 30), "no frames read back"
        lat = latencies(feeder, SimpleNamespace(received=dict(reader.received)))
        assert len(lat) >= 30
        p50, p95 = np.percentile(lat, [50, 95])
        print(f"RTSP serve latency (write -> decoded by a client): p50 {p50:.0f} ms, p95 {p95:.0f} ms "
              f"over {len(lat)} frames")
        assert 0 < p50 < 1000
        child = sink.stats()
        assert child["clients"] == 1 and child["encoder"] == "x264enc"
        pid = server_children(os.getpid())[0]
        os.kill(pid, signal.SIGSTOP)  # a server that reads nothing (with a viewer connected): the pipe fills up
        try:
            worst = 0.0
            t_end = time.monotonic() + WRITE_TIMEOUT + 15
            while time.monotonic() < t_end and sink.stats()["restarts"] == 0:
                t0 = time.perf_counter()
                sink.write(pedestrian_results[0])
                worst = max(worst, time.perf_counter() - t0)
                time.sleep(0.02)
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)
        assert worst < 0.5  # write() never waited for the server (a blocked write would take WRITE_TIMEOUT)
        assert sink.stats()["restarts"] == 1 and not alive(pid)  # stuck server replaced
        assert sink.stats()["frames_dropped"] > 0
    finally:
        feeder.stop.set()
        feeder.join(5)
        reader.stop.set()
        sink.close()
        reader.join(10)
    assert not server_children(os.getpid())
