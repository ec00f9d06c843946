"""Our SSD decode + NMS for raw outputs (box encodings + class scores), vectorised numpy.

Steps: score threshold first (on the raw, possibly quantized, tensor: no dequantizing of the whole
tensor), then top class per anchor on the candidates only, decode only the candidates' boxes,
optional top-k before NMS, greedy NMS, ``max_detections``.

Modes:

* ``fast`` (the ``TFLite_Detection_PostProcess`` default, ``use_regular_nms: false``, and any
  class-agnostic NMS): the best class of each anchor (background skipped), then ONE class-agnostic
  NMS over all anchors. On a stripped op model this reproduces the op.
* ``regular`` (class-aware): every (anchor, class) pair over the threshold is a candidate; one
  batched NMS where each class is shifted to its own region, at most ``detections_per_class``
  per class, then the best ``max_detections`` overall.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .box_coder import decode_boxes
from .nms import iou_matrix, nms_sorted, offset_by_class


@dataclass(frozen=True)
class DecodeSettings:
    score_threshold: float = 0.5
    iou_threshold: float = 0.6
    max_detections: int = 100
    mode: str = "fast"  # fast | regular
    max_classes_per_detection: int = 1
    detections_per_class: int = 100
    pre_nms_top_k: Optional[int] = None  # keep at most this many best candidates before NMS
    background: int = 0
    scales: tuple = (10.0, 10.0, 5.0, 5.0)  # y, x, h, w
    box_order: str = "yxhw"
    size_transform: str = "exp"
    score_activation: str = "none"  # none | sigmoid | softmax


def _dequant(q: np.ndarray, quant: tuple[float, int]) -> np.ndarray:
    """``scale * (q - zero_point)`` in float32, as the TFLite op computes it."""
    scale, zp = quant
    if not scale:
        return q.astype(np.float32, copy=False)
    return (q.astype(np.float32) - np.float32(zp)) * np.float32(scale)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return (1.0 / (1.0 + np.exp(-np.clip(x, -88.0, 88.0)))).astype(np.float32)


class SSDDecoder:
    """Decode raw SSD outputs of one model; built once, called per frame."""

    def __init__(self, anchors: np.ndarray, settings: DecodeSettings, *,
                 boxes_quant: tuple[float, int] = (0.0, 0), scores_quant: tuple[float, int] = (0.0, 0),
                 scores_dtype=np.float32) -> None:
        self.anchors = np.ascontiguousarray(anchors, np.float32)
        self.s = settings
        self.boxes_quant = boxes_quant
        self.scores_quant = scores_quant
        self.scores_dtype = np.dtype(scores_dtype)
        self._raw_threshold = self._threshold_in_raw_domain(settings.score_threshold)

    # a threshold t on final scores as a threshold on the raw tensor: score(x) >= t  <=>  x >= raw
    def _threshold_in_raw_domain(self, t: float):
        act = self.s.score_activation
        if act == "softmax":
            return None  # not elementwise: scores are computed for every anchor
        if self.scores_dtype.kind in "iu" and self.scores_quant[0]:
            info = np.iinfo(self.scores_dtype)
            q = np.arange(info.min, info.max + 1)
            vals = self._activate(_dequant(q, self.scores_quant))
            ok = np.flatnonzero(vals >= np.float32(t))
            if not len(ok):
                return self.scores_dtype.type(info.max), True
            return self.scores_dtype.type(ok[0] + info.min), False
        if act == "sigmoid":
            if t <= 0:
                return -np.inf, False
            if t >= 1:
                return np.inf, False
            return np.float32(np.log(t / (1.0 - t))), False
        return np.float32(t), False

    def _activate(self, x: np.ndarray) -> np.ndarray:
        if self.s.score_activation == "sigmoid":
            return _sigmoid(x)
        return x.astype(np.float32, copy=False)

    def class_scores(self, raw_scores: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Final float32 scores ``[K, num_classes]`` of the given anchor rows (all when None)."""
        x = raw_scores if rows is None else raw_scores[rows]
        if self.s.score_activation == "softmax":
            x = _dequant(x, self.scores_quant)
            x = np.exp(x - x.max(axis=1, keepdims=True))
            x /= x.sum(axis=1, keepdims=True)
            return x[:, self.s.background:].astype(np.float32)
        x = x[:, self.s.background:]
        return self._activate(_dequant(x, self.scores_quant))

    def __call__(self, box_encodings: np.ndarray, scores: np.ndarray):
        """``[N, K>=4]`` encodings + ``[N, C]`` scores -> (boxes yxyx normalized ``[M,4]``, scores, class ids)."""
        enc = box_encodings.reshape(-1, box_encodings.shape[-1])
        sc = scores.reshape(-1, scores.shape[-1])
        if self.s.mode == "regular":
            return self._regular(enc, sc)
        return self._fast(enc, sc)

    def _candidates_fast(self, sc: np.ndarray):
        """Anchors whose best class reaches the threshold: (rows, their best final score)."""
        s = self.s
        thr = self._raw_threshold
        if thr is None:  # softmax: compute everything
            full = self.class_scores(sc)
            best = full.max(axis=1)
            rows = np.flatnonzero(best >= np.float32(s.score_threshold))
            return rows, best[rows]
        raw_thr, impossible = thr
        if impossible:
            return np.zeros(0, np.intp), np.zeros(0, np.float32)
        n, c = sc.shape
        bg = s.background
        if self._sparse_worthwhile(raw_thr, sc.dtype):
            # usually few hits: one compare over the contiguous tensor, then only the hit rows
            mask = sc.reshape(-1) >= raw_thr
            if bg:
                mask.reshape(n, c)[:, :bg] = False
            if np.count_nonzero(mask) * 4 <= n:
                hits = np.flatnonzero(mask)
                rows = np.unique(hits // c)
                row_max = sc[rows, bg:].max(axis=1)
                return rows, self._activate(_dequant(row_max, self.scores_quant))
        row_max = _row_max(sc[:, bg:] if bg else sc)
        rows = np.flatnonzero(row_max >= raw_thr)
        return rows, self._activate(_dequant(row_max[rows], self.scores_quant))

    def _sparse_worthwhile(self, raw_thr, dtype) -> bool:
        """False when every score passes anyway (threshold at the bottom of the range)."""
        if np.dtype(dtype).kind in "iu":
            return bool(raw_thr > np.iinfo(dtype).min)
        if not np.isfinite(raw_thr):
            return False
        return not (self.s.score_activation == "none" and raw_thr <= 0)

    def _fast(self, enc: np.ndarray, sc: np.ndarray):
        s = self.s
        rows, best = self._candidates_fast(sc)
        if len(rows) == 0:
            return _empty()
        keep = best >= np.float32(s.score_threshold)  # exact check in the final domain
        if not keep.all():
            rows, best = rows[keep], best[keep]
        if s.pre_nms_top_k is not None and len(rows) > s.pre_nms_top_k:
            top = _top_prefix(best, s.pre_nms_top_k)
            rows, best = rows[top], best[top]
        order, boxes = self._greedy_tiers(enc, rows, best)
        rows, best, boxes = rows[order], best[order], boxes
        cls_scores = self.class_scores(sc, rows)
        if s.max_classes_per_detection <= 1:
            cls = cls_scores.argmax(axis=1).astype(np.int32)
            return boxes, best, cls
        k = min(s.max_classes_per_detection, cls_scores.shape[1])
        top = np.argsort(-cls_scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(cls_scores, top, axis=1)
        return np.repeat(boxes, k, axis=0), top_scores.reshape(-1), top.reshape(-1).astype(np.int32)

    def _greedy_tiers(self, enc: np.ndarray, rows: np.ndarray, best: np.ndarray, cls: Optional[np.ndarray] = None):
        """Greedy NMS over candidates in decreasing score (ties in candidate order), decoding boxes
        only for the best tier of candidates at a time: almost always the first tier is enough.
        With ``cls`` a box only suppresses boxes of its own class.

        Returns (indices of the kept candidates in order, their boxes)."""
        s = self.s
        max_det = int(s.max_detections)
        chunk = max(64, 8 * max_det)
        avail = np.arange(len(rows))
        kept_idx: list[np.ndarray] = []
        kept_boxes: list[np.ndarray] = []
        n_kept = 0
        thr = np.float32(s.iou_threshold)
        while n_kept < max_det and len(avail):
            if len(avail) > chunk:
                tier_mask = _top_mask(best[avail], chunk)
                tier, avail = avail[tier_mask], avail[~tier_mask]
            else:
                tier, avail = avail, avail[:0]
            tier = tier[np.argsort(-best[tier], kind="stable")]
            boxes = self._decode(enc, rows[tier])
            if n_kept:
                prev = np.concatenate(kept_boxes)
                hit = iou_matrix(prev, boxes) > thr
                if cls is not None:
                    hit &= cls[np.concatenate(kept_idx)][:, None] == cls[tier][None, :]
                alive = ~hit.any(axis=0)
                tier, boxes = tier[alive], boxes[alive]
            if len(tier):
                nms_boxes = boxes if cls is None else offset_by_class(boxes, cls[tier])
                k = nms_sorted(nms_boxes, s.iou_threshold, max_det - n_kept)
                kept_idx.append(tier[k])
                kept_boxes.append(boxes[k])
                n_kept += len(k)
            chunk *= 4
        if not kept_idx:
            return np.zeros(0, np.intp), np.zeros((0, 4), np.float32)
        return np.concatenate(kept_idx), np.concatenate(kept_boxes)

    def _regular(self, enc: np.ndarray, sc: np.ndarray):
        s = self.s
        thr = self._raw_threshold
        if thr is None:
            full = self.class_scores(sc)
            cls, rows = np.nonzero(full.T >= np.float32(s.score_threshold))
            vals = full[rows, cls]
        else:
            raw_thr, impossible = thr
            if impossible:
                return _empty()
            view = sc[:, s.background:] if s.background else sc
            # class-major order: equal scores rank by class, then anchor (as the op's per-class merge)
            cls, rows = np.nonzero(view.T >= raw_thr)
            vals = self._activate(_dequant(view[rows, cls], self.scores_quant))
            ok = vals >= np.float32(s.score_threshold)
            if not ok.all():
                rows, cls, vals = rows[ok], cls[ok], vals[ok]
        if len(rows) == 0:
            return _empty()
        if s.pre_nms_top_k is not None and len(rows) > s.pre_nms_top_k:
            top = _top_prefix(vals, s.pre_nms_top_k)
            rows, cls, vals = rows[top], cls[top], vals[top]
        if s.detections_per_class >= s.max_detections:  # the per-class cap can never bind
            kept, boxes = self._greedy_tiers(enc, rows, vals, cls)
            return boxes, vals[kept], cls[kept].astype(np.int32)
        order = np.argsort(-vals, kind="stable")
        rows, cls, vals = rows[order], cls[order], vals[order]
        uniq, inverse = np.unique(rows, return_inverse=True)
        boxes = self._decode(enc, uniq)[inverse]
        kept = nms_sorted(offset_by_class(boxes, cls), s.iou_threshold)
        # at most detections_per_class per class (later boxes of a full class only suppress their own
        # class's even later boxes, which are dropped anyway), then the best max_detections
        kc = cls[kept]
        order_c = np.argsort(kc, kind="stable")
        sorted_c = kc[order_c]
        starts = np.searchsorted(sorted_c, sorted_c, side="left")
        rank = np.empty(len(kc), np.intp)
        rank[order_c] = np.arange(len(kc)) - starts
        kept = kept[rank < s.detections_per_class][: s.max_detections]
        return boxes[kept], vals[kept], cls[kept].astype(np.int32)

    def _decode(self, enc: np.ndarray, rows: np.ndarray) -> np.ndarray:
        s = self.s
        e = _dequant(enc[rows], self.boxes_quant)
        return decode_boxes(e, self.anchors[rows], s.scales, box_order=s.box_order, size_transform=s.size_transform)


def _row_max(x: np.ndarray) -> np.ndarray:
    """Row maxima of ``[N, C]``: a column-by-column running maximum (long vector ops; numpy's own
    ``max(axis=1)`` is slower for float rows this short)."""
    if x.dtype.kind != "f" or x.shape[1] < 2:
        return x.max(axis=1)
    out = x[:, 0].copy()
    for j in range(1, x.shape[1]):
        np.maximum(out, x[:, j], out=out)
    return out


def _top_mask(values: np.ndarray, k: int) -> np.ndarray:
    """Mask of every value >= the k-th largest (ties at the cut included: a prefix of the stable order)."""
    kth = np.partition(values, len(values) - k)[len(values) - k]
    return values >= kth


def _top_prefix(values: np.ndarray, k: int) -> np.ndarray:
    """Indices (in original order) of the best ``k`` values, ties at the cut resolved by position."""
    idx = np.flatnonzero(_top_mask(values, k))
    return np.sort(idx[np.argsort(-values[idx], kind="stable")][:k])


def _empty():
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
