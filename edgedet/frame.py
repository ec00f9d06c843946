"""What flows between pipeline stages: a captured ``Frame`` and its ``Result``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

import numpy as np

from .detections import Detections

if TYPE_CHECKING:
    from .tracking import ObjectEvent, ZoneUpdate


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
    """A frame with its detections and per-stage timings (milliseconds). Sinks only read it.

    When tracked: ``detections.track_ids`` are set, ``objects`` holds the object events of this
    frame (new / update / end), ``zones`` who is in which zone and the line crossings, and
    ``line_counts`` the running in/out counts per line. ``inferred`` is False on a frame the motion
    gate let pass without running the model (its detections are empty, tracks coast).
    """

    frame: Frame
    detections: Detections
    timings: dict[str, float] = field(default_factory=dict)
    labels: Optional[list[str]] = None
    annotated: Optional[np.ndarray] = None  # the overlaid image, drawn once and shared by sinks
    fps: float = 0.0  # processed frames per second (recent)
    objects: List[ObjectEvent] = field(default_factory=list)
    zones: Optional[ZoneUpdate] = None
    line_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    inferred: bool = True
