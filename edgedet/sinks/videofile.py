"""Video files for the recorder: H.264 in fragmented MP4, written so that a killed run stays playable.

Backends, by table (``WRITERS``):

- ``ffmpeg``: the ``ffmpeg`` program fed raw BGR frames through a pipe (its own process: the
  encoding runs beside the detector, and an ``ffmpeg`` whose parent was killed still finishes the
  file when its input ends). It runs in its own session with SIGINT, SIGTERM and SIGHUP blocked:
  a Ctrl-C at the terminal, or a stop signal sent to every process of the service, reaches only
  edgedet, which finishes the frames in flight and then closes the pipe.
- ``pyav``: the same encoder in-process with PyAV (``pip install av``) when there is no program.
- ``opencv``: ``cv2.VideoWriter`` (MPEG-4 Part 2, or Motion JPEG in ``.avi``): the fallback when no
  H.264 encoder exists. Such a file is not crash-safe and browsers do not play it.

H.264 is ``yuv420p`` (what browsers decode), a keyframe every ``keyframe_s`` seconds, and MP4/MOV
files are fragmented (``+frag_keyframe+empty_moov+default_base_moof``): each keyframe closes a
fragment that is complete on disk, so after SIGKILL or a power cut the file plays up to the last
fragment (about ``keyframe_s`` before the end). Matroska (``.mkv``) is written in clusters with the
same effect. A write that fails (a full disk) leaves the file cut back to its last complete
fragment (``trim_to_fragments``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Optional, Protocol

import numpy as np

from ..cpu import ffmpeg_encoders, hardware_h264_available, pyav_has_encoder
from .pipe import PipeClosed, PipeStalled, feed, write_all

log = logging.getLogger("edgedet.recorder")

HW_ENCODER = "h264_v4l2m2m"  # Raspberry Pi 4 (V4L2 mem2mem); the Pi 5 has no H.264 block
SW_ENCODER = "libx264"
FRAGMENTED = "+frag_keyframe+empty_moov+default_base_moof"
H264_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
OPENCV_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
EXTENSIONS = tuple(OPENCV_FOURCC)
X264_OPTIONS = {"preset": "veryfast", "tune": "zerolatency", "crf": "23"}
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
WRITE_TIMEOUT = 10.0  # a frame write blocked this long: the encoder is stuck
NO_H264 = ("no H.264 encoder (neither the ffmpeg program nor PyAV has libx264): recording {codec} with OpenCV; "
           "that file is not crash-safe and browsers do not play it (install ffmpeg, or: pip install av)")


class VideoWriteError(Exception):
    """The encoder stopped or a write failed; ``reason`` is one short phrase (e.g. "no space left on device")."""

    def __init__(self, reason: str, no_space: bool = False, path: Optional[Path] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.no_space = no_space
        self.path = path


@dataclass(frozen=True)
class EncoderChoice:
    backend: str  # a key of WRITERS
    codec: str  # FFmpeg encoder name, or an OpenCV fourcc
    notice: str = ""  # said once when the choice is a fallback

    @property
    def h264(self) -> bool:
        return self.backend != "opencv"

    def describe(self) -> str:
        return f"{self.codec} ({self.backend})"


def find_ffmpeg() -> Optional[str]:
    return shutil.which("ffmpeg")


def _backend_for(codec: str) -> Optional[str]:
    ffmpeg = find_ffmpeg()
    if ffmpeg and codec in ffmpeg_encoders(ffmpeg):
        return "ffmpeg"
    if pyav_has_encoder(codec):
        return "pyav"
    return None


def choose_file_encoder(choice: str, ext: str) -> EncoderChoice:
    """``--encoder auto|software|hardware`` and the file extension -> how the file is written.

    ``.avi`` is Motion JPEG through OpenCV. Otherwise H.264: ``hardware`` needs the V4L2 M2M
    encoder (``ValueError`` when absent), ``auto`` takes it when present, else libx264 through the
    ``ffmpeg`` program or PyAV; with neither, OpenCV's MPEG-4 Part 2 with a notice.
    """
    ext = ext.lower()
    if ext == ".avi":
        return EncoderChoice("opencv", OPENCV_FOURCC[ext])
    hw_backend = _backend_for(HW_ENCODER) if choice in ("auto", "hardware") and hardware_h264_available() else None
    if hw_backend:
        return EncoderChoice(hw_backend, HW_ENCODER)
    if choice == "hardware":
        raise ValueError(f"no hardware H.264 encoder here ({HW_ENCODER} with /dev/video11, Raspberry Pi 4); "
                         "use --encoder software or auto")
    sw_backend = _backend_for(SW_ENCODER)
    if sw_backend:
        return EncoderChoice(sw_backend, SW_ENCODER)
    return EncoderChoice("opencv", OPENCV_FOURCC[ext], NO_H264.format(codec="MPEG-4 Part 2"))


def hw_bitrate(size: tuple[int, int]) -> int:
    return max(500_000, size[0] * size[1] * 2)


def _memory_file() -> IO[bytes]:
    """A file in memory (Linux ``memfd``) for a child's error output: still writable when the disk is
    full, and never blocks the child the way a pipe nobody reads does. Opened for appending, so the
    child's writes land at the end even while this process reads it from the start."""
    fh: IO[bytes]
    try:
        fh = open(os.memfd_create("edgedet-ffmpeg-log"), "w+b")
    except (AttributeError, OSError):  # not Linux
        fh = tempfile.TemporaryFile()
    fcntl.fcntl(fh.fileno(), fcntl.F_SETFL, fcntl.fcntl(fh.fileno(), fcntl.F_GETFL) | os.O_APPEND)
    return fh


def _no_space(text: str) -> bool:
    return "no space left" in text.lower()


class VideoFile(Protocol):
    """One open video file. ``write`` and ``close`` raise ``VideoWriteError``."""

    path: Path

    def write(self, image: np.ndarray) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# backends

class FfmpegFile:
    """``ffmpeg -f rawvideo -pix_fmt bgr24 -i - -c:v CODEC ... FILE`` in its own session, fed through a pipe."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, codec: str, keyframe_s: float) -> None:
        self.path, self.size, self.fps, self.codec = path, size, fps, codec
        self.gop = max(1, int(round(fps * keyframe_s)))
        self._log = _memory_file()  # ffmpeg's own error lines (no reader thread, no pipe to fill)
        # ffmpeg must end only when its input ends: a stop signal sent to every process of a service
        # (systemd's default) or of a terminal would make it drop the frames still in flight. It
        # inherits this thread's signal mask (blocked SIGINT/SIGTERM stay pending until it exits).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=self._log, start_new_session=True)
        except BaseException:
            self._log.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        feed(self.proc)

    def command(self) -> list[str]:
        w, h = self.size
        fmt = H264_FORMATS.get(self.path.suffix.lower(), "mp4")
        cmd = [find_ffmpeg() or "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
               "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{self.fps:g}", "-i", "-",
               "-an", "-c:v", self.codec, "-pix_fmt", "yuv420p", "-g", str(self.gop)]
        if self.codec == SW_ENCODER:
            for key, value in X264_OPTIONS.items():
                cmd += [f"-{key}", value]
        else:  # the hardware encoder takes a bitrate: 2 bit/s per pixel (1.8 Mbit/s at 720p)
            cmd += ["-b:v", str(hw_bitrate(self.size))]
        cmd += ["-flush_packets", "1"]
        cmd += ["-movflags", FRAGMENTED] if fmt in ("mp4", "mov") else ["-cluster_time_limit", "1000"]
        return cmd + ["-f", fmt, str(self.path)]

    def _failure(self) -> VideoWriteError:
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
        text = "; ".join(lines[-2:]) or f"ffmpeg exited with status {self.proc.poll()}"
        if _no_space(text):
            return VideoWriteError("no space left on device", no_space=True)
        return VideoWriteError(f"the encoder stopped ({text})")

    def write(self, image: np.ndarray) -> None:
        try:
            write_all(self.proc, (memoryview(np.ascontiguousarray(image)),), WRITE_TIMEOUT)
        except PipeStalled:
            self._kill()
            raise VideoWriteError(f"the encoder did not take a frame for {WRITE_TIMEOUT:g} s") from None
        except PipeClosed:  # ffmpeg ended
            self._wait(5.0)
            raise self._failure() from None

    def _wait(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            if self._wait(10.0) is None:
                self._kill()
                raise VideoWriteError("the encoder did not finish the file within 10 s")
            if self.proc.returncode != 0:
                raise self._failure()
        finally:
            self._log.close()


class PyavFile:
    """The same encoder in-process with PyAV (libav); the fragmented-MP4 options are the same."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, codec: str, keyframe_s: float) -> None:
        import av

        self.path = path
        fmt = H264_FORMATS.get(path.suffix.lower(), "mp4")
        options = {"movflags": FRAGMENTED} if fmt in ("mp4", "mov") else {"cluster_time_limit": "1000"}
        options["flush_packets"] = "1"
        try:
            self.container = av.open(str(path), mode="w", format=fmt, options=options)
        except OSError as exc:
            raise VideoWriteError(exc.strerror or str(exc), no_space=exc.errno == errno.ENOSPC) from None
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.gop_size = max(1, int(round(fps * keyframe_s)))
        if codec == SW_ENCODER:
            self.stream.options = dict(X264_OPTIONS)
        else:
            self.stream.bit_rate = hw_bitrate(size)
        self._frame_type = av.VideoFrame
        self.pts = 0

    def _mux(self, frame) -> None:
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except OSError as exc:
            raise VideoWriteError(exc.strerror or str(exc), no_space=exc.errno == errno.ENOSPC) from None

    def write(self, image: np.ndarray) -> None:
        frame = self._frame_type.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame.pts = self.pts
        self.pts += 1
        self._mux(frame)

    def close(self) -> None:
        try:
            self._mux(None)  # flush the encoder
        finally:
            try:
                self.container.close()
            except OSError as exc:
                raise VideoWriteError(exc.strerror or str(exc), no_space=exc.errno == errno.ENOSPC) from None


class OpenCvFile:
    """``cv2.VideoWriter``: MPEG-4 Part 2 (or Motion JPEG in .avi); the fallback without H.264."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, codec: str, keyframe_s: float) -> None:
        import cv2

        self.path = path
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
        if not self.writer.isOpened():
            self.writer.release()
            raise VideoWriteError(f"OpenCV cannot write {path.suffix} files")

    def write(self, image: np.ndarray) -> None:
        self.writer.write(image)

    def close(self) -> None:
        self.writer.release()


WRITERS = {"ffmpeg": FfmpegFile, "pyav": PyavFile, "opencv": OpenCvFile}


def open_video_file(choice: EncoderChoice, path: Path, size: tuple[int, int], fps: float,
                    keyframe_s: float = 1.0) -> VideoFile:
    return WRITERS[choice.backend](path, size, fps, choice.codec, keyframe_s)


# ---------------------------------------------------------------------------------------------
# repairing a file cut by a failed write

def trim_to_fragments(path: Path) -> Optional[int]:
    """Cut a fragmented MP4/MOV back to its last complete fragment (``moof`` + ``mdat``).

    Walks the top-level boxes; a box running past the end of the file, or a ``moof`` without its
    ``mdat``, is removed. Returns the new size (``None`` when nothing was cut or the file is not
    an MP4 this can read).
    """
    try:
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            good, pending_moof, offset = 0, False, 0
            while offset + 8 <= size:
                fh.seek(offset)
                head = fh.read(16)
                length, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if length == 1 and len(head) == 16:
                    length = int.from_bytes(head[8:16], "big")
                elif length == 0:
                    length = size - offset
                if length < 8 or offset + length > size:
                    break
                offset += length
                if kind == b"moof":
                    pending_moof = True
                    continue
                if kind == b"mdat" or not pending_moof:
                    good, pending_moof = offset, False
            if good in (0, size):
                return None
            fh.truncate(good)
            return good
    except OSError:
        return None
