"""The typed result of detection on one frame (the shape of supervision's ``Detections``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Boxes in pixel coordinates of the frame they belong to.

    ``xyxy`` is float32 ``[N, 4]`` (x1, y1, x2, y2), ``scores`` float32 ``[N]``,
    ``class_ids`` int32 ``[N]`` (0-based indices into the model's label list).
    ``track_ids`` int32 ``[N]`` once tracked (-1: not on a confirmed track), else None.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    track_ids: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        class_ids = np.asarray(self.class_ids, dtype=np.int32).reshape(-1)
        if not (len(xyxy) == len(scores) == len(class_ids)):
            raise ValueError(
                f"Detections arrays differ in length: {len(xyxy)}, {len(scores)}, {len(class_ids)}"
            )
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)
        if self.track_ids is not None:
            track_ids = np.asarray(self.track_ids, dtype=np.int32).reshape(-1)
            if len(track_ids) != len(scores):
                raise ValueError(f"Detections track_ids: {len(track_ids)} for {len(scores)} boxes")
            object.__setattr__(self, "track_ids", track_ids)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index) -> Detections:
        """Slice, boolean-mask or index-array selection, e.g. ``dets[dets.scores > 0.5]``."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        tids = None if self.track_ids is None else self.track_ids[index]
        return Detections(self.xyxy[index], self.scores[index], self.class_ids[index], tids)

    @property
    def area(self) -> np.ndarray:
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    def scaled(self, sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> Detections:
        """Map boxes to another frame: ``x' = x * sx + dx``, ``y' = y * sy + dy``."""
        xyxy = self.xyxy * np.array([sx, sy, sx, sy], np.float32) + np.array([dx, dy, dx, dy], np.float32)
        return Detections(xyxy, self.scores, self.class_ids, self.track_ids)

    def clipped(self, width: int, height: int) -> Detections:
        xyxy = self.xyxy.copy()
        np.clip(xyxy[:, 0::2], 0, width, out=xyxy[:, 0::2])
        np.clip(xyxy[:, 1::2], 0, height, out=xyxy[:, 1::2])
        return Detections(xyxy, self.scores, self.class_ids, self.track_ids)

    def to_records(self, labels: Sequence[str] | None = None, ndigits: int = 1) -> list[dict]:
        """JSON-ready dicts: label, class_id, score, box (pixels xyxy), and track_id once tracked."""
        boxes = np.round(self.xyxy.astype(np.float64), ndigits).tolist()
        scores = np.round(self.scores.astype(np.float64), 4).tolist()
        ids = self.class_ids.tolist()
        records = [
            {
                "label": label_for(labels, c),
                "class_id": c,
                "score": s,
                "box": b,
            }
            for b, s, c in zip(boxes, scores, ids)
        ]
        if self.track_ids is not None:
            for record, tid in zip(records, self.track_ids.tolist()):
                record["track_id"] = tid
        return records

    def to_supervision(self, labels: Sequence[str] | None = None):
        """The same boxes as a ``supervision.Detections`` (``pip install supervision``), for its
        annotators, zones and trackers; ``data["class_name"]`` holds the labels when given."""
        try:
            import supervision as sv
        except ImportError as exc:
            from .errors import EdgedetError

            raise EdgedetError("to_supervision needs the supervision package: pip install supervision") from exc
        data = {}
        if labels is not None:
            data["class_name"] = np.array([label_for(labels, c) for c in self.class_ids.tolist()])
        tracker_id = None if self.track_ids is None else self.track_ids.astype(int)
        return sv.Detections(xyxy=self.xyxy.astype(np.float32), confidence=self.scores.copy(),
                             class_id=self.class_ids.astype(int), tracker_id=tracker_id, data=data)


def label_for(labels: Sequence[str] | None, class_id: int) -> str:
    if labels is not None and 0 <= class_id < len(labels):
        return labels[class_id]
    return str(class_id)
