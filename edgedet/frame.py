"""What flows between pipeline stages: a captured ``Frame`` and its ``Result``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .detections import Detections


@dataclass
class Frame:
    """One captured image.

    ``image`` is BGR uint8 ``[H, W, 3]`` (the main/display image). ``lores`` is an optional
    smaller image already near the model's input size (Pi camera dual stream); when present the
    detector runs on it and boxes are mapped to ``image`` coordinates.
    ``timestamp`` is ``time.monotonic()`` at capture, ``wall_time`` is ``time.time()`` at capture.
    """

    image: np.ndarray
    index: int
    timestamp: float
    wall_time: float
    source_id: str = "0"
    lores: Optional[np.ndarray] = None
    lores_format: str = "BGR"  # "BGR", "RGB" or "YUV420"

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass
class Result:
    """A frame with its detections and per-stage timings (milliseconds). Sinks only read it."""

    frame: Frame
    detections: Detections
    timings: dict[str, float] = field(default_factory=dict)
    labels: Optional[list[str]] = None
    annotated: Optional[np.ndarray] = None  # the overlaid image, drawn once and shared by sinks
    fps: float = 0.0  # processed frames per second (recent)
