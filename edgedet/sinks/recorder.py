"""Recording the annotated video with ``cv2.VideoWriter``.

The container follows the file name: ``.mp4``/``.mov``/``.mkv`` use MPEG-4 Part 2 (``mp4v``,
every OpenCV build has it), ``.avi`` uses Motion JPEG. ``encoder="hardware"`` asks FFmpeg for
H.264 (``avc1``; on a Raspberry Pi 4 that is the V4L2 M2M encoder) and fails clearly when there
is none. The writer opens at the first frame (its size is only known then); frames of another
size (a folder of images) are resized to the first one. The frame rate is ``fps``, else the
source's (``context.source_fps``, read at the first frame), else 10. ``close()`` finalizes the file, so a run
stopped by Ctrl-C or SIGTERM leaves a playable video.

``timed=True`` (live sources, where frames are dropped) repeats frames as needed so the video
plays in real time: frame *k* of the file shows what was captured at ``k / fps`` seconds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from ..errors import SinkError
from ..frame import Result
from .base import BaseSink, SinkContext

log = logging.getLogger(__name__)

FOURCC_BY_EXT = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
DEFAULT_FPS = 10.0
MAX_REPEAT_S = 2.0  # a stall longer than this is not filled with copies


class RecorderSink(BaseSink):
    needs_annotated = True

    def __init__(self, path: str, *, fps: Optional[float] = None, encoder: str = "auto",
                 timed: bool = False, annotated: bool = True, context: Optional[SinkContext] = None) -> None:
        self.path = Path(path)
        self.context = context
        self.fps = fps
        self.encoder = encoder
        self.timed = timed
        self.needs_annotated = annotated
        self.reads_frame = not annotated  # records the picture as captured
        self.frames_written = 0
        self.size: Optional[tuple[int, int]] = None
        self.fourcc = ""
        self._writer: Optional[cv2.VideoWriter] = None
        self._t0: Optional[float] = None
        self._resized: Optional[np.ndarray] = None

    def open(self) -> None:
        ext = self.path.suffix.lower()
        if ext not in FOURCC_BY_EXT:
            raise SinkError(f"cannot record to {self.path}: use a .mp4, .mkv, .mov or .avi file name")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise SinkError(f"cannot record to {self.path}: directory {parent} does not exist")
        if self.path.is_dir():
            raise SinkError(f"cannot record to {self.path}: it is a directory")
        if not os.access(parent, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise SinkError(f"cannot record to {self.path}: permission denied")

    def _open_writer(self, width: int, height: int) -> None:
        source_fps = self.context.source_fps if self.context is not None else 0.0
        fps = float(self.fps or source_fps or DEFAULT_FPS)
        ext = self.path.suffix.lower()
        candidates = ["avc1"] if self.encoder == "hardware" else [FOURCC_BY_EXT[ext]]
        for code in candidates:
            writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*code), fps, (width, height))
            if writer.isOpened():
                self._writer, self.fourcc, self.size, self.fps = writer, code, (width, height), fps
                log.debug("recording %s: %s %dx%d @ %.2f fps", self.path, code, width, height, fps)
                return
            writer.release()
        if self.encoder == "hardware":
            raise SinkError(f"cannot record to {self.path}: no hardware H.264 encoder (try --encoder software)")
        raise SinkError(f"cannot record to {self.path}: OpenCV cannot write {ext} files")

    def write(self, result: Result) -> None:
        image = result.annotated if (self.needs_annotated and result.annotated is not None) else result.frame.image
        if self._writer is None:
            self._open_writer(image.shape[1], image.shape[0])
            self._t0 = result.frame.timestamp
        assert self._writer is not None and self.size is not None
        if (image.shape[1], image.shape[0]) != self.size:
            self._resized = cv2.resize(image, self.size, dst=self._resized, interpolation=cv2.INTER_AREA)
            image = self._resized
        copies = 1
        if self.timed and self._t0 is not None:
            due = int((result.frame.timestamp - self._t0) * float(self.fps or DEFAULT_FPS)) + 1
            copies = due - self.frames_written
            if copies <= 0:
                return  # more results than the recording rate: keep the cadence
            cap = max(1, int(MAX_REPEAT_S * float(self.fps or DEFAULT_FPS)))
            if copies > cap:  # a long stall: skip the gap instead of filling it
                self._t0 += (copies - cap) / float(self.fps or DEFAULT_FPS)
                copies = cap
        for _ in range(copies):
            self._writer.write(image)
        self.frames_written += copies

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
