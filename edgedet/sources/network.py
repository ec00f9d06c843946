"""Network video streams (``rtsp://``, ``rtsps://``, ``http(s)://``, ``rtmp://``, ...) that survive outages.

``NetworkSource`` checks the URL and that the server answers before it opens the stream, so a typo
or a dead camera is one clear ``SourceError`` at start. After that it never gives up by itself
(unless ``reconnect_attempts`` says so): a reader thread decodes the stream and keeps only the newest
frame; a supervisor thread watches it and, on a stall (no frame for ``stall_timeout``), an end of
stream or a read error, drops the connection and reconnects with capped exponential backoff. Frames
buffered before an outage are never handed out after it.

FFmpeg (through OpenCV) does the protocol work. Its options are set per open through
``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (``rtsp_transport``, socket timeout) and the
``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC`` parameters. A read that hangs in
spite of them is abandoned: its thread finishes on its own and its frames are ignored.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from typing import Optional
from urllib.parse import urlsplit

from ..config import SourceConfig
from ..errors import SourceError
from ..frame import Frame
from ..redact import mask_text, mask_url

log = logging.getLogger("edgedet.source")

#: schemes we accept, with the default port of those that run over TCP (None: UDP or unknown)
SCHEMES: dict[str, Optional[int]] = {
    "rtsp": 554, "rtsps": 322, "rtsph": 80, "http": 80, "https": 443,
    "rtmp": 1935, "rtmps": 443, "tcp": None, "udp": None, "srt": None,
}
_TCP_CHECK = {"rtsp", "rtsps", "rtsph", "http", "https", "rtmp", "rtmps", "tcp"}

ANALYZE_DURATION_S = 1.0  # how much stream FFmpeg reads to learn its format when connecting
INITIAL_BACKOFF = 0.5  # seconds before the first reconnect attempt; doubles up to the cap
_ENV_LOCK = threading.Lock()  # OPENCV_FFMPEG_CAPTURE_OPTIONS is process-wide


def is_network_uri(uri: str) -> bool:
    """True for URLs this source handles (``rtsp://...``, ``http://...``, ...)."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", uri or "")
    return bool(m) and m.group(1).lower() in SCHEMES


def _avformat_major() -> int:
    import cv2

    m = re.search(r"avformat:\s*YES\s*\((\d+)\.", cv2.getBuildInformation())
    return int(m.group(1)) if m else 0


class NetworkSource:
    """A live network stream; see the module docstring. Use as a context manager."""

    live = True

    def __init__(self, uri: str, cfg: Optional[SourceConfig] = None, source_id: str = "0") -> None:
        self.uri = uri
        self.cfg = cfg or SourceConfig()
        self.source_id = source_id
        self.name = mask_url(uri)
        self.fps = 0.0
        self._cond = threading.Condition()
        self._image = None  # newest decoded image (BGR), or None
        self._image_time = 0.0  # monotonic time it was decoded
        self._image_wall = 0.0
        self._seq = 0  # bumps for every decoded frame
        self._returned_seq = 0  # last seq handed out by read()
        self._index = 0
        self._gen = 0  # connection generation; frames of older generations are ignored
        self._last_frame = 0.0
        self._connected = False
        self._state = "closed"
        self._reconnects = 0
        self._disconnects = 0
        self._failed_attempts = 0
        self._frames_received = 0
        self._frames_skipped = 0
        self._error: Optional[SourceError] = None
        self._last_problem = ""
        self._stop = threading.Event()
        self._supervisor: Optional[threading.Thread] = None
        self._reader: Optional[threading.Thread] = None
        self._reader_done = threading.Event()
        self._abandon = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Check the URL and the server, connect, and start the reader; ``SourceError`` if not."""
        if self._supervisor is not None:
            return
        self._check_url()
        self._set_state("connecting")
        answer = self._rtsp_describe()
        if answer is not None and answer[0] in (404, 0, -1):
            self._set_state("closed")
            raise SourceError(f"could not open the stream {self.name}: {self._rtsp_status_hint()}")
        cap = self._open_capture()
        if cap is None:
            self._set_state("closed")
            why = self._rtsp_status_hint()
            raise SourceError(
                f"could not open the stream {self.name}: "
                + (why or "the server answered but gave no video (wrong path, or not a video stream?)")
            )
        self._stop.clear()
        self._start_reader(cap)
        self._supervisor = threading.Thread(target=self._supervise, name="edgedet-source-net", daemon=True)
        self._supervisor.start()

    def close(self) -> None:
        self._stop.set()
        self._abandon.set()
        with self._cond:
            self._cond.notify_all()
        sup, self._supervisor = self._supervisor, None
        if sup is not None:
            sup.join(timeout=self.cfg.open_timeout + 2.0)
        reader = self._reader
        if reader is not None:
            reader.join(timeout=self.cfg.read_timeout + 2.0)
        self._connected = False
        self._set_state("closed")

    def __enter__(self) -> NetworkSource:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def read(self) -> Optional[Frame]:
        """The newest frame not yet returned; waits through outages. ``None`` only once closed."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._stop.is_set():
                    return None
                if self._image is not None and self._seq != self._returned_seq:
                    self._frames_skipped += max(0, self._seq - self._returned_seq - 1)
                    self._returned_seq = self._seq
                    self._index += 1
                    return Frame(
                        image=self._image, index=self._index - 1, timestamp=self._image_time,
                        wall_time=self._image_wall, source_id=self.source_id,
                    )
                self._cond.wait(timeout=0.5)

    def stats(self) -> dict:
        with self._cond:
            age = (time.monotonic() - self._last_frame) if self._last_frame else float("inf")
            return {
                "connected": self._connected,
                "reconnects_total": self._reconnects,
                "disconnects_total": self._disconnects,
                "failed_attempts_total": self._failed_attempts,
                "last_frame_age_s": round(age, 3) if age != float("inf") else -1.0,
                "state": self._state,
                "frames_received": self._frames_received,
                "frames_skipped": self._frames_skipped,
            }

    # ------------------------------------------------------------------ checks at start
    def _check_url(self) -> None:
        try:
            parts = urlsplit(self.uri)
        except ValueError as exc:
            raise SourceError(f"malformed URL {self.name}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise SourceError(
                f"malformed URL {self.name}: unsupported scheme {parts.scheme!r} "
                f"(expected one of {', '.join(sorted(SCHEMES))})"
            )
        host = parts.hostname
        if not host:
            raise SourceError(f"malformed URL {self.name}: no host name")
        if re.search(r"[\s]", host):
            raise SourceError(f"malformed URL {self.name}: bad host name {host!r}")
        try:
            port = parts.port
        except ValueError:
            raise SourceError(
                f"bad port in {self.name}: expected a number 1-65535"
            ) from None
        if port == 0:
            raise SourceError(f"bad port in {self.name}: expected a number 1-65535")
        port = port or SCHEMES[scheme]
        if scheme not in _TCP_CHECK or port is None:
            return
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise SourceError(f"cannot resolve host {host!r} of {self.name}: {exc.args[-1]}") from None
        last: Optional[BaseException] = None
        for family, socktype, proto, _canon, addr in infos:
            s = socket.socket(family, socktype, proto)
            s.settimeout(self.cfg.open_timeout)
            try:
                s.connect(addr)
                return
            except ConnectionRefusedError as exc:
                last = exc
            except (socket.timeout, TimeoutError) as exc:
                last = exc
            except OSError as exc:
                last = exc
            finally:
                s.close()
        if isinstance(last, ConnectionRefusedError):
            raise SourceError(f"connection refused by {host}:{port} for {self.name} (wrong port, or "
                              f"the server is not running?)")
        if isinstance(last, (socket.timeout, TimeoutError)):
            raise SourceError(f"host {host}:{port} did not answer within {self.cfg.open_timeout:g} s "
                              f"for {self.name} (unreachable?)")
        reason = getattr(last, "strerror", None) or str(last)
        raise SourceError(f"cannot reach {host}:{port} for {self.name}: {reason}")

    # ------------------------------------------------------------------ connections
    def _ffmpeg_options(self) -> str:
        scheme = urlsplit(self.uri).scheme.lower()
        opts = []
        if scheme.startswith("rtsp"):
            opts.append(f"rtsp_transport;{self.cfg.rtsp_transport}")
            # socket I/O timeout in microseconds: "timeout" since FFmpeg 5, "stimeout" before
            key = "timeout" if _avformat_major() >= 59 else "stimeout"
            opts.append(f"{key};{int(self.cfg.read_timeout * 1e6)}")
        # probe 1 s of stream instead of FFmpeg's 5 s: connects (and reconnects) ~3x faster
        opts.append(f"analyzeduration;{int(ANALYZE_DURATION_S * 1e6)}")
        return "|".join(opts)

    def _open_capture(self):
        """A ``cv2.VideoCapture`` that has opened the stream, or None."""
        import cv2

        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.cfg.open_timeout * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.read_timeout * 1000),
        ]
        opts = self._ffmpeg_options()
        with _ENV_LOCK:
            old = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
            if opts:
                os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = opts
            try:
                cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)
            except cv2.error as exc:  # pragma: no cover - depends on the OpenCV build
                log.debug("VideoCapture raised for %s: %s", self.name, mask_text(str(exc)))
                cap = None
            finally:
                if old is None:
                    os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
                else:
                    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = old
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        if 0.0 < fps < 1000.0:
            self.fps = float(fps)
        return cap

    def _start_reader(self, cap) -> None:
        with self._cond:
            self._gen += 1
            gen = self._gen
            self._image = None  # never hand out frames from before this connection
            self._returned_seq = self._seq
            self._last_frame = time.monotonic()  # stall clock starts at connect
            self._connected = True
        self._abandon = threading.Event()
        self._reader_done = threading.Event()
        self._set_state("connected")
        self._reader = threading.Thread(
            target=self._read_loop, args=(cap, gen, self._abandon, self._reader_done),
            name="edgedet-source-reader", daemon=True,
        )
        self._reader.start()

    def _read_loop(self, cap, gen: int, abandon: threading.Event, done: threading.Event) -> None:
        try:
            slow_read = 0.9 * self.cfg.read_timeout
            while not abandon.is_set():
                t0 = time.monotonic()
                ok, image = cap.read()
                if abandon.is_set():
                    break
                if not ok or image is None:
                    break
                now, wall = time.monotonic(), time.time()
                if now - t0 >= slow_read:
                    # a read that hit the timeout: FFmpeg flushes frames its decoder held back;
                    # they are as old as the stall, so they are not handed out as new
                    log.debug("dropping a frame flushed after a %.1f s read on %s", now - t0, self.name)
                    continue
                with self._cond:
                    if gen != self._gen:
                        break
                    self._image = image
                    self._image_time = now
                    self._image_wall = wall
                    self._last_frame = now
                    self._seq += 1
                    self._frames_received += 1
                    self._cond.notify_all()
        except Exception as exc:  # a decoder error is a lost stream, not a crash
            log.debug("reader error on %s: %s", self.name, mask_text(str(exc)))
        finally:
            cap.release()
            done.set()

    def _supervise(self) -> None:
        cfg = self.cfg
        failures = 0
        while not self._stop.is_set():
            # watch the current connection
            reason = None
            while not self._stop.is_set():
                if self._reader_done.wait(timeout=0.2):
                    reason = "the stream ended or a read failed"
                    break
                with self._cond:
                    age = time.monotonic() - self._last_frame
                if age > cfg.stall_timeout:
                    reason = f"no frame for {age:.1f} s (stalled)"
                    break
            if self._stop.is_set():
                break
            self._abandon.set()
            with self._cond:
                self._gen += 1  # ignore anything the old reader still produces
                self._image = None
                self._connected = False
                self._disconnects += 1
            self._set_state("reconnecting", f"lost {self.name}: {reason}; reconnecting", logging.WARNING)
            # reconnect with capped exponential backoff
            failures = 0
            while not self._stop.is_set():
                self._last_problem = ""
                cap = self._open_capture() if self._server_answers() else None
                if self._stop.is_set():
                    if cap is not None:
                        cap.release()
                    return
                if cap is not None:
                    with self._cond:
                        self._reconnects += 1
                    self._start_reader(cap)
                    log.info("reconnected to %s after %d failed attempt(s)", self.name, failures)
                    break
                failures += 1
                with self._cond:
                    self._failed_attempts += 1
                if cfg.reconnect_attempts and failures >= cfg.reconnect_attempts:
                    err = SourceError(f"gave up on {self.name} after {failures} failed reconnect attempts")
                    with self._cond:
                        self._error = err
                        self._cond.notify_all()
                    self._set_state("failed", str(err), logging.ERROR)
                    return
                delay = min(cfg.reconnect_max_backoff, INITIAL_BACKOFF * 2 ** (failures - 1))
                log.info("%s not available yet (attempt %d: %s); next try in %.1f s", self.name, failures,
                         self._last_problem or "no video", delay)
                self._stop.wait(delay)

    def _rtsp_describe(self) -> Optional[tuple[int, str]]:
        """``(status, reason)`` of a plain RTSP DESCRIBE of the stream (no login), or None."""
        parts = urlsplit(self.uri)
        if parts.scheme.lower() != "rtsp" or not parts.hostname:
            return None
        port = parts.port or 554
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        url = f"rtsp://{netloc}:{port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
        request = f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
        try:
            with socket.create_connection((parts.hostname, port), timeout=self.cfg.open_timeout) as s:
                s.sendall(request.encode())
                head = s.recv(1024).decode("latin-1")
        except (socket.timeout, TimeoutError):
            return 0, "timeout"
        except OSError:
            return None
        m = re.match(r"RTSP/1\.\d (\d{3}) ?([^\r\n]*)", head)
        if not m:
            return -1, "not RTSP"
        return int(m.group(1)), m.group(2).strip()

    def _rtsp_status_hint(self) -> str:
        """Why an RTSP server refused the stream, from its answer to a plain DESCRIBE ("" if unknown)."""
        answer = self._rtsp_describe()
        if answer is None:
            return ""
        code, text = answer
        path = urlsplit(self.uri).path or "/"
        if code == 0:
            return f"the server did not answer an RTSP request within {self.cfg.open_timeout:g} s"
        if code < 0:
            return "the server does not speak RTSP"
        if code == 404:
            return f"no stream at path {path} ({code} {text}; not published yet?)"
        if code == 401:
            if urlsplit(self.uri).username is None:
                return f"the server needs a login ({code} {text}): put user:password@ in the URL"
            return "the server refused the login, or the stream is unavailable"
        if code >= 400:
            return f"the server answered {code} {text}"
        return "the server answered but gave no video (not a video stream?)"

    def _server_answers(self) -> bool:
        """Worth a (slow, noisy) FFmpeg open? The host answers, and an RTSP server has the path."""
        try:
            self._check_url()
        except SourceError as exc:
            self._last_problem = str(exc)
            return False
        answer = self._rtsp_describe()
        if answer is not None and answer[0] in (404, 0, -1):  # surely no stream there (yet)
            self._last_problem = self._rtsp_status_hint()
            return False
        return True

    def _set_state(self, state: str, message: str = "", level: int = logging.INFO) -> None:
        if state == self._state:
            return
        self._state = state
        if message:
            log.log(level, "%s", message)
        else:
            log.log(level, "source %s: %s", self.name, state)
