"""Publish the annotated stream as H.264 over RTSP (``--rtsp-out rtsp://server:8554/detections``).

The sink pushes to an RTSP server (MediaMTX beside it on the device, or any server that accepts
``ANNOUNCE``/``RECORD``); viewers play from that server. Encoding runs in an ``ffmpeg`` subprocess
fed raw BGR frames (``-c:v libx264 -preset ultrafast -tune zerolatency``, or ``h264_v4l2m2m``, the
Raspberry Pi 4's hardware encoder), or in-process with PyAV when there is no ``ffmpeg`` binary.

- Opens lazily at the first frame (its size is known then).
- ``write`` never blocks: it stores the newest annotated frame. A publisher thread sends frames at
  a constant rate (``--rtsp-fps``, default the source's): the newest frame at each tick, repeated
  when detection is slower than that, so viewers always get a steady stream.
- "publishing" is logged once the server has accepted the stream (ffmpeg reports encoded frames
  only after the RTSP ANNOUNCE/SETUP/RECORD exchange succeeded), not when the encoder starts.
- If the server refuses the stream or goes away (or the encoder dies, or a write hangs for
  ``WRITE_TIMEOUT``, or the server has not accepted within ``ACCEPT_TIMEOUT``), the encoder is
  stopped and restarted after a backoff of 1 s, doubling with each failure in a row up to 30 s;
  it starts again at 1 s once a stream has stayed up for ``STABLE_S``. Each failure is logged
  and counted (``stats()``: ``failures``, ``reconnects``, ``state``, ``last_error``).

``--encoder auto`` takes the hardware encoder only if FFmpeg/PyAV has ``h264_v4l2m2m`` and the
encoder device ``/dev/video11`` exists (Raspberry Pi 4); a Pi 5 has no H.264 encoder block, so it
uses libx264.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from typing import Optional

import numpy as np

from ..config import OutputConfig, RtspOutConfig, parse_bitrate, parse_rtsp_url
from ..cpu import ffmpeg_encoders, pyav_has_encoder
from ..errors import SinkError
from ..frame import Result
from ..redact import mask_text, mask_url
from .base import BaseSink, SinkContext
from .pipe import PipeCancelled, PipeClosed, PipeStalled, end_process, feed, write_all

log = logging.getLogger("edgedet.rtsp_out")

HW_ENCODER = "h264_v4l2m2m"
HW_DEVICE = "/dev/video11"
SW_ENCODER = "libx264"
DEFAULT_FPS = 15.0
WRITE_TIMEOUT = 5.0  # a frame write blocked this long = the server or the encoder is stuck
INITIAL_BACKOFF = 1.0  # seconds to wait after a first failure; doubles with each failure in a row
MAX_BACKOFF = 30.0
ACCEPT_TIMEOUT = 10.0  # the server has not accepted the stream this long after the encoder started: a failure
STABLE_S = 10.0  # a stream that stayed up this long resets the backoff
STOP_WAIT = 0.5  # seconds for the encoder to finish after its input ends, then to terminate


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


# ---------------------------------------------------------------------------------------------
# encoder backends: start(), send(image) (raises OSError/EncoderGone on failure), stop()

class EncoderGone(Exception):
    """The encoder or the connection to the server ended."""


_FFMPEG_PREFIX = re.compile(r"^\[[\w:-]+ @ 0x[0-9a-f]+\] ")  # "[rtsp @ 0x55d0...] "
_FFMPEG_NOISE = ("Error initializing output stream", "Conversion failed", "Error writing trailer")


class FfmpegPublisher:
    """``ffmpeg -f rawvideo -pix_fmt bgr24 ... -i - -c:v ENCODER ... -f rtsp URL`` fed through a pipe.

    ``accepted`` is set once ffmpeg reports an encoded frame (``-progress``): it writes the stream's
    header first, which for RTSP is the ANNOUNCE/SETUP/RECORD exchange, so the server took it."""

    def __init__(self, url: str, size: tuple[int, int], fps: float, encoder: str, bitrate: int,
                 transport: str) -> None:
        self.url, self.size, self.fps, self.encoder = url, size, fps, encoder
        self.bitrate, self.transport = bitrate, transport
        self.proc: Optional[subprocess.Popen] = None
        self.accepted = threading.Event()
        self._stderr_tail: list[str] = []
        self._progress: Optional[threading.Thread] = None

    def command(self) -> list[str]:
        w, h = self.size
        gop = max(1, int(round(self.fps * 2)))
        cmd = [find_ffmpeg() or "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-nostats",
               "-progress", "pipe:1",
               "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{self.fps:g}", "-i", "-",
               "-an", "-c:v", self.encoder, "-b:v", str(self.bitrate), "-g", str(gop), "-pix_fmt", "yuv420p"]
        if self.encoder == SW_ENCODER:
            cmd += ["-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0",
                    "-maxrate", str(self.bitrate), "-bufsize", str(self.bitrate)]
        cmd += ["-f", "rtsp", "-rtsp_transport", self.transport, self.url]
        return cmd

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        feed(self.proc)
        threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True).start()
        self._progress = threading.Thread(target=self._read_progress, args=(self.proc,), daemon=True)
        self._progress.start()

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stderr.readline, b""):
            line = _FFMPEG_PREFIX.sub("", raw.decode(errors="replace")).strip(" -\n")
            if line and not line.startswith(_FFMPEG_NOISE):
                self._stderr_tail = (self._stderr_tail + [line])[-5:]

    def _read_progress(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stdout.readline, b""):
            key, _, value = raw.decode(errors="replace").strip().partition("=")
            if key == "frame" and value.isdigit() and int(value) >= 1:
                self.accepted.set()

    def reason(self) -> str:
        text = "; ".join(self._stderr_tail[-2:]) or "the encoder stopped"
        return mask_text(text)

    def send(self, image: np.ndarray, cancel: Optional[threading.Event] = None) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise EncoderGone(self.reason())
        try:
            write_all(proc, (memoryview(np.ascontiguousarray(image)),), WRITE_TIMEOUT, cancel)
        except PipeCancelled:
            raise EncoderGone("stopped") from None
        except PipeStalled:
            raise EncoderGone(f"a frame write blocked for {WRITE_TIMEOUT:g} s (server not reading?)") from None
        except PipeClosed:
            time.sleep(0.05)  # let stderr arrive for the reason
            raise EncoderGone(self.reason()) from None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        end_process(proc, STOP_WAIT)  # EOF first: ffmpeg flushes and says TEARDOWN
        if self._progress is not None:  # its last report tells whether the server had taken the stream
            self._progress.join(timeout=0.5)


class PyavPublisher:
    """The same with PyAV (libav in-process; no ``ffmpeg`` binary needed). The stream's header (the
    RTSP handshake) is written with the first packet: ``accepted`` is set once one is sent."""

    def __init__(self, url: str, size: tuple[int, int], fps: float, encoder: str, bitrate: int,
                 transport: str) -> None:
        self.url, self.size, self.fps, self.encoder = url, size, fps, encoder
        self.bitrate, self.transport = bitrate, transport
        self.container = None
        self.stream = None
        self.pts = 0
        self.accepted = threading.Event()

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

    def send(self, image: np.ndarray, cancel: Optional[threading.Event] = None) -> None:
        import av

        if self.container is None:
            raise EncoderGone("not started")
        try:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            frame.pts = self.pts
            self.pts += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
                self.accepted.set()
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
        url = parse_rtsp_url(rtsp_cfg.url or "")
        self.url = url
        self.name = mask_url(url)
        self.bitrate = parse_bitrate(rtsp_cfg.bitrate)
        self.backend = backend or ("ffmpeg" if find_ffmpeg() else "pyav")
        self.encoder: Optional[str] = None
        self._cond = threading.Condition()
        self._image: Optional[np.ndarray] = None
        self._seq = 0
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._counts = {"frames_sent": 0, "frames_skipped": 0, "reconnects": 0, "failures": 0}
        self._connected = False
        self._state = "idle"  # idle -> connecting -> publishing; waiting (backoff) after a failure
        self._last_error = ""
        self._pub = None  # the running publisher, while connecting or publishing
        self._started_at = 0.0  # when it started
        self._accepted_at = 0.0  # when the server accepted its stream
        self._backoff = INITIAL_BACKOFF  # the wait after the next failure
        self._retry_at = 0.0
        self._ever = False  # the server has accepted a stream of this sink before
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
        self.ctx.metrics.add(self.prometheus)
        self.ctx.outputs.add(self.report)

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
            self._thread.join(timeout=3 * STOP_WAIT + 1.0)
            self._thread = None
        self.ctx.metrics.remove(self.prometheus)
        self.ctx.outputs.remove(self.report)

    def stats(self) -> dict:
        """Counters for ``/stats`` and ``/metrics``: ``failures`` (attempts that failed or
        connections lost), ``reconnects`` (streams accepted again after a failure), frames sent."""
        retry = max(0.0, self._retry_at - time.monotonic()) if self._state == "waiting" else 0.0
        return {"connected": self._connected, "state": self._state, "encoder": self.encoder,
                "backend": self.backend, "fps": self.fps, "retry_in_s": round(retry, 1),
                "last_error": self._last_error, **self._counts}

    def report(self) -> dict:
        return {"rtsp_out": self.stats()}

    def prometheus(self) -> dict:
        s = self.stats()
        return {
            "edgedet_rtsp_out_connected": ("gauge", "1 while the RTSP server takes the stream", float(s["connected"])),
            "edgedet_rtsp_out_failures": ("counter", "RTSP out attempts that failed or streams lost", s["failures"]),
            "edgedet_rtsp_out_reconnects": ("counter", "RTSP out streams accepted again after a failure",
                                            s["reconnects"]),
            "edgedet_rtsp_out_frames_sent": ("counter", "frames sent to the RTSP server", s["frames_sent"]),
        }

    # ------------------------------------------------------------------ publisher thread
    def _make(self, size: tuple[int, int]):
        cls = FfmpegPublisher if self.backend == "ffmpeg" else PyavPublisher
        return cls(self.url, size, self.fps, self.encoder, self.bitrate, self.cfg.transport)

    def _run(self, size: tuple[int, int]) -> None:
        period = 1.0 / self.fps
        next_tick = time.monotonic()
        sent_seq = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if next_tick > now and self._stop.wait(next_tick - now):
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
                self._drop_publisher()
            if not self._ensure_publisher(size):
                self._counts["frames_skipped"] += 1
                continue
            try:
                self._pub.send(image, self._stop)
            except (EncoderGone, OSError) as exc:
                if not self._stop.is_set():
                    self._fail(str(exc), size)
                continue
            self._note_accepted(self._pub, size)
            if seq != sent_seq:
                self._counts["frames_sent"] += 1
                if self.publish_log is not None:
                    self.publish_log.append((seq, time.monotonic()))
            sent_seq = seq
        self._drop_publisher()
        self._connected = False
        self._state = "idle"

    def _ensure_publisher(self, size: tuple[int, int]) -> bool:
        """A running publisher to send to (started when the backoff allows); False to skip this frame."""
        now = time.monotonic()
        if self._pub is not None:
            if self._connected or now - self._started_at < ACCEPT_TIMEOUT:
                return True
            self._fail(f"the server did not accept the stream within {ACCEPT_TIMEOUT:g} s", size)
            return False
        if now < self._retry_at:
            return False
        pub = self._make(size)
        self._state = "connecting"
        try:
            pub.start()
        except (EncoderGone, OSError) as exc:
            self._fail(str(exc), size)
            return False
        self._pub, self._started_at = pub, now
        return True

    def _note_accepted(self, pub, size: tuple[int, int]) -> None:
        """Log and count once the server has accepted the stream; the backoff starts again at its
        first step once the stream has stayed up for ``STABLE_S``."""
        now = time.monotonic()
        if not self._connected and pub.accepted.is_set():
            self._connected, self._accepted_at, self._state = True, now, "publishing"
            if self._ever:
                self._counts["reconnects"] += 1
                log.info("RTSP out %s: publishing again", self.name)
            else:
                log.info("RTSP out %s: publishing %dx%d at %g fps with %s", self.name, size[0], size[1],
                         self.fps, self.encoder)
            self._ever = True
        if self._connected and now - self._accepted_at >= STABLE_S:
            self._backoff = INITIAL_BACKOFF

    def _drop_publisher(self) -> None:
        pub, self._pub = self._pub, None
        if pub is not None:
            pub.stop()

    def _fail(self, reason: str, size: tuple[int, int]) -> None:
        """A failed attempt or a lost stream: stop the publisher, count it, wait the backoff (doubled
        for the next failure, up to ``MAX_BACKOFF``)."""
        pub = self._pub
        self._drop_publisher()
        if pub is not None:  # the server took the stream before it failed (its report came late)
            self._note_accepted(pub, size)
        self._counts["failures"] += 1
        was = self._connected
        self._connected = False
        self._last_error = reason
        what = "lost RTSP out" if was else "cannot publish to"
        level = logging.WARNING if was or self._counts["failures"] == 1 else logging.INFO
        log.log(level, "%s %s: %s; retrying in %.0f s", what, self.name, reason, self._backoff)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(MAX_BACKOFF, self._backoff * 2)
        self._state = "waiting"
