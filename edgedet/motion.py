"""Motion gate: run the model only when something moves, while objects are tracked, and now and then.

``MotionDetector`` compares a small grey, blurred copy of each frame (about ``width`` pixels wide)
with a running-average background and returns the fraction of its pixels that changed by more
than ``pixel_delta`` grey levels. ``MotionGate.wants(image, t, busy)`` says whether the model
runs on a frame: when that fraction reaches ``threshold``, when ``busy`` (objects are being
tracked: their tracks need detections to follow them and to end on time), when no inference ran
for ``keepalive_s`` seconds (an object that stands still is still found), and on the first frame.
When a frame the model ran on found an object not confirmed yet (``pending``: the tracker needs a
few detections in a row), the next ``burst`` frames (and those within ``burst_s`` seconds) run too
-- once per keep-alive look, so a lasting false detection costs only those frames. The gate
decides ahead of the model's results (frames are captured while earlier ones are inferred): busy
and pending arrive a few frames late, which the burst and the tracker's own patience absorb.

With ``regions``, ``MotionGate.regions`` places model-sized squares of the frame around the moving
samples of the last frame (``edgedet.regions``): the model also runs on those crops, so small, far
objects are seen at the model's own scale.

The small copy is every n-th pixel of every n-th row (n = frame width // ``width``), so its cost
does not grow with the frame: one strided copy, one colour conversion, one blur and two array
passes on a 160 x 120 picture, about 0.15 ms, against tens of milliseconds for the model. A
moving object wider than n pixels always covers samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import ConfigError
from .regions import place_regions

__all__ = ["MAX_REGIONS", "MotionDetector", "MotionGate", "MotionSettings"]

MAX_REGIONS = 8


@dataclass(frozen=True)
class MotionSettings:
    threshold: float = 0.002
    keepalive_s: float = 4.0
    pixel_delta: int = 25
    width: int = 160
    background_rate: float = 0.05  # how fast the background follows the picture (per frame)
    burst: int = 4  # frames in a row for an object to be confirmed (the tracker's min_hits + 1)
    burst_s: float = 0.0  # and at least this long (the tracker's confirmation time, frames in flight included)
    regions: int = 0  # model-sized squares around motion the model also runs on (``edgedet.regions``); 0: none

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"motion.threshold: must be within 0..1, got {self.threshold}")
        if not self.keepalive_s > 0.0:
            raise ConfigError(f"motion.keepalive_s: must be > 0, got {self.keepalive_s}")
        if not 1 <= self.pixel_delta <= 255:
            raise ConfigError(f"motion.pixel_delta: must be within 1..255, got {self.pixel_delta}")
        if self.width < 8:
            raise ConfigError(f"motion.width: must be at least 8, got {self.width}")
        if self.burst < 0:
            raise ConfigError(f"motion.burst: must be >= 0, got {self.burst}")
        if not self.burst_s >= 0.0:
            raise ConfigError(f"motion.burst_s: must be >= 0, got {self.burst_s}")
        if not 0 <= self.regions <= MAX_REGIONS:
            raise ConfigError(f"motion.regions: must be within 0..{MAX_REGIONS}, got {self.regions}")
        if not 0.0 < self.background_rate <= 1.0:
            raise ConfigError(f"motion.background_rate: must be within (0, 1], got {self.background_rate}")


class MotionDetector:
    """The moving fraction of each frame against a running-average background."""

    def __init__(self, settings: MotionSettings = MotionSettings()) -> None:
        self.settings = settings
        self._background: Optional[np.ndarray] = None  # float32, small grey
        self._size: Optional[tuple[int, int, int, int]] = None  # step, first sample; frame w, h
        self.mask: Optional[np.ndarray] = None  # the last frame's moving samples (bool, small picture)

    @property
    def step(self) -> int:
        """Frame pixels per sample of the small picture (each sample stands for a step x step block)."""
        return self._size[0] if self._size is not None else 1

    def _small(self, image: np.ndarray) -> np.ndarray:
        """Every ``step``-th pixel of every ``step``-th row (about ``width`` of them a row), grey, blurred."""
        import cv2

        h, w = image.shape[:2]
        if self._size is None or self._size[2:] != (w, h):
            step = max(1, w // self.settings.width)
            self._size = (step, step // 2, w, h)
        step, first = self._size[:2]
        small = np.ascontiguousarray(image[first::step, first::step])  # a view's copy: no pass over the frame
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        return cv2.GaussianBlur(small, (5, 5), 0)

    def update(self, image: np.ndarray) -> float:
        """Fraction (0..1) of the picture that moved; 1.0 on the first frame (nothing to compare with)."""
        import cv2

        grey = self._small(image)
        if self._background is None or self._background.shape != grey.shape:
            self._background = grey.astype(np.float32)
            self.mask = None
            return 1.0
        diff = cv2.absdiff(grey.astype(np.float32), self._background)
        self.mask = diff > self.settings.pixel_delta
        moving = float(np.count_nonzero(self.mask)) / diff.size
        cv2.accumulateWeighted(grey, self._background, self.settings.background_rate)
        return moving


class MotionGate:
    """Decides per frame whether the model runs (see the module docstring); counts its decisions."""

    def __init__(self, settings: MotionSettings = MotionSettings()) -> None:
        self.settings = settings
        self.detector = MotionDetector(settings)
        self.frames = 0
        self.inferred = 0
        self.moving = 0
        self.last_fraction = 0.0
        self.regions_run = 0  # regions placed (extra model runs)
        self._last_run: Optional[float] = None
        self._burst_left = 0
        self._burst_until = -np.inf
        self._armed = False  # a burst may start (once per keep-alive look)

    def wants(self, image: np.ndarray, t: float, busy: bool = False, pending: bool = False) -> bool:
        """Run the model on the frame taken at ``t`` seconds? ``busy``: tracked objects are moving;
        ``pending``: an object waits for confirmation."""
        fraction = self.detector.update(image)
        self.last_fraction = fraction
        self.frames += 1
        moved = fraction >= self.settings.threshold
        self.moving += int(moved)
        due = self._last_run is None or t - self._last_run >= self.settings.keepalive_s
        if pending and self._armed:
            self._burst_left, self._armed = self.settings.burst, False
            self._burst_until = t + self.settings.burst_s
        bursting = self._burst_left > 0 or t < self._burst_until
        if not (moved or busy or due or bursting):
            return False
        self._burst_left -= int(self._burst_left > 0)
        self._armed = self._armed or due
        self._last_run = t
        self.inferred += 1
        return True

    def regions(self, frame_size: tuple[int, int], side: int) -> np.ndarray:
        """Squares of ``side`` frame pixels around the last frame's motion (``edgedet.regions``), up to
        ``settings.regions``: int32 ``[K, 4]`` (x1, y1, x2, y2) in frame pixels."""
        found = place_regions(self.detector.mask, self.detector.step, frame_size, side, self.settings.regions)
        self.regions_run += len(found)
        return found

    def stats(self) -> dict:
        out = {"frames": self.frames, "inferred": self.inferred, "skipped": self.frames - self.inferred,
               "motion_frames": self.moving}
        if self.settings.regions:
            out["regions"] = self.regions_run
        return out
