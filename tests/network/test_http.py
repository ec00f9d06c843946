"""The web view on 127.0.0.1: endpoints, MJPEG viewers, auth, metrics, and a real headless Chromium."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from nethelpers import HOST, chromium_screenshot, colour_pixels, free_port, overlay_colour

from edgedet.config import HttpConfig
from edgedet.errors import SinkError
from edgedet.frame import Result
from edgedet.sinks.base import SinkContext
from edgedet.sinks.http import HttpSink
from edgedet.stats import PipelineStats

SOURCE = "rtsp://admin:hunter2@127.0.0.1:8554/cam"


class Feeder:
    """Plays real results into a sink at ``fps`` and keeps the run's stats like the pipeline does."""

    def __init__(self, sink: HttpSink, results, stats: PipelineStats, fps: float = 20.0) -> None:
        self.sink, self.results, self.stats, self.fps = sink, results, stats, fps
        self.stop = threading.Event()
        self.write_ms: list[float] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            r = self.results[i % len(self.results)]
            self.stats.captured += 1
            self.stats.processed += 1
            for stage, ms in r.timings.items():
                self.stats.add(stage, ms)
            t0 = time.perf_counter()
            self.sink.write(r)
            self.write_ms.append((time.perf_counter() - t0) * 1000)
            self.stats.output += 1
            i += 1
            time.sleep(1.0 / self.fps)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def make_sink(stats: PipelineStats, **cfg) -> HttpSink:
    cfg.setdefault("listen", f"{HOST}:{free_port()}")
    ctx = SinkContext(labels=[], source_name=SOURCE, model_name="ssd_mobilenet_v1_coco_quant",
                      stats=stats.snapshot,
                      source_stats=lambda: {"connected": True, "reconnects_total": 2, "state": "connected",
                                            "url": SOURCE})
    return HttpSink(HttpConfig(**cfg), ctx)


def get(url: str, headers: dict | None = None, timeout: float = 10.0):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.headers, resp.read()


def read_mjpeg_frames(host: str, port: int, n: int, path: str = "/stream.mjpg", timeout: float = 10.0,
                      headers: str = "") -> list[bytes]:
    """Read ``n`` JPEG parts of the MJPEG stream with a plain socket."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        buf = b""
        frames: list[bytes] = []
        while len(frames) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            while True:
                start = buf.find(b"\xff\xd8")
                end = buf.find(b"\xff\xd9", start + 2)
                if start < 0 or end < 0:
                    break
                frames.append(buf[start:end + 2])
                buf = buf[end + 2:]
        return frames


def box_pixels(jpeg: bytes) -> int:
    """Pixels in the overlay's colour for people (its boxes and tags)."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return colour_pixels(img, overlay_colour(0))


def test_endpoints_serve_view_detections_and_masked_stats(pedestrian_results):
    stats = PipelineStats()
    sink = make_sink(stats)
    with sink, Feeder(sink, pedestrian_results, stats):
        time.sleep(0.5)
        status, headers, page = get(sink.url)
        assert status == 200 and b'src="stream.mjpg"' in page and b"detections" in page

        status, headers, jpeg = get(sink.url + "snapshot.jpg")
        assert headers["Content-Type"] == "image/jpeg"
        assert box_pixels(jpeg) > 500  # the overlay's boxes are in the picture

        _, _, body = get(sink.url + "detections")
        dets = json.loads(body)
        assert dets["counts"].get("person", 0) >= 1
        person = next(d for d in dets["detections"] if d["label"] == "person")
        assert 0 <= person["box"][0] < person["box"][2] <= 480 and 0.5 <= person["score"] <= 1

        _, _, body = get(sink.url + "stats")
        assert b"hunter2" not in body
        st = json.loads(body)
        assert st["source_name"] == "rtsp://admin:***@127.0.0.1:8554/cam"
        assert st["pipeline"]["frames"]["processed"] > 0 and st["source"]["reconnects_total"] == 2

        assert get(sink.url + "healthz")[2] == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as err:
            get(sink.url + "nope")
        assert err.value.code == 404


def test_metrics_parse_and_match_the_run_stats(pedestrian_results):
    from prometheus_client.parser import text_string_to_metric_families

    stats = PipelineStats()
    sink = make_sink(stats)
    with sink:
        feeder = Feeder(sink, pedestrian_results, stats)
        with feeder:
            time.sleep(1.0)
        # the run is paused: the scrape and the snapshot must agree exactly
        _, headers, body = get(sink.url + "metrics")
        snap = stats.snapshot()
    assert headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("edgedet_frames_captured_total", ())] == snap["frames"]["captured"] > 0
    assert samples[("edgedet_frames_processed_total", ())] == snap["frames"]["processed"]
    assert samples[("edgedet_frames_output_total", ())] == snap["frames"]["output"]
    assert samples[("edgedet_frames_dropped_total", ())] == snap["dropped"]["total"]
    assert samples[("edgedet_source_connected", ())] == 1.0
    assert samples[("edgedet_source_reconnects_total", ())] == 2.0
    written = len(feeder.write_ms)
    assert samples[("edgedet_inference_latency_seconds_count", ())] == written
    assert samples[("edgedet_stage_latency_seconds_count", (("stage", "invoke"),))] == written
    assert ("edgedet_fps", (("kind", "processed"),)) in samples


def test_many_and_stalled_viewers_never_slow_writes(pedestrian_results):
    stats = PipelineStats()
    sink = make_sink(stats, max_clients=3)
    with sink, Feeder(sink, pedestrian_results, stats, fps=30) as feeder:
        # a viewer that connects and never reads: its socket fills, it gets dropped
        stalled = socket.create_connection((HOST, sink.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        results = {}

        def viewer(k):
            results[k] = read_mjpeg_frames(HOST, sink.port, 5)

        threads = [threading.Thread(target=viewer, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert all(len(results[k]) == 5 for k in range(2))
        assert all(box_pixels(f) > 100 for f in results[0])
        # the stalled viewer is dropped within SEND_TIMEOUT + a little
        deadline = time.monotonic() + 15
        while sink.stats()["dropped_viewers"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sink.stats()["dropped_viewers"] == 1
        stalled.close()
        # each frame was encoded once however many viewers watched it
        assert sink.latest.encoded <= stats.output
    # writes stayed cheap throughout (no encoding or network on the pipeline's thread)
    assert np.percentile(feeder.write_ms, 99) < 20


def test_max_clients_gets_503(pedestrian_results):
    stats = PipelineStats()
    sink = make_sink(stats, max_clients=1)
    with sink, Feeder(sink, pedestrian_results, stats):
        first = socket.create_connection((HOST, sink.port))
        first.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        first.recv(100)  # the first viewer is streaming
        with pytest.raises(urllib.error.HTTPError) as err:
            get(sink.url + "stream.mjpg")
        assert err.value.code == 503
        assert sink.stats()["rejected"] == 1
        first.close()


def test_basic_auth_and_token(pedestrian_results):
    stats = PipelineStats()
    sink = make_sink(stats, auth="viewer:pa55")
    with sink, Feeder(sink, pedestrian_results, stats):
        with pytest.raises(urllib.error.HTTPError) as err:
            get(sink.url + "stats")
        assert err.value.code == 401 and "Basic" in err.value.headers["WWW-Authenticate"]
        good = "Basic " + base64.b64encode(b"viewer:pa55").decode()
        assert get(sink.url + "stats", {"Authorization": good})[0] == 200
        bad = "Basic " + base64.b64encode(b"viewer:nope").decode()
        with pytest.raises(urllib.error.HTTPError):
            get(sink.url + "metrics", {"Authorization": bad})
        assert get(sink.url + "healthz")[0] == 200  # health checks need no login

    sink = make_sink(stats, auth="token:T0KEN")
    with sink, Feeder(sink, pedestrian_results, stats):
        with pytest.raises(urllib.error.HTTPError):
            get(sink.url + "metrics")
        assert get(sink.url + "metrics", {"Authorization": "Bearer T0KEN"})[0] == 200
        _, headers, _ = get(sink.url + "?token=T0KEN")
        cookie = headers["Set-Cookie"].split(";")[0]
        assert get(sink.url + "detections", {"Cookie": cookie})[0] == 200


def test_bind_errors_are_one_line_sink_errors():
    stats = PipelineStats()
    busy = socket.socket()
    busy.bind((HOST, 0))
    busy.listen(1)
    try:
        sink = make_sink(stats, listen=f"{HOST}:{busy.getsockname()[1]}")
        with pytest.raises(SinkError, match="port already in use"):
            sink.open()
    finally:
        busy.close()
    with pytest.raises(SinkError, match="no such address"):
        make_sink(stats, listen="192.0.2.1:8080").open()  # TEST-NET address: not on this machine
    with pytest.raises(SinkError, match=r"expected \[HOST\]:PORT"):
        make_sink(stats, listen="not a host")


def test_default_host_is_loopback():
    sink = HttpSink(HttpConfig(listen=":8080"))
    assert sink.host == "127.0.0.1" and sink.port == 8080


@pytest.mark.slow
def test_chromium_shows_the_live_view(pedestrian_results, tmp_path):
    stats = PipelineStats()
    sink = make_sink(stats)
    shot = tmp_path / "page.png"
    with sink, Feeder(sink, pedestrian_results, stats, fps=10):
        time.sleep(1.0)
        proc = chromium_screenshot(sink.url, shot, tmp_path, budget_ms=3000)
        viewers_seen = sink.latest.encoded
    assert shot.exists(), proc.stderr.decode(errors="replace")[-2000:]
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] > 400
    assert img.std() > 20  # not blank
    # the live view, with the overlay's boxes around people, is on the page
    assert colour_pixels(img, overlay_colour(0)) > 300
    assert viewers_seen > 0
    import os
    import shutil

    keep = os.environ.get("EDGEDET_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, os.path.join(keep, "web_view.png"))


def test_mjpeg_latency(pedestrian_results):
    """Time from ``write`` to the JPEG part arriving at a viewer (reported, loosely bounded)."""
    from test_rtsp_out import read_code, stamp

    stats = PipelineStats()
    sink = make_sink(stats)
    sent: dict[int, float] = {}
    received: dict[int, float] = {}
    stop = threading.Event()

    def feed():
        code = 1
        while not stop.is_set() and code < 200:
            r = pedestrian_results[code % len(pedestrian_results)]
            res = Result(r.frame, r.detections, r.timings, r.labels, stamp(r.annotated, code), r.fps)
            sent[code] = time.monotonic()
            sink.write(res)
            code += 1
            time.sleep(0.05)

    with sink:
        feeder = threading.Thread(target=feed, daemon=True)
        with socket.create_connection((HOST, sink.port), timeout=10) as s:
            s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
            feeder.start()
            buf = b""
            deadline = time.monotonic() + 15
            while len(received) < 60 and time.monotonic() < deadline:
                buf += s.recv(65536)
                while True:
                    start = buf.find(b"\xff\xd8")
                    end = buf.find(b"\xff\xd9", start + 2)
                    if start < 0 or end < 0:
                        break
                    now = time.monotonic()
                    img = cv2.imdecode(np.frombuffer(buf[start:end + 2], np.uint8), cv2.IMREAD_COLOR)
                    buf = buf[end + 2:]
                    received.setdefault(read_code(img), now)
        stop.set()
        feeder.join(5)
    lat = np.array([received[c] - sent[c] for c in received if c in sent]) * 1000
    assert len(lat) >= 40
    p50, p95 = np.percentile(lat, [50, 95])
    print(f"MJPEG latency (write -> part received): p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(lat)} frames")
    assert p50 < 500
