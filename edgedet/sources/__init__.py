"""Sources of frames and the factory that picks one from the configuration.

``open_source(cfg)`` turns ``--source``/``--camera`` into a ``Source`` (not yet opened)::

    --camera 0 | --source 0 | --source /dev/video2   -> CameraSource (OpenCV/V4L2)
    --camera pi | --source picamera2[:N]             -> PiCameraSource (libcamera, lores + main streams)
    --source rtsp://... | http(s)://... | rtmp://... -> NetworkSource (watchdog, reconnect)
    --source video.mp4                               -> VideoFileSource (--loop, --realtime)
    --source image.jpg | --source folder/            -> ImageSource
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ..config import Config
from ..errors import ConfigError, SourceError
from .base import Source

__all__ = ["Source", "open_source", "describe_source", "mask_credentials"]

_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_PICAM_RE = re.compile(r"^picamera2?(?::(\d+))?$", re.IGNORECASE)


def mask_credentials(uri: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x`` (other strings unchanged)."""
    try:
        from ..redact import mask_url
    except ImportError:  # pragma: no cover - the redact module ships with the package
        return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/@]*):[^@/]*@", r"\1:***@", uri)
    return mask_url(uri)


def describe_source(cfg: Config) -> str:
    """The source as the user gave it, safe to print."""
    src = cfg.source
    if src.camera is not None:
        return f"camera {src.camera}"
    return mask_credentials(str(src.uri)) if src.uri is not None else "(none)"


def open_source(cfg: Config, *, lores_size: Optional[tuple[int, int]] = None) -> Source:
    """The ``Source`` for ``cfg.source`` (call ``open()`` or use it as a context manager).

    ``lores_size`` is the inference stream size for the Pi camera (default: ``picamera.lores_size``
    or near the model input, chosen by the caller). Raises ``ConfigError`` when no source or two
    sources are given, ``SourceError`` when a file does not exist.
    """
    src = cfg.source
    if src.camera is not None and src.uri is not None:
        raise ConfigError("source: give either --source or --camera, not both")
    if src.camera is None and src.uri is None:
        raise ConfigError("source: no input given (use --source FILE|DIR|URL|N or --camera N)")
    if src.camera is not None:
        spec = str(src.camera).strip()
        if spec.lower() in ("pi", "picamera", "picamera2"):
            return _picamera(cfg, cfg.picamera.camera_num, lores_size)
        if not spec.isdigit():
            raise ConfigError(f"source.camera: expected a camera index or 'pi', got {spec!r}")
        return _camera(cfg, int(spec))

    uri = str(src.uri).strip()
    if not uri:
        raise ConfigError("source.uri: empty source")
    m = _PICAM_RE.match(uri)
    if m:
        num = int(m.group(1)) if m.group(1) is not None else cfg.picamera.camera_num
        return _picamera(cfg, num, lores_size)
    if uri.isdigit():
        return _camera(cfg, int(uri))
    if uri.startswith("/dev/video"):
        if not Path(uri).exists():
            raise SourceError(f"cannot open camera {uri}: no such device")
        return _camera(cfg, uri)
    if _URL_RE.match(uri):
        return _network(cfg, uri)

    path = Path(uri).expanduser()
    if not path.exists():
        raise SourceError(f"source not found: {path}")
    from .images import ImageSource, is_image_path

    if path.is_dir() or is_image_path(path):
        return ImageSource(path, loop=src.loop, fps=src.fps)
    from .file import VideoFileSource

    return VideoFileSource(path, loop=src.loop, realtime=src.realtime, fps=src.fps)


def _camera(cfg: Config, device):
    from .camera import CameraSource

    src = cfg.source
    return CameraSource(device, width=src.width, height=src.height, fps=src.fps)


def _picamera(cfg: Config, camera_num: int, lores_size):
    try:
        from .picamera import PiCameraSource
    except ImportError as exc:
        raise SourceError(f"the Pi camera is not supported by this installation: {exc}") from exc
    pc = cfg.picamera
    if camera_num != pc.camera_num:
        from dataclasses import replace

        pc = replace(pc, camera_num=camera_num)
    if lores_size is None and pc.lores_size:
        lores_size = (int(pc.lores_size[0]), int(pc.lores_size[1]))
    return PiCameraSource(pc, lores_size)


def _network(cfg: Config, uri: str):
    scheme = _URL_RE.match(uri).group(1).lower()  # type: ignore[union-attr]
    if scheme in ("file",):
        raise SourceError(f"unsupported source URL scheme {scheme}:// (give the path instead)")
    try:
        from .network import NetworkSource
    except ImportError:
        from .camera import CaptureSource

        return CaptureSource(uri, name=mask_credentials(uri), live=True)
    return NetworkSource(uri, cfg.source)
