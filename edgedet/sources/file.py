"""Video files: every frame in order, optionally looped, optionally paced like a camera.

With ``realtime=True`` frames are released at the file's own fps (or ``fps``) as a camera
would, and the source reports itself as ``live`` (the pipeline then keeps only the newest frame).
When reading falls behind the pace it does not sleep: the next frame is due immediately.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import cv2

from ..errors import SourceError
from ..frame import Frame
from .camera import CaptureSource
from .ffmpeg_options import capture_options


class VideoFileSource(CaptureSource):
    def __init__(self, path: str | Path, *, loop: bool = False, realtime: bool = False,
                 fps: Optional[float] = None, source_id: str = "0") -> None:
        path = Path(path)
        super().__init__(str(path), name=str(path), live=realtime, source_id=source_id,
                         backend=cv2.CAP_FFMPEG)
        self.path = path
        self.loop = loop
        self.realtime = realtime
        self.req_fps = fps
        self.loops = 0
        self._next_due: Optional[float] = None
        self._pending = None

    def _open_capture(self) -> cv2.VideoCapture:
        with capture_options(None):  # a user's options for live streams (fflags;nobuffer) lose frames of files
            return super()._open_capture()

    def open(self) -> None:
        if not self.path.exists():
            raise SourceError(f"source not found: {self.path}")
        if not self.path.is_file():
            raise SourceError(f"source is not a file: {self.path}")
        try:
            with open(self.path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise SourceError(f"cannot read source {self.path}: {exc.strerror or exc}") from exc
        super().open()
        if self.req_fps:
            self.fps = float(self.req_fps)
        # a file that opens but has no decodable frame is not a video
        first = self._grab()
        if first is None:
            self.close()
            raise SourceError(f"cannot decode any frame from {self.path} (not a video file?)")
        self._pending = first
        self._next_due = None

    def _open_error(self) -> str:
        return f"cannot open video {self.path} (unsupported or corrupt file)"

    def _rewind(self) -> bool:
        assert self._cap is not None
        if self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            image = self._grab()
            if image is not None:
                self._pending = image
                return True
        # some containers cannot seek: reopen
        self._cap.release()
        self._cap = self._open_capture()
        self._pending = self._grab() if self._cap.isOpened() else None
        return self._pending is not None

    def read(self) -> Optional[Frame]:
        if self._interrupted.is_set():
            return None
        image = self._pending
        self._pending = None
        if image is None:
            image = self._grab()
        if image is None and self.loop and self._index > 0:
            if not self._rewind():
                return None
            self.loops += 1
            image, self._pending = self._pending, None
        if image is None:
            return None
        if self.realtime and self.fps > 0 and not self._pace():
            return None
        return self._frame(image)

    def _pace(self) -> bool:
        """Wait until the frame is due, like a camera would deliver it; False if interrupted meanwhile."""
        now = time.monotonic()
        if self._next_due is None:
            self._next_due = now
        delay = self._next_due - now
        if delay > 0:
            if self._interrupted.wait(delay):
                return False
            self._next_due += 1.0 / self.fps
        else:  # behind: release now, keep the cadence from here
            self._next_due = max(self._next_due + 1.0 / self.fps, now - 1.0 / self.fps)
        return True

    def stats(self) -> dict:
        return {"frames_read": self._index, "loops": self.loops}
