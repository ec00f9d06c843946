"""Greedy non-maximum suppression, vectorised: one numpy IoU row per kept box, no per-box loops.

Boxes are ``[K, 4]`` corners in any consistent order (``(y1, x1, y2, x2)`` or ``(x1, y1, x2, y2)``).
IoU follows ``TFLite_Detection_PostProcess``: float32, IoU 0 when either box has no area, a box is
suppressed when IoU > threshold. Class-aware NMS for many classes at once shifts each class's boxes
by its own offset so boxes of different classes never overlap (torchvision's ``batched_nms``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# NMS works from one pairwise IoU matrix up to MATRIX_SMALL boxes, or up to MATRIX_LIMIT boxes when it
# may keep half of them; otherwise one IoU row per kept box (measured crossover on x86 and numpy 2)
MATRIX_SMALL = 128
MATRIX_LIMIT = 256


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray, areas: Optional[np.ndarray] = None) -> np.ndarray:
    """IoU of one box ``[4]`` with ``[K, 4]`` boxes (in the boxes' float type)."""
    if areas is None:
        areas = box_areas(boxes)
    area = (box[2] - box[0]) * (box[3] - box[1])
    out = np.zeros(len(boxes), boxes.dtype)
    if area <= 0:
        return out
    inter = np.minimum(box[2], boxes[:, 2])
    inter -= np.maximum(box[0], boxes[:, 0])
    np.maximum(inter, 0, out=inter)
    inter_w = np.minimum(box[3], boxes[:, 3])
    inter_w -= np.maximum(box[1], boxes[:, 1])
    np.maximum(inter_w, 0, out=inter_w)
    inter *= inter_w
    union = area + areas
    union -= inter
    np.divide(inter, union, out=out, where=areas > 0)
    return out


def box_areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` (float32, or float64 for float64 boxes)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != np.float64 or b.dtype != np.float64:
        a = a.astype(np.float32, copy=False)
        b = b.astype(np.float32, copy=False)
    area_a, area_b = box_areas(a), box_areas(b)
    inter = np.minimum(a[:, None, 2], b[None, :, 2])
    inter -= np.maximum(a[:, None, 0], b[None, :, 0])
    np.maximum(inter, 0, out=inter)
    w = np.minimum(a[:, None, 3], b[None, :, 3])
    w -= np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(w, 0, out=w)
    inter *= w
    union = area_a[:, None] + area_b[None, :]
    union -= inter
    iou = np.zeros_like(inter)
    np.divide(inter, union, out=iou, where=(area_a[:, None] > 0) & (area_b[None, :] > 0))
    return iou


def nms_sorted(boxes: np.ndarray, iou_threshold: float, max_output: Optional[int] = None) -> np.ndarray:
    """Greedy NMS of boxes already sorted by decreasing score; returns kept indices (in order).

    Stops once ``max_output`` boxes are kept. For few boxes one ``K x K`` overlap matrix is computed
    up front and each round reads a row of it; otherwise each round computes one IoU row against the
    boxes after the kept one (``O(kept * K)`` work).
    """
    boxes = np.asarray(boxes)
    if boxes.dtype != np.float64:
        boxes = boxes.astype(np.float32, copy=False)
    k = len(boxes)
    if k == 0:
        return np.zeros(0, np.intp)
    limit = k if max_output is None else min(int(max_output), k)
    thr = boxes.dtype.type(iou_threshold)
    active = np.ones(k, bool)
    keep = np.empty(limit, np.intp)
    n = 0
    i = 0
    if k <= MATRIX_SMALL or (k <= MATRIX_LIMIT and k <= 2 * limit):
        over = iou_matrix(boxes, boxes) > thr
        while True:
            keep[n] = i
            n += 1
            if n == limit or i + 1 >= k:
                break
            rest = active[i + 1:]
            rest &= ~over[i, i + 1:]
            nxt = int(rest.argmax())
            if not rest[nxt]:
                break
            i = i + 1 + nxt
        return keep[:n].copy()
    # one IoU row per round, on contiguous coordinate columns
    y1, x1, y2, x2 = (np.ascontiguousarray(boxes[:, j]) for j in range(4))
    areas = (y2 - y1) * (x2 - x1)
    valid = areas > 0
    all_valid = bool(valid.all())
    while True:
        keep[n] = i
        n += 1
        if n == limit or i + 1 >= k:
            break
        sl = slice(i + 1, k)
        rest = active[sl]
        if valid[i]:
            h = np.minimum(y2[sl], y2[i])
            h -= np.maximum(y1[sl], y1[i])
            np.maximum(h, 0, out=h)
            w = np.minimum(x2[sl], x2[i])
            w -= np.maximum(x1[sl], x1[i])
            np.maximum(w, 0, out=w)
            h *= w  # intersection
            union = areas[sl] + areas[i]
            union -= h
            if all_valid:
                h /= union
                over = h > thr
            else:
                np.divide(h, union, out=h, where=valid[sl])
                over = (h > thr) & valid[sl]
            rest &= ~over
        nxt = int(rest.argmax())
        if not rest[nxt]:
            break
        i = i + 1 + nxt
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
