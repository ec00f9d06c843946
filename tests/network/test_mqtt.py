"""MqttSink against a real Mosquitto broker on 127.0.0.1 (restarted mid-run, refusing logins, late)."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from nethelpers import HOST, free_port, make_broker

from edgedet.config import MqttConfig
from edgedet.errors import ConfigError, SinkError
from edgedet.sinks.base import SinkContext
from edgedet.sinks.mqtt import MqttSink

mqtt = pytest.importorskip("paho.mqtt.client")


class Subscriber:
    """A plain paho client that records every message under ``topic``."""

    def __init__(self, port: int, topic: str = "#", username=None, password=None) -> None:
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{time.monotonic_ns()}")
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(HOST, port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "subscriber could not subscribe"

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, suffix: str) -> list:
        with self.lock:
            return [(t, p, r) for t, p, r in self.messages if t.endswith(suffix)]

    def events(self) -> list[dict]:
        return [json.loads(p) for _, p, _ in self.on("/detections")]

    def wait_for(self, pred, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return pred()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_sink(port: int, **cfg) -> MqttSink:
    cfg.setdefault("device", "pi-test")
    cfg.setdefault("camera", "door")
    ctx = SinkContext(model_name="ssd_mobilenet_v1_coco_quant")
    return MqttSink(MqttConfig(host=f"{HOST}:{port}", **cfg), ctx)


def test_people_events_state_and_availability(mosquitto, pedestrian_results):
    sub = Subscriber(mosquitto.port, "edgedet/#")
    try:
        sink = make_sink(mosquitto.port, max_rate=0)
        with sink:
            for r in pedestrian_results:
                sink.write(r)
            assert sub.wait_for(lambda: len(sub.events()) >= 3)
            time.sleep(0.3)
            stats = sink.stats()
        assert sub.wait_for(lambda: len(sub.events()) >= stats["events_published"], 5)
        events = sub.events()
        assert stats["events_published"] == len(events) and stats["events_dropped"] == 0
        # only changes of the label counts are published, and there were some
        assert 3 <= len(events) < len(pedestrian_results)
        for ev in events:
            assert ev["device"] == "pi-test" and ev["camera"] == "door"
            assert set(ev) >= {"frame", "time", "counts", "labels", "detections", "model"}
            assert sum(ev["counts"].values()) == len(ev["detections"])
            for d in ev["detections"]:
                assert len(d["box"]) == 4 and 0 <= d["score"] <= 1 and d["label"] in ev["counts"]
        assert all(ev["counts"].get("person", 0) >= 1 for ev in events)
        frames = [ev["frame"] for ev in events]
        assert frames == sorted(frames)
        topics = {t for t, _, _ in sub.messages}
        assert "edgedet/pi-test/door/detections" in topics and "edgedet/pi-test/door/state" in topics
        # offline on a clean exit: acknowledged by the broker before close() returns, delivered
        # to the subscriber a moment later
        assert sub.wait_for(lambda: len(sub.on("edgedet/pi-test/availability")) >= 2, 5)
        avail = sub.on("edgedet/pi-test/availability")
        assert [p for _, p, _ in avail] == [b"online", b"offline"]
        state = json.loads(sub.on("/state")[-1][1])
        assert state["counts"] == events[-1]["counts"]
    finally:
        sub.close()
    # retained: a new subscriber learns the state and availability at once
    late = Subscriber(mosquitto.port, "edgedet/#")
    try:
        assert late.wait_for(lambda: late.on("/state") and late.on("/availability"), 5)
        assert all(r for _, _, r in late.messages)
        assert late.on("/availability")[-1][1] == b"offline"
    finally:
        late.close()


def test_rate_limit_and_every_frame_mode(mosquitto, pedestrian_results):
    sub = Subscriber(mosquitto.port, "edgedet/+/+/detections")
    try:
        sink = make_sink(mosquitto.port, only_on_change=False, max_rate=4.0)
        with sink:
            t0 = time.monotonic()
            for r in pedestrian_results:  # 30 frames over ~1.5 s
                sink.write(r)
                time.sleep(0.05)
            elapsed = time.monotonic() - t0
            sub.wait_for(lambda: len(sub.events()) >= 5, 3)
        n = len(sub.events())
        assert 2 <= n <= 4.0 * elapsed + 1
    finally:
        sub.close()


@pytest.mark.slow
def test_broker_restart_mid_run_delivers_queued_events(tmp_path, pedestrian_results, caplog):
    caplog.set_level(logging.INFO, logger="edgedet.mqtt")
    broker = make_broker(tmp_path).start()
    sink = make_sink(broker.port, max_rate=0, only_on_change=False, qos=1, queue_size=10)
    sub = Subscriber(broker.port)
    try:
        sink.open()
        for r in pedestrian_results[:5]:
            sink.write(r)
        assert sub.wait_for(lambda: len(sub.events()) == 5)
        sub.close()
        broker.stop()
        assert sink.stats()["connected"] is False or sub.wait_for(lambda: not sink.stats()["connected"], 5)
        during = pedestrian_results[5:20]  # 15 events while the broker is down: 5 too many
        for r in during:
            sink.write(r)  # never blocks, never raises
        stats = sink.stats()
        assert stats["events_queued"] == 10 and stats["events_dropped"] == 5
        broker.start()
        sub = Subscriber(broker.port)  # subscribed before the sink's reconnect (>= 1 s backoff)
        assert sub.wait_for(lambda: len(sub.events()) >= 10, 20), "queued events not delivered"
        got = [ev["frame"] for ev in sub.events()]
        assert got == [r.frame.index for r in during[5:]]  # the newest 10, in order
        for r in pedestrian_results[20:23]:
            sink.write(r)
        assert sub.wait_for(lambda: len(sub.events()) >= 13)
        msgs = [r.getMessage() for r in caplog.records]
        assert any("lost the MQTT broker" in m for m in msgs)
        assert any("is back; sending" in m for m in msgs)
        assert any("dropped 1 event" in m for m in msgs)
    finally:
        sink.close()
        sub.close()
        broker.stop()


def test_login_refused_is_a_one_line_error(mosquitto_auth):
    sink = make_sink(mosquitto_auth.port, username="cam", password="wrong")
    with pytest.raises(SinkError) as err:
        sink.open()
    msg = str(err.value)
    assert "refused the login: not authorised" in msg and "\n" not in msg and "wrong" not in msg
    # and the right password works
    good = make_sink(mosquitto_auth.port, username="cam", password="s3cret")
    with good:
        assert good.stats()["connected"]


def test_broker_late_at_start_is_retried(tmp_path, pedestrian_results, caplog):
    """The device boots before its broker: no error, events wait and go out once it is up."""
    caplog.set_level(logging.INFO, logger="edgedet.mqtt")
    port = free_port()
    sink = make_sink(port, max_rate=0)
    broker = None
    sub = None
    try:
        sink.open()  # nothing listens yet: logged, not raised
        assert any("not reachable" in r.getMessage() for r in caplog.records)
        sink.write(pedestrian_results[0])
        broker = make_broker(tmp_path, port=port).start()
        sub = Subscriber(port)
        assert sub.wait_for(lambda: len(sub.events()) >= 1, 20)
        assert sub.events()[0]["frame"] == pedestrian_results[0].frame.index
    finally:
        sink.close()
        if sub:
            sub.close()
        if broker:
            broker.stop()


def test_bad_broker_spec():
    with pytest.raises(ConfigError, match="mqtt.host: expected HOST"):  # a configuration error: exit 2
        MqttSink(MqttConfig(host="bad host:xx"))
