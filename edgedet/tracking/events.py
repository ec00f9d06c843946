"""Object events: what happened to each tracked object, as ``new`` -> ``update``... -> ``end``.

``ObjectEvents.update`` takes the tracker's output for a frame (confirmed tracks only count, so
detector flicker never becomes an object) and returns the events of that frame:

* ``new``: a track was confirmed (``first_seen`` is when it was first detected);
* ``update``: its top score rose by ``score_gain`` or more (a better snapshot), it entered a zone,
  or ``update_interval_s`` passed since its last event while it is seen (0: never);
* ``end``: the tracker ended it (unseen for its ``max_unseen_s``), or the stream ended (``finish``).

Each event carries the label, first and last seen, duration, latest and top score, the latest box,
the zones entered (in order), the zones it is in now, and the best snapshot: the image at its
highest score, a copy of the crop around the box (``snapshot="crop"``), of the whole frame
(``"frame"``) or nothing (``"none"``), taken only when the top score rises; JPEG encoding happens
only when someone asks for ``Snapshot.jpeg()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..detections import Detections, label_for
from ..errors import ConfigError
from .zones import ZoneUpdate

__all__ = ["EventSettings", "ObjectEvent", "ObjectEvents", "SNAPSHOTS", "Snapshot"]

Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class Snapshot:
    """The picture of an object at its top score; ``box`` is the object in ``image`` pixels."""

    image: np.ndarray
    box: Box
    score: float
    t: float
    _jpeg: Dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)

    def jpeg(self, quality: int = 85) -> bytes:
        """The image as JPEG (encoded once per quality, on first use)."""
        if quality not in self._jpeg:
            import cv2

            ok, buf = cv2.imencode(".jpg", self.image, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
            if not ok:
                raise ValueError("JPEG encoding failed")
            self._jpeg[quality] = buf.tobytes()
        return self._jpeg[quality]


def _crop(frame: np.ndarray, box: np.ndarray, margin: float) -> Tuple[np.ndarray, Box]:
    h, w = frame.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    x1 = int(max(0, np.floor(box[0] - margin * bw)))
    y1 = int(max(0, np.floor(box[1] - margin * bh)))
    x2 = int(min(w, np.ceil(box[2] + margin * bw)))
    y2 = int(min(h, np.ceil(box[3] + margin * bh)))
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    inner = (float(box[0] - x1), float(box[1] - y1), float(box[2] - x1), float(box[3] - y1))
    return frame[y1:y2, x1:x2].copy(), inner


def _snap_frame(frame: np.ndarray, box: np.ndarray, margin: float) -> Tuple[np.ndarray, Box]:
    return frame.copy(), tuple(float(v) for v in box)


SNAPSHOTS: Dict[str, Optional[Callable[[np.ndarray, np.ndarray, float], Tuple[np.ndarray, Box]]]] = {
    "crop": _crop,
    "frame": _snap_frame,
    "none": None,
}


@dataclass(frozen=True)
class EventSettings:
    snapshot: str = "crop"
    crop_margin: float = 0.25
    score_gain: float = 0.05
    update_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if self.snapshot not in SNAPSHOTS:
            raise ConfigError(f"events.snapshot: expected one of {', '.join(SNAPSHOTS)}, got {self.snapshot!r}")
        if self.crop_margin < 0:
            raise ConfigError(f"events.crop_margin: must be >= 0, got {self.crop_margin}")
        if self.score_gain < 0:
            raise ConfigError(f"events.score_gain: must be >= 0, got {self.score_gain}")
        if self.update_interval_s < 0:
            raise ConfigError(f"events.update_interval_s: must be >= 0, got {self.update_interval_s}")


@dataclass(frozen=True)
class ObjectEvent:
    kind: str  # "new" | "update" | "end"
    t: float
    track_id: int
    label: str
    class_id: int
    first_seen: float
    last_seen: float
    score: float
    top_score: float
    box: Box
    zones: Tuple[str, ...]
    current_zones: Tuple[str, ...]
    snapshot: Optional[Snapshot] = None

    @property
    def duration(self) -> float:
        return self.last_seen - self.first_seen

    def to_record(self, ndigits: int = 1) -> dict:
        """JSON-ready (no image: ``has_snapshot`` says whether one is there)."""
        return {
            "type": self.kind, "t": round(self.t, 3), "id": self.track_id, "label": self.label,
            "class_id": self.class_id, "first_seen": round(self.first_seen, 3), "last_seen": round(self.last_seen, 3),
            "duration": round(self.duration, 3), "score": round(self.score, 4), "top_score": round(self.top_score, 4),
            "box": [round(v, ndigits) for v in self.box], "zones": list(self.zones),
            "current_zones": list(self.current_zones), "has_snapshot": self.snapshot is not None,
        }


class _Objects:
    """The live objects as parallel arrays, sorted by track id."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.class_ids = np.zeros(0, np.int32)
        self.first_seen = np.zeros(0)
        self.last_seen = np.zeros(0)
        self.score = np.zeros(0, np.float32)
        self.top_score = np.zeros(0, np.float32)
        self.reported_top = np.zeros(0, np.float32)
        self.last_event = np.zeros(0)
        self.box = np.zeros((0, 4), np.float32)
        self.entered = np.zeros((0, 0))  # [M, Z] time each zone was first entered (NaN: never)
        self.now_in = np.zeros((0, 0), bool)

    _FIELDS = ("ids", "class_ids", "first_seen", "last_seen", "score", "top_score", "reported_top", "last_event",
               "box", "entered", "now_in")

    def take(self, rows: np.ndarray) -> None:
        for name in self._FIELDS:
            setattr(self, name, getattr(self, name)[rows])

    def append(self, other: _Objects) -> None:
        for name in self._FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (-1 if not live)."""
        if not len(self.ids):
            return np.full(len(ids), -1, np.intp)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, pos, -1)


class ObjectEvents:
    """Object events from tracked detections; ``labels`` name the class ids."""

    def __init__(self, labels: Optional[Sequence[str]] = None, settings: EventSettings = EventSettings()) -> None:
        self.labels = labels
        self.settings = settings
        self._snap = SNAPSHOTS[settings.snapshot]
        self._zone_names: Tuple[str, ...] = ()
        self._objects = _Objects()
        self._snapshots: Dict[int, Snapshot] = {}

    def __len__(self) -> int:
        return len(self._objects.ids)

    def update(self, tracked: Detections, t: float, *, ended: Sequence[int] = (),
               first_seen: Optional[np.ndarray] = None, frame: Optional[np.ndarray] = None,
               zones: Optional[ZoneUpdate] = None) -> List[ObjectEvent]:
        """Events of the frame at ``t``.

        ``tracked``: the tracker's output (``track_ids`` < 0 are ignored); ``ended``: the ids the
        tracker ended; ``first_seen``: per detection, when its track was first detected (default
        ``t``); ``frame``: the picture the boxes are in (for snapshots); ``zones``: where each
        track is (``ZoneCounter.update``).
        """
        t = float(t)
        if tracked.track_ids is None:
            raise ValueError("ObjectEvents.update needs tracked detections (track_ids)")
        on = tracked.track_ids >= 0
        dets = tracked[on]
        born = np.full(len(dets), t) if first_seen is None else np.asarray(first_seen, np.float64)[on]
        if zones is not None and zones.zone_names != self._zone_names:
            self._set_zones(zones.zone_names)
        new_ids = self._add_new(dets, np.where(np.isnan(born), t, born))
        rows = self._objects.rows_of(dets.track_ids.astype(np.int64))
        gained = self._see(rows, dets, t, frame)
        entered = self._place(zones, t)
        events = self._emit(new_ids, rows, gained, entered, t)
        events += self._end(np.asarray(ended, np.int64), t)
        return events

    def finish(self, t: float) -> List[ObjectEvent]:
        """``end`` for every live object (the stream stopped)."""
        return self._end(self._objects.ids.copy(), float(t))

    # -- steps of update ----------------------------------------------------------------------------
    def _set_zones(self, names: Tuple[str, ...]) -> None:
        o = self._objects
        self._zone_names = names
        o.entered = np.full((len(o.ids), len(names)), np.nan)
        o.now_in = np.zeros((len(o.ids), len(names)), bool)

    def _add_new(self, dets: Detections, born: np.ndarray) -> np.ndarray:
        """Start records for ids not seen before; their track ids (sorted)."""
        o = self._objects
        ids = dets.track_ids.astype(np.int64)
        new = o.rows_of(ids) < 0
        if not new.any():
            return np.zeros(0, np.int64)
        n, z = int(new.sum()), len(self._zone_names)
        add = _Objects()
        add.ids, add.class_ids = ids[new], dets.class_ids[new]
        add.first_seen = born[new]
        add.last_seen, add.last_event = np.zeros(n), np.zeros(n)
        add.score, add.top_score, add.reported_top = (np.zeros(n, np.float32) for _ in range(3))
        add.box = dets.xyxy[new]
        add.entered, add.now_in = np.full((n, z), np.nan), np.zeros((n, z), bool)
        o.append(add)
        o.take(np.argsort(o.ids, kind="stable"))
        return add.ids

    def _see(self, rows: np.ndarray, dets: Detections, t: float, frame: Optional[np.ndarray]) -> np.ndarray:
        """Fold this frame's boxes in; the rows whose top score rose (new snapshot taken)."""
        o = self._objects
        o.last_seen[rows] = t
        o.score[rows] = dets.scores
        o.box[rows] = dets.xyxy
        better = dets.scores > o.top_score[rows]
        o.top_score[rows] = np.maximum(o.top_score[rows], dets.scores)
        if self._snap is not None and frame is not None:
            for i in np.flatnonzero(better).tolist():
                image, box = self._snap(frame, dets.xyxy[i], self.settings.crop_margin)
                self._snapshots[int(o.ids[rows[i]])] = Snapshot(image, box, float(dets.scores[i]), t)
        return rows[better]

    def _place(self, zones: Optional[ZoneUpdate], t: float) -> np.ndarray:
        """Update which zones each object is in; rows that entered a zone for the first time."""
        o = self._objects
        if zones is None or not len(self._zone_names):
            return np.zeros(0, np.intp)
        rows = o.rows_of(zones.track_ids.astype(np.int64))
        known = rows >= 0
        rows, inside = rows[known], zones.inside[known]
        o.now_in[rows] = inside
        first = inside & np.isnan(o.entered[rows])
        o.entered[rows] = np.where(first, t, o.entered[rows])
        return rows[first.any(axis=1)]

    def _emit(self, new_ids: np.ndarray, seen: np.ndarray, gained: np.ndarray, entered: np.ndarray,
              t: float) -> List[ObjectEvent]:
        o = self._objects
        s = self.settings
        is_new = np.isin(o.ids, new_ids)
        want = np.zeros(len(o.ids), bool)
        want[gained[o.top_score[gained] - o.reported_top[gained] >= s.score_gain]] = True
        want[entered] = True
        if s.update_interval_s > 0:
            want[seen[t - o.last_event[seen] >= s.update_interval_s]] = True
        events = [self._event("new", r, t) for r in np.flatnonzero(is_new).tolist()]
        events += [self._event("update", r, t) for r in np.flatnonzero(want & ~is_new).tolist()]
        touched = is_new | want
        o.reported_top[touched] = o.top_score[touched]
        o.last_event[touched] = t
        return events

    def _end(self, ids: np.ndarray, t: float) -> List[ObjectEvent]:
        o = self._objects
        rows = o.rows_of(ids)
        rows = rows[rows >= 0]
        if not len(rows):
            return []
        events = [self._event("end", r, t) for r in rows.tolist()]
        for e in events:
            self._snapshots.pop(e.track_id, None)
        keep = np.ones(len(o.ids), bool)
        keep[rows] = False
        o.take(keep)
        return events

    def _event(self, kind: str, row: int, t: float) -> ObjectEvent:
        o = self._objects
        tid, cid = int(o.ids[row]), int(o.class_ids[row])
        order = np.argsort(o.entered[row]) if len(self._zone_names) else []
        zones = tuple(self._zone_names[z] for z in order if not np.isnan(o.entered[row, z]))
        now = tuple(name for name, inside in zip(self._zone_names, o.now_in[row]) if inside)
        return ObjectEvent(kind, t, tid, label_for(self.labels, cid), cid, float(o.first_seen[row]),
                           float(o.last_seen[row]), float(o.score[row]), float(o.top_score[row]),
                           tuple(float(v) for v in o.box[row]), zones, now, self._snapshots.get(tid))
