"""Regions: the model also looks at model-sized squares of a large frame where things move.

A model sees the whole frame shrunk to its input (a 1280 x 720 frame into 300 x 300: a person 30
pixels wide becomes 7), so small, far objects are lost. Where motion covers a small part of a large
frame, the model runs once more on a square crop around it, at least the model's input in frame
pixels (the crop is not shrunk), and its boxes join those of the whole frame.

* ``place_regions``: up to ``count`` squares on the motion detector's small mask of moving
  samples (each sample stands for ``step`` x ``step`` frame pixels). Connected motion wider or
  taller than a square is left out (an object that large is for the whole frame: a square would
  show parts of it). Each square is the one that covers the most moving samples not covered yet
  (sums over every position at once from an integral image), then centred on the moving samples
  it covers, moved inside the frame (clipped when the frame is smaller than the square). A square
  needs ``min_moving`` samples.
* ``merge_regions``: each region's detections (in crop pixels) moved back to frame pixels; boxes
  that touch a region's inner border (a side that is not the frame's) are cut-off parts of larger
  objects, and boxes mostly inside a whole-frame box of at least twice their area are parts of
  it: both are dropped (the whole frame sees those objects); then one NMS per class over the
  whole frame's and the regions' boxes.
* ``region_side``: the square's side for a model input and a frame, or 0 when the frame is too
  small for a square to show anything larger (under ``MIN_ZOOM`` x the square's side).

Everything is vectorised over boxes; the only loop is over the (few) regions placed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .detections import Detections
from .postprocess.nms import box_areas, iou_matrix, nms

__all__ = ["MERGE_IOU", "MIN_ZOOM", "merge_regions", "place_regions", "region_side"]

MIN_ZOOM = 2.0  # the frame's longer side must be at least this many region sides
MERGE_IOU = 0.5  # the whole frame's and a region's box of one object overlap at least this much
EDGE_PX = 2.0  # a box this close to a region's inner border is cut off by it
PART_OF = 0.8  # a region's box this much inside a whole-frame box ...
PART_AREA = 0.5  # ... of at least 1 / PART_AREA its area is a part of that larger object


def region_side(model_size: tuple[int, int], frame_size: tuple[int, int], scale: float = 1.0) -> int:
    """Side (frame pixels) of a region for a model input ``(w, h)``: the input's longer side x
    ``scale`` (>= 1), or 0 (no regions) when the frame's longer side is under ``MIN_ZOOM`` sides."""
    side = int(round(max(model_size) * max(1.0, float(scale))))
    return side if max(frame_size) >= MIN_ZOOM * side else 0


def _window_sums(mask: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Moving samples inside every ``kh`` x ``kw`` window of ``mask``, indexed by its top-left sample."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=sat[1:, 1:])
    return sat[kh:, kw:] - sat[:-kh, kw:] - sat[kh:, :-kw] + sat[:-kh, :-kw]


def _small_motion(mask: np.ndarray, k: int) -> np.ndarray:
    """``mask`` without its connected moving areas of ``k`` samples or more across: an object that moves
    over more than a region is large enough for the whole frame, and a region would show only parts of it."""
    import cv2

    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    large = (stats[:, cv2.CC_STAT_WIDTH] >= k) | (stats[:, cv2.CC_STAT_HEIGHT] >= k)
    large[0] = True  # the background
    return ~large[labels]


def place_regions(mask: np.ndarray, step: int, frame_size: tuple[int, int], side: int, count: int,
                  min_moving: int = 4) -> np.ndarray:
    """Up to ``count`` squares of ``side`` frame pixels over the moving samples of ``mask``.

    ``mask`` (bool ``[h, w]``): sample ``(r, c)`` stands for frame pixels ``[c*step, (c+1)*step)`` x
    ``[r*step, (r+1)*step)``. Returns int32 ``[K, 4]`` (x1, y1, x2, y2) in frame pixels, K <= count,
    the most moving first; none when nothing (or less than ``min_moving`` samples) moves.
    """
    fw, fh = frame_size
    out = np.zeros((0, 4), np.int32)
    if count <= 0 or side <= 0 or mask is None or not mask.any():
        return out
    k = max(1, int(side // step))
    left = _small_motion(mask, k)  # moving samples no region covers yet
    h, w = left.shape
    kh, kw = min(k, h), min(k, w)
    sx, sy = min(side, fw), min(side, fh)
    found = []
    for _ in range(int(count)):
        sums = _window_sums(left, kh, kw)
        best = int(np.argmax(sums))
        if sums.flat[best] < max(1, min_moving):
            break
        r, c = divmod(best, sums.shape[1])
        rows, cols = np.nonzero(left[r:r + kh, c:c + kw])
        # centre on the moving samples the window covers (their box fits: it is inside the window)
        cx = (c + (cols.min() + cols.max() + 1) / 2.0) * step
        cy = (r + (rows.min() + rows.max() + 1) / 2.0) * step
        x1 = int(np.clip(round(cx - sx / 2.0), 0, fw - sx))
        y1 = int(np.clip(round(cy - sy / 2.0), 0, fh - sy))
        found.append((x1, y1, x1 + sx, y1 + sy))
        # the samples this region covers are done
        left[y1 // step:-(-(y1 + sy) // step), x1 // step:-(-(x1 + sx) // step)] = False
    return np.array(found, np.int32).reshape(-1, 4) if found else out


def _inside(parts: np.ndarray, wholes: np.ndarray) -> np.ndarray:
    """Which ``parts`` boxes lie mostly (``PART_OF`` of their area) inside a much larger ``wholes`` box."""
    iou = iou_matrix(parts, wholes)
    a, b = box_areas(parts)[:, None], box_areas(wholes)[None, :]
    inter = iou * (a + b) / (1.0 + iou)  # from IoU = I / (A + B - I)
    return ((inter >= PART_OF * a) & (a <= PART_AREA * b)).any(axis=1)


def merge_regions(full: Detections, parts: Sequence[Detections], regions: np.ndarray,
                  frame_size: tuple[int, int], iou_threshold: float = MERGE_IOU,
                  drop_parts: bool = True) -> Detections:
    """The whole frame's detections with each region's (``parts[i]`` in pixels of the crop
    ``regions[i]``) in frame pixels: cut-off boxes dropped, duplicates removed by per-class NMS.
    ``drop_parts``: also drop region boxes mostly inside a much larger whole-frame box (of any class:
    a large false box of the whole frame hides what the regions found inside it)."""
    regions = np.asarray(regions, np.int32).reshape(-1, 4)
    counts = np.array([len(p) for p in parts], np.int64)
    if not counts.sum():
        return full
    which = np.repeat(np.arange(len(counts)), counts)  # each region box's region
    boxes = np.concatenate([p.xyxy for p in parts]).astype(np.float32)
    reg = regions[which].astype(np.float32)
    boxes += np.concatenate([reg[:, :2], reg[:, :2]], axis=1)  # crop -> frame pixels
    fw, fh = frame_size
    inner = np.stack([reg[:, 0] > 0, reg[:, 1] > 0, reg[:, 2] < fw, reg[:, 3] < fh], axis=1)
    near = np.stack([boxes[:, 0] <= reg[:, 0] + EDGE_PX, boxes[:, 1] <= reg[:, 1] + EDGE_PX,
                     boxes[:, 2] >= reg[:, 2] - EDGE_PX, boxes[:, 3] >= reg[:, 3] - EDGE_PX], axis=1)
    whole = ~(inner & near).any(axis=1)
    if drop_parts and len(full) and whole.any():  # a part of a larger object the whole frame sees (a near person's arm)
        whole &= ~_inside(boxes, full.xyxy)
    if not whole.any():
        return full
    xyxy = np.concatenate([full.xyxy, boxes[whole]])
    scores = np.concatenate([full.scores, np.concatenate([p.scores for p in parts])[whole]])
    class_ids = np.concatenate([full.class_ids, np.concatenate([p.class_ids for p in parts])[whole]])
    keep = nms(xyxy, scores, iou_threshold, class_ids=class_ids)
    return Detections(xyxy[keep], scores[keep], class_ids[keep])
