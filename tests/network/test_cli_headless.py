"""``edgedet run`` headless end to end: RTSP in (with an outage), web view, metrics, MQTT, RTSP out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import cv2
import pytest
from nethelpers import HOST, colour_pixels, free_port, overlay_colour, wait_published
from test_mqtt import Subscriber


def edgedet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgedet", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def scrape(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def wait_until(pred, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = pred()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(step)
    return None


@pytest.mark.parametrize("args, expected", [
    (["--source", "rtsp://cam:hunter2@127.0.0.1:{port}/live"], "connection refused"),
    (["--source", "rtsp://127.0.0.1:70000/live"], "bad port"),
    (["--source", "rtsp:///live"], "malformed URL"),
    (["--source", "{video}", "--http", "{busy}"], "port already in use"),
    (["--source", "{video}", "--http", "nohost"], "expected [HOST]:PORT"),
    (["--source", "{video}", "--rtsp-out", "rtsp://127.0.0.1:notaport/x"], "bad port"),
])
def test_bad_input_is_one_line(args, expected, v1_model, pedestrians_video):
    import socket

    busy = socket.socket()
    busy.bind((HOST, 0))
    busy.listen(1)
    try:
        fill = {"port": free_port(), "video": str(pedestrians_video), "busy": f"{HOST}:{busy.getsockname()[1]}"}
        proc = edgedet("run", "--model", str(v1_model), "--headless", "--max-frames", "5",
                       *[a.format(**fill) for a in args])
    finally:
        busy.close()
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert err[-1].startswith("edgedet: error: ") and expected in err[-1], proc.stderr
    assert "hunter2" not in proc.stderr


def test_mqtt_login_refused_is_one_line(v1_model, pedestrians_video, mosquitto_auth):
    proc = edgedet("run", "--model", str(v1_model), "--headless", "--max-frames", "5",
                   "--source", str(pedestrians_video), "--mqtt", f"{HOST}:{mosquitto_auth.port}",
                   "--mqtt-user", "cam", "--mqtt-password", "letmein")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edgedet: error: MQTT broker") and "refused the login: not authorised" in last
    assert "letmein" not in proc.stderr


@pytest.mark.slow
def test_headless_run_survives_stream_outage(rtsp_server, publisher, mosquitto, v1_model, coco_labels,
                                             tmp_path):
    """One real run: RTSP in -> detection -> web view + metrics + MQTT + RTSP out; the camera's
    stream disappears for 10 s and comes back; the run carries on and says it reconnected."""
    http_port = free_port()
    base = f"http://{HOST}:{http_port}/"
    stats_json = tmp_path / "stats.json"
    sub = Subscriber(mosquitto.port, "edgedet/#")
    log_path = tmp_path / "run.log"
    cmd = [sys.executable, "-m", "edgedet", "run", "--model", str(v1_model), "--labels", str(coco_labels),
           "--source", rtsp_server.read_url("cam"), "--rtsp-transport", "udp",
           "--stall-timeout", "2", "--read-timeout", "2", "--reconnect-max-backoff", "2",
           "--headless", "--http", f"{HOST}:{http_port}",
           "--mqtt", f"{HOST}:{mosquitto.port}", "--device-name", "e2e", "--camera-name", "gate",
           "--rtsp-out", rtsp_server.publish_url("annotated"), "--rtsp-out-transport", "udp",
           "--stats-json", str(stats_json)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: get_json(base + "stats")["pipeline"]["frames"]["processed"] > 20, 60), \
            log_path.read_text()[-3000:]
        dets = get_json(base + "detections")
        assert dets["counts"].get("person", 0) >= 1

        # metrics agree with the run's stats (scraped back to back while it runs)
        m = scrape(base + "metrics")
        s = get_json(base + "stats")["pipeline"]
        processed = m[("edgedet_frames_processed_total", ())]
        assert processed <= s["frames"]["processed"] <= processed + 10
        assert m[("edgedet_source_connected", ())] == 1.0
        assert m[("edgedet_inference_latency_seconds_count", ())] > 0
        assert ("edgedet_mqtt_events_published_total", ()) in m

        # MQTT events for the people
        assert wait_until(lambda: sub.events(), 10)
        assert any(ev["counts"].get("person", 0) >= 1 for ev in sub.events())
        assert sub.on("edgedet/e2e/availability")[0][1] == b"online"

        # the annotated RTSP out stream, read by an independent client
        wait_published(rtsp_server.read_url("annotated"))
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;udp"
        try:
            cap = cv2.VideoCapture(rtsp_server.read_url("annotated"), cv2.CAP_FFMPEG)
            greens = []
            for _ in range(10):
                ok, img = cap.read()
                assert ok
                greens.append(colour_pixels(img, overlay_colour(0)))  # the overlay's colour for people
            cap.release()
        finally:
            os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
        assert max(greens) > 300, greens  # the overlay's boxes around people

        # the camera's stream goes away for 10 s
        publisher.stop()
        assert wait_until(lambda: get_json(base + "stats")["source"]["connected"] is False, 10)
        time.sleep(10)
        assert proc.poll() is None, "the run stopped during the outage"
        before = get_json(base + "stats")["pipeline"]["frames"]["processed"]
        publisher.start()
        back = time.monotonic()
        resumed = wait_until(lambda: get_json(base + "stats")["pipeline"]["frames"]["processed"] > before + 3, 20)
        took = time.monotonic() - back
        print(f"CLI run: detecting again {took:.1f} s after the stream returned")
        assert resumed and took < 8.0  # reconnect within 5 s, plus a few processed frames
        src = get_json(base + "stats")["source"]
        assert src["connected"] is True and src["reconnects_total"] >= 1
        assert scrape(base + "metrics")[("edgedet_source_reconnects_total", ())] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sub.close()
    out = log_path.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert "reconnected" in out and "lost" in out  # state changes are logged
    final = json.loads(stats_json.read_text())
    assert final["source"]["reconnects_total"] >= 1 and final["frames"]["processed"] > 40
