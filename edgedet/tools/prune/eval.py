"""COCO mAP of a model file for the pruning tools (a thin wrapper over ``tools.evaluate``)."""

from __future__ import annotations

from typing import Optional


def map_of(model_path, images, annotations, threads: Optional[int] = None, limit: Optional[int] = None) -> float:
    """COCO mAP@[.5:.95] of ``model_path`` on a COCO-format image folder (0..1)."""
    from ..evaluate import evaluate

    report = evaluate(model_path, images, annotations, threads=threads, progress=False, limit=limit, resamples=0)
    return float(report.metrics["mAP"])
