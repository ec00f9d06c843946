"""COCO-style accuracy of a detector: ``edgedet eval``.

Runs the model over every image of a COCO annotation file that is present in ``images_dir``,
writes the detections in the COCO results format and scores them with ``pycocotools``::

    report = evaluate("model.tflite", "val2017/", "instances_val2017.json", limit=10)
    print(report.format_table())

Class ids: the model outputs 0-based indices into its label list; the annotation file uses its
own category ids. ``class_map="auto"`` (the default) matches labels to category names
(case-insensitive, ignoring spaces, ``-`` and ``_``) and, for labels that match nothing, falls
back to ``index + 1`` when the model has a 90-entry COCO label list (COCO: index = category id - 1).
``"name"`` uses only names, ``"coco90"`` only ``index + 1``, ``"index"`` uses the index as the id.

Settings that change the score (score threshold, NMS IoU, detections per image) are options
and are recorded in ``EvalReport.settings``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..detections import Detections
from ..errors import ConfigError, EdgedetError

METRIC_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
CLASS_MAPS = ("auto", "name", "coco90", "index")


@dataclass
class EvalReport:
    """The result of one evaluation; ``metrics`` values are in [0, 1] (pycocotools' stats)."""

    metrics: dict
    settings: dict
    n_images: int
    model: str
    seconds: float
    dataset: str = ""
    n_detections: int = 0
    results_json: Optional[str] = None
    unmapped_classes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "n_images": self.n_images,
            "n_detections": self.n_detections,
            "seconds": round(self.seconds, 2),
            "metrics": {k: round(float(v), 4) for k, v in self.metrics.items()},
            "settings": dict(self.settings),
            "results_json": self.results_json,
            "unmapped_classes": list(self.unmapped_classes),
        }

    def format_table(self) -> str:
        lines = [
            f"model     {self.model}",
            f"dataset   {self.dataset} ({self.n_images} images, {self.n_detections} detections, "
            f"{self.seconds:.1f} s)",
            "settings  " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
            "",
            "  ".join(f"{k:>6}" for k in METRIC_NAMES),
            "  ".join(f"{100 * float(self.metrics.get(k, 0.0)):6.1f}" for k in METRIC_NAMES),
        ]
        if self.results_json:
            lines.append(f"results   {self.results_json}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# dataset


@dataclass
class CocoSet:
    """The images of an annotation file that exist on disk (sorted by image id)."""

    annotations: Path
    images_dir: Path
    images: list  # [{id, file_name, width, height}]
    categories: list  # [{id, name}]
    data: dict


def load_coco(images_dir, annotations, limit: Optional[int] = None) -> CocoSet:
    """Read a COCO instances file and check it against ``images_dir`` (one-line errors)."""
    images_dir = Path(images_dir)
    annotations = Path(annotations)
    if not images_dir.is_dir():
        raise ConfigError(f"images directory not found: {images_dir}")
    if not annotations.is_file():
        raise ConfigError(f"annotation file not found: {annotations}")
    try:
        data = json.loads(annotations.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read annotation file {annotations}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list) or "annotations" not in data:
        raise ConfigError(f"{annotations} is not a COCO instances file (needs images, annotations, categories)")
    try:
        images = sorted(
            ({"id": int(im["id"]), "file_name": str(im["file_name"]),
              "width": int(im.get("width", 0)), "height": int(im.get("height", 0))}
             for im in data["images"]),
            key=lambda im: im["id"],
        )
        categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in data["categories"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{annotations}: malformed image or category entry ({exc})") from exc
    if not images:
        raise ConfigError(f"{annotations} lists no images")
    present = [im for im in images if (images_dir / im["file_name"]).is_file()]
    if not present:
        raise ConfigError(
            f"annotation file {annotations} does not match {images_dir}: none of its {len(images)} "
            f"image files (e.g. {images[0]['file_name']}) is there"
        )
    if len(present) < len(images):
        missing = [im["file_name"] for im in images if not (images_dir / im["file_name"]).is_file()]
        raise ConfigError(
            f"{len(missing)} of {len(images)} images of {annotations.name} are missing from {images_dir} "
            f"(first: {missing[0]})"
        )
    if limit is not None:
        if limit < 1:
            raise ConfigError("limit must be at least 1")
        present = present[:limit]
    return CocoSet(annotations, images_dir, present, categories, data)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def class_id_map(labels: Optional[Sequence[str]], categories: list, mode: str = "auto",
                 num_classes: Optional[int] = None) -> tuple[np.ndarray, list]:
    """Array ``m`` with ``m[model_index] = category_id`` (-1 = not in the dataset) and the unmapped labels.

    See the module docstring for the modes.
    """
    if mode not in CLASS_MAPS:
        raise ConfigError(f"class map must be one of {', '.join(CLASS_MAPS)}, not {mode!r}")
    cat_ids = {c["id"] for c in categories}
    by_name = {_norm(c["name"]): c["id"] for c in categories}
    n = len(labels) if labels is not None else int(num_classes or 0)
    if labels is None and mode in ("auto", "name"):
        if n > 90 or not num_classes:
            raise ConfigError("the model has no labels: give --labels or --class-map coco90|index")
        mode = "coco90"
    n = max(n, int(num_classes or 0))
    out = np.full(max(n, 1), -1, np.int64)
    unmapped = []
    coco90 = labels is not None and len(labels) in (90, 91)
    for i in range(n):
        label = labels[i] if labels is not None and i < len(labels) else None
        cid = -1
        if mode in ("auto", "name") and label is not None:
            cid = by_name.get(_norm(label), -1)
        if cid < 0 and (mode == "coco90" or (mode == "auto" and coco90 and _norm(label or "") in ("", "n/a"))):
            cid = i + 1 if (i + 1) in cat_ids else -1
        if mode == "index":
            cid = i if i in cat_ids else -1
        out[i] = cid
        if cid < 0 and label is not None and _norm(label) not in ("n/a", "na", "", "background", "???"):
            unmapped.append(label)
    if not (out >= 0).any():
        raise ConfigError(
            "no model class matches a category of the annotation file: check --labels or --class-map"
        )
    return out, unmapped


def load_labels(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"label file not found: {path}")
    lines = [line.strip() for line in path.read_text().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


# ---------------------------------------------------------------------------------------------
# detector


def make_detector(model_path, *, threads=None, labels=None, score_threshold=0.01, iou_threshold=None,
                  max_detections=None, postprocess="auto"):
    """The inference ``Detector`` (exactly what ``edgedet run`` uses) and its effective settings."""
    from ..detector import Detector

    det = Detector.from_path(
        str(model_path), threads=threads, labels=labels, score_threshold=score_threshold,
        iou_threshold=iou_threshold, max_detections=max_detections, postprocess=postprocess,
    )
    eff = {"iou_threshold": round(float(det.iou_threshold), 4), "max_detections": int(det.max_detections),
           "postprocess": det.info.postprocess}
    return det, eff


# ---------------------------------------------------------------------------------------------
# evaluation


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
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise EdgedetError("evaluation needs pycocotools: pip install 'edgedet[eval]'") from exc
    if not results:
        return {k: 0.0 for k in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_set.data
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = [im["id"] for im in coco_set.images]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(max(v, 0.0)) for k, v in zip(METRIC_NAMES, ev.stats)}


def evaluate(model_path, images_dir, annotations, *, threads: Optional[int] = None,
             score_threshold: float = 0.01, iou_threshold: Optional[float] = None,
             max_detections: Optional[int] = 100, labels=None, progress: bool = True,
             out_json=None, limit: Optional[int] = None, class_map: str = "auto", postprocess: str = "auto",
             detect: Optional[Callable[[np.ndarray], Detections]] = None) -> EvalReport:
    """Evaluate ``model_path`` on a COCO-format dataset; see the module docstring.

    ``labels`` is a list or a label file (default: the model's own). ``max_detections`` and
    ``iou_threshold`` of None keep the model's own values. ``detect`` replaces the model's
    detector (for tools that evaluate an in-memory variant); ``model_path`` is then only a name.
    """
    import cv2

    coco_set = load_coco(images_dir, annotations, limit)
    if isinstance(labels, (str, os.PathLike)):
        labels = load_labels(labels)
    t0 = time.perf_counter()
    effective: dict = {}
    num_classes = None
    if detect is None:
        det, effective = make_detector(
            model_path, threads=threads, labels=labels, score_threshold=score_threshold,
            iou_threshold=iou_threshold, max_detections=max_detections, postprocess=postprocess)
        detect = det.detect
        if labels is None and det.labels is not None and not _generic_labels(det.labels):
            labels = list(det.labels)
        num_classes = det.info.num_classes
    cat_map, unmapped = class_id_map(labels, coco_set.categories, class_map, num_classes)

    results: list[dict] = []
    bar = _progress(coco_set.images, progress, f"eval {Path(str(model_path)).name}")
    try:
        for im in bar:
            path = coco_set.images_dir / im["file_name"]
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ConfigError(f"cannot read image {path}")
            dets = detect(image)
            if len(dets) and score_threshold:
                dets = dets[dets.scores >= score_threshold]
            if max_detections is not None and len(dets) > max_detections:
                dets = dets[np.argsort(-dets.scores, kind="stable")[:max_detections]]
            results.extend(coco_records(dets, im["id"], cat_map))
    finally:
        if hasattr(bar, "close"):
            bar.close()
    metrics = coco_metrics(coco_set, results)
    seconds = time.perf_counter() - t0
    out_str = None
    if out_json is not None:
        from ..tflite_file import write_atomic

        write_atomic(out_json, json.dumps(results).encode())
        out_str = str(out_json)
    settings = {
        "score_threshold": score_threshold,
        "iou_threshold": effective.get("iou_threshold", iou_threshold if iou_threshold is not None
                                       else "model"),
        "max_detections": effective.get("max_detections", max_detections),
        "class_map": class_map,
        "postprocess": effective.get("postprocess", postprocess),
    }
    if limit is not None:
        settings["limit"] = limit
    return EvalReport(
        metrics=metrics, settings=settings, n_images=len(coco_set.images), model=str(model_path),
        seconds=seconds, dataset=str(coco_set.annotations), n_detections=len(results),
        results_json=out_str, unmapped_classes=unmapped,
    )


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
