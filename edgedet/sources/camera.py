"""OpenCV capture: USB/V4L2 cameras by index or device path (and the generic reader under files).

``CaptureSource`` wraps one ``cv2.VideoCapture``: it opens (or raises a ``SourceError`` naming
the source), reads BGR frames stamped with their capture time, and closes. ``CameraSource`` is
the live camera: it asks for a size and fps, and a camera that stops delivering frames is an
error (after a few retries), not the end of input.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional, Union

import cv2
import numpy as np

from ..errors import SourceError
from ..frame import Frame
from .base import BaseSource

log = logging.getLogger(__name__)


class CaptureSource(BaseSource):
    """Frames from one ``cv2.VideoCapture`` target (index, device, file or URL).

    ``name`` is printed in errors and stats (pass it with credentials masked).
    ``decoder_threads`` (set before ``open``) caps the FFmpeg decoder's threads; None leaves
    OpenCV's default (one per core). ``interrupt()`` makes ``read`` return None (a camera that
    delivers nothing stops retrying, a paced file stops waiting for its next frame).
    """

    live = False

    def __init__(self, target: Union[int, str], *, name: Optional[str] = None, live: bool = False,
                 source_id: str = "0", backend: int = cv2.CAP_ANY) -> None:
        self.target = target
        self.name = name if name is not None else str(target)
        self.live = live
        self.source_id = source_id
        self.backend = backend
        self.fps = 0.0
        self.width = 0
        self.height = 0
        self.frame_count = 0  # 0 when unknown (cameras, streams)
        self._cap: Optional[cv2.VideoCapture] = None
        self._index = 0
        self._read_failures = 0
        self._interrupted = threading.Event()
        self.decoder_threads: Optional[int] = None

    # -- lifecycle --------------------------------------------------------------------------
    def _open_capture(self) -> cv2.VideoCapture:
        if self.decoder_threads and hasattr(cv2, "CAP_PROP_N_THREADS"):
            return cv2.VideoCapture(self.target, self.backend, [cv2.CAP_PROP_N_THREADS, int(self.decoder_threads)])
        return cv2.VideoCapture(self.target, self.backend)

    def _configure(self, cap: cv2.VideoCapture) -> None:
        """Hook: set capture properties before the first read (cameras)."""

    def open(self) -> None:
        self._interrupted.clear()
        if self._cap is not None:
            return
        try:
            cap = self._open_capture()
        except cv2.error as exc:
            raise SourceError(f"cannot open source {self.name}: {str(exc).strip().splitlines()[-1]}") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._open_error())
        self._configure(cap)
        self._cap = cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not np.isfinite(self.fps) or self.fps < 0 or self.fps > 1000:
            self.fps = 0.0
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self.frame_count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))

    def _open_error(self) -> str:
        return f"cannot open source {self.name}"

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def interrupt(self) -> None:
        self._interrupted.set()

    # -- reading ----------------------------------------------------------------------------
    def _grab(self) -> Optional[np.ndarray]:
        """One decoded image, or None when the capture reports no frame."""
        if self._cap is None:
            raise SourceError(f"source {self.name} is not open")
        ok, image = self._cap.read()
        if not ok or image is None or image.size == 0:
            return None
        if image.ndim == 2:  # grayscale streams
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return image

    def _frame(self, image: np.ndarray) -> Frame:
        frame = Frame(image=image, index=self._index, timestamp=time.monotonic(), wall_time=time.time(),
                      source_id=self.source_id)
        self._index += 1
        return frame

    def read(self) -> Optional[Frame]:
        image = None if self._interrupted.is_set() else self._grab()
        if image is None:
            return None
        return self._frame(image)

    def stats(self) -> dict:
        return {"frames_read": self._index}


class CameraSource(CaptureSource):
    """A local camera: ``CameraSource(0)`` or ``CameraSource("/dev/video2")``.

    ``width``/``height``/``fps`` are requests (the driver may pick the nearest mode). A camera
    that returns no frame ``max_failures`` times in a row raises ``SourceError``.
    """

    def __init__(self, device: Union[int, str], *, width: Optional[int] = None, height: Optional[int] = None,
                 fps: Optional[float] = None, max_failures: int = 20, live: bool = True,
                 source_id: Optional[str] = None) -> None:
        name = f"camera {device}"
        super().__init__(device, name=name, live=live, source_id=str(device) if source_id is None else source_id)
        self.req_width = width
        self.req_height = height
        self.req_fps = fps
        self.max_failures = max_failures

    def _open_capture(self) -> cv2.VideoCapture:
        if isinstance(self.target, int) and hasattr(cv2, "CAP_V4L2"):
            cap = cv2.VideoCapture(self.target, cv2.CAP_V4L2)
            if cap.isOpened():
                return cap
            cap.release()
        return cv2.VideoCapture(self.target)

    def _configure(self, cap: cv2.VideoCapture) -> None:
        if self.req_width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.req_width)
        if self.req_height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.req_height)
        if self.req_fps:
            cap.set(cv2.CAP_PROP_FPS, self.req_fps)
        if self.live:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a backlog (V4L2)

    def _open_error(self) -> str:
        if isinstance(self.target, int):
            return (f"cannot open camera {self.target}: no such camera or it is busy "
                    f"(check /dev/video{self.target} and its permissions)")
        return f"cannot open camera {self.target}"

    def read(self) -> Optional[Frame]:
        while not self._interrupted.is_set():
            image = self._grab()
            if image is not None:
                self._read_failures = 0
                return self._frame(image)
            if not self.live:
                return None  # a recorded file opened through this class: end of input
            self._read_failures += 1
            if self._read_failures >= self.max_failures:
                raise SourceError(f"{self.name} stopped delivering frames")
            self._interrupted.wait(0.05)
        return None

    def stats(self) -> dict:
        return {"frames_read": self._index, "read_failures": self._read_failures}
