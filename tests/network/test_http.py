"""The web view on 127.0.0.1: endpoints, MJPEG viewers, auth, metrics, and a real headless Chromium."""

from __future__ import annotations

import base64
import json
import logging
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
from edgedet.errors import ConfigError, SinkError
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
    # another output of the run offers its counters (as RTSP out, RTSP serve and MQTT do)
    sink.ctx.outputs.add(lambda: {"rtsp_out": {"failures": 3, "url": SOURCE}})
    with sink, Feeder(sink, pedestrian_results, stats):
        time.sleep(0.5)
        status, headers, page = get(sink.url)
        assert status == 200 and b'src="stream.mjpg"' in page and b"detections" in page
        assert b"fps_recent" in page and b"average" in page  # the recent rate beside the average

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
        assert st["outputs"]["rtsp_out"] == {"failures": 3, "url": "rtsp://admin:***@127.0.0.1:8554/cam"}

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


def test_recent_fps_recovers_after_a_stall_in_stats_and_metrics(pedestrian_results):
    from prometheus_client.parser import text_string_to_metric_families

    stats = PipelineStats(rate_window=1.0)
    sink = make_sink(stats)
    with sink:
        with Feeder(sink, pedestrian_results, stats, fps=20):
            time.sleep(1.5)
        time.sleep(2.0)  # the source stalls
        stalled = json.loads(get(sink.url + "stats")[2])["pipeline"]
        assert stalled["fps_recent"]["processed"] == 0.0 and stalled["fps"]["processed"] > 5
        with Feeder(sink, pedestrian_results, stats, fps=20):
            time.sleep(1.5)
            back = json.loads(get(sink.url + "stats")[2])["pipeline"]
            body = get(sink.url + "metrics")[2].decode()
    # fed at 20 fps (a loaded machine delivers less): the recent rate is back near it, the lifetime
    # average still carries the stall
    assert back["fps_recent"]["processed"] >= 10 and back["fps"]["processed"] < back["fps_recent"]["processed"] - 3
    samples = {(s.name, s.labels.get("kind")): s.value
               for family in text_string_to_metric_families(body) for s in family.samples}
    recent, average = samples[("edgedet_fps", "processed")], samples[("edgedet_fps_average", "processed")]
    assert recent >= 10 and average < recent - 3
    assert samples[("edgedet_frames_processed_total", None)] > 50


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
        first.recv(100)  # the first viewer is streaming, and keeps reading: it is no stalled viewer
        reading = threading.Event()
        reading.set()

        def drain():
            while reading.is_set():
                if not first.recv(65536):
                    break

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        t0 = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as err:
            get(sink.url + "stream.mjpg")
        assert err.value.code == 503 and time.monotonic() - t0 < 3.0
        assert sink.stats()["rejected"] == 1 and sink.stats()["dropped_viewers"] == 0
        reading.clear()
        first.close()
        reader.join(timeout=5)


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


def test_token_never_logged_and_cookie_is_a_session_value(pedestrian_results, caplog):
    stats = PipelineStats()
    caplog.set_level(logging.DEBUG, logger="edgedet.http")
    sink = make_sink(stats, auth="token:T0KEN-s3cret")
    with sink, Feeder(sink, pedestrian_results, stats):
        _, headers, _ = get(sink.url + "?token=T0KEN-s3cret")
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "T0KEN" not in headers["Set-Cookie"] and len(cookie.split("=", 1)[1]) >= 32
        assert get(sink.url + "stats", {"Cookie": cookie})[0] == 200
        with pytest.raises(urllib.error.HTTPError) as err:  # the token itself is no cookie
            get(sink.url + "stats", {"Cookie": "edgedet_session=T0KEN-s3cret"})
        assert err.value.code == 401
        with pytest.raises(urllib.error.HTTPError):  # a wrong token, and a malformed request line
            get(sink.url + "detections?x=1&token=T0KEN-s3cret-not")
        with socket.create_connection((HOST, sink.port)) as s:
            s.sendall(b"GET /?token=T0KEN-s3cret HTTP/9\r\n\r\n")
            s.recv(1000)
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert any("GET /?***" in line for line in lines) and any(" 400" in line or "400" in line for line in lines)
    assert not any("T0KEN" in line for line in lines), lines
    other = make_sink(stats, auth="token:T0KEN-s3cret")  # a restart draws a new key: old cookies end
    with other:
        with pytest.raises(urllib.error.HTTPError):
            get(other.url + "stats", {"Cookie": cookie})


BASE_ONLY = """
import configparser, importlib.abc, re, sys, urllib.request
cfg = configparser.ConfigParser()
cfg.read({setup!r})
names = lambda text: {{re.split(r"[<>=!;\\[ ]", line.strip())[0].lower() for line in text.splitlines() if line.strip()}}
base = names(cfg["options"]["install_requires"])
extras = set().union(*(names(v) for v in cfg["options.extras_require"].values())) - base
modules = {{{{"paho-mqtt": "paho", "tensorflow-cpu": "tensorflow"}}.get(n, n.replace("-", "_")) for n in extras}}

class NoExtras(importlib.abc.MetaPathFinder):  # the base install: no extra is importable
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in modules:
            raise ImportError(name + " is not installed")

sys.meta_path.insert(0, NoExtras())
from edgedet.config import HttpConfig
from edgedet.sinks.http import HttpSink
with HttpSink(HttpConfig(listen="127.0.0.1:{port}")) as sink:
    with urllib.request.urlopen(sink.url + "metrics", timeout=10) as resp:
        print(resp.status, b"edgedet_source_connected" in resp.read())
"""


def test_web_view_and_metrics_run_on_the_base_install():
    from pathlib import Path

    from nethelpers import run_python

    setup = Path(__file__).resolve().parents[2] / "setup.cfg"
    p = run_python(BASE_ONLY.format(setup=str(setup), port=free_port()))
    assert p.returncode == 0 and p.stdout.split() == ["200", "True"], p.stderr[-2000:]


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
    with pytest.raises(ConfigError, match=r"http.listen: expected \[HOST\]:PORT"):  # a configuration error: exit 2
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


def stalled_viewers(port: int, n: int) -> list[socket.socket]:
    """``n`` real sockets that ask for the stream and never read a byte."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((HOST, port))
        s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    return socks


def first_frame_after(url: str, limit: float) -> float:
    """Seconds until a real viewer (urllib) gets a frame of the stream; retries 503s until ``limit``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            with urllib.request.urlopen(url + "stream.mjpg", timeout=5) as resp:
                data = b""
                while b"\xff\xd9" not in data:
                    chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                    if not chunk:
                        break
                    data += chunk
                if b"\xff\xd9" in data:
                    return time.monotonic() - t0
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        time.sleep(0.1)
    return float("inf")


def test_stalled_viewers_never_lock_out_a_real_viewer(pedestrian_results):
    stats = PipelineStats()
    sink = make_sink(stats, max_clients=8)
    lockouts, socks = [], []
    with sink, Feeder(sink, pedestrian_results, stats, fps=20):
        try:
            for _ in range(3):  # 8 sockets that never read take every slot; a real viewer comes at once
                t0 = time.monotonic()
                socks += stalled_viewers(sink.port, 8)
                first_frame_after(sink.url, 20.0)
                lockouts.append(time.monotonic() - t0)
        finally:
            for s in socks:
                s.close()
        dropped = sink.stats()["dropped_viewers"]
    print(f"stalled-viewer lockout: {', '.join(f'{x:.2f}' for x in lockouts)} s")
    assert max(lockouts) < 2.5 and dropped >= 3


# ------------------------------------------------------------------ tracked objects

def track(results) -> tuple[list[Result], list, object]:
    """Copies of ``results`` tracked by the pipeline's own stage (a zone on the left half, a line
    down the middle), the ``end`` events of the objects alive at the end, and the stage."""
    import dataclasses

    from edgedet.pipeline import TrackingStage
    from edgedet.tracking import Line, TrackerSettings, Zone

    stage = TrackingStage(TrackerSettings(max_unseen_s=1.0), results[0].labels,
                          zones=[Zone("left", ((0, 0), (0.5, 0), (0.5, 1), (0, 1)), normalized=True)],
                          lines=[Line("middle", (0.5, 0), (0.5, 1), normalized=True)])
    stage.fps = 10.0  # seconds of video, as for a file
    tracked = []
    for r in results:
        r = dataclasses.replace(r, objects=[])
        stage.apply(r)
        tracked.append(r)
    return tracked, stage.finish(), stage


def tracked_sink(stats: PipelineStats, stage, **cfg) -> HttpSink:
    cfg.setdefault("listen", f"{HOST}:{free_port()}")
    ctx = SinkContext(labels=[], source_name="video.mp4", model_name="ssd_mobilenet_v1_coco_quant",
                      stats=lambda: {**stats.snapshot(), "tracking": stage.stats()})
    return HttpSink(HttpConfig(**cfg), ctx)


def play(sink: HttpSink, results, stats: PipelineStats) -> None:
    """Each result to the sink as the pipeline's output thread hands it: ``write``, then its events."""
    for r in results:
        stats.captured += 1
        stats.processed += 1
        sink.write(r)
        if r.objects:
            sink.on_objects(r.objects)
        stats.output += 1


def metric_samples(body: bytes) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_objects_list_snapshots_zones_and_lines(pedestrian_results):
    tracked, final, stage = track(pedestrian_results)
    events = [e for r in tracked for e in r.objects]
    ids = {e.track_id for e in events}
    assert len(ids) >= 5 and any(e.zones for e in events)  # people in the scene, some in the zone
    stats = PipelineStats()
    sink = tracked_sink(stats, stage)
    with sink:
        play(sink, tracked, stats)
        listed = json.loads(get(sink.url + "objects")[2])["objects"]
        assert {o["id"] for o in listed} == ids
        latest = {}
        for e in events:
            latest[e.track_id] = e
        for o in listed:
            e = latest[o["id"]]
            assert o["label"] == e.label and o["state"] == ("ended" if e.kind == "end" else "live")
            assert o["first_seen"] <= o["last_seen"] and o["duration"] == pytest.approx(e.duration, abs=1e-3)
            assert o["top_score"] >= 0.6 and o["zones"] == list(e.zones)
            assert o["snapshot"] == f"objects/{o['id']}.jpg"
        assert listed[0]["id"] == events[-1].track_id  # newest first
        assert any(o["state"] == "live" for o in listed)

        status, headers, jpeg = get(sink.url + listed[0]["snapshot"])
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert headers["Content-Type"] == "image/jpeg"
        assert image.shape == latest[listed[0]["id"]].snapshot.image.shape  # the object's crop
        for missing in ("objects/9999.jpg", "objects/abc.jpg", f"objects/{listed[0]['id']}.png", "objects/"):
            with pytest.raises(urllib.error.HTTPError) as err:
                get(sink.url + missing)
            assert err.value.code == 404, missing

        s = json.loads(get(sink.url + "stats")[2])
        figures = stage.stats()
        assert s["zones"]["left"]["labels"] == figures["zones"]["left"]
        assert s["zones"]["left"]["count"] == sum(figures["zones"]["left"].values())
        assert s["lines"]["middle"] == figures["lines"]["middle"]
        assert sum(s["lines"]["middle"].values()) >= 1  # someone crossed the middle

        m = metric_samples(get(sink.url + "metrics")[2])
        people = sum(e.kind == "new" and e.label == "person" for e in events)
        assert m[("edgedet_objects_total", (("label", "person"),))] == people > 0
        assert m[("edgedet_objects_alive", ())] == figures["alive"]
        assert m[("edgedet_zone_occupancy", (("zone", "left"),))] == s["zones"]["left"]["count"]
        for direction in ("in", "out"):
            key = ("edgedet_line_crossings_total", (("direction", direction), ("line", "middle")))
            assert m[key] == figures["lines"]["middle"][direction]

        sink.on_objects(final)  # the run ends: every object alive ends, its snapshot stays
        listed = json.loads(get(sink.url + "objects")[2])["objects"]
        assert {o["state"] for o in listed} == {"ended"} and {o["id"] for o in listed} == ids
        assert get(sink.url + listed[-1]["snapshot"])[0] == 200


def test_objects_need_the_login(pedestrian_results):
    tracked, _, stage = track(pedestrian_results)
    stats = PipelineStats()
    sink = tracked_sink(stats, stage, auth="viewer:pa55")
    good = {"Authorization": "Basic " + base64.b64encode(b"viewer:pa55").decode()}
    with sink:
        play(sink, tracked, stats)
        listed = json.loads(get(sink.url + "objects", good)[2])["objects"]
        assert listed
        snapshot = sink.url + listed[0]["snapshot"]
        for url in (sink.url + "objects", snapshot):
            with pytest.raises(urllib.error.HTTPError) as err:
                get(url)
            assert err.value.code == 401
        assert get(snapshot, good)[1]["Content-Type"] == "image/jpeg"

    sink = tracked_sink(stats, stage, auth="token:T0KEN")
    with sink:
        play(sink, tracked, stats)
        with pytest.raises(urllib.error.HTTPError):
            get(sink.url + "objects/1.jpg")
        _, headers, _ = get(sink.url + "?token=T0KEN")
        cookie = {"Cookie": headers["Set-Cookie"].split(";")[0]}  # what the page's <img> requests carry
        listed = json.loads(get(sink.url + "objects", cookie)[2])["objects"]
        assert get(sink.url + listed[0]["snapshot"] + "?v=0.7", cookie)[0] == 200


@pytest.mark.slow
def test_chromium_lists_recent_objects(pedestrian_results, tmp_path):
    import subprocess

    from nethelpers import chromium_bin, need

    tracked, _, stage = track(pedestrian_results)
    stats = PipelineStats()
    sink = tracked_sink(stats, stage)
    shot = tmp_path / "objects.png"
    with sink:
        play(sink, tracked, stats)
        listed = json.loads(get(sink.url + "objects")[2])["objects"]
        with Feeder(sink, tracked, stats, fps=10):  # the live view keeps moving meanwhile
            proc = chromium_screenshot(sink.url, shot, tmp_path, size="1280,1300", budget_ms=3000)
            chrome = chromium_bin()
            need(chrome is not None, "chromium")
            dom = subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                  f"--user-data-dir={tmp_path / 'dom-profile'}", "--virtual-time-budget=3000",
                                  "--dump-dom", sink.url], capture_output=True, timeout=60,
                                 stdin=subprocess.DEVNULL).stdout.decode()
    assert shot.exists(), proc.stderr.decode(errors="replace")[-2000:]
    for o in listed:  # one card per object, with its snapshot
        assert f"{o['label']} #{o['id']}" in dom and f'src="{o["snapshot"]}?v=' in dom
    assert "zone left" in dom and "line middle in / out" in dom
    img = cv2.imread(str(shot))
    assert img is not None and img.std() > 20
    import os
    import shutil

    keep = os.environ.get("EDGEDET_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, os.path.join(keep, "web_objects.png"))
