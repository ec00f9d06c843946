"""pycocotools' per-image matching, kept as flat arrays so that AP can be recomputed for any
multiset of the images (``bootstrap``) without matching again.

``coco_eval`` runs ``COCOeval.evaluate/accumulate/summarize`` once (the reported metrics are
pycocotools' own) and turns its per-image, per-category results (area "all", the last
``maxDets``) into a ``MatchTable``: for each category, its detections in pycocotools' order
(score descending, stable over the images in id order), the image each came from, whether it is
matched and whether it is ignored at each IoU threshold, and the non-ignored ground truths per image.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ...errors import EdgedetError

METRIC_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
MISSING_BACKEND = "evaluation needs pycocotools: pip install 'edgedet[eval]'"


@dataclass
class CategoryMatches:
    """One category's detections in ranking order and its ground truths per image."""

    category_id: int
    image: np.ndarray  # (n,) index into MatchTable.image_ids of each detection
    matched: np.ndarray  # (T, n) bool: matched to a ground truth at IoU threshold t
    ignored: np.ndarray  # (T, n) bool: matched to an ignored (crowd) ground truth, or outside the area range
    gt_per_image: np.ndarray  # (I,) non-ignored ground truths of each image


@dataclass
class MatchTable:
    """Everything the AP of any resample of the images needs (see the module docstring)."""

    image_ids: list
    categories: list  # [CategoryMatches]
    iou_thresholds: np.ndarray
    rec_thresholds: np.ndarray


def require_backend() -> None:
    """Fail at once (one line) when the COCO evaluation library is missing."""
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError as exc:
        raise EdgedetError(MISSING_BACKEND) from exc


def coco_eval(data: dict, image_ids: Sequence[int], results: list,
              category_ids: Optional[Sequence[int]] = None) -> tuple[dict, MatchTable]:
    """pycocotools bbox metrics over ``image_ids`` (and ``category_ids``, default all) and the match table."""
    require_backend()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results) if results else _empty_results(gt), "bbox")
        ev.params.imgIds = list(image_ids)
        if category_ids is not None:
            ev.params.catIds = list(category_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {k: float(max(v, 0.0)) for k, v in zip(METRIC_NAMES, ev.stats)}
    return metrics, match_table(ev)


def _empty_results(gt):
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                   "annotations": []}
    res.createIndex()
    return res


def match_table(ev) -> MatchTable:
    """The ``MatchTable`` of a ``COCOeval`` after ``evaluate()``."""
    p = ev.params
    n_img, n_area, max_det = len(p.imgIds), len(p.areaRng), p.maxDets[-1]
    n_t = len(p.iouThrs)
    area_all = list(p.areaRngLbl).index("all")
    cats = []
    for k, cat_id in enumerate(p.catIds):
        start = k * n_area * n_img + area_all * n_img
        entries = ev.evalImgs[start:start + n_img]
        scores, images, matched, ignored = [], [], [], []
        gt_per_image = np.zeros(n_img, np.int64)
        for i, e in enumerate(entries):
            if e is None:
                continue
            gt_per_image[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            s = np.asarray(e["dtScores"][:max_det], np.float64)
            if len(s) == 0:
                continue
            scores.append(s)
            images.append(np.full(len(s), i, np.int64))
            matched.append(np.asarray(e["dtMatches"])[:, :max_det] > 0)
            ignored.append(np.asarray(e["dtIgnore"])[:, :max_det].astype(bool))
        if scores:
            order = np.argsort(-np.concatenate(scores), kind="mergesort")
            cm = CategoryMatches(int(cat_id), np.concatenate(images)[order],
                                 np.concatenate(matched, axis=1)[:, order], np.concatenate(ignored, axis=1)[:, order],
                                 gt_per_image)
        else:
            cm = CategoryMatches(int(cat_id), np.zeros(0, np.int64), np.zeros((n_t, 0), bool),
                                 np.zeros((n_t, 0), bool), gt_per_image)
        cats.append(cm)
    return MatchTable(list(p.imgIds), cats, np.asarray(p.iouThrs, np.float64), np.asarray(p.recThrs, np.float64))
