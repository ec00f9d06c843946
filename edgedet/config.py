"""Typed configuration: YAML file + CLI overrides, validated with field-path errors.

Every option of ``edgedet run`` is a field of one section below; its CLI flag is declared in the
field's metadata (``opt(...)``), so the YAML file and the command line can never drift apart::

    model:   {path: ssd_mobilenet_v1_coco_quant, threads: 4, score_threshold: 0.5}
    source:  {uri: rtsp://cam/stream, stall_timeout: 10}
    output:  {headless: true, events: events.jsonl}
    http:    {listen: ":8080"}

Every check happens here, before anything is resolved, downloaded or opened: types, ranges and
choices of each field, the syntax of addresses (``http.listen``, ``mqtt.host``, ``rtsp_out.url``,
...) and the checks across fields. The YAML file is checked on its own too, so a bad value in it is
reported even when the command line gives the same key. Errors are ``ConfigError`` naming the
field (``model.iou_threshold: must be > 0.0, got 0.0``); the CLI turns them into one line, exit 2.

Renamed options keep working under their old name with a warning (``RENAMED``), e.g.
``model.postprocess``/``--postprocess`` (``ours``) is now ``model.decoder``/``--decoder`` (``edgedet``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError
from .redact import mask_url

log = logging.getLogger("edgedet.config")


def opt(default: Any, *flags: str, help: str = "", choices: tuple | None = None,
        min: float | None = None, max: float | None = None, greater_than: float | None = None,
        check: Callable[[Any, str], Any] | None = None, secret: bool = False, flag_value: Any = None):
    """A config field with its CLI flag(s) and validation.

    ``flags`` like ``"--threads"`` or ``"--drop/--no-drop"`` (a boolean pair); no flags = YAML only.
    ``min``/``max`` are inclusive bounds, ``greater_than`` an exclusive one; ``check(value, path)``
    raises ``ConfigError`` for a value of the right type that is still wrong (an address, a size).
    ``secret`` fields are never printed.
    """
    meta = {
        "flags": flags, "help": help, "choices": choices, "min": min, "max": max, "greater_than": greater_than,
        "check": check, "secret": secret, "flag_value": flag_value,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# values with a syntax of their own (the sinks and sources parse them with these same functions)

_HOST_PORT_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]*)):(?P<port>\d{1,5})")
_BROKER_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]+))(?::(?P<port>\d{1,5}))?")
PI_CAMERA_NAMES = ("pi", "picamera", "picamera2")


def _port(text: str, path: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ConfigError(f"{path}: port must be 1-65535, got {port}")
    return port


def parse_listen(listen: str, path: str = "http.listen") -> tuple[str, int]:
    """``":8080"`` / ``"8080"`` -> ``("127.0.0.1", 8080)``; ``"0.0.0.0:80"``; ``"[::1]:8080"``."""
    text = str(listen).strip()
    if text.isdigit():
        host, port_text = "", text
    else:
        m = _HOST_PORT_RE.fullmatch(text)
        if not m:
            raise ConfigError(f"{path}: expected [HOST]:PORT (e.g. :8080 or 0.0.0.0:8080), got {listen!r}")
        host, port_text = m.group("v6") or m.group("host"), m.group("port")
    return host or "127.0.0.1", _port(port_text, path)


def parse_broker(spec: str, tls: bool = False, path: str = "mqtt.host") -> tuple[str, int]:
    """``host``, ``host:1884``, ``[::1]:1883``, ``mqtt://host:1883`` -> ``(host, port)``."""
    text = re.sub(r"^(mqtts?|tcp|ssl)://", "", str(spec).strip())
    m = _BROKER_RE.fullmatch(text)
    if not m:
        raise ConfigError(f"{path}: expected HOST[:PORT], got {spec!r}")
    port = _port(m.group("port"), path) if m.group("port") else (8883 if tls else 1883)
    return m.group("v6") or m.group("host"), port


def parse_rtsp_url(url: str, path: str = "rtsp_out.url") -> str:
    """An ``rtsp://`` / ``rtsps://`` URL with a host and a valid port (errors never show the password)."""
    parts = urlsplit(str(url))
    if parts.scheme.lower() not in ("rtsp", "rtsps") or not parts.hostname:
        raise ConfigError(f"{path}: expected rtsp://HOST[:PORT]/PATH, got {mask_url(str(url))!r}")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{path}: bad port in {mask_url(str(url))}") from None
    return str(url)


_SERVE_RE = re.compile(r"(?:(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]*)):)?(?P<port>\d{1,5})"
                       r"(?P<path>(?:/[A-Za-z0-9_.\-]+)+)?/?")


def parse_rtsp_serve(spec: str, path: str = "rtsp_out.serve") -> tuple[str, int, str]:
    """``"8554/detections"`` -> ``("127.0.0.1", 8554, "/detections")``; ``"0.0.0.0:8554/cam"``;
    ``"[::1]:8554"`` (path ``/detections`` when none is given)."""
    m = _SERVE_RE.fullmatch(str(spec).strip())
    if not m:
        raise ConfigError(f"{path}: expected [HOST:]PORT/PATH (e.g. 8554/detections or 0.0.0.0:8554/detections), "
                          f"got {mask_url(str(spec))!r}")
    host = m.group("v6") or m.group("host") or "127.0.0.1"
    return host, _port(m.group("port"), path), m.group("path") or "/detections"


def parse_bitrate(text: str, path: str = "rtsp_out.bitrate") -> int:
    """``"1500k"`` -> 1500000 bits/s, ``"2M"``, ``"800000"``; at least 10k."""
    t = str(text).strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1000, t[:-1]
    elif t.endswith("m"):
        mult, t = 1000_000, t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise ConfigError(f"{path}: expected e.g. 1500k or 2M, got {text!r}") from None
    if value < 10_000:
        raise ConfigError(f"{path}: {text!r} is too low (at least 10k)")
    return int(value)


_KEEP_SIZES = {"": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4,
               "ki": 1024, "mi": 1024 ** 2, "gi": 1024 ** 3, "ti": 1024 ** 4}
_KEEP_AGES = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_keep(text: str, path: str = "output.record_keep") -> tuple[Optional[int], Optional[float]]:
    """Retention of recordings: ``"20GB"``, ``"7d"``, ``"20GB,7d"`` -> ``(max_bytes, max_age_s)``.

    Sizes: B, K/M/G/T (decimal) or KiB/MiB/GiB/TiB, the B optional; ages: s, min, h, d, w. A bare
    lowercase ``m`` is refused (minutes or megabytes?)."""
    max_bytes: Optional[int] = None
    max_age: Optional[float] = None
    for part in str(text).split(","):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]+)", part.strip())
        unit = m.group(2) if m else ""
        size_unit = unit.lower()[:-1] if unit.lower().endswith("b") else unit.lower()
        if m and unit.lower() in _KEEP_AGES:
            max_age = float(m.group(1)) * _KEEP_AGES[unit.lower()]
        elif m and unit != "m" and size_unit in _KEEP_SIZES:
            max_bytes = int(float(m.group(1)) * _KEEP_SIZES[size_unit])
        else:
            hint = " (30m is ambiguous: say 30min or 30MB)" if unit == "m" else ""
            raise ConfigError(f"{path}: expected a size (500MB, 20GB) and/or an age (12h, 7d, 90min), "
                              f"comma separated; got {part.strip()!r}{hint}")
    if max_bytes == 0 or max_age == 0:
        raise ConfigError(f"{path}: limits must be positive, got {text!r}")
    return max_bytes, max_age


def parse_auth(spec: str, path: str = "http.auth") -> tuple[str, str]:
    """``USER:PASSWORD`` or ``token:SECRET`` -> ``(user, password)`` (the value itself is never shown)."""
    user, sep, password = str(spec).partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"{path}: expected USER:PASSWORD or token:SECRET")
    return user, password


def parse_size(value: Any, path: str) -> tuple[int, int]:
    """``[width, height]`` of a camera stream: even numbers, at least 2."""
    try:
        w, h = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: expected [width, height], got {value!r}") from exc
    if w < 2 or h < 2:
        raise ConfigError(f"{path}: width and height must be at least 2, got {w}x{h}")
    if w % 2 or h % 2:
        raise ConfigError(f"{path}: width and height must be even numbers, got {w}x{h}")
    return (w, h)


def _check_camera(value: str, path: str) -> None:
    spec = str(value).strip()
    if not (spec.isdigit() or spec.lower() in PI_CAMERA_NAMES):
        raise ConfigError(f"{path}: expected a camera index or 'pi', got {spec!r}")


def _check_uri(value: str, path: str) -> None:
    if not str(value).strip():
        raise ConfigError(f"{path}: empty source")


@dataclass
class ModelConfig:
    path: str = opt("ssd_mobilenet_v1_coco_quant", "--model", "-m",
                    help="registry name or path of a .tflite model")
    labels: Optional[str] = opt(None, "--labels", help="label file (one per line; default from the model sidecar)")
    threads: Optional[int] = opt(None, "--threads", min=1, max=64,
                                 help="interpreter threads (default: the big cores)")
    workers: Optional[int] = opt(None, "--workers", min=1, max=64,
                                 help="inference workers, each with its own interpreter, on different frames "
                                      "(files only; default: one single-thread interpreter per thread)")
    score_threshold: float = opt(0.5, "--threshold", min=0.0, max=1.0, help="minimum score")
    iou_threshold: Optional[float] = opt(None, "--iou", greater_than=0.0, max=1.0,
                                         help="NMS IoU (default: the model's own)")
    max_detections: Optional[int] = opt(None, "--max-detections", min=1, max=10000,
                                        help="detections per frame (default: the model's own)")
    class_agnostic: bool = opt(False, "--class-agnostic/--class-aware",
                               help="one NMS over all classes instead of per class")
    decoder: str = opt("auto", "--decoder", choices=("auto", "edgedet", "op"),
                       help="who decodes boxes + NMS: edgedet (numpy), the model's in-graph op, or auto")
    resize: str = opt("auto", "--resize", choices=("auto", "stretch", "letterbox"),
                      help="how frames are fitted to the model input")
    classes: Optional[list] = opt(None, "--classes",
                                  help="only these labels (comma separated), e.g. person,car")


@dataclass
class SourceConfig:
    uri: Optional[str] = opt(None, "--source", "-s", check=_check_uri,
                             help="video file, image, directory, camera index, rtsp:// or http:// URL, picamera2[:N]")
    camera: Optional[str] = opt(None, "--camera", check=_check_camera,
                                help="camera index (same as --source N) or 'pi'")
    drop: Optional[bool] = opt(None, "--drop/--no-drop",
                               help="keep only the newest frame (default: on for live sources, off for files)")
    realtime: bool = opt(False, "--realtime/--no-realtime", help="pace a file at its native fps, like a camera")
    max_frames: Optional[int] = opt(None, "--max-frames", min=1, help="stop after this many processed frames")
    loop: bool = opt(False, "--loop/--no-loop", help="restart a file source at its end")
    width: Optional[int] = opt(None, "--width", min=1, help="requested capture width (cameras)")
    height: Optional[int] = opt(None, "--height", min=1, help="requested capture height (cameras)")
    fps: Optional[float] = opt(None, "--fps", min=0.1, help="requested capture fps (cameras; --realtime pace)")
    rtsp_transport: str = opt("tcp", "--rtsp-transport", choices=("tcp", "udp"), help="RTSP transport")
    open_timeout: float = opt(10.0, "--open-timeout", min=0.1, help="seconds to connect to a stream")
    read_timeout: float = opt(5.0, "--read-timeout", min=0.1, help="seconds a stream read may block")
    stall_timeout: float = opt(5.0, "--stall-timeout", min=0.1,
                               help="no frame for this long: reconnect the stream")
    reconnect_max_backoff: float = opt(30.0, "--reconnect-max-backoff", min=0.1,
                                       help="cap of the reconnect backoff (seconds)")
    reconnect_attempts: int = opt(0, "--reconnect-attempts", min=0,
                                  help="give up after this many failed reconnects (0 = forever)")


@dataclass
class PiCameraConfig:
    camera_num: int = opt(0, help="camera number for picamera2")
    main_size: list = opt([1280, 720], check=parse_size, help="main (display/record) stream size [w, h]")
    lores_size: Optional[list] = opt(None, check=parse_size,
                                     help="lores (inference) stream size [w, h]; default near the model input")
    fps: Optional[float] = opt(None, min=0.1, help="frame rate")
    sensor_mode: Optional[int] = opt(None, min=0, help="index into Picamera2.sensor_modes")
    exposure_time: Optional[int] = opt(None, min=1, help="microseconds; unset = auto exposure")
    analogue_gain: Optional[float] = opt(None, min=1.0, help="unset = auto gain")
    awb_mode: str = opt("auto", choices=("auto", "tungsten", "fluorescent", "indoor", "daylight", "cloudy"),
                        help="auto white balance mode")
    rotation: int = opt(0, choices=(0, 180), help="rotate the image (the ISP supports 0 and 180)")
    hflip: bool = opt(False, help="mirror horizontally")
    vflip: bool = opt(False, help="flip vertically")
    reopen_attempts: int = opt(5, min=0, help="camera failing mid-run: reopen it this many times in a row "
                                              "before giving up with an error (0 = forever)")


@dataclass
class OutputConfig:
    headless: bool = opt(False, "--headless/--window", help="never open a window")
    record: Optional[str] = opt(None, "--record", help="write the annotated video here (.mp4, .avi, .mkv)")
    record_fps: Optional[float] = opt(None, "--record-fps", min=0.1, help="recording fps (default: the source's)")
    record_segment: float = opt(0.0, "--record-segment", min=0.0,
                                help="start a new recording file every SECONDS of video (0: one file)")
    record_keep: Optional[str] = opt(None, "--record-keep", check=parse_keep,
                                     help="delete the oldest segments beyond a size and/or age, e.g. 20GB,7d")
    encoder: str = opt("auto", "--encoder", choices=("auto", "software", "hardware"),
                       help="H.264 encoder for recording and RTSP out (hardware = V4L2 M2M on a Pi 4)")
    events: Optional[str] = opt(None, "--events", help="write one JSON line per processed frame here")
    object_events: Optional[str] = opt(None, "--object-events",
                                       help="write one JSON line per object event (new / update / end) here")
    snapshots: Optional[str] = opt(None, "--snapshots", help="save the best picture of each object (JPEG) in this "
                                                             "directory when it ends")
    stats: float = opt(0.0, "--stats", min=0.0, help="print stats every N seconds (0: only at exit)")
    stats_json: Optional[str] = opt(None, "--stats-json", help="write the final stats as JSON here")
    log_level: str = opt("info", "--log-level", choices=("debug", "info", "warning", "error"), help="log level")


@dataclass
class RtspOutConfig:
    url: Optional[str] = opt(None, "--rtsp-out", check=parse_rtsp_url,
                             help="publish the annotated stream to this rtsp:// URL")
    bitrate: str = opt("1500k", "--rtsp-bitrate", check=parse_bitrate, help="H.264 bitrate, e.g. 1500k")
    fps: Optional[float] = opt(None, "--rtsp-fps", min=0.1, help="published fps (default: the source's)")
    transport: str = opt("tcp", "--rtsp-out-transport", choices=("tcp", "udp"), help="RTSP publish transport")
    serve: Optional[str] = opt(None, "--rtsp-serve", check=parse_rtsp_serve,
                               help="serve the annotated stream over RTSP from this device on [HOST:]PORT/PATH "
                                    "(default host 127.0.0.1; http.auth applies)")
    serve_python: Optional[str] = opt(None, help="a Python with GStreamer's RTSP server (python3-gi) for "
                                                 "rtsp_out.serve (default: $EDGEDET_GST_PYTHON, else this Python "
                                                 "or /usr/bin/python3)")


@dataclass
class HttpConfig:
    listen: Optional[str] = opt(None, "--http", check=parse_listen,
                                help="serve the web view on [HOST]:PORT (default host 127.0.0.1)")
    auth: Optional[str] = opt(None, "--http-auth", secret=True, check=parse_auth,
                              help="USER:PASSWORD for basic auth, or token:SECRET for a bearer token")
    jpeg_quality: int = opt(80, "--http-jpeg-quality", min=10, max=100, help="MJPEG quality")
    max_clients: int = opt(8, "--http-max-clients", min=1, max=256, help="concurrent MJPEG viewers")


@dataclass
class MqttConfig:
    host: Optional[str] = opt(None, "--mqtt", check=lambda value, path: parse_broker(value, path=path),
                              help="broker HOST[:PORT]")
    username: Optional[str] = opt(None, "--mqtt-user", help="broker user name")
    password: Optional[str] = opt(None, "--mqtt-password", secret=True, help="broker password")
    tls: bool = opt(False, "--mqtt-tls/--no-mqtt-tls", help="connect with TLS")
    ca_certs: Optional[str] = opt(None, "--mqtt-ca", help="CA bundle for TLS")
    qos: int = opt(0, "--mqtt-qos", choices=(0, 1, 2), help="QoS of detection events")
    topic_prefix: str = opt("edgedet", "--mqtt-prefix", help="topics: PREFIX/DEVICE/CAMERA/...")
    device: Optional[str] = opt(None, "--device-name", help="device name in topics (default: host name)")
    camera: str = opt("camera", "--camera-name", help="camera name in topics")
    max_rate: float = opt(2.0, "--mqtt-max-rate", min=0.0, help="events per second at most (0: no limit)")
    only_on_change: bool = opt(True, "--mqtt-on-change/--mqtt-every-frame",
                               help="publish only when the detected labels change")
    queue_size: int = opt(1000, "--mqtt-queue", min=1, help="events kept while the broker is away")
    ha_discovery: bool = opt(True, "--ha-discovery/--no-ha-discovery",
                             help="announce sensors and cameras to Home Assistant (MQTT discovery)")
    ha_prefix: str = opt("homeassistant", "--ha-prefix", help="Home Assistant's discovery prefix")


@dataclass
class TrackingConfig:
    enabled: bool = opt(True, "--tracking/--no-tracking",
                        help="follow objects across frames (track ids, object events, zones)")
    low_score: float = opt(0.45, min=0.0, max=1.0,
                           help="detections down to this score keep an existing track alive (the detector runs "
                                "at the lower of this and model.score_threshold; what is reported stays at it)")
    max_detections: int = opt(50, min=1, max=10000,
                              help="detections per frame while tracking, unless model.max_detections is set")
    max_unseen_s: float = opt(5.0, "--track-timeout", min=0.0, help="an object unseen this many seconds has left")
    min_hits: int = opt(3, min=1, max=100, help="consecutive detections before an object exists")
    confirm_s: float = opt(0.5, min=0.0, help="and detected over this many seconds")
    confirm_gap_s: float = opt(0.1, min=0.0, help="with no gap this long (seconds) before it is confirmed")
    snapshot: str = opt("crop", choices=("crop", "frame", "none"),
                        help="the best picture of an object: the crop around it, the whole frame, or none")
    update_interval_s: float = opt(0.0, min=0.0, help="an object 'update' event at least this often (0: never)")


def check_zones(value: Any, path: str) -> tuple:
    """``zones.polygons`` / ``zones.lines`` entries as ``Zone`` / ``Line`` values (``ConfigError`` if wrong)."""
    from .tracking.zones import Line, Zone

    kind, keys = (Zone, ("name", "points", "normalized")) if path.endswith("polygons") else \
        (Line, ("name", "start", "end", "normalized"))
    out = []
    for i, entry in enumerate(value or []):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}: expected a mapping with a name and {', '.join(keys[1:-1])}")
        unknown = sorted(set(map(str, entry)) - set(keys))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown option (known: {', '.join(keys)})")
        try:
            out.append(kind(**{k: entry[k] for k in keys if k in entry}))
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: coordinates must be numbers ({exc})") from None
    return tuple(out)


@dataclass
class ZonesConfig:
    """Zones (polygons) and counting lines, YAML only::

        zones:
          polygons: [{name: door, points: [[0.1, 0.5], [0.4, 0.5], [0.4, 1.0]], normalized: true}]
          lines: [{name: gate, start: [0, 300], end: [640, 300]}]
    """

    polygons: list = opt([], check=check_zones, help="[{name, points: [[x, y], ...], normalized}]")
    lines: list = opt([], check=check_zones, help="[{name, start: [x, y], end: [x, y], normalized}]")
    anchor: str = opt("bottom_center", choices=("bottom_center", "center"),
                      help="the point of a box that is in a zone or crosses a line")


@dataclass
class MotionConfig:
    enabled: bool = opt(False, "--motion/--no-motion",
                        help="run the model only on motion, while objects are tracked, and every keepalive_s")
    threshold: float = opt(0.002, "--motion-threshold", min=0.0, max=1.0,
                           help="fraction of the picture that must change to count as motion")
    keepalive_s: float = opt(4.0, "--motion-keepalive", greater_than=0.0,
                             help="run the model at least this often (seconds) without motion; below "
                                  "tracking.max_unseen_s, so objects standing still are not lost")
    pixel_delta: int = opt(25, min=1, max=255, help="grey level change that counts a pixel as moving")
    regions: int = opt(0, "--motion-regions", min=0, max=8,
                       help="also run the model on up to N model-sized squares of the frame around motion, so "
                            "small, far objects are found (frames at least twice the model input); 0: off")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    picamera: PiCameraConfig = field(default_factory=PiCameraConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    rtsp_out: RtspOutConfig = field(default_factory=RtspOutConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    zones: ZonesConfig = field(default_factory=ZonesConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)


# ---------------------------------------------------------------------------------------------
# validation

def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (YAML gives proper types already)."""
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{path}: expected a list, got {value!r}")
    return value


def _check_field(value: Any, meta: typing.Mapping, path: str) -> None:
    """Choices, bounds and the field's own ``check`` for a value of the right type."""
    if value is None:
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{path}: expected one of {list(meta['choices'])}, got {value!r}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{path}: must be >= {meta['min']}, got {value!r}")
    if number and meta.get("greater_than") is not None and value <= meta["greater_than"]:
        raise ConfigError(f"{path}: must be > {meta['greater_than']}, got {value!r}")
    if number and meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{path}: must be <= {meta['max']}, got {value!r}")
    if meta.get("check") is not None:
        meta["check"](value, path)


def _build(cls, data: Any, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown option (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data.get(name), path)
            continue
        if name not in data:
            continue
        value = _coerce(data[name], tp, path)
        _check_field(value, f.metadata, path)
        kwargs[name] = value
    return cls(**kwargs)


def build_section(cls, data: dict, prefix: str):
    """One section (e.g. ``ModelConfig``) from a dict, with the same checks and messages as a
    config file: for code that takes these settings as arguments (``Detector.from_path``)."""
    return _build(cls, data, prefix)


# -- checks across fields (on the merged configuration) ----------------------------------------

def _one_source(cfg: Config) -> None:
    if cfg.source.camera is not None and cfg.source.uri is not None:
        raise ConfigError("source: give either --source or --camera, not both")


def check_lores_within_main(lores: tuple[int, int], main: tuple[int, int]) -> None:
    """The Pi camera's inference stream may not be larger than its main stream."""
    if lores[0] > main[0] or lores[1] > main[1]:
        raise ConfigError(f"picamera.lores_size: {lores[0]}x{lores[1]} may not exceed "
                          f"picamera.main_size {main[0]}x{main[1]}")


def _lores_within_main(cfg: Config) -> None:
    pc = cfg.picamera
    if pc.lores_size:
        check_lores_within_main(parse_size(pc.lores_size, "picamera.lores_size"),
                                parse_size(pc.main_size, "picamera.main_size"))


def _zones_need_tracking(cfg: Config) -> None:
    z = cfg.zones
    names = [str(e.get("name")) for e in (*z.polygons, *z.lines) if isinstance(e, dict)]
    if len(set(names)) != len(names):
        raise ConfigError("zones: zone and line names must be unique")
    if names and not cfg.tracking.enabled:
        raise ConfigError("zones: zones and lines count tracked objects; remove --no-tracking")
    if (cfg.output.object_events or cfg.output.snapshots) and not cfg.tracking.enabled:
        raise ConfigError("output.object_events: object events need tracking; remove --no-tracking")
    if cfg.motion.regions and not cfg.motion.enabled:
        raise ConfigError("motion.regions: regions are placed around motion; add --motion")
    if cfg.motion.enabled and cfg.tracking.enabled and cfg.motion.keepalive_s >= cfg.tracking.max_unseen_s:
        raise ConfigError(f"motion.keepalive_s: {cfg.motion.keepalive_s:g} s must be below tracking.max_unseen_s "
                          f"({cfg.tracking.max_unseen_s:g} s), or objects standing still end between two looks")


CROSS_CHECKS: tuple[Callable[[Config], None], ...] = (_one_source, _lores_within_main, _zones_need_tracking)


# -- renamed options ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Renamed:
    """An option under its old name: still accepted (YAML key and flag), mapped to the new one."""

    old: str  # dotted path, e.g. "model.postprocess"
    new: str
    flags: tuple[str, ...]
    choices: tuple[str, ...]
    values: dict  # old value -> new value (others unchanged)

    def new_value(self, value: Any) -> Any:
        if value not in self.choices:
            raise ConfigError(f"{self.old}: expected one of {list(self.choices)}, got {value!r}")
        return self.values.get(value, value)

    def new_flag(self) -> str:
        f = next(f for path, f, _ in iter_options() if path == self.new)
        return f.metadata["flags"][0]


RENAMED: tuple[Renamed, ...] = (
    Renamed("model.postprocess", "model.decoder", ("--postprocess",), ("auto", "ours", "op"), {"ours": "edgedet"}),
)


def renamed(old: str) -> Renamed:
    """The ``RENAMED`` entry of an old option name (e.g. ``"model.postprocess"``)."""
    return next(r for r in RENAMED if r.old == old)


def _fold_renamed(layer: dict) -> dict:
    """``layer`` with every old option name replaced by the new one (warned about once per layer)."""
    out = dict(layer)
    for r in RENAMED:
        section, old = r.old.split(".")
        new = r.new.split(".")[1]
        part = out.get(section)
        if not isinstance(part, dict) or old not in part:
            continue
        part = dict(part)
        value = r.new_value(part.pop(old))
        if new in part and part[new] != value:
            raise ConfigError(f"{r.old}: the old name of {r.new}; give only {r.new}")
        part[new] = value
        out[section] = part
        log.warning("%s (%s) is now %s (%s); the old name will go away", r.old, "/".join(r.flags), r.new,
                    r.new_flag())
    return out


# -- entry points ------------------------------------------------------------------------------

def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text())
    except OSError as exc:  # e.g. a service user outside the file's group
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML in {path}{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, source, output, ...)")
    return data


_ENV_RE = re.compile(r"\$\$\{|\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>[^}]*\}?))")


def expand_env(value: Any, path: str = "", environ: typing.Mapping[str, str] | None = None) -> Any:
    """``value`` (a string, or a mapping/list of them) with ``${NAME}`` and ``${NAME:-default}`` in its
    strings (URLs, passwords, paths; numbers and booleans are not substituted) replaced from the
    environment; ``$${`` is a literal ``${``. Keeps secrets out of the config file and out of the
    command line (``ps``): ``--source 'rtsp://admin:${CAM_PASSWORD}@cam/stream'``. A variable that is
    not set (and has no default) is a ``ConfigError`` naming the field and the variable."""
    env = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$${":
            return "${"
        if m.group("bad") is not None:
            raise ConfigError(f"{path}: expected ${{NAME}} or ${{NAME:-default}} (and $${{ for a literal ${{)")
        name, default = m.group("name"), m.group("default")
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        if name in env:
            return ""
        raise ConfigError(f"{path}: environment variable {name} is not set")

    return _ENV_RE.sub(sub, value)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Config from an optional YAML file with ``overrides`` (nested dict, e.g. from the CLI) on top.

    ``${NAME}`` in any string value of either is taken from the environment (``expand_env``).
    The file is checked on its own first: a wrong value in it is an error even when ``overrides``
    replaces it. Then the merged configuration gets every check (``validate``).
    """
    data = expand_env(_fold_renamed(load_yaml(path))) if path else {}
    if data:
        _build(Config, data, "")
    return config_from_dict(_merge(data, expand_env(_fold_renamed(overrides or {}))))


def config_from_dict(data: dict) -> Config:
    """A checked ``Config`` from one nested dict (sections of options)."""
    cfg = _build(Config, _fold_renamed(data) if isinstance(data, dict) else data, "")
    for check in CROSS_CHECKS:
        check(cfg)
    return cfg


def validate(cfg: Config) -> Config:
    """Every check of a config file, for a ``Config`` built in code; returns it (ConfigError if wrong)."""
    config_from_dict(dataclasses.asdict(cfg))
    return cfg


def iter_options(cls=Config, prefix: str = ""):
    """Yield ``(dotted_path, field, type)`` for every leaf option (used to build CLI flags)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            yield from iter_options(tp, path)
        else:
            yield path, f, tp


def to_dict(cfg: Config, *, redact: bool = True) -> dict:
    """Plain dict of the config; secret fields replaced by ``***`` when ``redact``."""
    out = dataclasses.asdict(cfg)
    if redact:
        for path, f, _ in iter_options():
            if f.metadata.get("secret"):
                section, name = path.split(".")
                if out[section][name] is not None:
                    out[section][name] = "***"
    return out
