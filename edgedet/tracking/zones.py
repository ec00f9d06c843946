"""Zones (polygons) and lines over the frame: who is inside, who crossed, which way.

Coordinates are pixels of the frame, or fractions of its width and height (``normalized=True``),
turned into pixels for a frame size by ``in_pixels`` (``ZoneCounter`` does it once). A tracked
object is placed by one anchor point of its box: the bottom centre by default (where a person or
a car touches the ground), or ``center``.

A line counts a crossing when the segment between an object's previous and current anchor points
crosses the line's segment. Its direction: looking from ``start`` to ``end`` on screen, ``in`` is
a move from the left side to the right side, ``out`` the reverse (a line drawn left to right
counts downward movement as ``in``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..detections import Detections, label_for
from ..errors import ConfigError

__all__ = ["ANCHORS", "Crossing", "Line", "Zone", "ZoneCounter", "ZoneUpdate", "anchor_points", "points_in_polygon"]

Point = Tuple[float, float]


def _check_points(kind: str, name: str, points: np.ndarray, normalized: bool) -> None:
    if not np.all(np.isfinite(points)):
        raise ConfigError(f"{kind}.{name}: coordinates must be numbers")
    if normalized and (points.min() < 0.0 or points.max() > 1.0):
        raise ConfigError(f"{kind}.{name}: normalized coordinates must be within 0..1")


def _to_pixels(points: np.ndarray, normalized: bool, width: int, height: int) -> np.ndarray:
    return points * np.array([width, height], np.float64) if normalized else points.copy()


@dataclass(frozen=True)
class Zone:
    """A polygon, at least three ``(x, y)`` points, in pixels or (``normalized``) fractions of the frame."""

    name: str
    points: Tuple[Point, ...]
    normalized: bool = False

    def __post_init__(self) -> None:
        pts = np.asarray(self.points, np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
            raise ConfigError(f"zones.{self.name}: a zone needs at least three (x, y) points")
        _check_points("zones", self.name, pts, self.normalized)
        object.__setattr__(self, "points", tuple(map(tuple, pts.tolist())))

    def in_pixels(self, width: int, height: int) -> np.ndarray:
        """The polygon in pixels of a ``width`` x ``height`` frame, float64 ``[K, 2]``."""
        return _to_pixels(np.asarray(self.points, np.float64), self.normalized, width, height)


@dataclass(frozen=True)
class Line:
    """A segment from ``start`` to ``end`` ``(x, y)``, in pixels or (``normalized``) fractions of the frame."""

    name: str
    start: Point
    end: Point
    normalized: bool = False

    def __post_init__(self) -> None:
        pts = np.asarray([self.start, self.end], np.float64)
        if pts.shape != (2, 2):
            raise ConfigError(f"lines.{self.name}: start and end must be (x, y) points")
        _check_points("lines", self.name, pts, self.normalized)
        if np.all(pts[0] == pts[1]):
            raise ConfigError(f"lines.{self.name}: start and end are the same point")
        object.__setattr__(self, "start", tuple(pts[0].tolist()))
        object.__setattr__(self, "end", tuple(pts[1].tolist()))

    def in_pixels(self, width: int, height: int) -> np.ndarray:
        """``[[x1, y1], [x2, y2]]`` in pixels of a ``width`` x ``height`` frame (float64)."""
        return _to_pixels(np.asarray([self.start, self.end], np.float64), self.normalized, width, height)


def _bottom_center(xyxy: np.ndarray) -> np.ndarray:
    return np.stack([(xyxy[:, 0] + xyxy[:, 2]) * 0.5, xyxy[:, 3]], axis=1)


def _center(xyxy: np.ndarray) -> np.ndarray:
    return (xyxy[:, :2] + xyxy[:, 2:]) * 0.5


ANCHORS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {"bottom_center": _bottom_center, "center": _center}


def anchor_points(xyxy: np.ndarray, anchor: str = "bottom_center") -> np.ndarray:
    """One point per box, float64 ``[N, 2]``."""
    return ANCHORS[anchor](np.asarray(xyxy, np.float64).reshape(-1, 4))


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule (ray casting), all points against all edges at once: bool ``[N]``."""
    x, y = points[:, 0:1], points[:, 1:2]
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    straddles = (a[None, :, 1] > y) != (b[None, :, 1] > y)
    dy = b[:, 1] - a[:, 1]
    safe_dy = np.where(dy == 0, 1.0, dy)
    x_cross = a[None, :, 0] + (y - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / safe_dy[None, :]
    hits = straddles & (x < x_cross)
    return (np.count_nonzero(hits, axis=1) % 2) == 1


def _side(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Cross product (b - a) x (p - a): > 0 on the right of a -> b on screen (y down)."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


@dataclass(frozen=True)
class Crossing:
    line: str
    track_id: int
    class_id: int
    direction: str  # "in" | "out"


@dataclass(frozen=True)
class ZoneUpdate:
    """One frame: per track (``track_ids``) which zones hold it (``inside[i, z]``), and line crossings."""

    zone_names: Tuple[str, ...]
    track_ids: np.ndarray
    class_ids: np.ndarray
    inside: np.ndarray
    crossings: List[Crossing] = field(default_factory=list)

    def occupancy(self) -> Dict[str, np.ndarray]:
        """Zone name -> ids of the tracks inside it."""
        return {name: self.track_ids[self.inside[:, z]] for z, name in enumerate(self.zone_names)}

    def counts(self, labels: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, int]]:
        """Zone name -> {label: number of tracks inside} (labels by class id when ``labels`` is None)."""
        out: Dict[str, Dict[str, int]] = {}
        for z, name in enumerate(self.zone_names):
            classes, n = np.unique(self.class_ids[self.inside[:, z]], return_counts=True)
            out[name] = {label_for(labels, int(c)): int(k) for c, k in zip(classes, n)}
        return out


class ZoneCounter:
    """Occupancy of ``zones`` and crossings of ``lines`` for tracked boxes on a ``frame_size`` frame.

    ``update(tracked, ended=...)`` takes boxes with track ids (``ByteTracker.update``'s result, or
    ``ByteTracker.boxes()`` to count briefly unseen objects as still there); ``ended`` ids are
    forgotten. ``line_in`` / ``line_out`` hold the running counts per line (order of ``lines``).
    """

    def __init__(self, zones: Sequence[Zone] = (), lines: Sequence[Line] = (), frame_size: Tuple[int, int] = (0, 0),
                 anchor: str = "bottom_center") -> None:
        if anchor not in ANCHORS:
            raise ConfigError(f"zones.anchor: expected one of {', '.join(ANCHORS)}, got {anchor!r}")
        names = [z.name for z in zones] + [ln.name for ln in lines]
        if len(set(names)) != len(names):
            raise ConfigError("zones: zone and line names must be unique")
        width, height = frame_size
        if (width <= 0 or height <= 0) and any(z.normalized for z in (*zones, *lines)):
            raise ConfigError("zones: normalized coordinates need the frame size")
        self.zones = tuple(zones)
        self.lines = tuple(lines)
        self.anchor = anchor
        self.polygons = [z.in_pixels(width, height) for z in zones]
        self.segments = np.array([ln.in_pixels(width, height) for ln in lines], np.float64).reshape(-1, 2, 2)
        self.line_in = np.zeros(len(lines), np.int64)
        self.line_out = np.zeros(len(lines), np.int64)
        self._prev_ids = np.zeros(0, np.int64)  # sorted
        self._prev_pts = np.zeros((0, 2), np.float64)

    @property
    def zone_names(self) -> Tuple[str, ...]:
        return tuple(z.name for z in self.zones)

    def line_counts(self) -> Dict[str, Dict[str, int]]:
        return {ln.name: {"in": int(i), "out": int(o)} for ln, i, o in zip(self.lines, self.line_in, self.line_out)}

    def update(self, tracked: Detections, ended: Sequence[int] = ()) -> ZoneUpdate:
        ids = np.full(len(tracked), -1, np.int64) if tracked.track_ids is None else tracked.track_ids.astype(np.int64)
        on_track = ids >= 0
        ids, class_ids = ids[on_track], tracked.class_ids[on_track]
        pts = anchor_points(tracked.xyxy[on_track], self.anchor)
        inside = np.zeros((len(ids), len(self.polygons)), bool)
        for z, polygon in enumerate(self.polygons):
            inside[:, z] = points_in_polygon(pts, polygon)
        crossings = self._cross(ids, class_ids, pts) if len(self.lines) else []
        self._remember(ids, pts, np.asarray(ended, np.int64))
        return ZoneUpdate(self.zone_names, ids, class_ids, inside, crossings)

    def _previous(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of ids seen before, their previous points)."""
        if not len(self._prev_ids):
            return np.zeros(len(ids), bool), np.zeros((len(ids), 2))
        pos = np.minimum(np.searchsorted(self._prev_ids, ids), len(self._prev_ids) - 1)
        known = self._prev_ids[pos] == ids
        return known, self._prev_pts[pos]

    def _cross(self, ids: np.ndarray, class_ids: np.ndarray, pts: np.ndarray) -> List[Crossing]:
        known, prev = self._previous(ids)
        if not known.any():
            return []
        p, q = prev[known][:, None, :], pts[known][:, None, :]  # [M, 1, 2]
        a, b = self.segments[None, :, 0, :], self.segments[None, :, 1, :]  # [1, L, 2]
        side_p, side_q = _side(a, b, p) >= 0, _side(a, b, q) >= 0
        s_a, s_b = _side(p, q, a), _side(p, q, b)
        ends_apart = (s_a * s_b) <= 0  # the line's ends on both sides of the move (or on it)
        crossed = (side_p != side_q) & ends_apart
        if not crossed.any():
            return []
        going_in = crossed & side_q
        going_out = crossed & ~side_q
        self.line_in += np.count_nonzero(going_in, axis=0)
        self.line_out += np.count_nonzero(going_out, axis=0)
        m_idx, l_idx = np.nonzero(crossed)
        k_ids, k_cls = ids[known], class_ids[known]
        return [Crossing(self.lines[li].name, int(k_ids[mi]), int(k_cls[mi]), "in" if going_in[mi, li] else "out")
                for mi, li in zip(m_idx.tolist(), l_idx.tolist())]

    def _remember(self, ids: np.ndarray, pts: np.ndarray, ended: np.ndarray) -> None:
        """Keep each id's latest point; forget ended ids."""
        old = ~np.isin(self._prev_ids, ids) & ~np.isin(self._prev_ids, ended)
        all_ids = np.concatenate([self._prev_ids[old], ids])
        all_pts = np.concatenate([self._prev_pts[old], pts])
        order = np.argsort(all_ids, kind="stable")
        self._prev_ids, self._prev_pts = all_ids[order], all_pts[order]
