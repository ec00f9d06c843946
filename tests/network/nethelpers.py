"""Helpers for the network tests: real servers on 127.0.0.1 and real detections.

- ``rtsp_server``: a relay RTSP server (npm ``rtsp-streaming-server``, run by ``rtsp_server.js``);
  publishers push to ``publish_url(path)``, readers play ``read_url(path)``. It carries RTP over
  UDP only. ``tools/setup-network-tests`` installs it into ``~/.cache/edgedet-tests`` (or
  ``$EDGEDET_TEST_NODE_PREFIX``); ``$EDGEDET_TEST_NODE_MODULES`` may point at another node_modules.
- ``Publisher``: an ``ffmpeg -re -stream_loop -1`` publisher of a real video (stop/start at will).
- ``GstCamera``: a camera-like GStreamer RTSP server with shared media (``gst_rtsp_server.py``, run
  by the system Python, which has ``python3-gi``); kill it, freeze it, start it again on its port.
- ``mosquitto``: a Mosquitto broker (``/usr/sbin/mosquitto``) with optional password file.
- ``chromium_screenshot``: a real headless Chromium loads a page and saves a PNG.
- ``make_results``: real detections of the SSD MobileNet v1 model on real video frames.

A missing tool skips its tests, except under ``EDGEDET_REQUIRE_ASSETS=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"

def need(condition: bool, what: str) -> None:
    if condition:
        return
    msg = f"{what} is not available"
    if os.environ.get("EDGEDET_REQUIRE_ASSETS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_udp_range(count: int = 64) -> int:
    """A start port with ``count`` free UDP ports after it (checked, best effort)."""
    for _ in range(50):
        start = free_port(socket.SOCK_DGRAM)
        start -= start % 2
        if start + count > 65000:
            continue
        socks = []
        try:
            for p in range(start, start + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((HOST, p))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port range")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout} s")


def stop_process(proc: Optional[subprocess.Popen], timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def rtsp_status(url: str, timeout: float = 2.0) -> int:
    """The status code of a plain RTSP DESCRIBE of ``url`` (0 if no answer)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    req = f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode()
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s:
            s.sendall(req)
            head = s.recv(256).decode("latin-1")
        return int(head.split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def wait_published(url: str, timeout: float = 15.0) -> None:
    """Wait until the RTSP server serves ``url`` (the publisher has announced it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rtsp_status(url) == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not published after {timeout} s")


def node_modules() -> Optional[Path]:
    prefix = os.environ.get("EDGEDET_TEST_NODE_PREFIX") or str(Path.home() / ".cache" / "edgedet-tests")
    for cand in (os.environ.get("EDGEDET_TEST_NODE_MODULES"), str(Path(prefix) / "node_modules")):
        if cand and (Path(cand) / "rtsp-streaming-server").is_dir():
            return Path(cand)
    return None


class RtspServer:
    """The relay RTSP server process (``rtsp_server.js``); can be stopped and started again."""

    def __init__(self, mods: Path, log_path: Path) -> None:
        self.mods, self.log_path = mods, log_path
        self.publish_port, self.client_port = free_port(), free_port()
        self.rtp_start = free_udp_range(200)
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> RtspServer:
        env = dict(os.environ, NODE_PATH=str(self.mods))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["node", str(HERE / "rtsp_server.js"), str(self.publish_port), str(self.client_port),
             str(self.rtp_start)], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        wait_port(self.publish_port)
        wait_port(self.client_port)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def publish_url(self, path: str = "cam") -> str:
        return f"rtsp://{HOST}:{self.publish_port}/{path}"

    def read_url(self, path: str = "cam") -> str:
        return f"rtsp://{HOST}:{self.client_port}/{path}"


class Publisher:
    """``ffmpeg -re -stream_loop -1 -i VIDEO -c:v libx264 ... -f rtsp URL`` (UDP for our test server)."""

    def __init__(self, video: Path, url: str, log_path: Path, gop: int = 10, extra: tuple = ()) -> None:
        self.video, self.url, self.log_path, self.gop, self.extra = video, url, log_path, gop, extra
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> Publisher:
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
               "-i", str(self.video), *self.extra, "-an", "-c:v", "libx264", "-preset", "ultrafast",
               "-tune", "zerolatency", "-g", str(self.gop), "-pix_fmt", "yuv420p",
               "-f", "rtsp", "-rtsp_transport", "udp", self.url]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------ GStreamer RTSP camera

SYSTEM_PYTHON = os.environ.get("EDGEDET_TEST_GST_PYTHON", "/usr/bin/python3")
_GST_OK: dict = {}


def gst_rtsp_available() -> bool:
    """The system Python imports GstRtspServer (Debian: gir1.2-gst-rtsp-server-1.0, python3-gi)."""
    if "ok" not in _GST_OK:
        code = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
                "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
                "assert all(Gst.ElementFactory.find(e) for e in ('x264enc', 'intervideosrc', 'decodebin'))")
        try:
            _GST_OK["ok"] = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True,
                                           timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _GST_OK["ok"] = False
    return _GST_OK["ok"]


class GstCamera:
    """``gst_rtsp_server.py`` serving a real video at ``url``: ``start`` (again on the same port after
    ``kill``), ``kill`` (SIGKILL: the camera drops off), ``freeze``/``thaw`` (SIGSTOP/SIGCONT: it
    keeps its connections but sends nothing, and accepts TCP without answering)."""

    def __init__(self, video: Path, log_path: Path, path: str = "/cam") -> None:
        self.video, self.log_path, self.path = video, log_path, path
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"rtsp://{HOST}:{self.port}{self.path}"

    def start(self, timeout: float = 20.0) -> GstCamera:
        self._log = open(self.log_path, "ab")
        cmd = [SYSTEM_PYTHON, str(HERE / "gst_rtsp_server.py"), "--video", str(self.video),
               "--port", str(self.port), "--path", self.path]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 64)
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"PORT "):
            self.stop()
            raise RuntimeError(f"the GStreamer RTSP server did not start (see {self.log_path})")
        self.port = int(line.split()[1])
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close()

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
        stop_process(self.proc)
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> GstCamera:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RefusingRtspServer:
    """An RTSP server on 127.0.0.1 that answers OPTIONS, then every other request with ``status`` (e.g.
    ``503 Service Unavailable``: a busy camera; ``403 Forbidden``: a server refusing a published stream).
    ``connections`` holds the time of each client connection. Use as a context manager."""

    def __init__(self, status: str = "503 Service Unavailable") -> None:
        self.status = status
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str = "cam") -> str:
        return f"rtsp://{HOST}:{self.port}/{path}"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections.append(time.monotonic())
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        pending = b""
        try:
            while not self._stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                pending += data
                while b"\r\n\r\n" in pending:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    cseq = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("cseq:")), "1")
                    length = next((int(ln.split(":", 1)[1]) for ln in lines
                                   if ln.lower().startswith("content-length:")), 0)
                    pending = pending[length:]  # an ANNOUNCE carries its SDP
                    if lines[0].startswith("OPTIONS "):
                        answer = "200 OK\r\nPublic: OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, RECORD, TEARDOWN"
                    else:
                        answer = self.status
                    conn.sendall(f"RTSP/1.0 {answer}\r\nCSeq: {cseq}\r\n\r\n".encode())
        except OSError:
            pass

    def __enter__(self) -> RefusingRtspServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# ------------------------------------------------------------------ mosquitto

@dataclass
class Broker:
    port: int
    conf: Path
    tmp: Path
    proc: Optional[subprocess.Popen] = None

    def start(self) -> Broker:
        self._log = open(self.tmp / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(self.conf)],
                                     stdout=self._log, stderr=self._log)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()


def mosquitto_bin() -> str:
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def make_broker(tmp: Path, users: Optional[dict] = None, port: Optional[int] = None) -> Broker:
    need(Path(mosquitto_bin()).exists(), "mosquitto (apt-get install mosquitto)")
    port = port or free_port()
    lines = [f"listener {port} {HOST}", "persistence false", "log_dest stderr"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.append("user root")  # else it switches to user mosquitto, who cannot read our tmp dir
    if users:
        pw = tmp / "passwd"
        pw.write_text("")
        for user, password in users.items():
            subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True,
                           capture_output=True)
        os.chmod(pw, 0o600)
        lines += ["allow_anonymous false", f"password_file {pw}"]
    else:
        lines.append("allow_anonymous true")
    conf = tmp / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return Broker(port, conf, tmp)


# ------------------------------------------------------------------ chromium

def chromium_bin() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_screenshot(url: str, out: Path, tmp: Path, size: str = "1280,900",
                        budget_ms: int = 4000, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Load ``url`` in a real headless Chromium and save a PNG screenshot to ``out``."""
    chrome = chromium_bin()
    need(chrome is not None, "chromium (apt-get install chromium)")
    cmd = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}",
           f"--window-size={size}", f"--virtual-time-budget={budget_ms}", "--hide-scrollbars",
           f"--screenshot={out}", url]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------ real detections

def load_detector(model: Path, labels: Path, threshold: float = 0.5):
    """The project's real ``Detector`` (SSD MobileNet v1 here)."""
    from edgedet.detector import Detector

    return Detector.from_path(model, threads=2, labels=str(labels), score_threshold=threshold)


def overlay_colour(class_id: int = 0):
    """The overlay's box colour (BGR) for a class: 0 = person."""
    from edgedet.sinks.overlay import Overlay

    return Overlay().color(class_id)


def colour_pixels(image, colour, tol: int = 40) -> int:
    """How many pixels are within ``tol`` of ``colour`` (the overlay's boxes survive JPEG/H.264)."""
    import numpy as np

    return int((np.abs(image.astype(np.int16) - np.array(colour, np.int16)).max(axis=2) < tol).sum())


def make_results(video: Path, model: Path, labels_path: Path, count: int = 30, step: int = 3):
    """Real ``Result`` objects (detections of the real Detector, the real overlay) for a real video."""
    import cv2

    from edgedet.frame import Frame, Result
    from edgedet.sinks.overlay import annotate

    det = load_detector(model, labels_path)
    cap = cv2.VideoCapture(str(video))
    results = []
    index = 0
    try:
        while len(results) < count:
            ok, image = cap.read()
            if not ok:
                break
            index += 1
            if index % step:
                continue
            dets = det.detect(image)
            t = det.last_timings
            frame = Frame(image=image, index=index, timestamp=time.monotonic(), wall_time=time.time())
            result = Result(frame=frame, detections=dets, labels=list(det.labels), fps=10.0,
                            timings={"preprocess": t["preprocess_ms"], "invoke": t["invoke_ms"],
                                     "decode": t["decode_ms"]})
            annotate(result)
            results.append(result)
    finally:
        cap.release()
    return results


def run_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
