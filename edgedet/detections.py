"""The typed result of detection on one frame (the shape of supervision's ``Detections``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Boxes in pixel coordinates of the frame they belong to.

    ``xyxy`` is float32 ``[N, 4]`` (x1, y1, x2, y2), ``scores`` float32 ``[N]``,
    ``class_ids`` int32 ``[N]`` (0-based indices into the model's label list).
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

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

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index) -> Detections:
        """Slice, boolean-mask or index-array selection, e.g. ``dets[dets.scores > 0.5]``."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(self.xyxy[index], self.scores[index], self.class_ids[index])

    @property
    def area(self) -> np.ndarray:
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    def scaled(self, sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> Detections:
        """Map boxes to another frame: ``x' = x * sx + dx``, ``y' = y * sy + dy``."""
        xyxy = self.xyxy * np.array([sx, sy, sx, sy], np.float32) + np.array([dx, dy, dx, dy], np.float32)
        return Detections(xyxy, self.scores, self.class_ids)

    def clipped(self, width: int, height: int) -> Detections:
        xyxy = self.xyxy.copy()
        np.clip(xyxy[:, 0::2], 0, width, out=xyxy[:, 0::2])
        np.clip(xyxy[:, 1::2], 0, height, out=xyxy[:, 1::2])
        return Detections(xyxy, self.scores, self.class_ids)

    def to_records(self, labels: Sequence[str] | None = None, ndigits: int = 1) -> list[dict]:
        """JSON-ready dicts: label, class_id, score, box (pixels xyxy)."""
        boxes = np.round(self.xyxy.astype(np.float64), ndigits).tolist()
        scores = np.round(self.scores.astype(np.float64), 4).tolist()
        ids = self.class_ids.tolist()
        return [
            {
                "label": label_for(labels, c),
                "class_id": c,
                "score": s,
                "box": b,
            }
            for b, s, c in zip(boxes, scores, ids)
        ]


def label_for(labels: Sequence[str] | None, class_id: int) -> str:
    if labels is not None and 0 <= class_id < len(labels):
        return labels[class_id]
    return str(class_id)
