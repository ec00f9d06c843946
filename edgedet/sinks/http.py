"""The web view: a small threaded HTTP server (stdlib) with the live annotated stream and metrics.

``--http [HOST]:PORT`` (``:8080`` = ``127.0.0.1:8080``; other machines only with an explicit
``0.0.0.0:8080``)::

    /               the page: live view, current detections, recent objects, zones and stats (polls below)
    /stream.mjpg    the annotated frames as MJPEG (multipart/x-mixed-replace)
    /snapshot.jpg   the newest annotated frame
    /detections     JSON: frame index, time, detections (label, class_id, score, track_id, box), counts per label
    /objects        JSON: the recent tracked objects, newest first (label, id, first/last seen,
                    duration, top score, zones, live or ended, snapshot URL)
    /objects/ID.jpg the best snapshot of object ID (its picture at its top score)
    /stats          JSON: the run's stats snapshot, the source's counters (credentials masked), the
                    outputs' counters (``outputs``: RTSP out failures, RTSP serve viewers, the MQTT
                    queue), and with zones or lines their occupancy and in/out counts
    /metrics        Prometheus text format (see ``edgedet.sinks.metrics``)
    /healthz        "ok" (never needs a login: for load balancers and systemd watchdogs)

The web view keeps the last ``RECENT_OBJECTS`` objects (from ``on_objects``): the latest event of
each and its best snapshot, JPEG-encoded only when a viewer asks for it. The ``last_seen`` and
``duration`` of an object still in view are those of its latest event (``new``, ``update``).

Viewers never slow detection: ``write`` only stores the newest result. A frame is JPEG-encoded
once, by the first viewer thread that wants it, and only while someone watches. Each viewer gets
the newest frame (frames it was too slow for are skipped, never queued); a viewer whose socket
does not drain within ``SEND_TIMEOUT`` is dropped, and its socket buffer is kept small
(``SEND_BUFFER``) so a client that never reads is found out within a fraction of a second. At most
``max_clients`` streams at once: a newcomer when all are taken evicts the viewer stalled the longest
(blocked in a write for ``STALL_EVICT`` or more), waiting up to ``SLOT_WAIT`` for one; if every
viewer is healthy it gets 503.

``--http-auth user:password`` asks for HTTP basic auth; ``--http-auth token:SECRET`` accepts
``Authorization: Bearer SECRET``, or ``?token=SECRET`` once in a browser (then a cookie holding a
session value derived from the token with a key drawn at start, never the token itself). Query
strings are never logged.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..config import HttpConfig, parse_auth, parse_listen
from ..errors import SinkError
from ..frame import Result
from ..redact import mask_text, mask_url
from ..tracking import ObjectEvent
from .base import BaseSink, SinkContext

log = logging.getLogger("edgedet.http")

PAGE = Path(__file__).resolve().parent.parent / "data" / "web" / "index.html"
SEND_TIMEOUT = 2.0  # seconds a viewer's socket may refuse data before it is dropped
SEND_BUFFER = 128 * 1024  # bytes of a viewer's kernel send buffer (Linux doubles it): a few frames
STALL_EVICT = 0.75  # seconds blocked in a write after which a viewer gives its slot to a newcomer
SLOT_WAIT = 2.0  # seconds a newcomer waits for a stalled viewer's slot before 503
BOUNDARY = "edgedetframe"
COOKIE = "edgedet_session"
RECENT_OBJECTS = 30  # objects the web view lists (and whose snapshots it keeps)
SNAPSHOT_QUALITY = 85
_QUERY_RE = re.compile(r"\?[^\s\"']*")


def redact_query(text: str) -> str:
    """``text`` with every query string (``?...`` up to a space or quote) replaced by ``?***``."""
    return _QUERY_RE.sub("?***", text)


class _Auth:
    """Basic (``user:password``) or bearer (``token:SECRET``) authentication; None = open."""

    def __init__(self, spec: Optional[str]) -> None:
        self.kind = None
        self.secret = b""
        self.session = ""  # the cookie value of a ?token= login: HMAC of the token, key new each start
        if not spec:
            return
        user, password = parse_auth(spec)
        if user == "token":
            self.kind, self.secret = "bearer", password.encode()
            self.session = hmac.new(os.urandom(32), self.secret, hashlib.sha256).hexdigest()
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
            if name == COOKIE and hmac.compare_digest(value.encode(), self.session.encode()):
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


class _RecentObjects:
    """The last ``cap`` objects: the latest event of each (by track id), newest first on ``records``."""

    def __init__(self, cap: int = RECENT_OBJECTS) -> None:
        self.cap = int(cap)
        self._lock = threading.Lock()
        self._events: OrderedDict[int, ObjectEvent] = OrderedDict()

    def add(self, events: Sequence[ObjectEvent]) -> None:
        with self._lock:
            for event in events:
                old = self._events.pop(event.track_id, None)
                if event.snapshot is None and old is not None and old.snapshot is not None:
                    event = replace(event, snapshot=old.snapshot)
                self._events[event.track_id] = event
            while len(self._events) > self.cap:
                self._events.popitem(last=False)

    def records(self) -> list[dict]:
        with self._lock:
            events = list(self._events.values())
        out = []
        for event in reversed(events):
            record = event.to_record()
            record["state"] = "ended" if event.kind == "end" else "live"
            record["snapshot"] = f"objects/{event.track_id}.jpg" if event.snapshot is not None else None
            out.append(record)
        return out

    def jpeg(self, track_id: int, quality: int = SNAPSHOT_QUALITY) -> Optional[bytes]:
        with self._lock:
            event = self._events.get(track_id)
        if event is None or event.snapshot is None:
            return None
        return event.snapshot.jpeg(quality)  # encoded once per snapshot, by the first viewer


def _zone_figures(pipeline: dict) -> dict:
    """``zones`` (occupancy: total and per label) and ``lines`` (in/out) of the tracking stats."""
    tracking = pipeline.get("tracking") if isinstance(pipeline.get("tracking"), dict) else {}
    out: dict = {}
    zones = tracking.get("zones") or {}
    if zones:
        out["zones"] = {name: {"count": int(sum(by_label.values())), "labels": dict(by_label)}
                        for name, by_label in zones.items()}
    lines = tracking.get("lines") or {}
    if lines:
        out["lines"] = {name: dict(counts) for name, counts in lines.items()}
    return out


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


class _Viewer:
    """One MJPEG viewer: its socket and since when it is blocked in a write (None = not writing)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.busy_since: Optional[float] = None
        self.evicted = False

    def blocked_for(self, now: float) -> float:
        since = self.busy_since
        return 0.0 if since is None else now - since

    def evict(self) -> None:
        self.evicted = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes its thread blocked in sendall
        except OSError:
            pass


class _Viewers:
    """The stream slots (at most ``cap``); a newcomer evicts the most stalled viewer when all are taken."""

    def __init__(self, cap: int) -> None:
        self.cap = int(cap)
        self.cond = threading.Condition()
        self.active: list[_Viewer] = []
        self.rejected = 0
        self.dropped = 0

    def acquire(self, sock: socket.socket, wait: float = SLOT_WAIT) -> Optional[_Viewer]:
        deadline = time.monotonic() + wait
        with self.cond:
            while len(self.active) >= self.cap:
                now = time.monotonic()
                stalled = [v for v in self.active if not v.evicted and v.blocked_for(now) >= STALL_EVICT]
                if stalled:
                    victim = max(stalled, key=lambda v: v.blocked_for(now))
                    victim.evict()
                    self.dropped += 1
                    log.info("dropped a stalled viewer (blocked %.1fs) for a new one", victim.blocked_for(now))
                if now >= deadline:
                    self.rejected += 1
                    return None
                self.cond.wait(min(0.05, deadline - now))
            viewer = _Viewer(sock)
            self.active.append(viewer)
            return viewer

    def release(self, viewer: _Viewer) -> None:
        with self.cond:
            if viewer in self.active:
                self.active.remove(viewer)
            self.cond.notify_all()


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
        self.objects = _RecentObjects()
        self.metrics = None
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.viewers = _Viewers(http_cfg.max_clients)

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def open(self) -> None:
        if self._server is not None:
            return
        from .metrics import Metrics

        ctx = self.ctx  # read through ctx at scrape time: the pipeline fills it in before open()
        self.metrics = Metrics(lambda: ctx.stats(), lambda: ctx.source_stats(), ctx.metrics)
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

    def on_objects(self, events: Sequence[ObjectEvent]) -> None:
        self.objects.add(events)
        if self.metrics is not None:
            self.metrics.observe_objects(events)

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
        return {"viewers": len(self.viewers.active), "rejected": self.viewers.rejected,
                "dropped_viewers": self.viewers.dropped,
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
        outputs: dict = {}
        for report in self.ctx.outputs():
            try:
                outputs.update(report())
            except Exception as exc:  # never break the page because of one output's counters
                outputs.setdefault("error", str(exc))
        return _mask_all({
            "model": self.ctx.model_name,
            "source_name": mask_url(self.ctx.source_name),
            "source": source,
            "pipeline": pipeline,
            "outputs": outputs,
            "http": self.stats(),
            "time": time.time(),
            **_zone_figures(pipeline),
        })

    def objects_json(self) -> dict:
        return {"objects": self.objects.records(), "time": time.time()}

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


class _Handler(BaseHTTPRequestHandler):
    """One connection to the web view (``sink``: the ``HttpSink`` serving it, see ``_handler_for``)."""

    sink: HttpSink
    server_version = "edgedet"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections

    def log_message(self, fmt, *args):  # route to logging, never stderr noise per request
        log.debug("%s %s", self.address_string(), redact_query(mask_text(fmt % args)))

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
        allowed, set_cookie = self.sink.auth.check(self, query)
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
                _, jpeg = self.sink.latest.jpeg()
                if jpeg is None:
                    return self._send(503, b"no frame yet\n", "text/plain; charset=utf-8")
                return self._send(200, jpeg, "image/jpeg")
            if path == "/detections":
                return self._json(self.sink.detections_json())
            if path == "/stats":
                return self._json(self.sink.stats_json())
            if path == "/objects":
                return self._json(self.sink.objects_json())
            if path.startswith("/objects/"):
                return self._object_snapshot(path[len("/objects/"):])
            if path == "/metrics":
                from .metrics import CONTENT_TYPE

                return self._send(200, self.sink.metrics.render(), CONTENT_TYPE)
            return self._send(404, b"not found\n", "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError, socket.timeout, TimeoutError):
            self.close_connection = True

    # -------------------------------------------------------------- helpers
    def _object_snapshot(self, name: str) -> None:
        stem, dot, ext = name.partition(".")
        jpeg = self.sink.objects.jpeg(int(stem)) if stem.isdigit() and dot and ext == "jpg" else None
        if jpeg is None:
            return self._send(404, b"no such object snapshot\n", "text/plain; charset=utf-8")
        return self._send(200, jpeg, "image/jpeg")

    def _headers(self, status: int, ctype: str, length: Optional[int]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-store")
        if length is not None:
            self.send_header("Content-Length", str(length))
        if getattr(self, "_cookie", False):
            self.send_header("Set-Cookie", f"{COOKIE}={self.sink.auth.session}; Path=/; HttpOnly; SameSite=Strict")
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
        if self.sink.auth.kind == "basic":
            self.send_header("WWW-Authenticate", 'Basic realm="edgedet", charset="UTF-8"')
        else:
            self.send_header("WWW-Authenticate", 'Bearer realm="edgedet"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        viewer = self.sink.viewers.acquire(self.connection)
        if viewer is None:
            self.close_connection = True
            return self._send(503, b"too many viewers\n", "text/plain; charset=utf-8")
        self.close_connection = True
        self.connection.settimeout(SEND_TIMEOUT)
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:  # pragma: no cover - every platform edgedet runs on accepts it
            pass
        try:
            self._headers(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}", None)
            self._frames(viewer)
        except (socket.timeout, TimeoutError):
            with self.sink.viewers.cond:
                self.sink.viewers.dropped += 1
            log.info("dropped a stalled viewer %s", self.address_string())
        except OSError:  # the viewer went away, or was evicted for a newcomer
            pass
        finally:
            self.sink.viewers.release(viewer)

    def _frames(self, viewer: _Viewer) -> None:
        seq = 0
        latest = self.sink.latest
        while self.sink._server is not None and not latest.closed and not viewer.evicted:
            newest = latest.wait_newer(seq, timeout=1.0)
            if newest <= seq:
                continue
            seq, jpeg = latest.jpeg()
            if jpeg is None:
                continue
            viewer.busy_since = time.monotonic()
            self.wfile.write(
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                .encode() + jpeg + b"\r\n"
            )
            self.wfile.flush()
            viewer.busy_since = None


def _handler_for(sink: HttpSink) -> type:
    """The request handler class of one server: ``_Handler`` bound to ``sink``."""
    return type("Handler", (_Handler,), {"sink": sink})


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
