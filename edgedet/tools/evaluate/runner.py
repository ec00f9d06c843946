"""Run a detector over an annotated image set and score it (pycocotools + bootstrap)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ...detections import Detections
from ...errors import ConfigError
from .bootstrap import category_ap, interval, resample_weights, summary_ap
from .dataset import CocoSet, class_id_map, load_coco, load_labels, parse_categories, select_categories
from .matches import coco_eval, require_backend
from .report import Drop, EvalReport

DEFAULT_RESAMPLES = 1000


@dataclass
class _Run:
    """One detection setting of an evaluation pass."""

    decode: Optional[Callable]  # (raw, prepared) -> Detections, or None when ``detect`` is given
    max_detections: Optional[int]  # the cap applied after detection (None: none)
    settings: dict
    results: list


def make_detector(model_path, *, threads=None, labels=None, score_threshold=0.01, iou_threshold=None,
                  max_detections=None, decoder="auto"):
    """The inference ``Detector`` (exactly what ``edgedet run`` uses) and its effective settings."""
    from ...detector import Detector

    det = Detector.from_path(
        str(model_path), threads=threads, labels=labels, score_threshold=score_threshold,
        iou_threshold=iou_threshold, max_detections=max_detections, decoder=decoder,
    )
    eff = {"iou_threshold": round(float(det.iou_threshold), 4), "max_detections": int(det.max_detections),
           "decoder": det.info.postprocess}
    return det, eff


def coco_records(dets: Detections, image_id: int, cat_map: np.ndarray) -> list[dict]:
    """COCO results entries (``bbox`` = x, y, w, h) for the mapped classes of ``dets``."""
    if len(dets) == 0:
        return []
    ids = dets.class_ids.astype(np.int64)
    valid = (ids >= 0) & (ids < len(cat_map))
    cats = np.full(len(ids), -1, np.int64)
    cats[valid] = cat_map[ids[valid]]
    keep = cats >= 0
    xyxy = dets.xyxy[keep].astype(np.float64)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).round(2).tolist()
    scores = dets.scores[keep].astype(np.float64).round(5).tolist()
    return [{"image_id": int(image_id), "category_id": int(c), "bbox": b, "score": s}
            for c, b, s in zip(cats[keep].tolist(), xywh, scores)]


def coco_metrics(coco_set: CocoSet, results: list[dict]) -> dict:
    """pycocotools bbox metrics over the images of ``coco_set`` (quietly)."""
    return coco_eval(coco_set.data, [im["id"] for im in coco_set.images], results)[0]


def evaluate(model_path, images_dir, annotations, *, max_detections: Optional[int] = 100, out_json=None,
             **kwargs) -> EvalReport:
    """Evaluate ``model_path`` on a COCO-format dataset at one ``max_detections`` (None: the
    model's own); see ``evaluate_settings`` for the other options."""
    return evaluate_settings(model_path, images_dir, annotations, max_detections=(max_detections,),
                             out_json=out_json, **kwargs)[0]


def evaluate_settings(model_path, images_dir, annotations, *, max_detections: Sequence[Optional[int]] = (100, None),
                      threads: Optional[int] = None, score_threshold: float = 0.01,
                      iou_threshold: Optional[float] = None, labels=None, progress: bool = True, out_json=None,
                      limit: Optional[int] = None, class_map: str = "auto", decoder: str = "auto",
                      categories: Union[str, Sequence, None] = None, resamples: int = DEFAULT_RESAMPLES,
                      seed: Optional[int] = 0, confidence: float = 0.95,
                      detect: Optional[Callable[[np.ndarray], Detections]] = None) -> list[EvalReport]:
    """One report per ``max_detections`` entry (None: the model's own), from one pass of the model.

    ``labels`` is a list or a label file (default: the model's own). ``iou_threshold`` of None
    keeps the model's own. ``categories``: names or ids to score (default: the dataset categories
    the model's classes map to). ``resamples`` bootstrap resamples of the images (0: no interval),
    drawn from ``seed``. ``detect`` replaces the model's detector (for tools that evaluate an
    in-memory variant); ``model_path`` is then only a name.
    """
    require_backend()
    coco_set = load_coco(images_dir, annotations, limit)
    if isinstance(labels, (str, os.PathLike)):
        labels = load_labels(labels)
    t0 = time.perf_counter()
    runs, first, labels, num_classes = _runs(model_path, list(max_detections), detect, labels=labels,
                                             threads=threads, score_threshold=score_threshold,
                                             iou_threshold=iou_threshold, decoder=decoder)
    cat_map, unmapped = class_id_map(labels, coco_set.categories, class_map, num_classes)
    scored, not_annotated = select_categories(coco_set, parse_categories(categories), cat_map)
    scored_ids = np.array([c["id"] for c in scored], np.int64)
    cat_map = np.where(np.isin(cat_map, scored_ids), cat_map, -1)
    _detect_all(coco_set, runs, first, cat_map, score_threshold, progress, f"eval {Path(str(model_path)).name}")
    reports = []
    for k, run in enumerate(runs):
        metrics, table = coco_eval(coco_set.data, [im["id"] for im in coco_set.images], run.results,
                                   [c["id"] for c in scored])
        settings = {"score_threshold": score_threshold, **run.settings, "class_map": class_map}
        if not_annotated:
            settings["not_annotated"] = ",".join(not_annotated)
        if limit is not None:
            settings["limit"] = limit
        report = EvalReport(metrics=metrics, settings=settings, n_images=len(coco_set.images),
                            model=str(model_path), seconds=time.perf_counter() - t0,
                            dataset=str(coco_set.annotations), n_detections=len(run.results),
                            unmapped_classes=unmapped, categories=scored, matches=table)
        if resamples:
            add_intervals(report, resamples, seed, confidence)
        if out_json is not None:
            report.results_json = _write_results(out_json, run.results, k, len(runs), run.max_detections)
        reports.append(report)
    return reports


def add_intervals(report: EvalReport, resamples: int = DEFAULT_RESAMPLES, seed: Optional[int] = 0,
                  confidence: float = 0.95) -> None:
    """Fill ``report.intervals`` (mAP, AP50) from its match table; keeps the resampled values for ``compare``."""
    table = report.matches
    weights = resample_weights(len(table.image_ids), resamples, seed)
    samples = summary_ap(category_ap(table, weights), table.iou_thresholds)
    report.intervals = {k: interval(report.metrics[k], v, confidence) for k, v in samples.items()}
    report.settings.update(resamples=resamples, seed=seed)
    report.bootstrap_samples = samples


def compare(a: EvalReport, b: EvalReport, confidence: float = 0.95) -> Drop:
    """``b - a`` with paired intervals: both reports resampled with the same images (same seed)."""
    if a.matches is None or b.matches is None:
        raise ConfigError("a paired comparison needs two reports made by evaluate()")
    if a.matches.image_ids != b.matches.image_ids:
        raise ConfigError("the two evaluations are not on the same images")
    if [c["id"] for c in a.categories] != [c["id"] for c in b.categories]:
        raise ConfigError("the two models are scored on different categories: give the same --categories to both")
    resamples, seed = int(a.settings.get("resamples") or DEFAULT_RESAMPLES), a.settings.get("seed", 0)
    for r in (a, b):
        if getattr(r, "bootstrap_samples", None) is None or r.settings.get("resamples") != resamples \
                or r.settings.get("seed") != seed:
            add_intervals(r, resamples, seed, confidence)
    diffs = {k: interval(b.metrics[k] - a.metrics[k], b.bootstrap_samples[k] - a.bootstrap_samples[k], confidence)
             for k in a.intervals}
    return Drop(a, b, diffs)


def compare_models(model_a, model_b, images_dir, annotations, *, max_detections: Optional[int] = 100,
                   **kwargs) -> Drop:
    """Evaluate two models on the same images and return the paired drop ``b - a`` (``Drop.ap`` is
    the mAP difference with its interval). Options as for ``evaluate_settings``."""
    a = evaluate(model_a, images_dir, annotations, max_detections=max_detections, **kwargs)
    b = evaluate(model_b, images_dir, annotations, max_detections=max_detections, **kwargs)
    return compare(a, b, kwargs.get("confidence", 0.95))


def _runs(model_path, caps: list, detect, *, labels, threads, score_threshold, iou_threshold, decoder):
    """The detection settings of one pass, the detector that infers, the labels and class count."""
    if not caps:
        raise ConfigError("give at least one max-detections setting")
    if detect is not None:
        runs = [_Run(None, cap, {"iou_threshold": iou_threshold if iou_threshold is not None else "model",
                                 "max_detections": cap, "decoder": decoder}, []) for cap in caps]
        return runs, detect, labels, None
    runs, first = [], None
    for cap in caps:
        det, eff = make_detector(model_path, threads=threads, labels=labels, score_threshold=score_threshold,
                                 iou_threshold=iou_threshold, max_detections=cap, decoder=decoder)
        first = first or det
        eff["max_detections_from"] = "model" if cap is None else "option"
        runs.append(_Run(det.decode, eff["max_detections"], eff, []))
    if labels is None and first.labels is not None and not _generic_labels(first.labels):
        labels = list(first.labels)
    return runs, first, labels, first.info.num_classes


def _detect_all(coco_set: CocoSet, runs: list, first, cat_map: np.ndarray, score_threshold: float,
                progress: bool, desc: str) -> None:
    """Each image read and inferred once; decoded (or capped) per setting into ``run.results``."""
    import cv2

    bar = _progress(coco_set.images, progress, desc)
    try:
        for im in bar:
            path = coco_set.images_dir / im["file_name"]
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ConfigError(f"cannot read image {path}")
            if runs[0].decode is None:
                outputs = [first(image)] * len(runs)
            else:
                prepared = first.prepare(image)
                raw = first.infer(prepared)
                outputs = [run.decode(raw, prepared) for run in runs]
            for run, dets in zip(runs, outputs):
                if len(dets) and score_threshold:
                    dets = dets[dets.scores >= score_threshold]
                if run.max_detections is not None and len(dets) > run.max_detections:
                    dets = dets[np.argsort(-dets.scores, kind="stable")[:run.max_detections]]
                run.results.extend(coco_records(dets, im["id"], cat_map))
    finally:
        if hasattr(bar, "close"):
            bar.close()


def _write_results(out_json, results: list, k: int, n: int, cap) -> str:
    from ...tflite import write_atomic

    path = Path(out_json)
    if n > 1 and k > 0:
        path = path.with_name(f"{path.stem}.maxdet{cap}{path.suffix}")
    write_atomic(path, json.dumps(results).encode())
    return str(path)


def _generic_labels(labels: Sequence[str]) -> bool:
    """The detector's stand-in names (``class0``, ``class1``...) when a model has no labels."""
    return all(re.fullmatch(r"class\d+", str(x)) for x in labels[:5]) if len(labels) else True


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="img", file=sys.stderr, leave=False)
