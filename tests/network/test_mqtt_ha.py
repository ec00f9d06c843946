"""Object events, snapshots, counts and Home Assistant discovery over a real Mosquitto broker.

The discovery payloads are checked against Home Assistant's documented MQTT discovery schema
(https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery and the binary_sensor.mqtt,
sensor.mqtt and camera.mqtt pages): the config topic's form, each component's required keys, the
documented keys only, valid device and state classes, a device with identifiers (which needs a
unique_id), and availability through ``availability_topic`` (never together with ``availability``).
"""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from nethelpers import HOST
from test_mqtt import Subscriber

from edgedet.config import MqttConfig
from edgedet.pipeline import TrackingStage
from edgedet.sinks.base import SinkContext
from edgedet.sinks.mqtt import MqttSink
from edgedet.tracking import TrackerSettings, Zone

pytest.importorskip("paho.mqtt.client")

CONFIG_TOPIC = re.compile(r"^homeassistant/(?P<component>[a-z_]+)/(?P<node>[A-Za-z0-9_-]+)/"
                          r"(?P<object>[A-Za-z0-9_-]+)/config$")
COMMON = {"name", "unique_id", "object_id", "availability_topic", "payload_available", "payload_not_available",
          "availability_mode", "availability_template", "device", "icon", "qos", "enabled_by_default",
          "entity_category", "json_attributes_topic", "json_attributes_template", "encoding", "default_entity_id"}
SCHEMA = {
    "binary_sensor": {"required": {"state_topic"},
                      "allowed": COMMON | {"state_topic", "device_class", "value_template", "payload_on",
                                           "payload_off", "expire_after", "force_update", "off_delay"}},
    "sensor": {"required": {"state_topic"},
               "allowed": COMMON | {"state_topic", "device_class", "state_class", "unit_of_measurement",
                                    "value_template", "expire_after", "force_update", "suggested_display_precision",
                                    "last_reset_value_template", "options"}},
    "camera": {"required": {"topic"}, "allowed": COMMON | {"topic", "image_encoding"}},
}
BINARY_SENSOR_CLASSES = {"occupancy", "motion", "presence", "moving"}  # the ones an object counter could use
STATE_CLASSES = {"measurement", "total", "total_increasing", "measurement_angle"}
DEVICE_KEYS = {"identifiers", "connections", "name", "manufacturer", "model", "model_id", "sw_version",
               "hw_version", "serial_number", "suggested_area", "via_device", "configuration_url"}


def check_discovery(topic: str, payload: dict) -> str:
    """Raise AssertionError where ``payload`` breaks Home Assistant's discovery schema; its component."""
    m = CONFIG_TOPIC.match(topic)
    assert m, f"not a discovery config topic: {topic}"
    schema = SCHEMA[m["component"]]
    assert schema["required"] <= set(payload), (topic, schema["required"] - set(payload))
    assert set(payload) <= schema["allowed"], (topic, set(payload) - schema["allowed"])
    assert not ({"availability", "availability_topic"} <= set(payload))
    assert payload["availability_topic"] and "#" not in payload["availability_topic"]
    assert isinstance(payload["unique_id"], str) and payload["unique_id"]
    device = payload["device"]
    assert set(device) <= DEVICE_KEYS and (device.get("identifiers") or device.get("connections"))
    assert all(isinstance(i, str) for i in device["identifiers"])
    if m["component"] == "binary_sensor":
        assert payload.get("device_class", "occupancy") in BINARY_SENSOR_CLASSES
    if m["component"] == "sensor" and "state_class" in payload:
        assert payload["state_class"] in STATE_CLASSES
    for key in ("state_topic", "topic"):
        if key in payload:
            assert not set(payload[key]) & set("#+"), payload[key]
    return m["component"]


@pytest.fixture
def tracked_results(pedestrian_results):
    """The pedestrian results through the tracking stage (as the pipeline does), with a zone."""
    stage = TrackingStage(TrackerSettings(min_hits=2), pedestrian_results[0].labels,
                          zones=[Zone("left half", ((0, 0), (0.5, 0), (0.5, 1), (0, 1)), normalized=True)])
    stage.fps = 10.0 / 3  # every third frame of a 10 fps video
    out = []
    for r in pedestrian_results:
        r = type(r)(frame=r.frame, detections=r.detections, timings=dict(r.timings), labels=r.labels)
        r.frame = type(r.frame)(r.frame.image, r.frame.index // 3, r.frame.timestamp, r.frame.wall_time)
        stage.apply(r)
        out.append(r)
    return out, stage.finish()


def test_object_events_snapshots_counts_and_discovery(mosquitto, tracked_results):
    results, final = tracked_results
    sub = Subscriber(mosquitto.port, "#")
    try:
        sink = MqttSink(MqttConfig(host=f"{HOST}:{mosquitto.port}", device="pi-test", camera="door", max_rate=0),
                        SinkContext(model_name="ssd_mobilenet_v1_coco_quant"))
        with sink:
            for r in results:
                sink.write(r)
                if r.objects:
                    sink.on_objects(r.objects)
            sink.on_objects(final)
            n_events = sum(len(r.objects) for r in results) + len(final)
            assert sub.wait_for(lambda: len(sub.on("/door/events")) >= n_events, 10)
        events = [json.loads(p) for _, p, _ in sub.on("/door/events")]
        assert len(events) == n_events
        new = {e["id"] for e in events if e["type"] == "new"}
        assert new and {e["id"] for e in events if e["type"] == "end"} == new
        labels = {e["label"] for e in events}
        assert "person" in labels and all(e["device"] == "pi-test" for e in events)
        snap = sub.on("edgedet/pi-test/door/person/snapshot")
        picture = cv2.imdecode(np.frombuffer(snap[-1][1], np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape[0] > 10
        counts = [p for _, p, _ in sub.on("edgedet/pi-test/door/person/count")]
        assert counts[0] != b"0" and counts[-1] == b"0"  # everyone left at the end
        assert sub.on("edgedet/pi-test/door/zones/left_half/count")
    finally:
        sub.close()
    # retained: Home Assistant starting later finds every entity, the latest snapshot and the counts
    late = Subscriber(mosquitto.port, "#")
    try:
        n = 3 * len(labels) + 2  # occupancy, count, snapshot per label; occupancy, count for the zone
        assert late.wait_for(lambda: len(late.on("/config")) >= n, 5)
        configs = {t: json.loads(p) for t, p, _ in late.on("/config")}
        components = [check_discovery(t, p) for t, p in configs.items()]
        assert sorted(components) == sorted(["binary_sensor", "sensor", "camera"] * len(labels)
                                            + ["binary_sensor", "sensor"])
        for payload in configs.values():
            assert payload["availability_topic"] == sink.topic_availability  # the last will's topic
            assert payload["payload_not_available"] == "offline"
        by_name = {p["name"]: p for p in configs.values()}
        assert by_name["person count"]["state_topic"] == "edgedet/pi-test/door/person/count"
        assert by_name["person occupancy"]["state_topic"] == "edgedet/pi-test/door/person/count"
        assert by_name["person snapshot"]["topic"] == "edgedet/pi-test/door/person/snapshot"
        assert by_name["left half zone count"]["state_topic"] == "edgedet/pi-test/door/zones/left_half/count"
        assert len({p["unique_id"] for p in configs.values()}) == n
        assert late.on("/person/snapshot") and late.on("/person/count")[-1][1] == b"0"
        assert late.on("/availability")[-1][1] == b"offline"
    finally:
        late.close()


def test_discovery_is_sent_again_when_home_assistant_restarts(mosquitto, tracked_results):
    results, final = tracked_results
    sink = MqttSink(MqttConfig(host=f"{HOST}:{mosquitto.port}", device="pi-test", camera="door"), SinkContext())
    sub = Subscriber(mosquitto.port, "homeassistant/+/+/+/config")
    try:
        with sink:
            sink.on_objects([e for r in results for e in r.objects])
            assert sub.wait_for(lambda: len(sub.on("/config")) >= 3, 5)
            before = len(sub.on("/config"))
            sub.client.publish("homeassistant/status", "online", qos=1)
            assert sub.wait_for(lambda: len(sub.on("/config")) >= before + 3, 5)
    finally:
        sub.close()


def test_no_discovery_when_turned_off(mosquitto, tracked_results):
    results, _ = tracked_results
    sink = MqttSink(MqttConfig(host=f"{HOST}:{mosquitto.port}", device="pi-test", ha_discovery=False), SinkContext())
    sub = Subscriber(mosquitto.port, "#")
    try:
        with sink:
            sink.on_objects([e for r in results for e in r.objects])
            assert sub.wait_for(lambda: len(sub.on("/events")) >= 1, 5)
        assert not sub.on("/config")
    finally:
        sub.close()
