"""Greedy non-maximum suppression, vectorised: one numpy IoU row per kept box, no per-box loops.

Boxes are ``[K, 4]`` corners in any consistent order (``(y1, x1, y2, x2)`` or ``(x1, y1, x2, y2)``).
IoU follows ``TFLite_Detection_PostProcess``: float32, IoU 0 when either box has no area, a box is
suppressed when IoU > threshold. Class-aware NMS for many classes at once shifts each class's boxes
by its own offset so boxes of different classes never overlap (torchvision's ``batched_nms``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray, areas: Optional[np.ndarray] = None) -> np.ndarray:
    """IoU of one box ``[4]`` with ``[K, 4]`` boxes (float32)."""
    if areas is None:
        areas = box_areas(boxes)
    area = (box[2] - box[0]) * (box[3] - box[1])
    inter_h = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    inter_w = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    np.maximum(inter_h, 0, out=inter_h)
    np.maximum(inter_w, 0, out=inter_w)
    inter = inter_h * inter_w
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area + areas - inter)
    if area <= 0:
        return np.zeros(len(boxes), np.float32)
    iou[areas <= 0] = 0
    return iou


def box_areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` (float32)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    area_a, area_b = box_areas(a), box_areas(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a[:, None] + area_b[None, :] - inter)
    iou[(area_a[:, None] <= 0) | (area_b[None, :] <= 0)] = 0
    return iou


def nms_sorted(boxes: np.ndarray, iou_threshold: float, max_output: Optional[int] = None) -> np.ndarray:
    """Greedy NMS of boxes already sorted by decreasing score; returns kept indices (in order).

    Stops once ``max_output`` boxes are kept. Each round computes one IoU row against the boxes
    after the kept one, so the work is ``O(kept * K)`` instead of a full ``K x K`` matrix.
    """
    boxes = np.asarray(boxes)
    if boxes.dtype != np.float64:
        boxes = boxes.astype(np.float32, copy=False)
    k = len(boxes)
    if k == 0:
        return np.zeros(0, np.intp)
    limit = k if max_output is None else min(int(max_output), k)
    areas = box_areas(boxes)
    active = np.ones(k, bool)
    keep = np.empty(limit, np.intp)
    n = 0
    i = 0
    thr = boxes.dtype.type(iou_threshold)
    while n < limit:
        keep[n] = i
        n += 1
        if n == limit or i + 1 >= k:
            break
        rest = slice(i + 1, k)
        iou = iou_one_to_many(boxes[i], boxes[rest], areas[rest])
        active[rest] &= ~(iou > thr)
        nxt = np.argmax(active[rest])
        if not active[i + 1 + nxt]:
            break
        i = i + 1 + int(nxt)
    return keep[:n].copy()


def sort_by_score(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score; ties keep their original order (stable, like the TFLite op)."""
    return np.argsort(-np.asarray(scores, np.float32), kind="stable")


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_output: Optional[int] = None,
        class_ids: Optional[np.ndarray] = None) -> np.ndarray:
    """Greedy NMS of unsorted boxes; with ``class_ids`` per class (batched). Returns indices by score."""
    order = sort_by_score(scores)
    b = np.asarray(boxes, np.float32)[order]
    if class_ids is not None and len(b):
        b = b.astype(np.float64)
        b = offset_by_class(b, np.asarray(class_ids)[order])
    return order[nms_sorted(b, iou_threshold, max_output)]


def offset_by_class(boxes: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """Shift each class's boxes by ``class * (span + 1)`` so different classes never overlap (float64)."""
    lo = float(boxes.min())
    span = float(boxes.max()) - lo + 1.0
    shift = class_ids.astype(np.float64) * span - lo
    return boxes.astype(np.float64) + shift[:, None]
