"""The SSD box coder: box encodings relative to anchors -> corner boxes (normalized).

Anchors are ``[N, 4]`` ``(y_center, x_center, h, w)`` in normalized input coordinates. Encodings
are ``(ty, tx, th, tw)`` (TF Object Detection API order) or ``(tx, ty, tw, th)`` (torchvision,
MediaPipe); sizes are ``exp(t / scale) * anchor`` or, for MediaPipe, ``t / scale * anchor``.
The arithmetic follows ``TFLite_Detection_PostProcess`` (centres and half sizes in float64,
corners in float32), so decoded boxes match the op's to the last bit.
"""

from __future__ import annotations

import numpy as np


def decode_boxes(encodings: np.ndarray, anchors: np.ndarray, scales=(10.0, 10.0, 5.0, 5.0), *,
                 box_order: str = "yxhw", size_transform: str = "exp") -> np.ndarray:
    """``[K, >=4]`` float encodings + ``[K, 4]`` anchors -> ``[K, 4]`` float32 (ymin, xmin, ymax, xmax).

    ``scales`` is (y_scale, x_scale, h_scale, w_scale).
    """
    if box_order == "yxyx":  # already decoded by the model: normalized corners
        return np.ascontiguousarray(np.asarray(encodings)[:, :4], dtype=np.float32)
    enc = np.asarray(encodings, np.float64)[:, :4]
    if box_order == "xywh":
        ty, tx, th, tw = enc[:, 1], enc[:, 0], enc[:, 3], enc[:, 2]
    elif box_order == "yxhw":
        ty, tx, th, tw = enc[:, 0], enc[:, 1], enc[:, 2], enc[:, 3]
    else:
        raise ValueError(f"box_order must be yxhw, xywh or yxyx, got {box_order!r}")
    a = np.asarray(anchors, np.float64)
    ay, ax, ah, aw = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    ys, xs, hs, ws = (float(s) for s in scales)
    yc = (ty / ys * ah + ay).astype(np.float32)
    xc = (tx / xs * aw + ax).astype(np.float32)
    if size_transform == "exp":
        half_h = (0.5 * np.exp(th / hs) * ah).astype(np.float32)
        half_w = (0.5 * np.exp(tw / ws) * aw).astype(np.float32)
    elif size_transform == "linear":
        half_h = (0.5 * (th / hs) * ah).astype(np.float32)
        half_w = (0.5 * (tw / ws) * aw).astype(np.float32)
    else:
        raise ValueError(f"size_transform must be exp or linear, got {size_transform!r}")
    out = np.empty((len(enc), 4), np.float32)
    np.subtract(yc, half_h, out=out[:, 0])
    np.subtract(xc, half_w, out=out[:, 1])
    np.add(yc, half_h, out=out[:, 2])
    np.add(xc, half_w, out=out[:, 3])
    return out


def encode_boxes(boxes: np.ndarray, anchors: np.ndarray, scales=(10.0, 10.0, 5.0, 5.0)) -> np.ndarray:
    """The inverse of ``decode_boxes`` for yxhw / exp (used by tests and tools)."""
    b = np.asarray(boxes, np.float64)
    a = np.asarray(anchors, np.float64)
    h, w = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    yc, xc = b[:, 0] + h / 2, b[:, 1] + w / 2
    ys, xs, hs, ws = (float(s) for s in scales)
    return np.stack([
        (yc - a[:, 0]) / a[:, 2] * ys,
        (xc - a[:, 1]) / a[:, 3] * xs,
        np.log(h / a[:, 2]) * hs,
        np.log(w / a[:, 3]) * ws,
    ], axis=1).astype(np.float32)
