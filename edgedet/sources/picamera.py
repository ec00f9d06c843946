"""The Raspberry Pi camera through picamera2 (libcamera): a main stream and a lores stream.

One camera configuration with two ISP outputs of the same picture, as picamera2's own detection
examples do it:

- ``main`` (``picamera.main_size``, default 1280x720, format ``RGB888`` = BGR bytes in memory)
  becomes ``Frame.image``: what is shown, recorded and streamed;
- ``lores`` (the model's input size, format ``YUV420``, the only lores format a Pi 4 has) becomes
  ``Frame.lores`` with ``Frame.lores_format = "YUV420"``: the ISP does the downscaling, the CPU
  only converts colour (``lores_to_rgb``, or ``cv2.COLOR_YUV2BGR_I420``). Both come from the same
  request (``capture_arrays``), so boxes found on lores map onto main by the ratio of the sizes.

The lores stream scales the same sensor crop as main, to its own size: a lores with the model's
aspect (e.g. 300x300) under a 16:9 main is the "stretch" resize SSD models are trained with.

A camera that fails mid-run (``capture_arrays`` raises, e.g. "Camera frontend has timed out!")
is logged, closed and reopened with a growing pause (0.5 s doubling to 5 s); after
``picamera.reopen_attempts`` failed reopens in a row (0 = never give up) ``read`` raises a
``SourceError``. picamera2 is imported only when this source is opened.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import cv2
import numpy as np

from ..config import PiCameraConfig, check_lores_within_main, parse_size
from ..errors import ConfigError, SourceError
from ..frame import Frame
from .base import BaseSource

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` and "
    "create the virtual environment with `python3 -m venv --system-site-packages` so it can see it"
)
MAIN_FORMAT = "RGB888"  # 3 bytes per pixel, B, G, R in memory: OpenCV's BGR
LORES_FORMAT = "YUV420"
_AWB_MODES = {"auto": "Auto", "tungsten": "Tungsten", "fluorescent": "Fluorescent", "indoor": "Indoor",
              "daylight": "Daylight", "cloudy": "Cloudy"}
_BACKOFF_START = 0.5
_BACKOFF_MAX = 5.0


def lores_to_rgb(array: np.ndarray, size: tuple[int, int], out: Optional[np.ndarray] = None) -> np.ndarray:
    """A picamera2 ``YUV420`` array -> RGB ``[h, w, 3]`` uint8.

    ``array`` is ``[h * 3 / 2, stride]`` as ``capture_array("lores")`` returns it (rows may carry
    padding up to the stride) or the packed ``[h * 3 / 2, w]`` form of ``Frame.lores``; ``size`` is
    ``(w, h)``. Padding columns are dropped after the conversion.

    picamera2's ``YUV420`` is I420 (Y plane, then U, then V). OpenCV's ``COLOR_YUV420p2RGB`` is
    its YV12 conversion (V before U): on these arrays it swaps the chroma planes and gives colours
    close to BGR, not RGB. ``COLOR_YUV2RGB_I420`` is the right one (``COLOR_YUV2BGR_I420`` for BGR).
    """
    w, h = int(size[0]), int(size[1])
    if array.ndim != 2 or array.shape[0] != h * 3 // 2 or array.shape[1] < w:
        raise ValueError(f"not a YUV420 image of {w}x{h}: array shape {array.shape}")
    rgb = cv2.cvtColor(array, cv2.COLOR_YUV2RGB_I420)
    if rgb.shape[1] != w:
        rgb = rgb[:, :w]
    if out is not None:
        np.copyto(out, rgb)
        return out
    return np.ascontiguousarray(rgb)


def pack_yuv420(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Drop the row padding of a strided picamera2 YUV420 array: ``[h*3/2, stride]`` -> ``[h*3/2, w]``.

    The result is plain I420 (Y, then U, then V, no gaps) that ``cv2.COLOR_YUV2BGR_I420`` reads.
    Returns ``array`` itself when there is no padding.
    """
    w, h = int(size[0]), int(size[1])
    stride = array.shape[1]
    if stride == w:
        return array
    flat = array.reshape(-1)
    y_size, c_stride = h * stride, stride // 2
    out = np.empty(w * h * 3 // 2, np.uint8)
    out[: w * h].reshape(h, w)[...] = flat[:y_size].reshape(h, stride)[:, :w]
    c_len, c_out = (h // 2) * c_stride, (w // 2) * (h // 2)
    for i in range(2):  # U then V: each h/2 rows of stride/2 bytes
        plane = flat[y_size + i * c_len: y_size + (i + 1) * c_len].reshape(h // 2, c_stride)[:, : w // 2]
        out[w * h + i * c_out: w * h + (i + 1) * c_out].reshape(h // 2, w // 2)[...] = plane
    return out.reshape(h * 3 // 2, w)


def choose_lores_size(model_size: tuple[int, int], main_size: tuple[int, int]) -> tuple[int, int]:
    """The lores stream size for a model input: the model's size (even numbers), no larger than main.

    When main is smaller than the model input in a dimension, lores is scaled down with the
    model's aspect so it fits in main.
    """
    mw, mh = int(model_size[0]), int(model_size[1])
    Mw, Mh = int(main_size[0]), int(main_size[1])
    scale = min(1.0, Mw / mw, Mh / mh)
    w = max(2, int(mw * scale) // 2 * 2)
    h = max(2, int(mh * scale) // 2 * 2)
    return (w, h)


NUMPY_HINT = (
    "picamera2 cannot be imported ({error}): its simplejpeg from apt is built for numpy 1 and this "
    "environment has numpy {numpy}; in the virtual environment run `pip install --force-reinstall simplejpeg`"
)


def _import_picamera2():
    try:
        from picamera2 import Picamera2  # type: ignore
    except ImportError as exc:
        if getattr(exc, "name", None) in ("picamera2", None) and "numpy" not in str(exc):
            raise SourceError(INSTALL_HINT) from exc
        raise SourceError(f"picamera2 cannot be imported: {_first_line(exc)}") from exc
    except (ValueError, RuntimeError, AttributeError) as exc:  # binary incompatibility with numpy 2
        if "size changed" in str(exc) or "numpy" in str(exc).lower():
            raise SourceError(NUMPY_HINT.format(error=_first_line(exc), numpy=np.__version__)) from exc
        raise SourceError(f"picamera2 cannot be imported: {_first_line(exc)}") from exc
    try:
        import libcamera  # type: ignore
    except ImportError as exc:  # picamera2 without its libcamera bindings (e.g. a pip install on a PC)
        raise SourceError(INSTALL_HINT.replace("is not installed", "cannot find libcamera")) from exc
    return Picamera2, libcamera


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PiCameraSource(BaseSource):
    """A Raspberry Pi camera (CSI) as a ``Source``: ``PiCameraSource(cfg.picamera, (300, 300))``.

    ``lores_size`` is the model's input size ``(w, h)``; ``None`` uses ``cfg.lores_size`` and, if
    that is unset too, captures only the main stream (the detector then resizes ``Frame.image``).
    """

    live = True

    def __init__(self, cfg: PiCameraConfig, lores_size: Optional[tuple[int, int]] = None, *,
                 source_id: Optional[str] = None) -> None:
        self.cfg = cfg
        self.main_size = parse_size(cfg.main_size, "picamera.main_size")
        if cfg.lores_size:
            self.lores_size: Optional[tuple[int, int]] = parse_size(cfg.lores_size, "picamera.lores_size")
        elif lores_size is not None:
            self.lores_size = choose_lores_size(lores_size, self.main_size)
        else:
            self.lores_size = None
        if self.lores_size:
            check_lores_within_main(self.lores_size, self.main_size)
        if cfg.rotation not in (0, 180):
            raise ConfigError(f"picamera.rotation: expected 0 or 180, got {cfg.rotation!r}")
        self.name = f"picamera2:{cfg.camera_num}"
        self.source_id = source_id if source_id is not None else self.name
        self.fps = float(cfg.fps or 0.0)
        self.camera_config: Optional[dict] = None  # as picamera2 returned it after configure()
        self.sensor_mode: Optional[dict] = None
        self._cam = None
        self._libcamera = None
        self._index = 0
        self._errors = 0
        self._reopens = 0
        self._last_error: Optional[str] = None
        self._failures = 0  # failed captures/reopens in a row
        self._closing = threading.Event()
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        self._closing.clear()
        self._failures = 0
        with self._lock:
            self._open()

    def _open(self) -> None:
        if self._cam is not None:
            return
        Picamera2, libcamera = _import_picamera2()
        self._libcamera = libcamera
        num = int(self.cfg.camera_num)
        try:
            cameras = Picamera2.global_camera_info()
        except Exception as exc:  # noqa: BLE001 - libcamera errors are plain RuntimeErrors
            raise SourceError(f"cannot list Raspberry Pi cameras: {_first_line(exc)}") from exc
        if not cameras:
            raise SourceError("no Raspberry Pi camera found (check the ribbon cable; "
                              "`rpicam-hello --list-cameras` should list it)")
        if not 0 <= num < len(cameras):
            models = ", ".join(f"{i}: {c.get('Model', '?')}" for i, c in enumerate(cameras))
            raise SourceError(f"no Raspberry Pi camera {num} (found {models})")
        try:
            cam = Picamera2(num)
        except Exception as exc:  # noqa: BLE001
            raise SourceError(f"cannot open {self.name}: {_first_line(exc)} "
                              "(is another program using the camera?)") from exc
        try:
            self._configure(cam, libcamera)
            cam.start()
        except (SourceError, ConfigError):
            cam.close()
            raise
        except Exception as exc:  # noqa: BLE001
            cam.close()
            raise SourceError(f"cannot start {self.name}: {_first_line(exc)}") from exc
        self._cam = cam
        log.info("%s (%s): main %dx%d %s%s, sensor %s, %.1f fps", self.name, cameras[num].get("Model", "?"),
                 *self.camera_config["main"]["size"], MAIN_FORMAT,
                 ", lores {}x{} {}".format(*self.camera_config["lores"]["size"], LORES_FORMAT)
                 if self.lores_size else "", self.camera_config.get("sensor"), self.fps)

    def _configure(self, cam, libcamera) -> None:
        cfg = self.cfg
        sensor: dict = {}
        if cfg.sensor_mode is not None:
            modes = cam.sensor_modes
            if not 0 <= cfg.sensor_mode < len(modes):
                listing = "; ".join(f"{i}: {m.get('size')} {m.get('bit_depth')}-bit {m.get('fps')} fps"
                                    for i, m in enumerate(modes))
                raise ConfigError(f"picamera.sensor_mode: no mode {cfg.sensor_mode} (modes: {listing})")
            mode = modes[cfg.sensor_mode]
            self.sensor_mode = mode
            sensor = {"output_size": tuple(mode["size"]), "bit_depth": int(mode["bit_depth"])}
        flip = cfg.rotation == 180
        transform = libcamera.Transform(hflip=int(bool(cfg.hflip) ^ flip), vflip=int(bool(cfg.vflip) ^ flip))
        controls = self._controls(libcamera)
        main = {"size": self.main_size, "format": MAIN_FORMAT}
        lores = {"size": self.lores_size, "format": LORES_FORMAT} if self.lores_size else None
        config = cam.create_video_configuration(main=main, lores=lores, transform=transform,
                                                controls=controls, sensor=sensor, display=None,
                                                encode="main", buffer_count=4)
        try:
            cam.configure(config)
        except RuntimeError as exc:
            raise SourceError(f"{self.name} rejected the configuration: {_first_line(exc)}") from exc
        self.camera_config = cam.camera_configuration()
        got_main = tuple(self.camera_config["main"]["size"])
        if got_main != self.main_size:
            log.warning("%s: main stream is %dx%d (asked %dx%d)", self.name, *got_main, *self.main_size)
            self.main_size = got_main  # type: ignore[assignment]
        if self.lores_size:
            got = tuple(self.camera_config["lores"]["size"])
            if got != self.lores_size:
                log.warning("%s: lores stream is %dx%d (asked %dx%d)", self.name, *got, *self.lores_size)
                self.lores_size = got  # type: ignore[assignment]
        limits = self.camera_config.get("controls", {}).get("FrameDurationLimits")
        if cfg.fps:
            self.fps = float(cfg.fps)
        elif limits and limits[0] and limits[0] == limits[1]:
            self.fps = round(1e6 / float(limits[0]), 2)

    def _controls(self, libcamera) -> dict:
        cfg = self.cfg
        controls: dict = {}
        if cfg.fps:
            controls["FrameRate"] = float(cfg.fps)
        if cfg.exposure_time is not None:
            controls["AeEnable"] = False
            controls["ExposureTime"] = int(cfg.exposure_time)
        if cfg.analogue_gain is not None:
            controls["AnalogueGain"] = float(cfg.analogue_gain)
        if cfg.awb_mode and cfg.awb_mode != "auto":
            name = _AWB_MODES.get(cfg.awb_mode)
            if name is None:
                raise ConfigError(f"picamera.awb_mode: unknown mode {cfg.awb_mode!r}")
            controls["AwbEnable"] = True
            controls["AwbMode"] = getattr(libcamera.controls.AwbModeEnum, name)
        return controls

    def interrupt(self) -> None:
        """``read`` returns None: a capture that fails stops reopening the camera, a reopen waits no more."""
        self._closing.set()

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._close_camera()

    def _close_camera(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - closing a failed camera may fail too
                log.debug("%s: %s failed: %s", self.name, step.__name__, exc)

    # -- reading --------------------------------------------------------------------------------
    def read(self) -> Optional[Frame]:
        """The next frame; reopens a failing camera; ``None`` only after ``interrupt()`` or ``close()``."""
        while not self._closing.is_set():
            with self._lock:
                cam = self._cam
                if cam is None:
                    cam = self._reopen()
                    if cam is None:
                        continue
                try:
                    frame = self._capture(cam)
                except Exception as exc:  # noqa: BLE001 - whatever libcamera raised
                    if self._closing.is_set():
                        break
                    self._errors += 1
                    self._failures += 1
                    self._last_error = _first_line(exc)
                    log.error("%s failed: %s; reopening the camera", self.name, self._last_error)
                    self._close_camera()
                    continue
                self._failures = 0
                return frame
        return None

    def _reopen(self):
        """Reopen after a failure (called with the lock held); None when this attempt failed."""
        attempts = int(self.cfg.reopen_attempts)
        if attempts and self._failures > attempts:
            raise SourceError(f"{self.name} failed and could not be reopened ({attempts} attempts): "
                              f"{self._last_error}")
        pause = min(_BACKOFF_MAX, _BACKOFF_START * (2 ** max(0, self._failures - 1)))
        if self._closing.wait(pause):
            return None
        try:
            self._open()
        except (SourceError, ConfigError) as exc:
            self._failures += 1
            self._last_error = str(exc)
            log.error("%s: reopening failed: %s", self.name, exc)
            return None
        self._reopens += 1
        log.info("%s: camera reopened", self.name)
        return self._cam

    def _capture(self, cam) -> Frame:
        if self.lores_size:
            (main, lores), metadata = cam.capture_arrays(["main", "lores"])
            lores = pack_yuv420(lores, self.lores_size)
        else:
            (main,), metadata = cam.capture_arrays(["main"])
            lores = None
        now = time.monotonic()
        timestamp = now
        sensor_ns = (metadata or {}).get("SensorTimestamp")
        if sensor_ns:  # CLOCK_MONOTONIC of the frame's start: the true capture time
            t = float(sensor_ns) / 1e9
            if 0.0 <= now - t < 5.0:
                timestamp = t
        if main.ndim == 3 and main.shape[2] == 4:  # XRGB8888 if someone changes MAIN_FORMAT
            main = main[:, :, :3]
        frame = Frame(image=main, index=self._index, timestamp=timestamp,
                      wall_time=time.time() - (now - timestamp), source_id=self.source_id,
                      lores=lores, lores_format=LORES_FORMAT if lores is not None else "BGR")
        self._index += 1
        return frame

    def stats(self) -> dict:
        return {
            "frames_read": self._index,
            "connected": self._cam is not None,
            "capture_errors_total": self._errors,
            "reopens_total": self._reopens,
            "last_error": self._last_error,
            "main_size": list(self.main_size),
            "lores_size": list(self.lores_size) if self.lores_size else None,
            "sensor": (self.camera_config or {}).get("sensor"),
        }
