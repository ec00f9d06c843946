"""Recording the annotated video: H.264 in fragmented MP4, segments, a retention limit.

``--record out.mp4`` writes H.264 (``yuv420p``, plays in browsers) through the ``ffmpeg``
program, or PyAV, or the Raspberry Pi 4's hardware encoder (``--encoder``; see
``edgedet.sinks.videofile``). The file is fragmented with a keyframe every second: a run killed
with SIGKILL, a power cut or a full disk leaves a file that plays up to about the last second.
Ctrl-C and SIGTERM finish the frames in flight and finalize the file. ``.mkv`` is H.264 in
Matroska; ``.avi`` is Motion JPEG through OpenCV. Without any H.264 encoder the recording falls
back to OpenCV's MPEG-4 Part 2 with a one-line notice.

``--record-segment SECONDS`` starts a new file every SECONDS of video, named after the time of its
first frame (``out_20261122_030405.mp4``, or the ``strftime`` pattern given as ``--record``);
``--record-keep 20GB,7d`` then deletes the oldest segments beyond a total size and/or an age (see
``edgedet.sinks.retention``).

Encoding runs in a writer thread fed through a short queue: ``write`` blocks only when the encoder
falls behind by more than ``QUEUE_FRAMES`` frames (no frame is dropped). An encoder failure (full
disk, encoder gone) ends the run with one ``SinkError`` naming the file and the cause. The writer
opens at the first frame (its size is only known then); frames of another size (a folder of
images) are resized to the first one. The frame rate is ``fps``, else the source's
(``context.source_fps``), else 10. ``write`` keeps a reference to the picture: the pipeline hands
each sink a picture it no longer modifies.

``timed=True`` (live sources, where frames are dropped) repeats frames as needed so the video
plays in real time: frame *k* of the file shows what was captured at ``k / fps`` seconds.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from ..errors import ConfigError, SinkError
from ..frame import Result
from .base import BaseSink, SinkContext
from .retention import RecordingNames, enforce_keep, keep_limits
from .videofile import (
    EXTENSIONS,
    EncoderChoice,
    VideoFile,
    VideoWriteError,
    choose_file_encoder,
    open_video_file,
    trim_to_fragments,
)

log = logging.getLogger("edgedet.recorder")

DEFAULT_FPS = 10.0
MAX_REPEAT_S = 2.0  # a stall longer than this is not filled with copies
KEYFRAME_S = 1.0  # keyframe (and fragment) interval: what a crash may cost
QUEUE_FRAMES = 4  # frames waiting for the encoder before ``write`` blocks


class RecorderSink(BaseSink):
    needs_annotated = True

    def __init__(self, path: str, *, fps: Optional[float] = None, encoder: str = "auto",
                 timed: bool = False, annotated: bool = True, context: Optional[SinkContext] = None,
                 segment: Optional[float] = None, keep: Optional[str] = None) -> None:
        self.path = Path(path)
        self.context = context
        self.fps = fps
        self.encoder = encoder
        self.timed = timed
        self.needs_annotated = annotated
        self.reads_frame = not annotated  # records the picture as captured
        self.segment = float(segment or 0.0)
        self.keep = keep_limits(keep)
        self.names = RecordingNames(self.path, segmented=self.segment > 0)
        if self.keep is not None and not self.names.patterned:
            raise ConfigError("output.record_keep: needs --record-segment, or a %-pattern in the --record name")
        self.frames_written = 0  # frames handed to the encoder (copies of timed mode included)
        self.segments = 0  # files started by this run
        self.current: Optional[Path] = None  # the file being written (the last one after close)
        self.size: Optional[tuple[int, int]] = None
        self.choice: Optional[EncoderChoice] = None
        self._t0: Optional[float] = None
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[SinkError] = None
        self._reported = False

    @property
    def fourcc(self) -> str:
        return self.choice.codec if self.choice is not None else ""

    def open(self) -> None:
        ext = self.path.suffix.lower()
        if ext not in EXTENSIONS:
            raise SinkError(f"cannot record to {self.path}: use a .mp4, .mkv, .mov or .avi file name")
        parent = self.names.directory
        if not parent.is_dir():
            raise SinkError(f"cannot record to {self.path}: directory {parent} does not exist")
        if self.path.is_dir():
            raise SinkError(f"cannot record to {self.path}: it is a directory")
        if not os.access(parent, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise SinkError(f"cannot record to {self.path}: permission denied")
        try:
            self.choice = choose_file_encoder(self.encoder, ext)
        except ValueError as exc:
            raise SinkError(f"cannot record to {self.path}: {exc}") from None
        if self.choice.notice:
            log.warning("%s", self.choice.notice)
        removed = enforce_keep(self.names, self.keep)
        if removed:
            log.info("deleted %d old recording(s) beyond --record-keep in %s", len(removed), self.names.directory)

    # -- output thread ----------------------------------------------------------------------------
    def _copies(self, timestamp: float, fps: float) -> int:
        """How many times this frame goes into the file (timed mode fills drops, skips excess)."""
        if not self.timed or self._t0 is None:
            return 1
        due = int((timestamp - self._t0) * fps) + 1
        copies = due - self.frames_written
        cap = max(1, int(MAX_REPEAT_S * fps))
        if copies > cap:  # a long stall: skip the gap instead of filling it
            self._t0 += (copies - cap) / fps
            copies = cap
        return copies

    def write(self, result: Result) -> None:
        image = result.annotated if (self.needs_annotated and result.annotated is not None) else result.frame.image
        self._raise_error()
        if self._thread is None:
            if self.choice is None:
                self.open()
            source_fps = self.context.source_fps if self.context is not None else 0.0
            self.fps = float(self.fps or source_fps or DEFAULT_FPS)
            self.size = (image.shape[1], image.shape[0])
            self._t0 = result.frame.timestamp
            self._thread = threading.Thread(target=self._run, name="edgedet-recorder", daemon=True)
            self._thread.start()
        copies = self._copies(result.frame.timestamp, float(self.fps or DEFAULT_FPS))
        if copies <= 0:
            return  # more results than the recording rate: keep the cadence
        self._put((image, copies, result.frame.wall_time))
        self.frames_written += copies

    def _put(self, item) -> None:
        assert self._thread is not None
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    self._raise_error()
                    return

    def _raise_error(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            while thread.is_alive():
                try:
                    self._queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
            thread.join()
        self._raise_error()

    # -- writer thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        current: Optional[VideoFile] = None
        seg_frames = 0
        resized: Optional[np.ndarray] = None
        seg_len = self.segment * float(self.fps or DEFAULT_FPS)
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                image, copies, wall_time = item
                if current is not None and seg_len and seg_frames >= seg_len:
                    done, current = current, None
                    self._finish(done)
                if current is None:
                    current, seg_frames = self._start(wall_time), 0
                if (image.shape[1], image.shape[0]) != self.size:
                    resized = cv2.resize(image, self.size, dst=resized, interpolation=cv2.INTER_AREA)
                    image = resized
                for _ in range(copies):
                    current.write(image)
                seg_frames += copies
                del image, item
            if current is not None:
                done, current = current, None
                self._finish(done)
        except VideoWriteError as exc:
            self._fail(current, exc)
        except Exception as exc:  # noqa: BLE001 - any encoder failure ends the run with one line
            self._fail(current, VideoWriteError(f"the encoder failed ({exc})"))

    def _start(self, wall_time: float) -> VideoFile:
        assert self.choice is not None and self.size is not None
        path = self.names.path_for(wall_time)
        try:
            out = open_video_file(self.choice, path, self.size, float(self.fps or DEFAULT_FPS), KEYFRAME_S)
        except OSError as exc:
            raise VideoWriteError(exc.strerror or str(exc), path=path) from None
        except VideoWriteError as exc:
            exc.path = path
            raise
        self.segments += 1
        self.current = path
        level = logging.INFO if self.segments == 1 else logging.DEBUG
        log.log(level, "recording %s: %s %dx%d @ %g fps", path, self.choice.describe(), *self.size, self.fps)
        return out

    def _finish(self, done: VideoFile) -> None:
        try:
            done.close()
        except VideoWriteError as exc:
            exc.path = done.path
            self._trim(done.path)
            raise
        enforce_keep(self.names, self.keep)

    @staticmethod
    def _trim(path: Path) -> None:
        if path.suffix.lower() in (".mp4", ".m4v", ".mov"):
            trim_to_fragments(path)

    def _fail(self, current: Optional[VideoFile], exc: VideoWriteError) -> None:
        path = current.path if current is not None else (exc.path or self.path)
        if current is not None:
            try:
                current.close()
            except Exception:  # noqa: BLE001 - already failing: the first cause is the one reported
                pass
            self._trim(path)
        played = " (the file plays up to the failure)" if path.exists() and path.stat().st_size > 0 else ""
        self._error = SinkError(f"recording to {path} stopped: {exc.reason}{played}")
