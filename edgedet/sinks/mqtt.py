"""Detection events over MQTT (paho-mqtt 2.x, ``pip install 'edgedet[mqtt]'``).

Topics (``PREFIX`` = ``--mqtt-prefix``, default ``edgedet``; ``DEVICE`` = ``--device-name``, default
the host name; ``CAMERA`` = ``--camera-name``, default ``camera``)::

    PREFIX/DEVICE/availability        "online" / "offline" (retained; "offline" is also the last will)
    PREFIX/DEVICE/CAMERA/detections   one JSON event per published change (QoS ``--mqtt-qos``)
    PREFIX/DEVICE/CAMERA/state        the current labels and counts (retained)

With tracking (``edgedet run`` tracks by default), per object and per zone::

    PREFIX/DEVICE/CAMERA/events             one JSON object event: new / update / end (QoS ``--mqtt-qos``)
    PREFIX/DEVICE/CAMERA/LABEL/snapshot     the latest object of LABEL: its first picture when it appears,
                                            its best one when it ends (JPEG, retained)
    PREFIX/DEVICE/CAMERA/LABEL/count        objects of LABEL present now (retained, on change)
    PREFIX/DEVICE/CAMERA/zones/ZONE/count   objects in ZONE now (retained, on change)
    PREFIX/DEVICE/CAMERA/lines/LINE         {"in": n, "out": m} crossings so far (retained, on change)

and Home Assistant discovery (``--ha-discovery``, on by default; ``edgedet.sinks.homeassistant``):
an occupancy binary sensor and a count sensor per label seen and per zone, a camera entity per
label fed by its snapshot topic, all available while the run is (the last will says ``offline``).
Discovery is sent at each connection and again when Home Assistant announces itself
(``homeassistant/status`` ``online``).

An event::

    {"device": "pi4", "camera": "door", "model": "ssd_mobilenet_v1_coco_quant", "frame": 1234,
     "time": 1763780000.123, "counts": {"person": 2}, "labels": ["person"],
     "detections": [{"label": "person", "class_id": 0, "score": 0.81, "box": [x1, y1, x2, y2]}, ...]}

Events are published only when the set of labels or their counts change (``--mqtt-every-frame``
for all frames), and at most ``--mqtt-max-rate`` per second; a change held back by the rate limit
is sent as soon as the interval has passed, so the last state always gets out.

``write`` never blocks: it queues the event for a sender thread. While the broker is away, events
wait in a queue of ``--mqtt-queue`` entries and are sent when it returns; beyond that the oldest
are dropped and counted (``stats()["events_dropped"]``, logged).

At start, a broker that refuses the login is a ``SinkError`` ("broker ... refused the login: not
authorised"). A broker that cannot be reached is logged and retried in the background: a device
often boots before its broker. At run time a lost broker is logged and reconnected with backoff
(1 s doubling up to ``RECONNECT_MAX_DELAY``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from typing import Optional

import numpy as np

from ..config import MqttConfig, parse_broker
from ..detections import label_for
from ..errors import ConfigError, SinkError
from ..frame import Result
from ..tracking import ObjectEvent
from .base import BaseSink, SinkContext
from .homeassistant import Discovery, DiscoveryTopics, topic_level
from .objects import object_record

log = logging.getLogger("edgedet.mqtt")

CONNECT_TIMEOUT = 5.0  # seconds to wait for the broker's answer at start
RECONNECT_MAX_DELAY = 10  # seconds, cap of paho's reconnect backoff
KEEPALIVE = 30
HA_STATUS = "{prefix}/status"  # Home Assistant's birth message: "online" when it (re)starts





class MqttSink(BaseSink):
    """Publishes detection events, state and availability; see the module docstring."""

    needs_annotated = False
    reads_frame = False

    def __init__(self, mqtt_cfg: MqttConfig, ctx: Optional[SinkContext] = None) -> None:
        self.cfg = mqtt_cfg
        self.ctx = ctx or SinkContext()
        if not mqtt_cfg.host:
            raise ConfigError("mqtt.host: no broker given (--mqtt HOST[:PORT])")
        self.host, self.port = parse_broker(mqtt_cfg.host, mqtt_cfg.tls)
        self.device = topic_level(mqtt_cfg.device or self.ctx.device or socket.gethostname())
        self.camera = topic_level(mqtt_cfg.camera)
        base = f"{mqtt_cfg.topic_prefix.strip('/')}/{self.device}"
        self.topic_availability = f"{base}/availability"
        self.topic_detections = f"{base}/{self.camera}/detections"
        self.topic_state = f"{base}/{self.camera}/state"
        self.topic_events = f"{base}/{self.camera}/events"
        self.topics = DiscoveryTopics(self.topic_availability, f"{base}/{self.camera}")
        self.discovery: Optional[Discovery] = None
        if mqtt_cfg.ha_discovery:
            from .. import __version__

            self.discovery = Discovery(self.topics, self.device, self.camera, prefix=mqtt_cfg.ha_prefix,
                                       model=self.ctx.model_name, version=__version__)
        self._announced: dict[str, list] = {}  # label or "zone:NAME" -> its discovery messages
        self._present: dict[int, str] = {}  # live object id -> label
        self._labels_seen: set[str] = set()
        self._published_counts: dict[str, bytes] = {}  # retained count topic -> last payload
        self._snap_sent: dict[str, object] = {}  # label -> the Snapshot last published
        self._client = None
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._connected = False
        self._stop = threading.Event()
        self._sender: Optional[threading.Thread] = None
        self._connack = threading.Event()
        self._connack_reason = None
        self._last_key: Optional[tuple] = None
        self._last_sent = 0.0
        self._pending: Optional[tuple[dict, dict]] = None
        self._ever_connected = False
        self._counts = {"events_published": 0, "events_dropped": 0, "events_suppressed": 0,
                        "connects": 0, "disconnects": 0}

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        if self._client is not None:
            return
        try:
            import paho.mqtt.client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion
        except ImportError:
            raise SinkError("MQTT needs paho-mqtt 2.x: pip install 'edgedet[mqtt]'") from None
        client_id = f"edgedet-{self.device}-{self.camera}-{uuid.uuid4().hex[:6]}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password)
        if self.cfg.tls:
            if self.cfg.ca_certs and not os.path.isfile(self.cfg.ca_certs):
                raise SinkError(f"mqtt.ca_certs: file not found: {self.cfg.ca_certs}")
            try:
                client.tls_set(ca_certs=self.cfg.ca_certs, cert_reqs=ssl.CERT_REQUIRED)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise SinkError(f"mqtt TLS setup failed: {exc}") from None
        client.will_set(self.topic_availability, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_DELAY)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.enable_logger(logging.getLogger("edgedet.mqtt.paho"))
        logging.getLogger("edgedet.mqtt.paho").setLevel(logging.CRITICAL)  # we log state changes ourselves
        self._client = client
        where = f"{self.host}:{self.port}"
        try:
            client.connect(self.host, self.port, keepalive=KEEPALIVE)
        except ssl.SSLError as exc:
            self._client = None
            raise SinkError(f"TLS handshake with the MQTT broker {where} failed: {exc.reason or exc}") from None
        except (OSError, socket.gaierror) as exc:
            # the broker may come up after us (boot order): keep trying in the background
            log.warning("MQTT broker %s not reachable (%s); retrying in the background, events are queued",
                        where, getattr(exc, "strerror", None) or exc)
            client.connect_async(self.host, self.port, keepalive=KEEPALIVE)
            client.loop_start()
        else:
            client.loop_start()
            if not self._connack.wait(CONNECT_TIMEOUT):
                log.warning("MQTT broker %s did not answer within %.0f s; retrying in the background",
                            where, CONNECT_TIMEOUT)
            elif self._connack_reason is not None and self._connack_reason.is_failure:
                reason = str(self._connack_reason).lower().replace("authorized", "authorised")
                self._shutdown_client()
                raise SinkError(f"MQTT broker {where} refused the login: {reason}")
        self._sender = threading.Thread(target=self._send_loop, name="edgedet-mqtt", daemon=True)
        self._sender.start()
        self.ctx.metrics.add(self.prometheus)
        self.ctx.outputs.add(self.report)

    def write(self, result: Result) -> None:
        if result.zones is not None:
            self._zone_counts(result)
        counts = self._label_counts(result)
        key = tuple(sorted(counts.items()))
        if self.cfg.only_on_change and key == self._last_key:
            self._pending = None  # back to what subscribers already know
            self._counts["events_suppressed"] += 1
            return
        self._pending = (self._event(result, counts), counts)
        now = time.monotonic()
        interval = 1.0 / self.cfg.max_rate if self.cfg.max_rate > 0 else 0.0
        if self._last_sent and now - self._last_sent < interval:
            self._counts["events_suppressed"] += 1  # held back; sent at a later frame if still current
            return
        event, counts = self._pending
        self._pending = None
        self._last_key = key
        self._last_sent = now
        state = {"device": self.device, "camera": self.camera, "time": event["time"], "counts": counts,
                 "labels": sorted(counts)}
        self._enqueue(event, state)

    def close(self) -> None:
        self.ctx.metrics.remove(self.prometheus)
        self.ctx.outputs.remove(self.report)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=5)
            self._sender = None
        if self._client is not None:
            if self._connected:
                self._flush(deadline=time.monotonic() + 2.0)
                info = self._client.publish(self.topic_availability, "offline", qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout=2.0)
                except (RuntimeError, ValueError):
                    pass
            self._shutdown_client()
        left = len(self._queue)
        if left:
            log.warning("MQTT: %d event(s) not delivered (broker away at exit)", left)

    def stats(self) -> dict:
        with self._cond:
            return {"connected": self._connected, "events_queued": len(self._queue), **self._counts}

    def report(self) -> dict:
        """Its counters for ``/stats`` of the same run (registered at open)."""
        return {"mqtt": self.stats()}

    def prometheus(self) -> dict:
        """Extra metrics for ``/metrics`` of the same run (registered at open)."""
        s = self.stats()
        return {
            "edgedet_mqtt_connected": ("gauge", "1 while connected to the MQTT broker", float(s["connected"])),
            "edgedet_mqtt_events_published": ("counter", "MQTT events published", s["events_published"]),
            "edgedet_mqtt_events_dropped": ("counter", "MQTT events dropped (queue full)", s["events_dropped"]),
            "edgedet_mqtt_events_queued": ("gauge", "MQTT events waiting for the broker", s["events_queued"]),
        }

    # ------------------------------------------------------------------ events
    def _label_counts(self, result: Result) -> dict:
        ids = result.detections.class_ids
        if len(ids) == 0:
            return {}
        uniq, n = np.unique(ids, return_counts=True)
        labels = result.labels if result.labels is not None else (self.ctx.labels or None)
        out: dict[str, int] = {}
        for c, k in zip(uniq.tolist(), n.tolist()):
            name = label_for(labels, int(c))
            out[name] = out.get(name, 0) + int(k)
        return out

    def _event(self, result: Result, counts: dict) -> dict:
        labels = result.labels if result.labels is not None else (self.ctx.labels or None)
        return {
            "device": self.device,
            "camera": self.camera,
            "model": self.ctx.model_name,
            "frame": int(result.frame.index),
            "time": round(float(result.frame.wall_time), 3),
            "counts": counts,
            "labels": sorted(counts),
            "detections": result.detections.to_records(labels),
        }

    def _enqueue(self, event: dict, state: dict) -> None:
        payload = json.dumps(event, separators=(",", ":")).encode()
        state_payload = json.dumps(state, separators=(",", ":")).encode()
        self._push(((self.topic_detections, payload, self.cfg.qos, False), (self.topic_state, state_payload, 1, True)))

    def _push(self, messages: tuple) -> None:
        """Queue messages ``(topic, payload, qos, retain)`` sent together, in order (the first one
        decides whether they went out)."""
        with self._cond:
            if len(self._queue) >= self.cfg.queue_size:
                self._queue.popleft()
                self._counts["events_dropped"] += 1
                dropped = self._counts["events_dropped"]
                if dropped == 1 or dropped % 100 == 0:
                    log.warning("MQTT queue full (%d events, broker away): dropped %d event(s) so far",
                                self.cfg.queue_size, dropped)
            self._queue.append(messages)
            self._cond.notify_all()

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._stop.is_set() and not (self._connected and self._queue):
                    self._cond.wait(timeout=0.5)
            if self._stop.is_set():
                return
            self._flush()

    def _flush(self, deadline: Optional[float] = None) -> None:
        client = self._client
        while client is not None:
            with self._cond:
                if not self._connected or not self._queue:
                    return
                messages = self._queue[0]
            (topic, payload, qos, retain), *rest = messages
            info = client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc != 0:  # lost the connection meanwhile: keep the event for later
                return
            for topic, payload, qos, retain in rest:
                client.publish(topic, payload, qos=qos, retain=retain)
            with self._cond:
                if self._queue and self._queue[0] is messages:
                    self._queue.popleft()
                if messages[0][0] in (self.topic_detections, self.topic_events):
                    self._counts["events_published"] += 1
            if deadline is not None and time.monotonic() > deadline:
                return

    # ------------------------------------------------------------------ objects, zones, discovery
    def on_objects(self, events: list[ObjectEvent]) -> None:
        """Object events of a frame (or the run's end): the events topic, snapshots, label counts."""
        for e in events:
            if self.discovery is not None and e.label not in self._announced:
                self._announce(e.label, self.discovery.label(e.label))
            record = {"device": self.device, "camera": self.camera, **object_record(e)}
            messages = [(self.topic_events, json.dumps(record, separators=(",", ":")).encode(), self.cfg.qos, False)]
            if e.kind != "update" and e.snapshot is not None and self._snap_sent.get(e.label) is not e.snapshot:
                self._snap_sent[e.label] = e.snapshot
                messages.append((self.topics.snapshot(e.label), e.snapshot.jpeg(), 0, True))
            if e.kind == "end":
                self._present.pop(e.track_id, None)
            else:
                self._present[e.track_id] = e.label
            self._push(tuple(messages))
            self._labels_seen.add(e.label)
        counts = dict.fromkeys(self._labels_seen, 0)
        for label in self._present.values():
            counts[label] += 1
        self._publish_counts({self.topics.label_count(k): str(v) for k, v in counts.items()})

    def _zone_counts(self, result: Result) -> None:
        zones = result.zones
        assert zones is not None
        if self.discovery is not None:
            for name in zones.zone_names:
                if f"zone:{name}" not in self._announced:
                    self._announce(f"zone:{name}", self.discovery.zone(name))
        inside = zones.inside.sum(axis=0).tolist() if len(zones.zone_names) else []
        values = {self.topics.zone_count(name): str(int(n)) for name, n in zip(zones.zone_names, inside)}
        for line, c in result.line_counts.items():
            values[self.topics.line(line)] = json.dumps(c, separators=(",", ":"))
        self._publish_counts(values)

    def _publish_counts(self, values: dict) -> None:
        """Retained state topics, each published when its value changed."""
        changed = []
        for topic, text in values.items():
            payload = text.encode()
            if self._published_counts.get(topic) != payload:
                self._published_counts[topic] = payload
                changed.append((topic, payload, 1, True))
        if changed:
            self._push(tuple(changed))

    def _announce(self, key: str, messages: list) -> None:
        with self._cond:
            self._announced[key] = messages
        self._push(tuple((topic, payload, 1, True) for topic, payload in messages))

    def _announce_all(self, client) -> None:
        with self._cond:
            announced = list(self._announced.values())
        for messages in announced:
            for topic, payload in messages:
                client.publish(topic, payload, qos=1, retain=True)

    # ------------------------------------------------------------------ paho callbacks (its thread)
    def _on_message(self, client, userdata, msg) -> None:
        if self.discovery is not None and msg.payload == b"online":  # Home Assistant restarted
            self._announce_all(client)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack_reason = reason_code
        if reason_code.is_failure:
            if self._ever_connected:  # at start, open() reports it as a SinkError instead
                log.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            self._connack.set()
            return
        client.publish(self.topic_availability, "online", qos=1, retain=True)
        if self.discovery is not None:
            client.subscribe(HA_STATUS.format(prefix=self.discovery.prefix), qos=1)
            self._announce_all(client)
        with self._cond:
            self._connected = True
            self._counts["connects"] += 1
            queued = len(self._queue)
            self._cond.notify_all()
        if self._ever_connected:
            log.info("MQTT broker %s:%d is back; sending %d queued event(s)", self.host, self.port, queued)
        else:
            log.info("connected to MQTT broker %s:%d (topics %s/...)", self.host, self.port,
                     self.topic_detections.rsplit("/", 1)[0])
        self._ever_connected = True
        self._connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            if was:
                self._counts["disconnects"] += 1
        if was and not self._stop.is_set():
            log.warning("lost the MQTT broker %s:%d (%s); reconnecting, events are queued",
                        self.host, self.port, reason_code)

    def _shutdown_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        except Exception:  # already gone
            pass
        client.loop_stop()
        with self._cond:
            self._connected = False
