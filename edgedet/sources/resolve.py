"""Which source the configuration names, decided once: ``resolve_source(cfg) -> ResolvedSource``.

A ``ResolvedSource`` is the source's kind, its target and whether it is live; the run uses it to
build the ``Source`` (``build``), to describe it (``name``, credentials masked) and to choose the
drop policy (live: keep only the newest frame; otherwise every frame). The kinds, tried in order::

    kind      given as                                            live          module
    picamera  --camera pi | --source picamera2[:N]                yes           sources.picamera
    camera    --camera N | --source N | --source /dev/videoN      yes           sources.camera
    network   --source rtsp://... | http(s)://... | rtmp://...    yes           sources.network
    images    --source image.jpg | --source folder/               no            sources.images
    video     --source video.mp4                                  --realtime    sources.file

A new kind of source is one module with its ``Source`` class and one entry in ``KINDS``.
Resolving checks what can be checked without opening anything (the file or device exists, the URL
scheme is one we read), so a wrong source is reported before the model loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Union

from ..config import PI_CAMERA_NAMES, Config, SourceConfig
from ..errors import ConfigError, SourceError
from ..redact import mask_url
from .base import Source

__all__ = ["KINDS", "ResolvedSource", "SourceKind", "resolve_source"]

Target = Union[int, str, Path]

_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_PICAM_RE = re.compile(r"^picamera2?(?::(\d+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class ResolvedSource:
    """A source as classified from the configuration (nothing opened yet)."""

    kind: SourceKind
    target: Target  # camera index or device, Pi camera number, URL, or path
    live: bool  # frames arrive in real time: the run keeps only the newest one
    name: str  # safe to print

    def build(self, cfg: Config, lores_size: Optional[tuple[int, int]] = None) -> Source:
        """The ``Source`` (not yet opened). ``lores_size``: the inference stream size of a camera
        with a second stream (the Pi camera), usually the model's input size."""
        return self.kind.build(self, cfg, lores_size)


@dataclass(frozen=True)
class SourceKind:
    """One kind of source: which text it claims, whether it is live, how it is built."""

    name: str
    claim: Callable[[str, Config], Optional[Target]]  # the target for this text, or None (may raise)
    live: Callable[[SourceConfig], bool]
    build: Callable[[ResolvedSource, Config, Optional[tuple[int, int]]], Source]
    describe: Callable[[Target], str] = str


# -- claims -------------------------------------------------------------------------------------

def _claim_picamera(text: str, cfg: Config) -> Optional[int]:
    m = _PICAM_RE.match(text)
    if not m:
        return None
    return int(m.group(1)) if m.group(1) is not None else cfg.picamera.camera_num


def _claim_camera(text: str, cfg: Config) -> Optional[Union[int, str]]:
    if text.isdigit():
        return int(text)
    if text.startswith("/dev/video"):
        if not Path(text).exists():
            raise SourceError(f"cannot open camera {text}: no such device")
        return text
    return None


def _claim_url(text: str, cfg: Config) -> Optional[str]:
    m = _URL_RE.match(text)
    if not m:
        return None
    if m.group(1).lower() == "file":
        raise SourceError("unsupported source URL scheme file:// (give the path instead)")
    return text


def _claim_images(text: str, cfg: Config) -> Optional[Path]:
    from .images import is_image_path

    path = Path(text).expanduser()
    if path.is_dir() or (is_image_path(path) and path.exists()):
        return path
    return None


def _claim_video(text: str, cfg: Config) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise SourceError(f"source not found: {path}")
    return path


# -- builders (each imports its module only when that kind is used) ------------------------------

def _build_picamera(src: ResolvedSource, cfg: Config, lores_size) -> Source:
    try:
        from .picamera import PiCameraSource
    except ImportError as exc:
        raise SourceError(f"the Pi camera is not supported by this installation: {exc}") from exc
    pc = cfg.picamera
    if src.target != pc.camera_num:
        pc = replace(pc, camera_num=int(src.target))
    if lores_size is None and pc.lores_size:
        lores_size = (int(pc.lores_size[0]), int(pc.lores_size[1]))
    return PiCameraSource(pc, lores_size)


def _build_camera(src: ResolvedSource, cfg: Config, lores_size) -> Source:
    from .camera import CameraSource

    s = cfg.source
    return CameraSource(src.target, width=s.width, height=s.height, fps=s.fps)


def _build_network(src: ResolvedSource, cfg: Config, lores_size) -> Source:
    from .network import NetworkSource

    return NetworkSource(str(src.target), cfg.source)


def _build_images(src: ResolvedSource, cfg: Config, lores_size) -> Source:
    from .images import ImageSource

    return ImageSource(src.target, loop=cfg.source.loop, fps=cfg.source.fps)


def _build_video(src: ResolvedSource, cfg: Config, lores_size) -> Source:
    from .file import VideoFileSource

    s = cfg.source
    return VideoFileSource(src.target, loop=s.loop, realtime=s.realtime, fps=s.fps)


def _always(src: SourceConfig) -> bool:
    return True


def _never(src: SourceConfig) -> bool:
    return False


def _realtime(src: SourceConfig) -> bool:
    return bool(src.realtime)


KINDS: tuple[SourceKind, ...] = (
    SourceKind("picamera", _claim_picamera, _always, _build_picamera, lambda n: f"picamera2:{n}"),
    SourceKind("camera", _claim_camera, _always, _build_camera, lambda dev: f"camera {dev}"),
    SourceKind("network", _claim_url, _always, _build_network, lambda url: mask_url(str(url))),
    SourceKind("images", _claim_images, _never, _build_images),
    SourceKind("video", _claim_video, _realtime, _build_video),
)


def _given(src: SourceConfig) -> str:
    """The source as text: ``--camera pi`` reads as ``picamera2``, ``--camera N`` as ``N``."""
    if src.camera is not None and src.uri is not None:
        raise ConfigError("source: give either --source or --camera, not both")
    if src.camera is not None:
        spec = str(src.camera).strip()
        return "picamera2" if spec.lower() in PI_CAMERA_NAMES else spec
    if src.uri is None:
        raise ConfigError("source: no input given (use --source FILE|DIR|URL|N or --camera N)")
    text = str(src.uri).strip()
    if not text:
        raise ConfigError("source.uri: empty source")
    return text


def resolve_source(cfg: Config) -> ResolvedSource:
    """Classify ``cfg.source`` (``ConfigError`` when none or two are given, ``SourceError`` when a
    file or device does not exist)."""
    text = _given(cfg.source)
    for kind in KINDS:
        target = kind.claim(text, cfg)
        if target is not None:
            return ResolvedSource(kind, target, kind.live(cfg.source), kind.describe(target))
    raise SourceError(f"source not found: {mask_url(text)}")  # pragma: no cover - video claims any path
