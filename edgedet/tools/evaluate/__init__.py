"""COCO-style accuracy of a detector with bootstrap intervals: ``edgedet eval``.

Runs the model over every image of a COCO annotation file that is present in ``images_dir``,
scores the detections with ``pycocotools`` and gives each AP a 95 % bootstrap interval over the
images; two models on the same images give a paired difference::

    report = evaluate("model.tflite", "val2017/", "instances_val2017.json")
    print(report.ap.format())                   # "21.51 [17.52, 25.33]"
    drop = compare_models("dense.tflite", "pruned.tflite", "val2017/", "instances_val2017.json")
    print(drop.ap.format(signed=True))          # b - a with its paired interval

The bootstrap resamples the images with replacement (``resamples``, ``seed``) and recomputes AP
from pycocotools' per-image matches (done once), vectorised over the resamples; with every image
drawn once it gives pycocotools' AP exactly.

Class ids: the model outputs 0-based indices into its label list; the annotation file uses its
own category ids. ``class_map="auto"`` (the default) matches labels to category names
(case-insensitive, ignoring spaces, ``-`` and ``_``) and, for labels that match nothing, falls
back to ``index + 1`` when the model has a 90-entry COCO label list (COCO: index = category id - 1).
``"name"`` uses only names, ``"coco90"`` only ``index + 1``, ``"index"`` uses the index as the id.

Scored categories: ``categories`` (names or ids), by default the dataset categories the model's
classes map to (a person-only model is scored on person). Settings that change the score (score
threshold, NMS IoU, detections per image) are options and are recorded in ``EvalReport.settings``.
"""

from __future__ import annotations

from .bootstrap import Interval, category_ap, interval, resample_weights, summary_ap
from .dataset import CLASS_MAPS, CocoSet, class_id_map, load_coco, load_labels, parse_categories
from .matches import METRIC_NAMES, MatchTable, coco_eval, require_backend
from .report import Drop, EvalReport
from .runner import (
    DEFAULT_RESAMPLES,
    add_intervals,
    coco_metrics,
    coco_records,
    compare,
    compare_models,
    evaluate,
    evaluate_settings,
    make_detector,
)

__all__ = [
    "CLASS_MAPS", "DEFAULT_RESAMPLES", "METRIC_NAMES", "CocoSet", "Drop", "EvalReport", "Interval", "MatchTable",
    "add_intervals", "category_ap", "interval", "class_id_map", "coco_eval", "coco_metrics", "coco_records", "compare",
    "compare_models", "evaluate", "evaluate_settings", "load_coco", "load_labels", "make_detector",
    "parse_categories", "require_backend", "resample_weights", "summary_ap",
]
