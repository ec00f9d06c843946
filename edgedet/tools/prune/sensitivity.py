"""How much each layer, and the whole model, suffers from pruning (``edgedet prune --sensitivity``).

- Per layer: prune that layer alone to each sparsity of a grid and measure the mAP drop (with an
  evaluation set) or the detection heads' output error on held-out calibration inputs.
- Whole model: the sparsity -> metric curve of ``magnitude`` (uniform) and ``reconstruct`` (with
  the chosen allocation), optionally plotted to a PNG.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ...tflite import read_model
from . import layers as pl
from .pruner import (
    ModelFile,
    PruneOptions,
    Pruner,
    capture,
    head_error,
    head_tensors,
    load_calibration,
    measure_sensitivity,
    prune_model,
    select_layers,
    short_name,
    split_calibration,
)

LAYER_GRID = (0.3, 0.5, 0.7)
CURVE = (0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass
class SensitivityReport:
    metric: str  # "mAP" (higher is better) or "head error" (lower is better)
    grid: tuple
    layers: list = field(default_factory=list)  # {name, kind, size, values: [(sparsity, value)]}
    curve: dict = field(default_factory=dict)  # method -> [(target, achieved, value)]
    dense: Optional[float] = None

    def to_dict(self) -> dict:
        return {"metric": self.metric, "grid": list(self.grid), "dense": self.dense, "layers": self.layers,
                "curve": {k: [list(p) for p in v] for k, v in self.curve.items()}}

    def format_table(self) -> str:
        drop = self.metric == "mAP"
        head = "mAP drop (points)" if drop else "head output error (held-out calibration)"
        lines = [f"per-layer sensitivity, layer pruned alone: {head}",
                 f"{'layer':<52} {'kind':<9} {'weights':>8} " + " ".join(f"{s:>8.0%}" for s in self.grid)]
        for row in self.layers:
            vals = [((self.dense - v) * 100 if drop else v) for _, v in row["values"]]
            lines.append(f"{short_name(row['name']):<52} {row['kind']:<9} {row['size']:>8} "
                         + " ".join(f"{v:8.2f}" if drop else f"{v:8.1e}" for v in vals))
        if self.curve:
            lines.append(f"sparsity curve ({'mAP' if drop else 'head error'}"
                         + (f"; dense {self.dense:.4f}" if self.dense is not None else "") + ")")
            for method, pts in self.curve.items():
                lines.append(f"  {method:<28} " + "  ".join(f"{a:.0%}: {v:.4f}" if drop else f"{a:.0%}: {v:.2e}"
                                                            for _, a, v in pts))
        return "\n".join(lines)


def plot_curve(report: SensitivityReport, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for method, pts in report.curve.items():
        xs = [0.0] + [a for _, a, _ in pts] if report.dense is not None else [a for _, a, _ in pts]
        ys = ([report.dense] if report.dense is not None else []) + [v for _, _, v in pts]
        ax.plot([x * 100 for x in xs], [y * 100 if report.metric == "mAP" else y for y in ys], "o-",
                label=method)
    ax.set_xlabel("zeroed weights in pruned layers (%)")
    ax.set_ylabel("COCO mAP (%)" if report.metric == "mAP" else "head output error")
    if report.dense is not None:
        ax.axhline(report.dense * 100, color="grey", lw=0.8, ls="--", label="dense")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    import io

    from ...tflite import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def run_sensitivity(src, opts: PruneOptions, *, images=None, annotations=None, plot=None,
                    layer_grid: Sequence[float] = LAYER_GRID, curve: Sequence[float] = CURVE,
                    per_layer: bool = True, inputs=None) -> SensitivityReport:
    """Per-layer table and sparsity curve for ``src`` under ``opts`` (see the module docstring)."""
    src = Path(src)
    score = None
    dense_value = None
    if images and annotations:
        from .eval import map_of

        def score(path):  # noqa: F811 - the evaluation set replaces the calibration error
            return map_of(path, images, annotations, opts.threads)

        dense_value = score(src)
    if inputs is None and opts.calibration:
        inputs = load_calibration(src, opts)
    report = SensitivityReport(metric="mAP" if score else "head error", grid=tuple(layer_grid), dense=dense_value)
    base = read_model(src)
    layers = select_layers(pl.find_layers(base), opts.skip)
    heads = head_tensors(base)
    fit, held = split_calibration(inputs or [], opts.holdout)
    dense_heads = None
    if inputs:
        with ModelFile(base) as path:
            dense_heads = capture(path, held, heads, opts.threads, preserve=False)
    if score is None and not inputs:
        from ...errors import ConfigError

        raise ConfigError("--sensitivity needs --calibration (or --images and --annotations)")

    def measure(model) -> float:
        with ModelFile(model) as path:
            if score is not None:
                return score(path)
            return head_error(dense_heads, capture(path, held, heads, opts.threads, preserve=False))

    if per_layer:
        model = copy.deepcopy(base)
        dense = None
        if opts.method == "reconstruct":
            data_layers = [x for x in layers if x.kind != "depthwise"]
            with ModelFile(model) as path:
                dense = capture(path, fit, sorted({x.input for x in data_layers}), opts.threads)
        pruner = Pruner(model, opts, fit, dense)
        curves = measure_sensitivity(model, layers, pruner, held, heads, dense_heads, tuple(layer_grid),
                                     opts.threads, say=opts.progress, score=score)
        for x in layers:
            report.layers.append({"name": x.name, "kind": x.kind, "size": x.size, "values": curves[x.op_index]})
    methods = [("magnitude (uniform)", "magnitude", "uniform")]
    if inputs:
        methods.append((f"reconstruct ({opts.allocation})", "reconstruct", opts.allocation))
    for label, method, allocation in methods:
        cache: dict = {}
        pts = []
        for s in curve:
            if s > opts.max_layer_sparsity:
                continue
            o = copy.copy(opts)
            o.method, o.allocation, o.sparsity = method, allocation, s
            model = copy.deepcopy(base)
            if opts.progress:
                opts.progress(f"curve: {label} at {s:.0%}")
            results, _ = prune_model(model, o, inputs=inputs, curves=cache)
            achieved = sum(r.sparsity * r.size for r in results) / max(sum(r.size for r in results), 1)
            pts.append((s, achieved, measure(model)))
        report.curve[label] = pts
    if plot:
        plot_curve(report, plot)
    return report
