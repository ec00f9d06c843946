"""Fake of the parts of libcamera's Python bindings that picamera2 users touch (see ../README.md)."""

from __future__ import annotations

import enum
import types


class Transform:
    """``libcamera.Transform(hflip=1, vflip=0, transpose=0, rotation=0)``."""

    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0, rotation: int = 0) -> None:
        rotation = int(rotation) % 360
        if rotation not in (0, 180):
            raise ValueError(f"Transform: rotation {rotation} not supported by this fake")
        flip = rotation == 180
        self.hflip = bool(hflip) ^ flip
        self.vflip = bool(vflip) ^ flip
        self.transpose = bool(transpose)

    def __eq__(self, other) -> bool:
        return isinstance(other, Transform) and (self.hflip, self.vflip, self.transpose) == (
            other.hflip, other.vflip, other.transpose)

    def __repr__(self) -> str:
        name = {(False, False): "identity", (True, False): "hflip", (False, True): "vflip",
                (True, True): "rot180"}[(self.hflip, self.vflip)]
        return f"<libcamera.Transform '{name}'>"


class ColorSpace:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<libcamera.ColorSpace '{self.name}'>"

    def __eq__(self, other) -> bool:
        return isinstance(other, ColorSpace) and other.name == self.name

    @staticmethod
    def Sycc():  # noqa: N802 - libcamera's names
        return ColorSpace("sYCC")

    @staticmethod
    def Rec709():  # noqa: N802
        return ColorSpace("Rec709")

    @staticmethod
    def Smpte170m():  # noqa: N802
        return ColorSpace("SMPTE170M")

    @staticmethod
    def Raw():  # noqa: N802
        return ColorSpace("RAW")


class AwbModeEnum(enum.IntEnum):
    Auto = 0
    Incandescent = 1
    Tungsten = 2
    Fluorescent = 3
    Indoor = 4
    Daylight = 5
    Cloudy = 6
    Custom = 7


class AeExposureModeEnum(enum.IntEnum):
    Normal = 0
    Short = 1
    Long = 2
    Custom = 3


class NoiseReductionModeEnum(enum.IntEnum):
    Off = 0
    Fast = 1
    HighQuality = 2
    Minimal = 3
    ZSL = 4


controls = types.SimpleNamespace(
    AwbModeEnum=AwbModeEnum,
    AeExposureModeEnum=AeExposureModeEnum,
    draft=types.SimpleNamespace(NoiseReductionModeEnum=NoiseReductionModeEnum),
)
