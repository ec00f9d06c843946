"""Constant-velocity Kalman filter for many boxes at once, in seconds rather than frames.

A box is four coordinates (centre x, centre y, width, height), each with a position and a
velocity (pixels per second). The motion model, the process noise and the measurement noise
treat the four coordinates independently, so the 8x8 covariance of SORT/ByteTrack's filter is
four 2x2 blocks: we keep their three distinct entries per coordinate and every step is a few
element-wise operations on ``[T, 4]`` arrays, whatever the number of tracks.

Noise scales with the box height (as in SORT, DeepSORT and ByteTrack), so one setting serves a
near and a far object. The process noise is white acceleration in continuous time, so the filter
behaves the same at 5 fps and at 30 fps and across skipped frames: ``predict(dt)`` takes the
elapsed seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

# state rows of ``BoxFilter.state[:, row, coord]``
POS, VEL, P_PP, P_PV, P_VV = range(5)


@dataclass(frozen=True)
class MotionNoise:
    """Noise levels in box heights.

    ``measure``: standard deviation of a detected box's coordinates (0.1: the quantized SSD's boxes
    spread around their own tracks by 0.06-0.07 of the height at the centre and 0.13 in height; one
    value for all four, on the safe side); ``accel`` / ``size_accel``:
    white acceleration of the centre / the size, per s^2 (a walking person or a car in traffic
    changes speed by a fraction of its height per second); ``initial_speed``: the speed a new
    track may have before it is measured, per s.
    """

    measure: float = 0.1
    accel: float = 0.25
    size_accel: float = 0.25
    initial_speed: float = 1.0

    def __post_init__(self) -> None:
        for name in ("measure", "accel", "size_accel", "initial_speed"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"tracking.noise.{name}: must be > 0, got {getattr(self, name)}")


def xyxy_to_cxcywh(xyxy: np.ndarray) -> np.ndarray:
    out = np.empty_like(xyxy, dtype=np.float64)
    out[:, 2:] = xyxy[:, 2:] - xyxy[:, :2]
    out[:, :2] = xyxy[:, :2] + 0.5 * out[:, 2:]
    return out


def cxcywh_to_xyxy(cxcywh: np.ndarray) -> np.ndarray:
    half = 0.5 * cxcywh[:, 2:]
    return np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1)


class BoxFilter:
    """The filtered boxes of ``T`` tracks: ``state`` is float64 ``[T, 5, 4]`` (rows POS..P_VV)."""

    def __init__(self, noise: MotionNoise = MotionNoise()) -> None:
        self.noise = noise
        self.state = np.zeros((0, 5, 4), np.float64)

    def __len__(self) -> int:
        return len(self.state)

    def _scale(self, pos: np.ndarray | None = None) -> np.ndarray:
        """Per track: the noise scale, its box height (at least one pixel), ``[T, 1]``."""
        pos = self.state[:, POS] if pos is None else pos
        return np.maximum(pos[:, 3:4], 1.0)

    def add(self, xyxy: np.ndarray) -> None:
        """Start tracks at these boxes, at rest, with the initial uncertainty."""
        new = np.zeros((len(xyxy), 5, 4), np.float64)
        new[:, POS] = xyxy_to_cxcywh(xyxy)
        h2 = self._scale(new[:, POS]) ** 2
        n = self.noise
        new[:, P_PP] = (2.0 * n.measure) ** 2 * h2
        new[:, P_VV] = n.initial_speed**2 * h2
        new[:, P_VV, 2:] *= (n.size_accel / n.accel) ** 2
        self.state = np.concatenate([self.state, new]) if len(self.state) else new

    def keep(self, mask: np.ndarray) -> None:
        self.state = self.state[mask]

    def hold_size(self, rows: np.ndarray) -> None:
        """Stop the size of tracks ``rows`` (index or mask) changing until they are measured again."""
        self.state[rows, VEL, 2:] = 0.0

    def predict(self, dt: float) -> None:
        """Move every track ``dt`` seconds ahead (no-op for ``dt <= 0``)."""
        if dt <= 0 or not len(self.state):
            return
        s = self.state
        n = self.noise
        q = self._scale() ** 2 * np.array([n.accel, n.accel, n.size_accel, n.size_accel]) ** 2
        s[:, POS] += s[:, VEL] * dt
        s[:, P_PP] += dt * (2.0 * s[:, P_PV] + dt * s[:, P_VV]) + q * (dt**3 / 3.0)
        s[:, P_PV] += dt * s[:, P_VV] + q * (dt**2 / 2.0)
        s[:, P_VV] += q * dt
        np.maximum(s[:, POS, 2:], 1.0, out=s[:, POS, 2:])

    def correct(self, rows: np.ndarray, xyxy: np.ndarray) -> None:
        """Fold the measured boxes ``xyxy`` into tracks ``rows``."""
        if not len(rows):
            return
        s = self.state[rows]
        r = (self.noise.measure * self._scale(s[:, POS])) ** 2
        innovation = xyxy_to_cxcywh(xyxy) - s[:, POS]
        denom = s[:, P_PP] + r
        k_pos = s[:, P_PP] / denom
        k_vel = s[:, P_PV] / denom
        s[:, POS] += k_pos * innovation
        s[:, VEL] += k_vel * innovation
        s[:, P_VV] -= k_vel * s[:, P_PV]
        s[:, P_PP] *= 1.0 - k_pos
        s[:, P_PV] *= 1.0 - k_pos
        self.state[rows] = s

    def distance2(self, xyxy: np.ndarray, rows: np.ndarray | None = None, coords: int = 4) -> np.ndarray:
        """Squared Mahalanobis distance of each box to the predicted box of tracks ``rows``, ``[T, D]``.

        The innovation covariance is diagonal (independent coordinates): the track's position
        variance plus the measurement noise, per coordinate; ``coords=2`` uses the centre only.
        """
        st = self.state if rows is None else self.state[rows]
        pos = st[:, POS, :coords]
        var = st[:, P_PP, :coords] + ((self.noise.measure * self._scale(st[:, POS])) ** 2)[:, :coords]
        diff = xyxy_to_cxcywh(np.asarray(xyxy, np.float64))[None, :, :coords] - pos[:, None, :]
        return np.einsum("tdk,tdk->td", diff / var[:, None, :], diff)

    def boxes(self) -> np.ndarray:
        """The current boxes, float64 ``[T, 4]`` xyxy."""
        return cxcywh_to_xyxy(self.state[:, POS])
