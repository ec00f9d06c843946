"""Home Assistant MQTT discovery: the config messages that make a camera's objects appear as entities.

For each tracked label (``person``) and each zone (``door``) of a camera, two entities read one
retained count topic: an occupancy ``binary_sensor`` (ON while the count is above 0) and a count
``sensor``; for each label a ``camera`` entity shows the latest snapshot (JPEG bytes). Every entity
belongs to one device per camera and is available while edgedet is (``availability_topic``: the
run's availability topic, whose ``offline`` is the MQTT last will). Config topics::

    homeassistant/binary_sensor/<node>/<object>/config      (retained)
    homeassistant/sensor/<node>/<object>/config
    homeassistant/camera/<node>/<object>/config

``node`` is ``edgedet_<device>_<camera>``; ``object`` is e.g. ``person_occupancy``,
``person_count``, ``zone_door_count``, ``person_snapshot`` (letters, digits, ``_`` and ``-`` only).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import List, Tuple

__all__ = ["Discovery", "DiscoveryTopics", "object_id", "topic_level"]

Message = Tuple[str, bytes]  # (topic, payload) -- published retained


def object_id(text: str) -> str:
    """A discovery id part: letters, digits, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "unnamed"


def topic_level(name: str) -> str:
    """A topic level: no '/', '+', '#' or spaces."""
    cleaned = re.sub(r"[/+#\s]+", "_", str(name)).strip("_")
    return cleaned or "unnamed"


@dataclass(frozen=True)
class DiscoveryTopics:
    """Where the entities read: the count topics and the snapshot topic of a label or zone."""

    availability: str
    camera_base: str  # PREFIX/DEVICE/CAMERA

    def label_count(self, label: str) -> str:
        return f"{self.camera_base}/{topic_level(label)}/count"

    def zone_count(self, zone: str) -> str:
        return f"{self.camera_base}/zones/{topic_level(zone)}/count"

    def snapshot(self, label: str) -> str:
        return f"{self.camera_base}/{topic_level(label)}/snapshot"

    def line(self, line: str) -> str:
        return f"{self.camera_base}/lines/{topic_level(line)}"


class Discovery:
    """Builds the discovery config messages of one camera (``prefix``: Home Assistant's, ``homeassistant``)."""

    def __init__(self, topics: DiscoveryTopics, device: str, camera: str, *, prefix: str = "homeassistant",
                 model: str = "", version: str = "") -> None:
        self.topics = topics
        self.prefix = prefix.strip("/")
        self.device_name = device
        self.camera = camera
        self.node = object_id(f"edgedet_{device}_{camera}")
        self.device = {"identifiers": [self.node], "name": f"{device} {camera}", "manufacturer": "edgedet",
                       "model": model or "edgedet", "sw_version": version or "unknown"}

    def _config(self, component: str, obj: str, name: str, extra: dict) -> Message:
        payload = {
            "name": name,
            "unique_id": f"{self.node}_{obj}",
            "object_id": f"{self.node}_{obj}",
            "availability_topic": self.topics.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": self.device,
            **extra,
        }
        return f"{self.prefix}/{component}/{self.node}/{obj}/config", json.dumps(payload).encode()

    def _occupancy_and_count(self, key: str, name: str, state_topic: str) -> List[Message]:
        return [
            self._config("binary_sensor", f"{key}_occupancy", f"{name} occupancy", {
                "state_topic": state_topic, "device_class": "occupancy",
                "value_template": "{{ 'ON' if value | int(0) > 0 else 'OFF' }}",
                "payload_on": "ON", "payload_off": "OFF"}),
            self._config("sensor", f"{key}_count", f"{name} count", {
                "state_topic": state_topic, "state_class": "measurement", "unit_of_measurement": "objects",
                "value_template": "{{ value | int(0) }}"}),
        ]

    def label(self, label: str) -> List[Message]:
        """Occupancy, count and snapshot camera of one label."""
        key = object_id(label)
        return self._occupancy_and_count(key, label, self.topics.label_count(label)) + [
            self._config("camera", f"{key}_snapshot", f"{label} snapshot", {"topic": self.topics.snapshot(label)}),
        ]

    def zone(self, zone: str) -> List[Message]:
        """Occupancy and count of one zone (every tracked object in it)."""
        return self._occupancy_and_count(f"zone_{object_id(zone)}", f"{zone} zone", self.topics.zone_count(zone))
