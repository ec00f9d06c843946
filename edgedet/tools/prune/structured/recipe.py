"""The whole structured recipe: read, one-shot channel pruning with refits, distillation, int8 export,
with proxies measured on held-back calibration images (never on an evaluation set)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ....errors import ConfigError, ModelError
from ..calib import list_media
from .data import ImagePool, augmented_views
from .distill import DistillOptions, distill
from .export import export_int8
from .forward import run_graph
from .graph import FloatGraph, read_graph
from .net import pixels_to_input
from .oneshot import Target, backbone_pointwise, find_targets, keep_count, prune_graph

# Share of the dense SSD MobileNet v1 int8 invoke time that does not shrink with the convolutions
# (detection op, logistic, concatenations), measured on x86 with XNNPACK: 1.16 of 3.96 ms.
FIXED_SHARE = 0.29


@dataclass(frozen=True)
class StructuredOptions:
    """``ratio`` of the output channels of backbone pointwise convs ``first``..``last`` removed (kept
    counts rounded to ``multiple``), ridge ``lam`` (relative to the mean input energy), refits on
    ``views`` views (full + crops/flips) of each fitting image of a pool of ``pool`` images."""

    ratio: float = 0.25
    speedup: Optional[float] = None  # set: the uniform ratio predicted to give this invoke speed-up
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
    ratio: float = 0.0
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


def macs_at(graph: FloatGraph, targets: Sequence[Target], ratio: float, multiple: int = 8) -> int:
    """Convolution MACs of ``graph`` with ``ratio`` of every target's channels removed (no pruning done)."""
    cout: dict = {}
    cin: dict = {}
    for t in targets:
        channels = graph.layer(t.name).out_channels
        kept = keep_count(channels, ratio, multiple) if ratio > 0 else channels
        cout[t.name] = kept
        cin.update({name: kept for name in t.depthwise + t.readers})
    total = 0
    for la, hw in zip(graph.layers, graph.spatial_sizes()):
        if la.kernel is None:
            continue
        kh, kw, ci, co = la.kernel.shape
        ci = cin.get(la.name, ci)
        total += hw * kh * kw * (ci if la.kind == "depthwise" else ci * cout.get(la.name, co))
    return int(total)


def predicted_speedup(macs_before: int, macs_after: int, fixed_share: float = FIXED_SHARE) -> float:
    """Invoke speed-up predicted by a fixed share of the time plus a part proportional to the MACs."""
    return 1.0 / (fixed_share + (1.0 - fixed_share) * macs_after / max(macs_before, 1))


def ratio_for_speedup(graph: FloatGraph, targets: Sequence[Target], speedup: float, multiple: int = 8,
                      fixed_share: float = FIXED_SHARE) -> float:
    """The smallest uniform ratio (in steps of 0.01, at most 0.9) predicted to reach ``speedup``."""
    dense = graph.macs()
    for ratio in np.round(np.arange(0.01, 0.905, 0.01), 2):
        if predicted_speedup(dense, macs_at(graph, targets, float(ratio), multiple), fixed_share) >= speedup:
            return float(ratio)
    raise ConfigError(f"--speedup {speedup:g} is out of reach: removing 90 % of the channels is predicted to give "
                      f"{predicted_speedup(dense, macs_at(graph, targets, 0.9, multiple), fixed_share):.2f}x")


def structured_targets(graph: FloatGraph, first: int, last: int) -> list:
    """Targets for backbone pointwise convs ``first``..``last`` (clipped to the ones the graph has);
    ``ModelError`` for a graph whose channels cannot be followed (e.g. residual adds)."""
    last = min(last, len(backbone_pointwise(graph)))
    try:
        targets = find_targets(graph, range(first, last + 1))
    except ValueError as exc:
        raise ModelError(f"structured pruning supports MobileNet v1-style SSD graphs only: {exc}") from exc
    if not targets:
        raise ModelError("structured pruning found no depthwise -> pointwise pair to prune in the model")
    return targets


def format_proxy(proxy: dict) -> str:
    """One line of held-back agreement figures."""
    names = {"logit_rel_error": "logit rel. err", "score_mae": "score MAE", "box_weighted_mse": "box wMSE",
             "top_score_weighted_mae": "top-score wMAE"}
    return ", ".join(f"{names.get(k, k)} {v:.4g}" for k, v in proxy.items())


def prune_structured(src, out, calibration: Sequence, options: StructuredOptions = StructuredOptions(),
                     labels: Optional[list] = None, log: Optional[Callable[[str], None]] = None) -> StructuredReport:
    """``out`` (int8 ``.tflite``): ``src`` with whole channels removed, refit, recovered and quantized."""
    say = log or (lambda _msg: None)
    images, _ = list_media(calibration)
    if not images:  # the int8 step calibrates on image files
        raise ConfigError("structured pruning needs calibration images, not only videos (make a folder of "
                          "frames and photos with `edgedet calibration build`)")
    report, t0 = StructuredReport(out=str(out)), time.perf_counter()
    say("reading the float graph and the calibration pool")
    dense = read_graph(src)
    pool = ImagePool.load(calibration, options.pool)
    fit = pixels_to_input(dense, augmented_views(pool.fit, dense.input_size, options.views, seed=0))
    held = pixels_to_input(dense, augmented_views(pool.held, dense.input_size, 2, seed=1))
    report.seconds["load"] = time.perf_counter() - t0
    targets = structured_targets(dense, options.first, options.last)
    report.ratio = options.ratio
    if options.speedup is not None:
        report.ratio = ratio_for_speedup(dense, targets, options.speedup, options.multiple)
    say(f"one-shot: removing {report.ratio:.0%} of the channels of {len(targets)} layers, refits on "
        f"{len(fit)} views")
    pruned, one = prune_graph(dense, fit, targets, {t.name: report.ratio for t in targets}, options.lam,
                              options.multiple)
    report.macs_before, report.macs_after = one.macs_before, one.macs_after
    report.kept = {k: len(v) for k, v in one.keep.items()}
    report.seconds["one_shot"] = time.perf_counter() - t0 - report.seconds["load"]
    report.proxies["one_shot"] = held_proxy(dense, pruned, held)
    say(f"one-shot: {1 - one.macs_after / one.macs_before:.1%} of MACs removed, "
        f"held-back {format_proxy(report.proxies['one_shot'])}")
    if options.distill is not None:
        t1 = time.perf_counter()
        say(f"distilling: {options.distill.steps} steps of {options.distill.batch} views")
        pruned, drep = distill(dense, pruned, pool.fit, options.distill, log=say, keep=one.keep)
        report.seconds["distill"] = time.perf_counter() - t1
        report.distill_losses = drep.losses
        report.proxies["distilled"] = held_proxy(dense, pruned, held)
        say(f"distilled ({drep.steps} steps): held-back {format_proxy(report.proxies['distilled'])}")
    t2 = time.perf_counter()
    say("int8: float export and quantization")
    result = export_int8(pruned, out, images, labels=labels, log=log)
    report.census = dict(result.census)
    report.seconds["int8"] = time.perf_counter() - t2
    return report


def default_calibration(assets) -> list:
    """The calibration pool under an assets folder: its photos and videos (no evaluation set)."""
    root = Path(assets)
    return [p for p in (root / "images", root / "videos") if p.exists()]
