"""Network video streams (``rtsp://``, ``rtsps://``, ``http(s)://``, ``rtmp://``, ...) that survive outages.

``NetworkSource`` checks the URL and that the server's port answers, then opens the stream with
FFmpeg, so a typo or a dead camera is one clear ``SourceError`` at start. After that it never gives
up by itself (unless ``reconnect_attempts`` says so): a reader thread decodes the stream and keeps
only the newest frame; a supervisor thread watches it and, on a stall (no frame for
``stall_timeout``), an end of stream or a read error, drops the connection and reconnects with
capped exponential backoff. Frames buffered before an outage are never handed out after it.

Talking to RTSP servers:

- Nothing but FFmpeg talks RTSP before a stream is opened: a server with shared media (the usual
  ``gst-rtsp-server`` setup of DIY and embedded cameras) tears its media down when a client leaves
  and answers the next ``DESCRIBE`` ``503`` meanwhile, so a probe of our own just before FFmpeg's
  would make FFmpeg fail. Only when FFmpeg could not open the stream does a plain ``DESCRIBE`` ask
  the server why, and the next attempt waits at least the backoff.
- A missing path (404), a refused login (401), a server that does not speak RTSP or never answers
  is an error at start; other answers (503, 453, a 200 that gave no video: a busy or restarting
  server) are retried for up to ``open_timeout``, each retry logging the server's answer.
- While backing off from a server that is down (connection refused, unreachable), its TCP port is
  checked every ``PORT_POLL`` seconds: when it answers again, the next attempt starts at once
  instead of at the end of a backoff that may have grown to ``reconnect_max_backoff``.

Stopping: every wait is interruptible. ``interrupt()`` (called by the pipeline when it stops) makes
``read()`` return None at once and drops a connection attempt in progress; ``close()`` releases
what it can within about ``CLOSE_WAIT`` and leaves a thread stuck in FFmpeg (an open or a read
that hangs on a silent server, bounded by FFmpeg's own timeouts) to finish on its own: its
capture is released when it returns and its frames are ignored. At start, FFmpeg's open runs in
such a thread too, so a signal or ``close()`` stops a start-up that waits for a hung camera.

FFmpeg (through OpenCV) does the protocol work. Its options are set per open through
``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (``rtsp_transport``, socket timeout) and the
``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC`` parameters.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from ..config import SourceConfig
from ..errors import SourceError
from ..frame import Frame
from ..redact import mask_text, mask_url
from .base import BaseSource
from .ffmpeg_options import capture_options

log = logging.getLogger("edgedet.source")

#: schemes we accept, with the default port of those that run over TCP (None: UDP or unknown)
SCHEMES: dict[str, Optional[int]] = {
    "rtsp": 554, "rtsps": 322, "rtsph": 80, "http": 80, "https": 443,
    "rtmp": 1935, "rtmps": 443, "tcp": None, "udp": None, "srt": None,
}
_TCP_CHECK = {"rtsp", "rtsps", "rtsph", "http", "https", "rtmp", "rtmps", "tcp"}

ANALYZE_DURATION_S = 1.0  # how much stream FFmpeg reads to learn its format when connecting
INITIAL_BACKOFF = 0.5  # seconds before the first reconnect attempt; doubles up to the cap
PORT_POLL = 0.5  # seconds between checks of a down server's port while backing off
CLOSE_WAIT = 0.5  # seconds close() waits for each thread before leaving it to finish on its own
WAIT_SLICE = 0.05  # seconds between checks of the stop flag while waiting for an open
#: RTSP answers that mean "there is no such stream for you": not worth retrying at start
#: (0: no answer in time, -1: not RTSP)
PERMANENT_ANSWERS = frozenset({0, -1, 401, 403, 404})


def is_network_uri(uri: str) -> bool:
    """True for URLs this source handles (``rtsp://...``, ``http://...``, ...)."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", uri or "")
    return bool(m) and m.group(1).lower() in SCHEMES


def _avformat_major() -> int:
    import cv2

    m = re.search(r"avformat:\s*YES\s*\((\d+)\.", cv2.getBuildInformation())
    return int(m.group(1)) if m else 0


@dataclass
class Attempt:
    """The outcome of one connection attempt: an open capture, or why there is none."""

    cap: Any = None  # an opened cv2.VideoCapture
    problem: str = ""  # why it failed (one line, credentials masked)
    down: bool = False  # the server itself is unreachable (refused, no route, no answer on its port)
    permanent: bool = False  # at start: retrying will not help (bad path, login, not a stream)

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class Abandonable:
    """``fn()`` in a daemon thread that the caller may stop waiting for (then ``on_abandon(result)``
    runs when it finishes). ``wait(stop)`` returns the result, or None once ``stop`` is set; an
    exception in the waiting thread (a signal's) abandons the call too."""

    def __init__(self, fn: Callable[[], Any], on_abandon: Callable[[Any], None], name: str) -> None:
        self._fn, self._on_abandon = fn, on_abandon
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._abandoned = False
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        result, error = None, None
        try:
            result = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            error = exc
        with self._lock:
            if not self._abandoned:
                self._result, self._error = result, error
                self._done.set()
                return
        if result is not None:
            self._on_abandon(result)

    def wait(self, stop: threading.Event) -> Any:
        finished = False
        try:
            while not self._done.wait(WAIT_SLICE):
                if stop.is_set():
                    break
            finished = True
        finally:
            with self._lock:
                if not self._done.is_set():
                    self._abandoned = True
                elif not finished and self._result is not None:  # unwinding: nobody takes the result
                    self._on_abandon(self._result)
        if not self._done.is_set():
            return None
        if self._error is not None:
            raise self._error
        return self._result


class NetworkSource(BaseSource):
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
        self._stop = threading.Event()  # a new one per open(): threads of an earlier open keep theirs
        self._supervisor: Optional[threading.Thread] = None
        self._reader: Optional[threading.Thread] = None
        self._reader_done = threading.Event()
        self._abandon = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Check the URL and the server, connect, and start the reader; ``SourceError`` if not.

        Returns without a connection (``read()`` then returns None) if ``interrupt()`` or
        ``close()`` is called meanwhile."""
        if self._supervisor is not None:
            return
        stop = self._stop = threading.Event()
        self._set_state("connecting", level=logging.DEBUG)
        try:
            cap = self._connect_at_start(stop)
        except BaseException:  # the error itself is the one line the user sees
            self._set_state("closed", level=logging.DEBUG)
            raise
        if cap is None:  # stopped while connecting
            self._set_state("closed", level=logging.DEBUG)
            return
        self._start_reader(cap, stop)
        self._supervisor = threading.Thread(target=self._supervise, args=(stop,), name="edgedet-source-net",
                                            daemon=True)
        self._supervisor.start()

    def interrupt(self) -> None:
        """Stop waiting for the stream: ``read()`` returns None from now on and a connection attempt
        in progress is dropped. Safe from any thread and from a signal handler; ``close()`` still
        releases the connection."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        self.interrupt()
        self._abandon.set()
        sup, self._supervisor = self._supervisor, None
        reader, self._reader = self._reader, None
        deadline = time.monotonic() + CLOSE_WAIT
        for thread in (sup, reader):
            if thread is not None:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.debug("%s: %s still waits on FFmpeg; it finishes on its own", self.name, thread.name)
        with self._cond:
            self._gen += 1
            self._image = None
            self._connected = False
        self._set_state("closed")

    # ------------------------------------------------------------------ reading
    def read(self) -> Optional[Frame]:
        """The newest frame not yet returned; waits through outages. ``None`` once interrupted or closed."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._stop.is_set() or self._state == "closed":
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
                "last_error": self._last_problem,
                "frames_received": self._frames_received,
                "frames_skipped": self._frames_skipped,
            }

    # ------------------------------------------------------------------ checks
    def _address(self) -> Optional[tuple[str, int]]:
        """``(host, port)`` to check over TCP, None for schemes we do not check; ``SourceError`` if malformed."""
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
            raise SourceError(f"bad port in {self.name}: expected a number 1-65535") from None
        if port == 0:
            raise SourceError(f"bad port in {self.name}: expected a number 1-65535")
        port = port or SCHEMES[scheme]
        if scheme not in _TCP_CHECK or port is None:
            return None
        return host, port

    def _check_url(self) -> None:
        """The URL is well formed and the server's port accepts a connection; ``SourceError`` if not."""
        addr = self._address()
        if addr is None:
            return
        host, port = addr
        last = self._connect(host, port, self.cfg.open_timeout)
        if last is None:
            return
        if isinstance(last, ConnectionRefusedError):
            raise SourceError(f"connection refused by {host}:{port} for {self.name} (wrong port, or "
                              f"the server is not running?)")
        if isinstance(last, (socket.timeout, TimeoutError)):
            raise SourceError(f"host {host}:{port} did not answer within {self.cfg.open_timeout:g} s "
                              f"for {self.name} (unreachable?)")
        if isinstance(last, (socket.gaierror, UnicodeError)):
            raise SourceError(f"cannot resolve host {host!r} of {self.name}: {last.args[-1]}")
        reason = getattr(last, "strerror", None) or str(last)
        raise SourceError(f"cannot reach {host}:{port} for {self.name}: {reason}")

    @staticmethod
    def _connect(host: str, port: int, timeout: float) -> Optional[BaseException]:
        """None if ``host:port`` accepts a TCP connection (closed at once), else the error."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            return exc
        last: Optional[BaseException] = None
        for family, socktype, proto, _canon, addr in infos:
            s = socket.socket(family, socktype, proto)
            s.settimeout(timeout)
            try:
                s.connect(addr)
                return None
            except OSError as exc:
                last = exc
            finally:
                s.close()
        return last

    def _port_answers(self) -> bool:
        """A cheap check while backing off: does the server's port accept connections again?"""
        try:
            addr = self._address()
        except SourceError:
            return False
        return addr is not None and self._connect(*addr, min(self.cfg.open_timeout, PORT_POLL)) is None

    # ------------------------------------------------------------------ connections
    def _attempt(self) -> Attempt:
        """One connection attempt: the port answers, FFmpeg opens the stream (nothing else talks to
        the server before FFmpeg); if FFmpeg fails, the server is asked why."""
        try:
            self._check_url()
        except SourceError as exc:
            return Attempt(problem=str(exc), down=True, permanent=True)
        cap = self._open_capture()
        if cap is not None:
            return Attempt(cap=cap)
        answer = self._rtsp_describe()
        hint = self._rtsp_status_hint(answer)
        if answer is None:
            if urlsplit(self.uri).scheme.lower() == "rtsp":  # the connection dropped while asking: retry
                return Attempt(problem=hint or "the server closed the connection")
            return Attempt(problem=hint or "the server answered but gave no video (wrong path, or not a "
                                           "video stream?)", permanent=True)
        return Attempt(problem=hint, permanent=answer[0] in PERMANENT_ANSWERS)

    def _connect_at_start(self, stop: threading.Event):
        """An opened capture, None if stopped meanwhile; ``SourceError`` for a stream that will not open.

        Transient failures (a busy or restarting server) are retried with backoff for up to
        ``open_timeout``. Each attempt runs in a thread that is abandoned if ``stop`` is set or
        an exception (a signal) interrupts the wait."""
        t0 = time.monotonic()
        delay = INITIAL_BACKOFF
        attempt_no = 0
        while True:
            attempt_no += 1
            outcome: Optional[Attempt] = Abandonable(self._attempt, Attempt.release,
                                                     "edgedet-source-open").wait(stop)
            if outcome is None:
                return None
            if stop.is_set():
                outcome.release()
                return None
            if outcome.cap is not None:
                return outcome.cap
            self._last_problem = outcome.problem
            if outcome.permanent and outcome.down:
                raise SourceError(outcome.problem)
            if outcome.permanent or time.monotonic() - t0 + delay > self.cfg.open_timeout:
                raise SourceError(f"could not open the stream {self.name}: {outcome.problem}")
            log.info("%s not available yet (attempt %d: %s); retrying in %.1f s", self.name, attempt_no,
                     outcome.problem, delay)
            if stop.wait(delay):
                return None
            delay *= 2

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
        with capture_options(self._ffmpeg_options()):
            try:
                cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)
            except cv2.error as exc:  # pragma: no cover - depends on the OpenCV build
                log.debug("VideoCapture raised for %s: %s", self.name, mask_text(str(exc)))
                cap = None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        if 0.0 < fps < 1000.0:
            self.fps = float(fps)
        return cap

    def _start_reader(self, cap, stop: threading.Event) -> None:
        with self._cond:
            self._gen += 1
            gen = self._gen
            self._image = None  # never hand out frames from before this connection
            self._returned_seq = self._seq
            self._last_frame = time.monotonic()  # stall clock starts at connect
            self._connected = True
        self._abandon = threading.Event()
        self._reader_done = threading.Event()
        self._last_problem = ""
        self._set_state("connected")
        self._reader = threading.Thread(
            target=self._read_loop, args=(cap, gen, (self._abandon, stop), self._reader_done),
            name="edgedet-source-reader", daemon=True,
        )
        self._reader.start()

    def _read_loop(self, cap, gen: int, quit_events: tuple[threading.Event, ...], done: threading.Event) -> None:
        """Decode until the stream ends, or one of ``quit_events`` (this connection dropped, the source
        stopped) is set."""
        try:
            slow_read = 0.9 * self.cfg.read_timeout
            while not any(e.is_set() for e in quit_events):
                t0 = time.monotonic()
                ok, image = cap.read()
                if any(e.is_set() for e in quit_events):
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

    # ------------------------------------------------------------------ supervision
    def _supervise(self, stop: threading.Event) -> None:
        while not stop.is_set():
            reason = self._watch(stop)
            if reason is None:
                return
            self._abandon.set()
            with self._cond:
                self._gen += 1  # ignore anything the old reader still produces
                self._image = None
                self._connected = False
                self._disconnects += 1
            self._set_state("reconnecting", f"lost {self.name}: {reason}; reconnecting", logging.WARNING)
            if not self._reconnect(stop):
                return

    def _watch(self, stop: threading.Event) -> Optional[str]:
        """Why the current connection is lost (stream ended, stalled), or None once stopped."""
        while not stop.is_set():
            if self._reader_done.wait(timeout=0.2):
                return None if stop.is_set() else "the stream ended or a read failed"
            with self._cond:
                age = time.monotonic() - self._last_frame
            if age > self.cfg.stall_timeout:
                return f"no frame for {age:.1f} s (stalled)"
        return None

    def _reconnect(self, stop: threading.Event) -> bool:
        """Reconnect with capped exponential backoff; False if stopped or given up."""
        cfg = self.cfg
        failures = 0  # drives the backoff; reset when a down server comes back
        attempts = 0  # counts against reconnect_attempts
        while not stop.is_set():
            outcome = self._attempt()
            if stop.is_set():
                outcome.release()
                return False
            if outcome.cap is not None:
                with self._cond:
                    self._reconnects += 1
                self._start_reader(outcome.cap, stop)
                log.info("reconnected to %s after %d failed attempt(s)", self.name, attempts)
                return True
            failures += 1
            attempts += 1
            self._last_problem = outcome.problem
            with self._cond:
                self._failed_attempts += 1
            if cfg.reconnect_attempts and attempts >= cfg.reconnect_attempts:
                err = SourceError(f"gave up on {self.name} after {attempts} failed reconnect attempts "
                                  f"(last: {outcome.problem})")
                with self._cond:
                    self._error = err
                    self._cond.notify_all()
                self._set_state("failed", str(err), logging.ERROR)
                return False
            delay = min(cfg.reconnect_max_backoff, INITIAL_BACKOFF * 2 ** (failures - 1))
            log.info("%s not available yet (attempt %d: %s); next try in %.1f s", self.name, attempts,
                     outcome.problem, delay)
            if self._back_off(stop, delay, watch_port=outcome.down):
                log.info("%s: the server answers again; connecting", self.name)
                failures = 0
        return False

    def _back_off(self, stop: threading.Event, delay: float, watch_port: bool) -> bool:
        """Wait ``delay`` s (or until stopped); True if the down server's port answered first."""
        end = time.monotonic() + delay
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            if stop.wait(min(left, PORT_POLL) if watch_port else left):
                return False
            if watch_port and self._port_answers():
                return not stop.is_set()

    # ------------------------------------------------------------------ why a stream did not open
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

    def _rtsp_status_hint(self, answer: Optional[tuple[int, str]]) -> str:
        """Why an RTSP server refused the stream, from its answer to a plain DESCRIBE ("" if unknown)."""
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
        return f"the server answered {code} {text} but the stream gave no video (busy, or not a video stream?)"

    def _set_state(self, state: str, message: str = "", level: int = logging.INFO) -> None:
        if state == self._state:
            return
        self._state = state
        if message:
            log.log(level, "%s", message)
        else:
            log.log(level, "source %s: %s", self.name, state)
