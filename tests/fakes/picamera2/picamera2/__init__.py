"""A fake ``picamera2`` serving frames from a real image or video (see ../README.md)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Optional

import cv2
import libcamera
import numpy as np

__all__ = ["Picamera2", "fake"]


class SensorFormat:
    """picamera2.sensor_format.SensorFormat: prints as e.g. ``SRGGB10_CSI2P``."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        digits = "".join(ch for ch in fmt.split("_")[0] if ch.isdigit())
        self.bit_depth = int(digits) if digits else 8
        self.packing = "CSI2P" if fmt.endswith("_CSI2P") else None
        self.unpacked = fmt.split("_")[0]

    def __str__(self) -> str:
        return self.format

    __repr__ = __str__


# Camera Module 2 (IMX219) on a Pi 4, as ``Picamera2().sensor_modes`` lists them.
_IMX219_MODES = [
    ("SRGGB10_CSI2P", (640, 480), 206.65, (1000, 752, 1280, 960), (75, 11766829, None)),
    ("SRGGB10_CSI2P", (1640, 1232), 41.85, (0, 0, 3280, 2464), (75, 11766829, None)),
    ("SRGGB10_CSI2P", (1920, 1080), 47.57, (680, 692, 1920, 1080), (75, 11766829, None)),
    ("SRGGB10_CSI2P", (3280, 2464), 21.19, (0, 0, 3280, 2464), (75, 11766829, None)),
    ("SRGGB8", (640, 480), 206.65, (1000, 752, 1280, 960), (75, 11766829, None)),
    ("SRGGB8", (1640, 1232), 83.7, (0, 0, 3280, 2464), (75, 5883419, None)),
    ("SRGGB8", (1920, 1080), 47.57, (680, 692, 1920, 1080), (75, 11766829, None)),
    ("SRGGB8", (3280, 2464), 21.19, (0, 0, 3280, 2464), (75, 11766829, None)),
]

_CONTROLS = {
    "AeEnable": (False, True, True),
    "AnalogueGain": (1.0, 10.666667, None),
    "AwbEnable": (False, True, None),
    "AwbMode": (0, 7, 0),
    "Brightness": (-1.0, 1.0, 0.0),
    "ColourGains": (0.0, 32.0, None),
    "Contrast": (0.0, 32.0, 1.0),
    "ExposureTime": (75, 11766829, None),
    "ExposureValue": (-8.0, 8.0, 0.0),
    "FrameDurationLimits": (47183, 11767556, None),
    "NoiseReductionMode": (0, 4, 0),
    "Saturation": (0.0, 32.0, 1.0),
    "ScalerCrop": ((0, 0, 64, 64), (0, 0, 3280, 2464), (0, 0, 3280, 2464)),
    "Sharpness": (0.0, 16.0, 1.0),
}

_YUV = ("YUV420", "YVU420", "NV12", "NV21", "YUYV", "UYVY")
_RGB = ("RGB888", "BGR888", "XBGR8888", "XRGB8888")


class _Fake:
    """What the test controls: the scene, the cameras present, failures to inject."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.scene: Optional[str] = os.environ.get("FAKE_PICAMERA2_SCENE")  # for a CLI run
        self.cameras = [{"Model": "imx219", "Location": 2, "Rotation": 180,
                         "Id": "/base/soc/i2c0mux/i2c@1/imx219@10", "Num": 0}]
        self.platform = "VC4"  # Pi 4 ("PISP" for a Pi 5)
        self.fps_limit: Optional[float] = None  # None: deliver as fast as asked
        self.opened: list = []  # every Picamera2 created
        self._fail_after: Optional[int] = None
        self._fail_message = "Camera frontend has timed out!"
        self._fail_open = 0
        self._frames: list = []
        self._video: Optional[cv2.VideoCapture] = None
        self._lock = threading.Lock()

    def fail_after(self, n: int, message: str = "Camera frontend has timed out!") -> None:
        """The capture after ``n`` more successful ones raises RuntimeError(message)."""
        self._fail_after = int(n)
        self._fail_message = message

    def fail_open(self, times: int) -> None:
        """The next ``times`` ``Picamera2()`` constructions raise (camera gone)."""
        self._fail_open = int(times)

    def _should_fail(self) -> bool:
        with self._lock:
            if self._fail_after is None:
                return False
            if self._fail_after <= 0:
                self._fail_after = None
                return True
            self._fail_after -= 1
            return False

    def next_scene(self) -> np.ndarray:
        """The next BGR picture of the scene (a video loops; an image repeats)."""
        with self._lock:
            if self.scene is None:
                raise RuntimeError("fake picamera2: no scene set (picamera2.fake.scene = path)")
            path = Path(self.scene)
            if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
                if not self._frames or self._frames[0][0] != str(path):
                    image = cv2.imread(str(path))
                    if image is None:
                        raise RuntimeError(f"fake picamera2: cannot read {path}")
                    self._frames = [(str(path), image)]
                return self._frames[0][1]
            if self._video is None or self._frames[:1] != [(str(path), None)]:
                self._video = cv2.VideoCapture(str(path))
                self._frames = [(str(path), None)]
            ok, image = self._video.read()
            if not ok:
                self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = self._video.read()
            if not ok:
                raise RuntimeError(f"fake picamera2: cannot read {path}")
            return image


fake = _Fake()


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _is_raw(fmt: str) -> bool:
    return fmt.startswith(("SRGGB", "SBGGR", "SGRBG", "SGBRG", "R8", "R10", "R12"))


class Picamera2:
    """The subset of ``picamera2.Picamera2`` a detection pipeline uses."""

    platform = "VC4"

    def __init__(self, camera_num: int = 0, verbose_console=None, tuning=None, allocator=None) -> None:
        fake.opened.append(self)
        self.is_open = False
        self.started = False
        self.camera_config: Optional[dict] = None
        self.camera_idx = camera_num
        if fake._fail_open > 0:
            fake._fail_open -= 1
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        if not fake.cameras:
            raise RuntimeError("Camera(s) not found (Do not forget to disable legacy camera with raspi-config).")
        self.camera_info = fake.cameras[camera_num]  # IndexError like the real one for a bad index
        Picamera2.platform = fake.platform
        self.sensor_resolution = (3280, 2464)
        self.sensor_format = "SRGGB10_CSI2P"
        self.camera_properties = {"Model": self.camera_info["Model"], "PixelArraySize": self.sensor_resolution,
                                  "ColorFilterArrangement": 0, "Rotation": self.camera_info.get("Rotation", 0)}
        self.camera_controls = dict(_CONTROLS)
        self.controls: dict = {}
        self._raw_modes = [{"format": f, "size": s} for f, s, *_ in _IMX219_MODES]
        self._sensor_modes: Optional[list] = None
        self._sequence = 0
        self._last_capture = 0.0
        self.closed_count = 0
        self.is_open = True

    # -- camera enumeration -----------------------------------------------------------------------
    @staticmethod
    def global_camera_info() -> list:
        return [dict(c) for c in fake.cameras]

    @property
    def sensor_modes(self) -> list:
        if self.started:  # the real one reconfigures the camera to read the modes
            raise RuntimeError("Camera must be stopped before configuring")
        if self._sensor_modes is None:
            self._sensor_modes = [
                {"format": SensorFormat(f), "unpacked": SensorFormat(f).unpacked,
                 "bit_depth": SensorFormat(f).bit_depth, "size": size, "fps": fps,
                 "crop_limits": crop, "exposure_limits": exp}
                for f, size, fps, crop, exp in _IMX219_MODES
            ]
        return self._sensor_modes

    # -- configurations -----------------------------------------------------------------------------
    @staticmethod
    def _make_initial_stream_config(stream_config: dict, updates: Optional[dict], ignore_list=()) -> Optional[dict]:
        if updates is None:
            return None
        valid = ("format", "size", "stride", "preserve_ar")
        for key, value in updates.items():
            if isinstance(value, SensorFormat):
                value = str(value)
            if key in valid:
                stream_config[key] = value
            elif key in ignore_list:
                pass
            else:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {valid}")
        return stream_config

    @staticmethod
    def align_stream(stream_config: dict, optimal: bool = True) -> None:
        if optimal:
            align = 32 if Picamera2.platform == "VC4" else 64
            if stream_config["format"] in ("YUV420", "YVU420"):
                align *= 2
            elif stream_config["format"] in ("XBGR8888", "XRGB8888"):
                align //= 2
        else:
            align = 2
        size = stream_config["size"]
        stream_config["size"] = (size[0] - size[0] % align, size[1] - size[1] % 2)

    @staticmethod
    def align_configuration(config: dict, optimal: bool = True) -> None:
        Picamera2.align_stream(config["main"], optimal=optimal)
        if config.get("lores") is not None:
            Picamera2.align_stream(config["lores"], optimal=optimal)

    def _create(self, use_case, main_default, main, lores, raw, transform, colour_space, buffer_count,
                controls, display, encode, queue, sensor, default_controls) -> dict:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        main = self._make_initial_stream_config(dict(main_default), main)
        self.align_stream(main, optimal=False)
        lores = self._make_initial_stream_config({"format": "YUV420", "size": main["size"], "preserve_ar": False},
                                                 lores)
        if lores is not None:
            self.align_stream(lores, optimal=False)
        raw = self._make_initial_stream_config({"format": self.sensor_format, "size": main["size"]}, raw,
                                               ("bit_depth", "crop_limits", "exposure_limits", "fps", "unpacked"))
        if colour_space is None:
            small = main["size"][0] < 1280 or main["size"][1] < 720
            colour_space = libcamera.ColorSpace.Smpte170m() if small else libcamera.ColorSpace.Rec709()
        config = {"use_case": use_case, "transform": transform, "colour_space": colour_space,
                  "buffer_count": buffer_count, "queue": queue, "main": main, "lores": lores, "raw": raw,
                  "controls": {**default_controls, **controls}, "sensor": sensor}
        if display is not None and config.get(display) is None:
            raise RuntimeError(f"Display stream {display} was not defined")
        if encode is not None and config.get(encode) is None:
            raise RuntimeError(f"Encode stream {encode} was not defined")
        config["display"] = display
        config["encode"] = encode
        return config

    def create_preview_configuration(self, main={}, lores=None, raw={}, transform=None,  # noqa: B006
                                     colour_space=None, buffer_count=4, controls={},  # noqa: B006
                                     display="main", encode="main", queue=True, sensor={},  # noqa: B006
                                     use_case="preview") -> dict:
        return self._create(use_case, {"format": "XBGR8888", "size": (640, 480), "preserve_ar": True}, main,
                            lores, raw, transform or libcamera.Transform(),
                            colour_space or libcamera.ColorSpace.Sycc(), buffer_count, controls, display, encode,
                            queue, sensor, {"NoiseReductionMode": 3, "FrameDurationLimits": (100, 83333)})

    def create_video_configuration(self, main={}, lores=None, raw={}, transform=None,  # noqa: B006
                                   colour_space=None, buffer_count=6, controls={},  # noqa: B006
                                   display="main", encode="main", queue=True, sensor={},  # noqa: B006
                                   use_case="video") -> dict:
        return self._create(use_case, {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}, main,
                            lores, raw, transform or libcamera.Transform(), colour_space, buffer_count, controls,
                            display, encode, queue, sensor,
                            {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333)})

    def create_still_configuration(self, main={}, lores=None, raw={}, transform=None,  # noqa: B006
                                   colour_space=None, buffer_count=1, controls={},  # noqa: B006
                                   display=None, encode=None, queue=True, sensor={},  # noqa: B006
                                   use_case="still") -> dict:
        return self._create(use_case, {"format": "BGR888", "size": self.sensor_resolution, "preserve_ar": True},
                            main, lores, raw, transform or libcamera.Transform(),
                            colour_space or libcamera.ColorSpace.Sycc(), buffer_count, controls, display, encode,
                            queue, sensor, {"NoiseReductionMode": 2, "FrameDurationLimits": (100, 1000000000)})

    # -- configure ----------------------------------------------------------------------------------
    @staticmethod
    def check_stream_config(stream_config, name) -> None:
        if type(stream_config) is not dict:
            raise RuntimeError(name + " stream should be a dictionary")
        for key in ("format", "size"):
            if key not in stream_config:
                raise RuntimeError(f"{key} not found in {name} stream")
        fmt = stream_config["format"]
        if type(fmt) is not str:
            raise RuntimeError("format in " + name + " stream should be a string")
        if name == "raw":
            if not _is_raw(fmt):
                raise RuntimeError("Unrecognised raw format " + fmt)
        elif fmt not in _YUV + _RGB and fmt != "MJPEG":
            raise RuntimeError("Bad format " + fmt + " in stream " + name)
        size = stream_config["size"]
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in " + name + " stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")

    def check_camera_config(self, camera_config: dict) -> None:
        for name in ("colour_space", "transform", "main", "lores", "raw"):
            if name not in camera_config:
                raise RuntimeError(f"{name!r} key expected in camera configuration")
        if not isinstance(camera_config["transform"], libcamera.Transform):
            raise RuntimeError("Transform has incorrect type")
        if not isinstance(camera_config["colour_space"], libcamera.ColorSpace):
            raise RuntimeError("Colour space has incorrect type")
        if camera_config.get("sensor"):
            bad = set(camera_config["sensor"]).difference({"bit_depth", "output_size"})
            if bad:
                raise RuntimeError(f"Unexpected keys {bad} in sensor configuration")
        self.check_stream_config(camera_config["main"], "main")
        if camera_config["lores"] is not None:
            self.check_stream_config(camera_config["lores"], "lores")
            main_w, main_h = camera_config["main"]["size"]
            lores_w, lores_h = camera_config["lores"]["size"]
            if lores_w > main_w or lores_h > main_h:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if Picamera2.platform == "VC4" and camera_config["lores"]["format"] not in _YUV:
                raise RuntimeError("lores stream must be YUV")
        if camera_config["raw"] is not None:
            self.check_stream_config(camera_config["raw"], "raw")

    def _stride(self, fmt: str, width: int) -> int:
        if fmt in ("YUV420", "YVU420"):
            return _align_up(width, 64 if Picamera2.platform == "VC4" else 128)
        bpp = 4 if fmt in ("XBGR8888", "XRGB8888") else 3 if fmt in ("RGB888", "BGR888") else 2
        return _align_up(width * bpp, 32 if Picamera2.platform == "VC4" else 64)

    def _pick_mode(self, bit_depth: int, output_size) -> dict:
        def score_mode(mode):  # picamera2's copy of libcamera's scoring
            mode_bit_depth = SensorFormat(mode["format"]).bit_depth
            mw, mh = mode["size"]
            ar, mode_ar = output_size[0] / output_size[1], mw / mh

            def score_format(desired, actual):
                score = desired - actual
                return -score / 4 if score < 0 else score * 2

            score = score_format(output_size[0], mw) + score_format(output_size[1], mh)
            score += 1500 * score_format(ar, mode_ar)
            score += 500 * abs(bit_depth - mode_bit_depth)
            return score

        return min(self._raw_modes, key=score_mode)

    def configure(self, camera_config="preview") -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if not isinstance(camera_config, dict):
            camera_config = self.create_preview_configuration()
        camera_config = dict(camera_config)
        for key in ("main", "lores", "raw"):
            if camera_config.get(key) is not None:
                camera_config[key] = dict(camera_config[key])
        self.check_camera_config(camera_config)
        sensor = camera_config.get("sensor") or {}
        raw = camera_config.get("raw")
        bit_depth = sensor.get("bit_depth") or (SensorFormat(raw["format"]).bit_depth if raw else 10)
        output_size = sensor.get("output_size") or (raw["size"] if raw else camera_config["main"]["size"])
        mode = self._pick_mode(bit_depth, output_size)
        for name in ("main", "lores"):
            stream = camera_config.get(name)
            if stream is not None:
                stream["stride"] = self._stride(stream["format"], stream["size"][0])
                rows = stream["size"][1] * 3 // 2 if stream["format"] in ("YUV420", "YVU420") else stream["size"][1]
                stream["framesize"] = stream["stride"] * rows
        if raw is not None:
            raw.update({"format": mode["format"], "size": mode["size"], "stride": mode["size"][0] * 5 // 4,
                        "framesize": mode["size"][0] * 5 // 4 * mode["size"][1]})
        camera_config["sensor"] = {"bit_depth": SensorFormat(mode["format"]).bit_depth,
                                   "output_size": mode["size"]}
        controls = dict(camera_config.get("controls") or {})
        if "FrameRate" in controls:
            duration = int(1e6 / float(controls.pop("FrameRate")))
            controls["FrameDurationLimits"] = (duration, duration)
        camera_config["controls"] = controls
        self._check_controls(controls)
        self.camera_config = camera_config
        self.controls = dict(controls)

    def camera_configuration(self) -> Optional[dict]:
        return self.camera_config

    def stream_configuration(self, name="main") -> dict:
        return self.camera_config[name]

    def _check_controls(self, controls: dict) -> None:
        for name in controls:
            if name not in self.camera_controls and name != "FrameRate":
                raise RuntimeError(f"Control {name} is not advertised by libcamera")

    def set_controls(self, controls: dict) -> None:
        self._check_controls(controls)
        self.controls.update(controls)

    # -- running -------------------------------------------------------------------------------------
    def start(self, config=None, show_preview=False) -> None:
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        self.is_open = False
        self.closed_count += 1
        self.camera_config = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.close()

    def _request(self, names) -> tuple[list, dict]:
        if not self.started:
            raise RuntimeError("Camera not started")  # the real one would wait forever
        if fake._should_fail():
            raise RuntimeError(fake._fail_message)
        limit = fake.fps_limit
        if limit:
            wait = self._last_capture + 1.0 / limit - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_capture = time.monotonic()
        scene = fake.next_scene()
        transform = self.camera_config["transform"]
        if transform.hflip and transform.vflip:
            scene = cv2.flip(scene, -1)
        elif transform.hflip:
            scene = cv2.flip(scene, 1)
        elif transform.vflip:
            scene = cv2.flip(scene, 0)
        arrays = [self._make_array(scene, name) for name in names]
        self._sequence += 1
        duration = self.controls.get("FrameDurationLimits", (33333, 33333))[0]
        metadata = {"SensorTimestamp": time.monotonic_ns(), "FrameDuration": duration,
                    "ExposureTime": self.controls.get("ExposureTime", 20000),
                    "AnalogueGain": self.controls.get("AnalogueGain", 2.0), "Lux": 400.0,
                    "ColourTemperature": 4500, "SensorTemperature": 40.0}
        return arrays, metadata

    def _make_array(self, scene: np.ndarray, name: str) -> np.ndarray:
        stream = self.camera_config.get(name)
        if stream is None:
            raise RuntimeError(f"Stream {name!r} is not configured")  # KeyError-ish in the real one
        w, h = stream["size"]
        stride, fmt = stream["stride"], stream["format"]
        image = cv2.resize(scene, (w, h), interpolation=cv2.INTER_AREA)  # the ISP scales each output
        if fmt == "RGB888":  # B, G, R in memory
            return image
        if fmt == "BGR888":
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if fmt in ("XBGR8888", "XRGB8888"):
            out = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
            return out if fmt == "XRGB8888" else out[:, :, [2, 1, 0, 3]].copy()
        if fmt in ("YUV420", "YVU420"):
            i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).reshape(-1)
            buf = np.zeros(stride * h * 3 // 2, np.uint8)
            buf[: stride * h].reshape(h, stride)[:, :w] = i420[: w * h].reshape(h, w)
            cw, ch, cs = w // 2, h // 2, stride // 2
            for i in range(2):
                src = i420[w * h + i * cw * ch: w * h + (i + 1) * cw * ch].reshape(ch, cw)
                start = stride * h + i * cs * ch
                buf[start: start + cs * ch].reshape(ch, cs)[:, :cw] = src
            return buf.reshape(h * 3 // 2, stride)  # picamera2 leaves the padding in
        raise RuntimeError("Format " + fmt + " not supported")

    def capture_array(self, name="main", wait=None, signal_function=None) -> np.ndarray:
        arrays, _ = self._request([name])
        return arrays[0]

    def capture_arrays(self, names=["main"], wait=None, signal_function=None):  # noqa: B006
        return self._request(list(names))

    def capture_metadata(self, wait=None, signal_function=None) -> dict:
        return self._request([])[1]
