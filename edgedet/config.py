"""Typed configuration: YAML file + CLI overrides, validated with field-path errors.

Every option of ``edgedet run`` is a field of one section below; its CLI flag is declared in the
field's metadata (``opt(...)``), so the YAML file and the command line can never drift apart::

    model:   {path: ssd_mobilenet_v1_coco_quant, threads: 4, score_threshold: 0.5}
    source:  {uri: rtsp://cam/stream, stall_timeout: 10}
    output:  {headless: true, events: events.jsonl}
    http:    {listen: ":8080"}

Unknown keys and wrong types raise ``ConfigError`` naming the field (``http.port: expected int``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ConfigError


def opt(default: Any, *flags: str, help: str = "", choices: tuple | None = None,
        min: float | None = None, max: float | None = None, secret: bool = False,
        flag_value: Any = None):
    """A config field with its CLI flag(s) and validation bounds.

    ``flags`` like ``"--threads"`` or ``"--drop/--no-drop"`` (a boolean pair); no flags = YAML only.
    ``secret`` fields are never printed.
    """
    meta = {
        "flags": flags, "help": help, "choices": choices, "min": min, "max": max,
        "secret": secret, "flag_value": flag_value,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


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
    iou_threshold: Optional[float] = opt(None, "--iou", min=0.0, max=1.0,
                                         help="NMS IoU (default: the model's own)")
    max_detections: Optional[int] = opt(None, "--max-detections", min=1, max=10000,
                                        help="detections per frame (default: the model's own)")
    class_agnostic: bool = opt(False, "--class-agnostic/--class-aware",
                               help="one NMS over all classes instead of per class")
    postprocess: str = opt("auto", "--postprocess", choices=("auto", "ours", "op"),
                           help="decode+NMS: ours (numpy), the model's in-graph op, or auto")
    resize: str = opt("auto", "--resize", choices=("auto", "stretch", "letterbox"),
                      help="how frames are fitted to the model input")
    classes: Optional[list] = opt(None, "--classes",
                                  help="only these labels (comma separated), e.g. person,car")


@dataclass
class SourceConfig:
    uri: Optional[str] = opt(None, "--source", "-s",
                             help="video file, image, directory, camera index, rtsp:// or http:// URL, picamera2[:N]")
    camera: Optional[str] = opt(None, "--camera", help="camera index (same as --source N) or 'pi'")
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
    main_size: list = opt([1280, 720], help="main (display/record) stream size [w, h]")
    lores_size: Optional[list] = opt(None, help="lores (inference) stream size [w, h]; default near the model input")
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
    encoder: str = opt("auto", "--encoder", choices=("auto", "software", "hardware"),
                       help="H.264 encoder for recording and RTSP out (hardware = V4L2 M2M on a Pi 4)")
    events: Optional[str] = opt(None, "--events", help="write one JSON line per processed frame here")
    stats: float = opt(0.0, "--stats", min=0.0, help="print stats every N seconds (0: only at exit)")
    stats_json: Optional[str] = opt(None, "--stats-json", help="write the final stats as JSON here")
    log_level: str = opt("info", "--log-level", choices=("debug", "info", "warning", "error"), help="log level")


@dataclass
class RtspOutConfig:
    url: Optional[str] = opt(None, "--rtsp-out", help="publish the annotated stream to this rtsp:// URL")
    bitrate: str = opt("1500k", "--rtsp-bitrate", help="H.264 bitrate, e.g. 1500k")
    fps: Optional[float] = opt(None, "--rtsp-fps", min=0.1, help="published fps (default: the source's)")
    transport: str = opt("tcp", "--rtsp-out-transport", choices=("tcp", "udp"), help="RTSP publish transport")


@dataclass
class HttpConfig:
    listen: Optional[str] = opt(None, "--http", help="serve the web view on [HOST]:PORT (default host 127.0.0.1)")
    auth: Optional[str] = opt(None, "--http-auth", secret=True,
                              help="USER:PASSWORD for basic auth, or token:SECRET for a bearer token")
    jpeg_quality: int = opt(80, "--http-jpeg-quality", min=10, max=100, help="MJPEG quality")
    max_clients: int = opt(8, "--http-max-clients", min=1, max=256, help="concurrent MJPEG viewers")


@dataclass
class MqttConfig:
    host: Optional[str] = opt(None, "--mqtt", help="broker HOST[:PORT]")
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


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    picamera: PiCameraConfig = field(default_factory=PiCameraConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    rtsp_out: RtspOutConfig = field(default_factory=RtspOutConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)


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
        meta = f.metadata
        if value is not None:
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(f"{path}: expected one of {list(meta['choices'])}, got {value!r}")
            if meta.get("min") is not None and isinstance(value, (int, float)) and value < meta["min"]:
                raise ConfigError(f"{path}: must be >= {meta['min']}, got {value!r}")
            if meta.get("max") is not None and isinstance(value, (int, float)) and value > meta["max"]:
                raise ConfigError(f"{path}: must be <= {meta['max']}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


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
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
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


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Config from an optional YAML file with ``overrides`` (nested dict, e.g. from the CLI) on top."""
    data = load_yaml(path) if path else {}
    data = _merge(data, overrides or {})
    return _build(Config, data, "")


def config_from_dict(data: dict) -> Config:
    return _build(Config, data, "")


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
