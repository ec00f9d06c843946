"""What an evaluation returns: ``EvalReport`` (one model, one setting) and ``Drop`` (two models, paired)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .bootstrap import Interval
from .matches import METRIC_NAMES, MatchTable


@dataclass
class EvalReport:
    """The result of one evaluation; ``metrics`` values are in [0, 1] (pycocotools' stats).

    ``intervals`` holds the bootstrap interval of ``mAP`` and ``AP50`` over images (empty when
    the bootstrap is off); ``categories`` the dataset categories scored (``[{id, name}]``);
    ``matches`` what a paired comparison (``compare``) needs.
    """

    metrics: dict
    settings: dict
    n_images: int
    model: str
    seconds: float
    dataset: str = ""
    n_detections: int = 0
    results_json: Optional[str] = None
    unmapped_classes: list = field(default_factory=list)
    categories: list = field(default_factory=list)
    intervals: dict = field(default_factory=dict)
    matches: Optional[MatchTable] = field(default=None, repr=False)
    bootstrap_samples: Optional[dict] = field(default=None, repr=False)  # metric -> (resamples,) values

    @property
    def ap(self) -> Interval:
        """mAP@[.50:.95] over the scored categories with its interval (the person AP when only person is scored)."""
        return self.intervals.get("mAP") or Interval(self.metrics["mAP"], self.metrics["mAP"], self.metrics["mAP"])

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "n_images": self.n_images,
            "n_detections": self.n_detections,
            "seconds": round(self.seconds, 2),
            "categories": [c["name"] for c in self.categories],
            "metrics": {k: round(float(v), 4) for k, v in self.metrics.items()},
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            "settings": dict(self.settings),
            "results_json": self.results_json,
            "unmapped_classes": list(self.unmapped_classes),
        }

    def format_table(self) -> str:
        lines = [
            f"model       {self.model}",
            f"dataset     {self.dataset} ({self.n_images} images, {self.n_detections} detections, "
            f"{self.seconds:.1f} s)",
            "settings    " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
            "categories  " + _category_text(self.categories),
        ]
        only = f" ({self.categories[0]['name']})" if len(self.categories) == 1 else ""
        for name, iv in self.intervals.items():
            lines.append(f"{name + only:<11} {iv.format()}  ({100 * iv.confidence:.0f} % bootstrap interval over "
                         f"images, {iv.resamples} resamples)")
        lines += ["",
                  "  ".join(f"{k:>6}" for k in METRIC_NAMES),
                  "  ".join(f"{100 * float(self.metrics.get(k, 0.0)):6.1f}" for k in METRIC_NAMES)]
        if self.results_json:
            lines.append(f"results     {self.results_json}")
        return "\n".join(lines)


@dataclass
class Drop:
    """``b`` minus ``a`` on the same images, each metric with its paired bootstrap interval (same
    resampled images for both models). Negative = ``b`` is worse."""

    a: EvalReport
    b: EvalReport
    differences: dict  # metric -> Interval of b - a

    @property
    def ap(self) -> Interval:
        return self.differences["mAP"]

    def to_dict(self) -> dict:
        return {"a": self.a.model, "b": self.b.model, "dataset": self.a.dataset,
                "max_detections": self.a.settings.get("max_detections"),
                "categories": [c["name"] for c in self.a.categories],
                "a_metrics": {k: iv.to_dict() for k, iv in self.a.intervals.items()},
                "b_metrics": {k: iv.to_dict() for k, iv in self.b.intervals.items()},
                "difference": {k: iv.to_dict() for k, iv in self.differences.items()}}

    def format_table(self) -> str:
        head = (f"dataset {self.a.dataset} ({self.a.n_images} images), categories "
                f"{_category_text(self.a.categories)}, max_detections {self.a.settings.get('max_detections')}")
        rows = [head, f"{'metric':<7} {'A':>24} {'B':>24} {'B - A (paired)':>26}"]
        for k, diff in self.differences.items():
            rows.append(f"{k:<7} {self.a.intervals[k].format():>24} {self.b.intervals[k].format():>24} "
                        f"{diff.format(signed=True):>26}")
        rows.append(f"A = {self.a.model}")
        rows.append(f"B = {self.b.model}")
        return "\n".join(rows)


def _category_text(categories: list) -> str:
    if not categories:
        return "-"
    names = [c["name"] for c in categories]
    if len(names) > 6:
        return f"{len(names)} ({', '.join(names[:4])}, ...)"
    return ", ".join(names)
