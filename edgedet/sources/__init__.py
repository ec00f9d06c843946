"""Sources of frames, and the one place that tells from the configuration which one to build.

``resolve_source(cfg)`` (``edgedet.sources.resolve``) classifies ``--source``/``--camera`` once
into a kind, a target and whether the source is live; ``open_source(cfg)`` is that, built::

    --camera 0 | --source 0 | --source /dev/video2   -> CameraSource (OpenCV/V4L2)
    --camera pi | --source picamera2[:N]             -> PiCameraSource (libcamera, lores + main streams)
    --source rtsp://... | http(s)://... | rtmp://... -> NetworkSource (watchdog, reconnect)
    --source video.mp4                               -> VideoFileSource (--loop, --realtime)
    --source image.jpg | --source folder/            -> ImageSource
"""

from __future__ import annotations

from typing import Optional

from ..config import Config
from ..redact import mask_url
from .base import Source
from .resolve import KINDS, ResolvedSource, SourceKind, resolve_source

__all__ = ["KINDS", "ResolvedSource", "Source", "SourceKind", "mask_credentials", "open_source", "resolve_source"]


def mask_credentials(uri: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x`` (other strings unchanged)."""
    return mask_url(uri)


def open_source(cfg: Config, *, lores_size: Optional[tuple[int, int]] = None) -> Source:
    """The ``Source`` for ``cfg.source`` (call ``open()`` or use it as a context manager).

    ``lores_size`` is the inference stream size for the Pi camera (default: ``picamera.lores_size``
    or near the model input, chosen by the caller). Raises ``ConfigError`` when no source or two
    sources are given, ``SourceError`` when a file does not exist.
    """
    return resolve_source(cfg).build(cfg, lores_size)
