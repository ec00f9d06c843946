"""The whole structured recipe: read, one-shot channel pruning with refits, distillation, int8 export,
with proxies measured on held-back calibration images (never on an evaluation set)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..calib import list_media
from .data import ImagePool, augmented_views
from .distill import DistillOptions, distill
from .export import export_int8
from .forward import run_graph
from .graph import FloatGraph, read_graph
from .net import pixels_to_input
from .oneshot import find_targets, prune_graph


@dataclass(frozen=True)
class StructuredOptions:
    """``ratio`` of the output channels of backbone pointwise convs ``first``..``last`` removed (kept
    counts rounded to ``multiple``), ridge ``lam`` (relative to the mean input energy), refits on
    ``views`` views (full + crops/flips) of each fitting image of a pool of ``pool`` images."""

    ratio: float = 0.25
    first: int = 2
    last: int = 13
    lam: float = 1e-3
    multiple: int = 8
    pool: int = 128
    views: int = 2
    distill: Optional[DistillOptions] = field(default_factory=DistillOptions)  # None: one-shot only


@dataclass
class StructuredReport:
    out: str = ""
    macs_before: int = 0
    macs_after: int = 0
    kept: dict = field(default_factory=dict)  # target -> kept channels
    proxies: dict = field(default_factory=dict)  # stage -> held-back agreement with the dense network
    seconds: dict = field(default_factory=dict)  # phase -> wall seconds
    distill_losses: list = field(default_factory=list)
    census: dict = field(default_factory=dict)


def held_proxy(dense: FloatGraph, pruned: FloatGraph, inputs: np.ndarray) -> dict:
    """Agreement of ``pruned`` with ``dense`` on ``inputs``: relative logit error, mean score error,
    score-weighted box-encoding error and score-weighted error of each anchor's best score."""
    bd, ld = run_graph(dense, inputs)
    bp, lp = run_graph(pruned, inputs)
    sd, sp = 1 / (1 + np.exp(-ld)), 1 / (1 + np.exp(-lp))
    w = sd[..., 1:].max(-1)
    return {"logit_rel_error": float(((lp - ld) ** 2).sum() / (ld ** 2).sum()),
            "score_mae": float(np.abs(sp - sd).mean()),
            "box_weighted_mse": float((w[..., None] * (bp - bd) ** 2).sum() / w.sum() / 4),
            "top_score_weighted_mae": float((w * np.abs(sp[..., 1:].max(-1) - w)).sum() / w.sum())}


def prune_structured(src, out, calibration: Sequence, options: StructuredOptions = StructuredOptions(),
                     labels: Optional[list] = None, log: Optional[Callable[[str], None]] = None) -> StructuredReport:
    """``out`` (int8 ``.tflite``): ``src`` with whole channels removed, refit, recovered and quantized."""
    say = log or (lambda _msg: None)
    report, t0 = StructuredReport(out=str(out)), time.perf_counter()
    dense = read_graph(src)
    pool = ImagePool.load(calibration, options.pool)
    fit = pixels_to_input(dense, augmented_views(pool.fit, dense.input_size, options.views, seed=0))
    held = pixels_to_input(dense, augmented_views(pool.held, dense.input_size, 2, seed=1))
    report.seconds["load"] = time.perf_counter() - t0
    targets = find_targets(dense, range(options.first, options.last + 1))
    pruned, one = prune_graph(dense, fit, targets, {t.name: options.ratio for t in targets}, options.lam,
                              options.multiple)
    report.macs_before, report.macs_after = one.macs_before, one.macs_after
    report.kept = {k: len(v) for k, v in one.keep.items()}
    report.seconds["one_shot"] = time.perf_counter() - t0 - report.seconds["load"]
    report.proxies["one_shot"] = held_proxy(dense, pruned, held)
    say(f"one-shot: {1 - one.macs_after / one.macs_before:.1%} of MACs removed, held-back {report.proxies['one_shot']}")
    if options.distill is not None:
        t1 = time.perf_counter()
        pruned, drep = distill(dense, pruned, pool.fit, options.distill, log=say, keep=one.keep)
        report.seconds["distill"] = time.perf_counter() - t1
        report.distill_losses = drep.losses
        report.proxies["distilled"] = held_proxy(dense, pruned, held)
        say(f"distilled ({drep.steps} steps): held-back {report.proxies['distilled']}")
    t2 = time.perf_counter()
    images, _ = list_media(calibration)
    result = export_int8(pruned, out, images, labels=labels, log=log)
    report.census = dict(result.census)
    report.seconds["int8"] = time.perf_counter() - t2
    return report


def default_calibration(assets) -> list:
    """The calibration pool under an assets folder: its photos and videos (no evaluation set)."""
    root = Path(assets)
    return [p for p in (root / "images", root / "videos") if p.exists()]
