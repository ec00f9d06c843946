"""Publish the annotated stream as H.264 over RTSP (``--rtsp-out rtsp://server:8554/detections``).

The sink pushes to an RTSP server (MediaMTX beside it on the device, or any server that accepts
``ANNOUNCE``/``RECORD``); viewers play from that server. Encoding runs in an ``ffmpeg`` subprocess
fed raw BGR frames (``-c:v libx264 -preset ultrafast -tune zerolatency``, or ``h264_v4l2m2m``, the
Raspberry Pi 4's hardware encoder), or in-process with PyAV when there is no ``ffmpeg`` binary.

- Opens lazily at the first frame (its size is known then).
- ``write`` never blocks: it stores the newest annotated frame. A publisher thread sends frames at
  a constant rate (``--rtsp-fps``, default the source's): the newest frame at each tick, repeated
  when detection is slower than that, so viewers always get a steady stream.
- If the server goes away (or the encoder dies, or a write hangs for ``WRITE_TIMEOUT``), the
  encoder is stopped and restarted with capped exponential backoff; each change is logged.

``--encoder auto`` takes the hardware encoder only if FFmpeg/PyAV has ``h264_v4l2m2m`` and the
encoder device ``/dev/video11`` exists (Raspberry Pi 4); a Pi 5 has no H.264 encoder block, so it
uses libx264.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import threading
import time
from typing import Optional
from urllib.parse import urlsplit

import numpy as np

from ..config import OutputConfig, RtspOutConfig
from ..cpu import ffmpeg_encoders, pyav_has_encoder
from ..errors import SinkError
from ..frame import Result
from ..redact import mask_text, mask_url
from .base import BaseSink, SinkContext

log = logging.getLogger("edgedet.rtsp_out")

HW_ENCODER = "h264_v4l2m2m"
HW_DEVICE = "/dev/video11"
SW_ENCODER = "libx264"
DEFAULT_FPS = 15.0
WRITE_TIMEOUT = 5.0  # a frame write blocked this long = the server or the encoder is stuck
INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 30.0


# ---------------------------------------------------------------------------------------------
# encoder choice

def find_ffmpeg() -> Optional[str]:
    return shutil.which("ffmpeg")


def encoder_available(name: str, backend: str) -> bool:
    if backend == "ffmpeg":
        ffmpeg = find_ffmpeg()
        return bool(ffmpeg) and name in ffmpeg_encoders(ffmpeg)
    return pyav_has_encoder(name)


def choose_encoder(choice: str, backend: str, hw_device: str = HW_DEVICE) -> str:
    """``"hardware"`` / ``"software"`` / ``"auto"`` -> an FFmpeg encoder name (SinkError if impossible)."""
    hw_ok = encoder_available(HW_ENCODER, backend) and os.path.exists(hw_device)
    if choice == "hardware":
        if not hw_ok:
            raise SinkError(f"--encoder hardware: the {HW_ENCODER} encoder with {hw_device} is not available "
                            f"here (Raspberry Pi 4 only); use --encoder software or auto")
        return HW_ENCODER
    if choice == "auto" and hw_ok:
        return HW_ENCODER
    if not encoder_available(SW_ENCODER, backend):
        raise SinkError(f"no H.264 encoder: {backend} lacks {SW_ENCODER}")
    return SW_ENCODER


def _bitrate_bps(text: str) -> int:
    t = str(text).strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1000, t[:-1]
    elif t.endswith("m"):
        mult, t = 1000_000, t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise SinkError(f"rtsp_out.bitrate: expected e.g. 1500k or 2M, got {text!r}") from None
    if value < 10_000:
        raise SinkError(f"rtsp_out.bitrate: {text!r} is too low (at least 10k)")
    return int(value)


# ---------------------------------------------------------------------------------------------
# encoder backends: start(), send(image) (raises OSError/EncoderGone on failure), stop()

class EncoderGone(Exception):
    """The encoder or the connection to the server ended."""


class FfmpegPublisher:
    """``ffmpeg -f rawvideo -pix_fmt bgr24 ... -i - -c:v ENCODER ... -f rtsp URL`` fed through a pipe."""

    def __init__(self, url: str, size: tuple[int, int], fps: float, encoder: str, bitrate: int,
                 transport: str) -> None:
        self.url, self.size, self.fps, self.encoder = url, size, fps, encoder
        self.bitrate, self.transport = bitrate, transport
        self.proc: Optional[subprocess.Popen] = None
        self._stderr_tail: list[str] = []

    def command(self) -> list[str]:
        w, h = self.size
        gop = max(1, int(round(self.fps * 2)))
        cmd = [find_ffmpeg() or "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
               "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{self.fps:g}", "-i", "-",
               "-an", "-c:v", self.encoder, "-b:v", str(self.bitrate), "-g", str(gop), "-pix_fmt", "yuv420p"]
        if self.encoder == SW_ENCODER:
            cmd += ["-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0",
                    "-maxrate", str(self.bitrate), "-bufsize", str(self.bitrate)]
        cmd += ["-f", "rtsp", "-rtsp_transport", self.transport, self.url]
        return cmd

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        os.set_blocking(self.proc.stdin.fileno(), False)
        threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True).start()

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode(errors="replace").strip()
            if line:
                self._stderr_tail = (self._stderr_tail + [line])[-5:]

    def reason(self) -> str:
        text = "; ".join(self._stderr_tail[-2:]) or "the encoder stopped"
        return mask_text(text)

    def send(self, image: np.ndarray) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise EncoderGone(self.reason())
        view = memoryview(np.ascontiguousarray(image)).cast("B")
        fd = proc.stdin.fileno()
        deadline = time.monotonic() + WRITE_TIMEOUT
        offset = 0
        while offset < len(view):
            left = deadline - time.monotonic()
            if left <= 0:
                raise EncoderGone(f"a frame write blocked for {WRITE_TIMEOUT:g} s (server not reading?)")
            _, writable, _ = select.select([], [fd], [], min(left, 0.5))
            if not writable:
                if proc.poll() is not None:
                    raise EncoderGone(self.reason())
                continue
            try:
                offset += os.write(fd, view[offset:])
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError):
                time.sleep(0.05)  # let stderr arrive for the reason
                raise EncoderGone(self.reason()) from None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)


class PyavPublisher:
    """The same with PyAV (libav in-process; no ``ffmpeg`` binary needed)."""

    def __init__(self, url: str, size: tuple[int, int], fps: float, encoder: str, bitrate: int,
                 transport: str) -> None:
        self.url, self.size, self.fps, self.encoder = url, size, fps, encoder
        self.bitrate, self.transport = bitrate, transport
        self.container = None
        self.stream = None
        self.pts = 0

    def start(self) -> None:
        from fractions import Fraction

        import av

        try:
            self.container = av.open(self.url, mode="w", format="rtsp",
                                     options={"rtsp_transport": self.transport}, timeout=WRITE_TIMEOUT)
            rate = Fraction(self.fps).limit_denominator(1001)
            stream = self.container.add_stream(self.encoder, rate=rate)
            stream.width, stream.height = self.size
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = self.bitrate
            stream.gop_size = max(1, int(round(self.fps * 2)))
            if self.encoder == SW_ENCODER:
                stream.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
            stream.codec_context.time_base = Fraction(1, 1) / rate
            self.stream = stream
            self.pts = 0
        except Exception as exc:
            self.stop()
            raise EncoderGone(mask_text(str(exc))) from None

    def send(self, image: np.ndarray) -> None:
        import av

        if self.container is None:
            raise EncoderGone("not started")
        try:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            frame.pts = self.pts
            self.pts += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except Exception as exc:
            raise EncoderGone(mask_text(str(exc))) from None

    def stop(self) -> None:
        container, self.container = self.container, None
        if container is None:
            return
        try:
            container.close()
        except Exception:
            pass

    def reason(self) -> str:
        return "the encoder stopped"


# ---------------------------------------------------------------------------------------------

class RtspOutSink(BaseSink):
    """Publishes ``result.annotated``; see the module docstring."""

    needs_annotated = True
    reads_frame = False

    def __init__(self, rtsp_cfg: RtspOutConfig, output_cfg: Optional[OutputConfig] = None,
                 ctx: Optional[SinkContext] = None, backend: Optional[str] = None) -> None:
        self.cfg = rtsp_cfg
        self.output_cfg = output_cfg or OutputConfig()
        self.ctx = ctx or SinkContext()
        url = rtsp_cfg.url or ""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("rtsp", "rtsps") or not parts.hostname:
            raise SinkError(f"rtsp_out.url: expected rtsp://HOST[:PORT]/PATH, got {mask_url(url)!r}")
        try:
            _ = parts.port
        except ValueError:
            raise SinkError(f"rtsp_out.url: bad port in {mask_url(url)}") from None
        self.url = url
        self.name = mask_url(url)
        self.bitrate = _bitrate_bps(rtsp_cfg.bitrate)
        self.backend = backend or ("ffmpeg" if find_ffmpeg() else "pyav")
        self.encoder: Optional[str] = None
        self._cond = threading.Condition()
        self._image: Optional[np.ndarray] = None
        self._seq = 0
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._counts = {"frames_sent": 0, "frames_skipped": 0, "reconnects": 0, "failures": 0}
        self._connected = False
        self.publish_log: Optional[list] = None  # (seq, monotonic send time) when a test asks for it

    @property
    def fps(self) -> float:
        return float(self.cfg.fps or self.ctx.source_fps or DEFAULT_FPS)

    def open(self) -> None:
        if self.backend == "pyav":
            try:
                import av  # noqa: F401
            except ImportError:
                raise SinkError("RTSP out needs ffmpeg or PyAV: apt-get install ffmpeg, or "
                                "pip install 'edgedet[stream]'") from None
        self.encoder = choose_encoder(self.output_cfg.encoder, self.backend)

    def write(self, result: Result) -> None:
        image = result.annotated if result.annotated is not None else result.frame.image
        with self._cond:
            self._image = image
            self._seq += 1
            self._cond.notify_all()
        if self._thread is None and not self._stop.is_set():
            if self.encoder is None:
                self.open()
            h, w = image.shape[:2]
            self._thread = threading.Thread(target=self._run, args=((w, h),), name="edgedet-rtsp-out",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=WRITE_TIMEOUT + 5)
            self._thread = None

    def stats(self) -> dict:
        return {"connected": self._connected, "encoder": self.encoder, "backend": self.backend,
                "fps": self.fps, **self._counts}

    # ------------------------------------------------------------------ publisher thread
    def _make(self, size: tuple[int, int]):
        cls = FfmpegPublisher if self.backend == "ffmpeg" else PyavPublisher
        return cls(self.url, size, self.fps, self.encoder, self.bitrate, self.cfg.transport)

    def _run(self, size: tuple[int, int]) -> None:
        period = 1.0 / self.fps
        pub = None
        backoff = INITIAL_BACKOFF
        retry_at = 0.0
        next_tick = time.monotonic()
        sent_seq = 0
        ever = False
        while not self._stop.is_set():
            now = time.monotonic()
            if next_tick > now:
                self._stop.wait(next_tick - now)
                if self._stop.is_set():
                    break
            next_tick += period
            if time.monotonic() - next_tick > period:  # fell behind: skip ticks, don't burst
                next_tick = time.monotonic() + period
            with self._cond:
                image, seq = self._image, self._seq
            if image is None:
                continue
            if image.shape[1::-1] != size:  # the source changed resolution: restart the encoder
                size = image.shape[1::-1]
                if pub is not None:
                    pub.stop()
                    pub = None
            if pub is None:
                if time.monotonic() < retry_at:
                    self._counts["frames_skipped"] += 1
                    continue
                pub = self._make(size)
                try:
                    pub.start()
                except (EncoderGone, OSError) as exc:
                    pub = None
                    self._fail(f"cannot start publishing to {self.name}: {exc}", backoff)
                    retry_at = time.monotonic() + backoff
                    backoff = min(MAX_BACKOFF, backoff * 2)
                    continue
            try:
                pub.send(image)
            except (EncoderGone, OSError) as exc:
                pub.stop()
                pub = None
                self._fail(f"lost RTSP out {self.name}: {exc}", backoff)
                retry_at = time.monotonic() + backoff
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            if not self._connected:
                self._connected = True
                if ever:
                    self._counts["reconnects"] += 1
                    log.info("RTSP out %s: publishing again", self.name)
                else:
                    log.info("RTSP out %s: publishing %dx%d at %g fps with %s", self.name, size[0], size[1],
                             self.fps, self.encoder)
                ever = True
            backoff = INITIAL_BACKOFF
            if seq != sent_seq:
                self._counts["frames_sent"] += 1
                if self.publish_log is not None:
                    self.publish_log.append((seq, time.monotonic()))
            sent_seq = seq
        if pub is not None:
            pub.stop()
        self._connected = False

    def _fail(self, message: str, backoff: float) -> None:
        self._counts["failures"] += 1
        was = self._connected
        self._connected = False
        level = logging.WARNING if was or self._counts["failures"] == 1 else logging.INFO
        log.log(level, "%s; retrying in %.0f s", message, backoff)
