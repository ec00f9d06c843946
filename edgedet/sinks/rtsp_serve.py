"""Serve the annotated stream over RTSP from the device itself (``--rtsp-serve [HOST:]PORT/PATH``).

No separate RTSP server: viewers play ``rtsp://DEVICE:PORT/PATH`` straight from edgedet. The RTSP
server is GStreamer's (``gst-rtsp-server``), run by ``rtsp_server_gst.py`` (next to this module) in
a child process with a Python that has GStreamer's bindings: ``rtsp_out.serve_python`` or
``$EDGEDET_GST_PYTHON`` when set (only that one), else this Python or ``/usr/bin/python3``, whichever
has them (Debian and Raspberry Pi OS:
``apt install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly``). The child encodes
with the first H.264 encoder its GStreamer has of: ``v4l2h264enc`` (Raspberry Pi 4, with
``--encoder auto|hardware``), ``x264enc`` (``tune=zerolatency speed-preset=ultrafast``),
``openh264enc``; every viewer shares one encoding.

- Binds 127.0.0.1 unless a host is given (``0.0.0.0:8554/detections`` for other machines).
- ``http.auth`` applies: with ``USER:PASSWORD`` viewers must give the same (RTSP basic auth,
  ``rtsp://USER:PASSWORD@host:8554/detections``); with ``token:SECRET`` the user is ``token``
  and the password the secret. The credentials reach the child on its stdin, never its command line.
- The child starts when the sink opens (before the first frame): a missing GStreamer or a port in
  use is a one-line error at start (exit 6).
- ``write`` never blocks: it stores the newest annotated frame. A feeder thread hands each new frame
  to the child at once (raw BGR through a pipe), at most ``2 x fps`` a second, and repeats the
  newest one when none came for ``1/fps`` (``--rtsp-fps``, default the source's), so a viewer who
  joins gets a key frame within 2 s however slow detection is. Frames that arrive while a write is
  in progress are skipped (counted as ``frames_dropped``); the child drops frames its encoder is too
  slow for. While no viewer is connected (the child reports each change) no frame is sent.
- The child ends when its stdin closes, so it never outlives edgedet (even a SIGKILL of edgedet).
  If it dies or stops reading for ``WRITE_TIMEOUT``, it is restarted after 1 s, doubling up to 30 s.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import HttpConfig, OutputConfig, RtspOutConfig, parse_auth, parse_bitrate, parse_rtsp_serve
from ..errors import SinkError
from ..frame import Result
from .base import BaseSink, SinkContext
from .pipe import PipeCancelled, PipeClosed, PipeStalled, end_process, feed, write_all

log = logging.getLogger("edgedet.rtsp_serve")

SCRIPT = Path(__file__).resolve().with_name("rtsp_server_gst.py")
ENV_PYTHON = "EDGEDET_GST_PYTHON"
SYSTEM_PYTHON = "/usr/bin/python3"
HEADER = struct.Struct("<4sII")  # the child's frame header: magic, width, height
MAGIC = b"EDGF"
EXIT_UNAVAILABLE = 3  # the child's exit code when its Python lacks GStreamer's RTSP server
START_TIMEOUT = 20.0  # seconds for the child to import GStreamer and listen
WRITE_TIMEOUT = 5.0  # a frame write blocked this long: the child is stuck
STOP_WAIT = 2.0
INITIAL_BACKOFF, MAX_BACKOFF = 1.0, 30.0
DEFAULT_FPS = 15.0
PIPE_SIZE = 1 << 20  # bytes of the pipe to the child (Linux; fewer wake-ups per frame)
INSTALL_HINT = "apt install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly"


class ServerGone(Exception):
    """The child RTSP server ended or stopped reading."""


def python_candidates(configured: Optional[str] = None) -> list[str]:
    """The Pythons to try for the child, in order, without repeats: only the one chosen
    (``rtsp_out.serve_python``, else ``$EDGEDET_GST_PYTHON``) when there is one."""
    chosen = configured or os.environ.get(ENV_PYTHON)
    names = [chosen] if chosen else [sys.executable, SYSTEM_PYTHON, shutil.which("python3")]
    out: list[str] = []
    for name in names:
        if name and name not in out:
            out.append(name)
    return out


def rtsp_credentials(auth: Optional[str]) -> tuple[str, str]:
    """``http.auth`` as RTSP basic credentials (``token:SECRET``: user ``token``); ``("", "")`` = open."""
    if not auth:
        return "", ""
    return parse_auth(auth)


class ServerProcess:
    """One child ``rtsp_server_gst.py``: ``start`` (raises ``ServerGone`` with its reason), ``send``
    a frame, ``stop``. ``unavailable``: its Python lacks GStreamer's RTSP server. A context manager."""

    def __init__(self, python: str, settings: dict) -> None:
        self.python, self.settings = python, settings
        self.proc: Optional[subprocess.Popen] = None
        self.info: dict = {}
        self.clients = 0
        self.unavailable = False
        self._stderr_tail: list[str] = []

    def start(self) -> dict:
        try:
            self.proc = subprocess.Popen([self.python, str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            self.unavailable = True
            raise ServerGone(f"{self.python}: {exc.strerror or exc}") from None
        threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True).start()
        try:
            self.proc.stdin.write((json.dumps(self.settings) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass  # the child ended already: its answer says why
        line = self._first_line()
        if not line.startswith("READY "):
            try:
                self.proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                pass
            self.unavailable = self.proc.poll() == EXIT_UNAVAILABLE
            reason = line[len("ERROR "):] if line.startswith("ERROR ") else self.reason()
            self.stop()
            raise ServerGone(reason)
        self.info = json.loads(line[len("READY "):])
        threading.Thread(target=self._read_reports, args=(self.proc,), daemon=True).start()
        feed(self.proc, PIPE_SIZE)
        return self.info

    def _first_line(self) -> str:
        """The child's first report (READY or ERROR), "" if it ended or said nothing in time."""
        proc, deadline, data = self.proc, time.monotonic() + START_TIMEOUT, b""
        while b"\n" not in data and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\n", 1)[0].decode(errors="replace").strip()

    def _read_reports(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stdout.readline, b""):
            key, _, value = raw.decode(errors="replace").strip().partition(" ")
            if key == "CLIENTS" and value.isdigit():
                self.clients = int(value)
                log.debug("RTSP serve: %d viewer(s)", self.clients)

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode(errors="replace").strip()
            if line:
                self._stderr_tail = (self._stderr_tail + [line])[-3:]

    def reason(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        tail = "; ".join(self._stderr_tail[-2:])
        return tail or ("the RTSP server stopped" + (f" (exit {code})" if code is not None else ""))

    def send(self, image: np.ndarray, cancel: threading.Event) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise ServerGone(self.reason())
        h, w = image.shape[:2]
        try:
            write_all(proc, (HEADER.pack(MAGIC, w, h), memoryview(np.ascontiguousarray(image))), WRITE_TIMEOUT, cancel)
        except PipeCancelled:
            raise ServerGone("stopped") from None
        except PipeStalled:
            raise ServerGone(f"the RTSP server read nothing for {WRITE_TIMEOUT:g} s") from None
        except PipeClosed:
            raise ServerGone(self.reason()) from None

    def stop(self) -> None:
        """Close its stdin (it ends by itself), then SIGTERM, then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        end_process(proc, STOP_WAIT)
        for stream in (proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(pythons: list[str], settings: dict) -> ServerProcess:
    """A started ``ServerProcess`` with the first of ``pythons`` that has GStreamer's RTSP server."""
    missing = []
    for python in pythons:
        server = ServerProcess(python, settings)
        try:
            server.start()
            return server
        except ServerGone as exc:
            if not server.unavailable:
                raise SinkError(f"--rtsp-serve: {exc}") from None
            missing.append(python)
    raise SinkError(f"--rtsp-serve needs GStreamer's RTSP server for Python, which none of {', '.join(missing)} "
                    f"has ({INSTALL_HINT}; or set rtsp_out.serve_python / ${ENV_PYTHON})")


class RtspServeSink(BaseSink):
    """Serves ``result.annotated`` over RTSP; see the module docstring."""

    needs_annotated = True
    reads_frame = False

    def __init__(self, rtsp_cfg: RtspOutConfig, http_cfg: Optional[HttpConfig] = None,
                 output_cfg: Optional[OutputConfig] = None, ctx: Optional[SinkContext] = None) -> None:
        self.cfg = rtsp_cfg
        self.host, self.port, self.path = parse_rtsp_serve(rtsp_cfg.serve or "")
        self.user, password = rtsp_credentials((http_cfg or HttpConfig()).auth)
        self.ctx = ctx or SinkContext()
        self._settings = {"host": self.host, "port": self.port, "path": self.path, "fps": self.fps,
                          "bitrate": parse_bitrate(rtsp_cfg.bitrate),
                          "encoder": (output_cfg or OutputConfig()).encoder, "user": self.user, "password": password}
        self._server: Optional[ServerProcess] = None
        self._python: Optional[str] = None
        self._cond = threading.Condition()
        self._image: Optional[np.ndarray] = None
        self._seq = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pending = False  # the stored frame has not been taken by the feeder yet
        self._counts = {"frames_sent": 0, "frames_dropped": 0, "restarts": 0}
        self._backoff = INITIAL_BACKOFF

    @property
    def fps(self) -> float:
        return float(self.cfg.fps or self.ctx.source_fps or DEFAULT_FPS)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rtsp://{host}:{self.port}{self.path}"

    def open(self) -> None:
        self._settings["fps"] = self.fps  # the source is open now: its rate is known
        self._server = start_server(python_candidates(self.cfg.serve_python), self._settings)
        self._python = self._server.python
        log.info("RTSP serve: %s (%s%s)", self.url, self._server.info.get("encoder"),
                 ", basic auth" if self.user else "")
        self.ctx.metrics.add(self.prometheus)
        self.ctx.outputs.add(self.report)
        self._thread = threading.Thread(target=self._run, name="edgedet-rtsp-serve", daemon=True)
        self._thread.start()

    def write(self, result: Result) -> None:
        image = result.annotated if result.annotated is not None else result.frame.image
        with self._cond:
            if self._pending:
                self._counts["frames_dropped"] += 1
            self._image, self._pending = image, True
            self._seq += 1
            self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=WRITE_TIMEOUT + 1.0)
            self._thread = None
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        self.ctx.metrics.remove(self.prometheus)
        self.ctx.outputs.remove(self.report)

    def stats(self) -> dict:
        server = self._server
        return {"url": self.url, "running": bool(server and server.proc), "clients": server.clients if server else 0,
                "encoder": server.info.get("encoder") if server else None, **self._counts}

    def report(self) -> dict:
        return {"rtsp_serve": self.stats()}

    def prometheus(self) -> dict:
        s = self.stats()
        return {
            "edgedet_rtsp_serve_clients": ("gauge", "RTSP viewers connected to --rtsp-serve", s["clients"]),
            "edgedet_rtsp_serve_frames_sent": ("counter", "frames handed to the RTSP server", s["frames_sent"]),
            "edgedet_rtsp_serve_restarts": ("counter", "restarts of the RTSP server process", s["restarts"]),
        }

    # ------------------------------------------------------------------ feeder thread
    def _next(self, sent_seq: int, last_new: float) -> tuple[Optional[np.ndarray], int]:
        """Wait for a new frame (not sooner than half a frame interval after the last new one sent;
        a repeat never delays it), or the newest again after a frame interval without one."""
        period = 1.0 / self.fps
        with self._cond:
            self._cond.wait_for(lambda: self._stop.is_set() or self._seq != sent_seq, timeout=period)
            fresh = self._seq != sent_seq
        wait = last_new + period / 2 - time.monotonic()
        if fresh and wait > 0 and self._stop.wait(wait):
            return None, sent_seq
        with self._cond:
            self._pending = False
            return self._image, self._seq

    def _run(self) -> None:
        sent_seq, last_new = 0, 0.0
        while not self._stop.is_set():
            image, seq = self._next(sent_seq, last_new)
            if image is None or self._stop.is_set():
                continue
            if not self._ensure_server():
                continue
            if self._server.clients == 0:  # nobody connected: nothing to send
                sent_seq = seq
                continue
            try:
                self._server.send(image, self._stop)
            except ServerGone as exc:
                if not self._stop.is_set():
                    self._lost(str(exc))
                continue
            if seq != sent_seq:
                last_new = time.monotonic()
            self._counts["frames_sent"] += 1  # repeats included
            sent_seq = seq

    def _ensure_server(self) -> bool:
        if self._server is not None and self._server.proc is not None:
            return True
        if self._stop.wait(self._backoff):
            return False
        self._backoff = min(MAX_BACKOFF, self._backoff * 2)
        try:
            server = start_server([self._python or SYSTEM_PYTHON], self._settings)
        except SinkError as exc:
            log.warning("%s; retrying in %.0f s", exc, self._backoff)
            return False
        if self._stop.is_set():  # closed while it started
            server.stop()
            return False
        self._server = server
        self._counts["restarts"] += 1
        self._backoff = INITIAL_BACKOFF
        log.info("RTSP serve: %s again", self.url)
        return True

    def _lost(self, reason: str) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        log.warning("RTSP serve %s: %s; restarting in %.0f s", self.url, reason, self._backoff)
