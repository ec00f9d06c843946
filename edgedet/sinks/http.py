"""The web view: a small threaded HTTP server (stdlib) with the live annotated stream and metrics.

``--http [HOST]:PORT`` (``:8080`` = ``127.0.0.1:8080``; other machines only with an explicit
``0.0.0.0:8080``)::

    /               the page: live view, current detections and stats (polls the two below)
    /stream.mjpg    the annotated frames as MJPEG (multipart/x-mixed-replace)
    /snapshot.jpg   the newest annotated frame
    /detections     JSON: frame index, time, detections (label, class_id, score, box), counts per label
    /stats          JSON: the run's stats snapshot, the source's counters (credentials masked)
    /metrics        Prometheus text format (see ``edgedet.sinks.metrics``)
    /healthz        "ok" (never needs a login: for load balancers and systemd watchdogs)

Viewers never slow detection: ``write`` only stores the newest result. A frame is JPEG-encoded
once, by the first viewer thread that wants it, and only while someone watches. Each viewer gets
the newest frame (frames it was too slow for are skipped, never queued); a viewer whose socket
does not drain within ``SEND_TIMEOUT`` is dropped. At most ``max_clients`` streams at once, more
get 503.

``--http-auth user:password`` asks for HTTP basic auth; ``--http-auth token:SECRET`` accepts
``Authorization: Bearer SECRET``, or ``?token=SECRET`` once in a browser (then a cookie).
"""

from __future__ import annotations

import base64
import errno
import hmac
import json
import logging
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..config import HttpConfig
from ..errors import SinkError
from ..frame import Result
from ..redact import mask_text, mask_url
from .base import BaseSink, SinkContext

log = logging.getLogger("edgedet.http")

PAGE = Path(__file__).resolve().parent.parent / "data" / "web" / "index.html"
SEND_TIMEOUT = 5.0  # seconds a viewer's socket may refuse data before it is dropped
BOUNDARY = "edgedetframe"
COOKIE = "edgedet_token"


def parse_listen(listen: str) -> tuple[str, int]:
    """``":8080"`` / ``"8080"`` -> ``("127.0.0.1", 8080)``; ``"0.0.0.0:80"``; ``"[::1]:8080"``."""
    text = str(listen).strip()
    bad = SinkError(f"http.listen: expected [HOST]:PORT (e.g. :8080 or 0.0.0.0:8080), got {listen!r}")
    if text.isdigit():
        host, port_text = "", text
    else:
        m = re.fullmatch(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]*)):(?P<port>\d{1,5})", text)
        if not m:
            raise bad
        host, port_text = m.group("v6") or m.group("host"), m.group("port")
    host = host or "127.0.0.1"
    port = int(port_text)
    if not 0 < port < 65536:
        raise SinkError(f"http.listen: port must be 1-65535, got {port}")
    return host, port


class _Auth:
    """Basic (``user:password``) or bearer (``token:SECRET``) authentication; None = open."""

    def __init__(self, spec: Optional[str]) -> None:
        self.kind = None
        self.secret = b""
        if not spec:
            return
        user, sep, password = spec.partition(":")
        if not sep or not user or not password:
            raise SinkError("http.auth: expected USER:PASSWORD or token:SECRET")
        if user == "token":
            self.kind, self.secret = "bearer", password.encode()
        else:
            self.kind, self.secret = "basic", base64.b64encode(spec.encode())

    def check(self, handler: BaseHTTPRequestHandler, query: dict) -> tuple[bool, bool]:
        """``(allowed, set_cookie)``."""
        if self.kind is None:
            return True, False
        header = handler.headers.get("Authorization", "")
        if self.kind == "basic":
            scheme, _, value = header.partition(" ")
            return scheme.lower() == "basic" and hmac.compare_digest(value.strip().encode(), self.secret), False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.secret):
            return True, False
        cookies = handler.headers.get("Cookie", "")
        for part in cookies.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.secret):
                return True, False
        token = (query.get("token") or [""])[0]
        if token and hmac.compare_digest(token.encode(), self.secret):
            return True, True
        return False, False


class _Latest:
    """The newest result, and its JPEG encoded once on demand (by whichever viewer asks first)."""

    def __init__(self, quality: int) -> None:
        self.quality = int(quality)
        self.cond = threading.Condition()
        self.result: Optional[Result] = None
        self.seq = 0
        self._jpeg_seq = -1
        self._jpeg: Optional[bytes] = None
        self._encode_lock = threading.Lock()
        self.encoded = 0  # frames encoded (for tests and stats)
        self.closed = False

    def put(self, result: Result) -> None:
        with self.cond:
            self.result = result
            self.seq += 1
            self.cond.notify_all()

    def wait_newer(self, seq: int, timeout: float) -> int:
        with self.cond:
            if self.seq <= seq and not self.closed:
                self.cond.wait(timeout)
            return self.seq

    def jpeg(self) -> tuple[int, Optional[bytes]]:
        with self._encode_lock:
            with self.cond:
                seq, result = self.seq, self.result
            if result is None:
                return 0, None
            if seq != self._jpeg_seq:
                import cv2

                image = result.annotated if result.annotated is not None else result.frame.image
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if not ok:  # pragma: no cover - OpenCV always encodes a BGR uint8 image
                    return seq, None
                self._jpeg, self._jpeg_seq = buf.tobytes(), seq
                self.encoded += 1
            return self._jpeg_seq, self._jpeg


def _label_counts(result: Optional[Result]) -> dict:
    if result is None or len(result.detections) == 0:
        return {}
    ids, counts = np.unique(result.detections.class_ids, return_counts=True)
    from ..detections import label_for

    return {label_for(result.labels, int(i)): int(n) for i, n in zip(ids.tolist(), counts.tolist())}


def _mask_all(value):
    """Mask credentials of every URL-like string inside a JSON-ready structure; inf/NaN -> None."""
    if isinstance(value, dict):
        return {k: _mask_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_all(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return mask_text(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


class HttpSink(BaseSink):
    """The web view and metrics endpoint; see the module docstring."""

    needs_annotated = True
    reads_frame = False

    def __init__(self, http_cfg: HttpConfig, ctx: Optional[SinkContext] = None) -> None:
        self.cfg = http_cfg
        self.ctx = ctx or SinkContext()
        self.host, self.port = parse_listen(http_cfg.listen or ":8080")
        self.auth = _Auth(http_cfg.auth)
        self.latest = _Latest(http_cfg.jpeg_quality)
        self.metrics = None
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._viewers = 0
        self._viewers_lock = threading.Lock()
        self._rejected = 0
        self._dropped_viewers = 0
        self.extra_metrics: list = []  # callables returning {name: (kind, help, value)}

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def open(self) -> None:
        if self._server is not None:
            return
        from .metrics import Metrics, extras_for

        ctx = self.ctx  # read through ctx at scrape time: the pipeline fills it in before open()
        self.metrics = Metrics(lambda: ctx.stats(), lambda: ctx.source_stats(),
                               lambda: self.extra_metrics + extras_for(ctx))
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type("EdgedetHTTPServer", (ThreadingHTTPServer,),
                          {"address_family": family, "daemon_threads": True, "allow_reuse_address": True})
        try:
            self._server = server_cls((self.host, self.port), _handler_for(self))
        except socket.gaierror:
            raise SinkError(f"cannot serve the web view on {self.host}:{self.port}: unknown host") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "port already in use"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "no such address on this machine"
            elif exc.errno == errno.EACCES:
                why = "permission denied (ports below 1024 need root)"
            else:
                why = exc.strerror or str(exc)
            raise SinkError(f"cannot serve the web view on {self.host}:{self.port}: {why}") from None
        if self.port == 0:
            self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="edgedet-http", daemon=True)
        self._thread.start()
        log.info("web view on %s", self.url)

    def write(self, result: Result) -> None:
        self.latest.put(result)
        if self.metrics is not None:
            self.metrics.observe(result)

    def close(self) -> None:
        server, self._server = self._server, None
        with self.latest.cond:
            self.latest.closed = True
            self.latest.cond.notify_all()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------------ content
    def stats(self) -> dict:
        return {"viewers": self._viewers, "rejected": self._rejected, "dropped_viewers": self._dropped_viewers,
                "jpeg_encoded": self.latest.encoded}

    def stats_json(self) -> dict:
        try:
            pipeline = dict(self.ctx.stats() or {})
        except Exception as exc:  # never break the page because of a stats bug
            pipeline = {"error": str(exc)}
        source = pipeline.get("source") if isinstance(pipeline.get("source"), dict) else None
        if not source:
            try:
                source = dict(self.ctx.source_stats() or {})
            except Exception:
                source = {}
        return _mask_all({
            "model": self.ctx.model_name,
            "source_name": mask_url(self.ctx.source_name),
            "source": source,
            "pipeline": pipeline,
            "http": self.stats(),
            "time": time.time(),
        })

    def detections_json(self) -> dict:
        with self.latest.cond:
            result = self.latest.result
        if result is None:
            return {"frame": None, "time": None, "detections": [], "counts": {}}
        labels = result.labels if result.labels is not None else (self.ctx.labels or None)
        return {
            "frame": result.frame.index,
            "time": result.frame.wall_time,
            "source": mask_url(str(result.frame.source_id)),
            "width": result.frame.width,
            "height": result.frame.height,
            "detections": result.detections.to_records(labels),
            "counts": _label_counts(Result(result.frame, result.detections, labels=labels)),
            "fps": round(float(result.fps or 0.0), 2),
        }

    def _viewer_slot(self, delta: int) -> bool:
        with self._viewers_lock:
            if delta > 0 and self._viewers >= self.cfg.max_clients:
                self._rejected += 1
                return False
            self._viewers += delta
            return True


def _handler_for(sink: HttpSink):
    class Handler(BaseHTTPRequestHandler):
        server_version = "edgedet"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        timeout = 30  # idle keep-alive connections

        def log_message(self, fmt, *args):  # route to logging, never stderr noise per request
            log.debug("%s %s", self.address_string(), mask_text(fmt % args))

        def do_GET(self):  # noqa: N802 - http.server API
            self._serve(head=False)

        def do_HEAD(self):  # noqa: N802
            self._serve(head=True)

        def _serve(self, head: bool) -> None:
            self._head_only = head  # one handler serves every request of a keep-alive connection
            self._cookie = False
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            if path == "/healthz":
                return self._send(200, b"ok\n", "text/plain; charset=utf-8")
            allowed, set_cookie = sink.auth.check(self, query)
            if not allowed:
                return self._unauthorized()
            self._cookie = set_cookie
            try:
                if path in ("/", "/index.html"):
                    return self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
                if path == "/stream.mjpg":
                    if head:
                        return self._send(200, b"", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                    return self._stream()
                if path == "/snapshot.jpg":
                    _, jpeg = sink.latest.jpeg()
                    if jpeg is None:
                        return self._send(503, b"no frame yet\n", "text/plain; charset=utf-8")
                    return self._send(200, jpeg, "image/jpeg")
                if path == "/detections":
                    return self._json(sink.detections_json())
                if path == "/stats":
                    return self._json(sink.stats_json())
                if path == "/metrics":
                    from .metrics import CONTENT_TYPE

                    return self._send(200, sink.metrics.render(), CONTENT_TYPE)
                return self._send(404, b"not found\n", "text/plain; charset=utf-8")
            except (BrokenPipeError, ConnectionResetError, socket.timeout, TimeoutError):
                self.close_connection = True

        # -------------------------------------------------------------- helpers
        def _headers(self, status: int, ctype: str, length: Optional[int]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Cache-Control", "no-store")
            if length is not None:
                self.send_header("Content-Length", str(length))
            if getattr(self, "_cookie", False):
                token = sink.auth.secret.decode()
                self.send_header("Set-Cookie", f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")
            self.end_headers()

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self._headers(status, ctype, len(body))
            if not getattr(self, "_head_only", False):
                self.wfile.write(body)

        def _json(self, obj) -> None:
            self._send(200, json.dumps(obj, allow_nan=False, default=_json_default).encode(),
                       "application/json")

        def _unauthorized(self) -> None:
            body = b"login required\n"
            self.send_response(HTTPStatus.UNAUTHORIZED)
            if sink.auth.kind == "basic":
                self.send_header("WWW-Authenticate", 'Basic realm="edgedet", charset="UTF-8"')
            else:
                self.send_header("WWW-Authenticate", 'Bearer realm="edgedet"')
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _stream(self) -> None:
            if not sink._viewer_slot(+1):
                self.close_connection = True
                return self._send(503, b"too many viewers\n", "text/plain; charset=utf-8")
            self.close_connection = True
            self.connection.settimeout(SEND_TIMEOUT)
            try:
                self._headers(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}", None)
                seq = 0
                while sink._server is not None and not sink.latest.closed:
                    newest = sink.latest.wait_newer(seq, timeout=1.0)
                    if newest <= seq:
                        continue
                    seq, jpeg = sink.latest.jpeg()
                    if jpeg is None:
                        continue
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                        .encode() + jpeg + b"\r\n"
                    )
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            except (socket.timeout, TimeoutError):
                sink._dropped_viewers += 1
                log.info("dropped a stalled viewer %s", self.address_string())
            finally:
                sink._viewer_slot(-1)

    return Handler


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
