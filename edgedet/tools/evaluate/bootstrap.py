"""AP of resampled image sets from a ``MatchTable``, vectorised over the resamples.

A resample is a weight per image (how many times it was drawn). A detection of an image drawn
``w`` times counts ``w`` times in the cumulative true / false positive counts, which gives exactly
the AP pycocotools would compute on the image list with each image repeated ``w`` times (copies
of a detection sit next to each other in the ranking: the interpolated precision is the same).
All-ones weights reproduce pycocotools' AP itself.

Only the true positives matter: the interpolated precision at a recall level is the maximum
precision at or after the first detection reaching it, which is always attained at a true
positive. So per category and IoU threshold the work is (resamples x matched detections).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...errors import ConfigError
from .matches import CategoryMatches, MatchTable

_EXACT_FLOAT32 = 2 ** 24  # integer sums below this are exact in float32


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval (all in [0, 1], or differences of those)."""

    value: float
    low: float
    high: float
    confidence: float = 0.95
    resamples: int = 0

    def to_dict(self, scale: float = 100.0, digits: int = 2) -> dict:
        return {"value": round(scale * self.value, digits), "low": round(scale * self.low, digits),
                "high": round(scale * self.high, digits), "confidence": self.confidence,
                "resamples": self.resamples}

    def format(self, scale: float = 100.0, signed: bool = False) -> str:
        f = "{:+.2f}" if signed else "{:.2f}"
        if not self.resamples:
            return f.format(scale * self.value)
        return f"{f.format(scale * self.value)} [{f.format(scale * self.low)}, {f.format(scale * self.high)}]"


def resample_weights(n_images: int, resamples: int, seed: Optional[int] = 0) -> np.ndarray:
    """(resamples, n_images) counts: each row draws ``n_images`` images with replacement."""
    if resamples < 1:
        raise ConfigError("the number of bootstrap resamples must be at least 1")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_images, size=(resamples, n_images))
    idx += np.arange(resamples)[:, None] * n_images
    return np.bincount(idx.ravel(), minlength=resamples * n_images).reshape(resamples, n_images).astype(np.float64)


def category_ap(table: MatchTable, weights: np.ndarray) -> np.ndarray:
    """(B, K, T) AP of each category at each IoU threshold for each weight row; NaN where the
    weighted images hold no ground truth of the category (pycocotools leaves it out)."""
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    if weights.shape[1] != len(table.image_ids):
        raise ValueError(f"weights for {weights.shape[1]} images, table has {len(table.image_ids)}")
    out = np.empty((weights.shape[0], len(table.categories), len(table.iou_thresholds)))
    for k, cm in enumerate(table.categories):
        out[:, k, :] = _precision_sums(cm, weights, table.rec_thresholds) / len(table.rec_thresholds)
    return out


def summary_ap(per_cat: np.ndarray, iou_thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """mAP (IoU .50:.95) and AP50 per weight row from ``category_ap`` (mean over the categories present)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {"mAP": np.nanmean(per_cat.mean(axis=2), axis=1)}
        t50 = np.flatnonzero(np.isclose(iou_thresholds, 0.5))
        if len(t50):
            out["AP50"] = np.nanmean(per_cat[:, :, t50[0]], axis=1)
    return out


def interval(point: float, samples: np.ndarray, confidence: float = 0.95) -> Interval:
    """Percentile interval of ``samples`` (NaN resamples - no ground truth drawn - left out)."""
    ok = samples[np.isfinite(samples)]
    if not len(ok):
        return Interval(point, point, point, confidence, 0)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ok, [alpha, 1.0 - alpha])
    return Interval(float(point), float(low), float(high), confidence, int(len(samples)))


def _precision_sums(cm: CategoryMatches, w: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """(B, T) sum over the recall thresholds of the interpolated precision; NaN without ground truth."""
    n_b, n_t = w.shape[0], cm.matched.shape[0]
    npig = w @ cm.gt_per_image.astype(np.float64)
    out = np.zeros((n_b, n_t))
    valid = ~cm.ignored
    tp = cm.matched & valid
    counts = _ValidCounts(cm.image, valid, tp, w)
    for t in range(n_t):
        pos = np.flatnonzero(tp[t])
        if not len(pos):
            continue
        tp_cum = np.cumsum(w[:, cm.image[pos]], axis=1)
        det_cum = counts.at(t, pos)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp_cum / (det_cum + np.spacing(1))
            recall = tp_cum / npig[:, None]
        interp = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        reached = np.searchsorted(rec_thrs, recall.ravel(), side="right").reshape(recall.shape)
        out[:, t] = (interp * np.diff(reached, axis=1, prepend=0)).sum(axis=1)
    out[npig == 0] = np.nan
    return out


class _ValidCounts:
    """Weighted number of non-ignored detections ranked at or before given positions: one
    (B, I) x (I, P) product per distinct ignore pattern (usually one for all thresholds)."""

    def __init__(self, image: np.ndarray, valid: np.ndarray, tp: np.ndarray, w: np.ndarray) -> None:
        self.image, self.valid, self.w = image, valid, w
        self.shared = bool(len(valid) == 0 or (valid == valid[:1]).all())
        self._cache: dict = {}
        if self.shared and valid.shape[1]:
            self.union = np.flatnonzero(tp.any(axis=0))
            self._cache[0] = self._counts(valid[0], self.union)

    def at(self, t: int, pos: np.ndarray) -> np.ndarray:
        if self.shared:
            return self._cache[0][:, np.searchsorted(self.union, pos)]
        return self._counts(self.valid[t], pos)

    def _counts(self, valid: np.ndarray, pos: np.ndarray) -> np.ndarray:
        n_img = self.w.shape[1]
        vpos = np.flatnonzero(valid)
        n = max(len(valid), 1)
        keys = np.sort(self.image[vpos] * n + vpos)
        img = np.arange(n_img)[None, :]
        # per (position, image): valid detections of that image ranked at or before the position
        c = np.searchsorted(keys, img * n + pos[:, None], side="right") - np.searchsorted(keys, img * n)
        if len(vpos) * max(float(self.w.max(initial=1.0)), 1.0) < _EXACT_FLOAT32:
            return (self.w.astype(np.float32) @ c.T.astype(np.float32)).astype(np.float64)
        return self.w @ c.T.astype(np.float64)
