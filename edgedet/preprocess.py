"""Fit an image to the model input: resize (stretch or letterbox), colour order, normalize/quantize.

Everything is written into one preallocated input array (``cv2.resize(dst=)``, ``cv2.cvtColor(dst=)``,
numpy ``out=``), so preparing a frame allocates nothing once the first frame of a size was seen.
``Prepared`` carries the whole mapping from the model's box outputs back to frame pixels: input
tensor -> the image given (undoing stretch or letterbox) -> the frame it was taken from (the Pi
camera's lores stream is a smaller copy of the main picture); ``Prepared.to_frame`` is the one
place boxes are converted and clipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from .errors import ConfigError

RESIZE_MODES = ("stretch", "letterbox")
FORMATS = ("BGR", "RGB", "BGRA", "RGBA", "GRAY", "YUV420")
PAD_VALUE = 128  # letterbox border (mid grey: ~0 after the usual normalizations)


@dataclass(frozen=True)
class InputSpec:
    """What the model's input tensor wants."""

    width: int
    height: int
    dtype: np.dtype
    scale: float = 0.0  # quantization of the input tensor (0: not quantized)
    zero_point: int = 0
    # real value fed to the network = (pixel - mean) / std, per channel (RGB); None = raw pixels
    # (uint8 inputs get the pixel itself, int8 inputs pixel - 128, float inputs the pixel value)
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None
    color: str = "rgb"  # channel order of the model input

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def quantized(self) -> bool:
        return np.dtype(self.dtype) in (np.dtype(np.uint8), np.dtype(np.int8)) and self.scale > 0


@dataclass
class Prepared:
    """A prepared model input and the mapping back to the frame.

    ``tensor`` is the model input ``[1, H, W, 3]`` (the preprocessor's own buffer: valid until the
    next ``prepare``). Input pixel = image pixel * scale + pad; frame pixel = image pixel *
    frame size / image size (the image is the frame itself unless a smaller copy of it was given).
    """

    tensor: np.ndarray
    input_width: int
    input_height: int
    image_width: int
    image_height: int
    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0
    preprocess_ms: float = 0.0
    frame_width: int = 0  # 0: the frame is the image itself
    frame_height: int = 0

    @property
    def frame_size(self) -> tuple[int, int]:
        return (self.frame_width or self.image_width, self.frame_height or self.image_height)

    def to_frame(self, yxyx: np.ndarray) -> np.ndarray:
        """Boxes as SSD models give them -- ``[N, 4]`` (ymin, xmin, ymax, xmax) normalized to the
        model input -- to frame pixels ``[N, 4]`` (x1, y1, x2, y2) float32, clipped to the frame."""
        w, h = self.input_width, self.input_height
        fw, fh = self.frame_size
        out = np.empty((len(yxyx), 4), np.float32)
        out[:, 0] = yxyx[:, 1] * w
        out[:, 1] = yxyx[:, 0] * h
        out[:, 2] = yxyx[:, 3] * w
        out[:, 3] = yxyx[:, 2] * h
        out[:, 0::2] = (out[:, 0::2] - self.pad_x) / self.scale_x  # input -> image pixels
        out[:, 1::2] = (out[:, 1::2] - self.pad_y) / self.scale_y
        if (fw, fh) != (self.image_width, self.image_height):  # image -> frame pixels
            out[:, 0::2] *= np.float32(fw / self.image_width)
            out[:, 1::2] *= np.float32(fh / self.image_height)
        np.clip(out[:, 0::2], 0, fw, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, fh, out=out[:, 1::2])
        return out


def _triple(value, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    vals = [float(v) for v in value]
    if len(vals) == 1:
        return (vals[0],) * 3
    if len(vals) != 3:
        raise ConfigError(f"model sidecar input.normalization: {name} needs 1 or 3 values, got {len(vals)}")
    return tuple(vals)  # type: ignore[return-value]


def parse_normalization(value) -> tuple[Optional[tuple], Optional[tuple]]:
    """Sidecar ``input.normalization``: ``[mean, std]`` (each a number or 3 numbers), ``none``/``raw``."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "raw", "pixels")):
        return None, None
    if isinstance(value, dict):
        return _triple(value.get("mean", 0.0), "mean"), _triple(value.get("std", 1.0), "std")
    if isinstance(value, (list, tuple)) and len(value) == 2:
        mean, std = _triple(value[0], "mean"), _triple(value[1], "std")
        if any(s == 0 for s in std):
            raise ConfigError("model sidecar input.normalization: std must not be 0")
        return mean, std
    raise ConfigError(f"model sidecar input.normalization: expected [mean, std], got {value!r}")


class Preprocessor:
    """Resize + colour + normalize into one preallocated model input array."""

    def __init__(self, spec: InputSpec, resize: str = "stretch") -> None:
        if resize not in RESIZE_MODES:
            raise ConfigError(f"model.resize: expected one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.spec = spec
        self.resize = resize
        w, h = spec.width, spec.height
        self.tensor = np.zeros((1, h, w, 3), dtype=spec.dtype)
        self._rgb = np.zeros((h, w, 3), np.uint8)  # resized image in the model's colour order
        self._scratch: dict[tuple[int, int], np.ndarray] = {}
        self._mode, self._lut, self._mean, self._inv_std = self._plan(spec)

    # -- planning: how pixels become input values -------------------------------------------------
    @staticmethod
    def _plan(spec: InputSpec):
        dtype = np.dtype(spec.dtype)
        mean = np.array(spec.mean if spec.mean is not None else (0.0, 0.0, 0.0), np.float32)
        std = np.array(spec.std if spec.std is not None else (1.0, 1.0, 1.0), np.float32)
        if dtype == np.uint8 or dtype == np.int8:
            if spec.mean is None:
                return ("direct" if dtype == np.uint8 else "xor80"), None, None, None
            # quantized value of each pixel value, per channel: a 256-entry lookup table
            pix = np.arange(256, dtype=np.float64)[:, None]
            real = (pix - mean[None, :]) / std[None, :]
            scale = spec.scale if spec.scale > 0 else 1.0
            q = np.round(real / scale + spec.zero_point)
            info = np.iinfo(dtype)
            q = np.clip(q, info.min, info.max).astype(np.int64)
            if dtype == np.uint8 and np.array_equal(q, np.repeat(np.arange(256)[:, None], 3, 1)):
                return "direct", None, None, None
            if dtype == np.int8 and np.array_equal(q, np.repeat(np.arange(256)[:, None] - 128, 3, 1)):
                return "xor80", None, None, None
            lut = (q & 0xFF).astype(np.uint8).reshape(256, 1, 3)  # int8 stored as its bytes
            return "lut", lut, None, None
        if dtype == np.float32 or dtype == np.float16:
            if spec.mean is None:
                return "float", None, np.zeros(3, np.float32), np.ones(3, np.float32)
            return "float", None, mean, (1.0 / std).astype(np.float32)
        raise ConfigError(f"unsupported model input type {dtype}")

    # -- per frame --------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, fmt: str = "BGR",
                frame_size: Optional[tuple[int, int]] = None) -> Prepared:
        """``image`` into the input tensor. ``frame_size`` ``(w, h)``: the frame ``image`` is a
        smaller copy of (boxes are mapped back to it); None when ``image`` is the frame."""
        t0 = time.perf_counter()
        fmt = fmt.upper()
        if fmt == "YUV420":  # I420: [H * 3 / 2, W] -> straight to the model's colour order
            rgb = self.spec.color.lower() == "rgb"
            image = cv2.cvtColor(image, cv2.COLOR_YUV2RGB_I420 if rgb else cv2.COLOR_YUV2BGR_I420)
            fmt = "RGB" if rgb else "BGR"
        elif image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            fmt = "GRAY"
        elif fmt not in FORMATS:
            raise ConfigError(f"unknown image format {fmt!r} (expected one of {', '.join(FORMATS)})")
        ih, iw = image.shape[:2]
        if ih == 0 or iw == 0:
            raise ValueError("empty image")
        w, h = self.spec.width, self.spec.height
        if self.resize == "stretch":
            sx, sy, px, py = w / iw, h / ih, 0.0, 0.0
            resized = self._resize(image, w, h)
        else:
            s = min(w / iw, h / ih)
            nw, nh = max(1, min(w, round(iw * s))), max(1, min(h, round(ih * s)))
            px, py = (w - nw) // 2, (h - nh) // 2
            sx, sy = nw / iw, nh / ih
            resized = self._resize(image, nw, nh)
        self._to_model_colour(resized, fmt, px, py)
        self._normalize()
        ms = (time.perf_counter() - t0) * 1000.0
        fw, fh = frame_size or (0, 0)
        return Prepared(self.tensor, w, h, iw, ih, sx, sy, float(px), float(py), ms, int(fw), int(fh))

    def _resize(self, image: np.ndarray, w: int, h: int) -> np.ndarray:
        ih, iw = image.shape[:2]
        if (iw, ih) == (w, h):
            return image
        channels = 1 if image.ndim == 2 else image.shape[2]
        key = (w, h, channels)
        buf = self._scratch.get(key)  # type: ignore[arg-type]
        if buf is None:
            buf = np.empty((h, w) if channels == 1 else (h, w, channels), np.uint8)
            self._scratch[key] = buf  # type: ignore[index]
        if image.ndim == 3 and channels == 1:
            image = image[:, :, 0]
        # bilinear, as the TF Object Detection API resized images for training (no antialiasing)
        cv2.resize(image, (w, h), dst=buf, interpolation=cv2.INTER_LINEAR)
        return buf

    def _to_model_colour(self, resized: np.ndarray, fmt: str, px: int, py: int) -> None:
        want_rgb = self.spec.color.lower() == "rgb"
        code = {
            ("BGR", True): cv2.COLOR_BGR2RGB,
            ("RGB", False): cv2.COLOR_RGB2BGR,
            ("BGRA", True): cv2.COLOR_BGRA2RGB,
            ("BGRA", False): cv2.COLOR_BGRA2BGR,
            ("RGBA", True): cv2.COLOR_RGBA2RGB,
            ("RGBA", False): cv2.COLOR_RGBA2BGR,
            ("GRAY", True): cv2.COLOR_GRAY2RGB,
            ("GRAY", False): cv2.COLOR_GRAY2BGR,
        }.get((fmt, want_rgb))
        nh, nw = resized.shape[:2]
        full = (nw, nh) == (self.spec.width, self.spec.height)
        # uint8 inputs that take pixels as they are: write straight into the input tensor
        dst_full = self.tensor[0] if self._mode == "direct" else self._rgb
        if full:
            dst = dst_full
        else:
            dst_full[...] = PAD_VALUE
            if px == 0:  # rows only: a contiguous block
                dst = dst_full[py:py + nh]
            else:
                dst = None
        if resized.ndim == 3 and resized.shape[2] == 1:
            resized = resized[:, :, 0]
        if dst is not None:
            if code is None:
                np.copyto(dst, resized)
            else:
                cv2.cvtColor(resized, code, dst=dst)
        else:
            region = dst_full[py:py + nh, px:px + nw]
            region[...] = resized if code is None else cv2.cvtColor(resized, code)

    def _normalize(self) -> None:
        mode = self._mode
        if mode == "direct":
            return
        src = self._rgb
        if mode == "xor80":
            np.bitwise_xor(src, 0x80, out=self.tensor[0].view(np.uint8))
        elif mode == "lut":
            out = self.tensor[0].view(np.uint8)
            cv2.LUT(src, self._lut, dst=out)
        else:  # float
            out = self.tensor[0]
            np.subtract(src, self._mean, out=out, casting="unsafe")
            np.multiply(out, self._inv_std, out=out, casting="unsafe")


def default_normalization(dtype) -> tuple[Optional[tuple], Optional[tuple]]:
    """Defaults when the sidecar says nothing: uint8/int8 -> raw pixels, float -> (x - 127.5) / 127.5."""
    dtype = np.dtype(dtype)
    if dtype in (np.dtype(np.float32), np.dtype(np.float16)):
        return (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)
    return None, None


def letterbox_or_stretch(value: Optional[str], sidecar_resize: Optional[str]) -> str:
    """Resize mode: the user's choice, else the sidecar's, else stretch (how SSD models were trained)."""
    for v in (value, sidecar_resize):
        if v and v != "auto":
            if v not in RESIZE_MODES:
                raise ConfigError(f"model.resize: expected auto, stretch or letterbox, got {v!r}")
            return v
    return "stretch"


__all__: Sequence[str] = ["InputSpec", "Prepared", "Preprocessor", "parse_normalization",
                          "default_normalization", "letterbox_or_stretch"]
