"""``edgedet prune``: one-shot pruning of the weights of a ``.tflite`` model, without training.

Works on the file directly (float, int8 per-tensor / per-channel, uint8 asymmetric weights): a
pruned weight is stored as its zero point, so the file keeps its size and every runtime loads it
unchanged. Two methods:

- ``magnitude``: per layer, remove the weights of smallest absolute value. No data needed.
- ``reconstruct`` (default): data-aware, layer by layer. Calibration images go through the model
  (interpreter with all tensors preserved) to collect each layer's input; with ``H = X^T X`` the
  weights with least ``w^2/[H^-1]_jj`` saliency go, and the remaining weights and the bias are
  re-fitted through the inverse Hessian and re-quantized into the layer's own scale and zero point
  (see ``recon``). With ``sequential=True`` layers are done in graph order, each fed by the
  already-pruned model and refitted to reproduce the dense model's output.

Per-layer sparsity (``allocation="sensitivity"``, the default with calibration data): each layer
is pruned alone to a grid of sparsities and the detection heads' output error is measured on
held-out calibration inputs; the budget then goes to the layers where it costs least
(``alloc``), never above ``max_layer_sparsity``.

``prune(src, out, PruneOptions(...)) -> PruneReport``; see ``edgedet prune --help``.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ...errors import ConfigError, ModelError
from ...tflite import model_to_bytes, read_model, write_atomic
from . import layers as pl
from .recon import (
    Grid,
    augmented_cross,
    augmented_gram,
    im2col,
    magnitude_mask,
    output_error,
    retarget,
    sparsegpt,
)

METHODS = ("magnitude", "reconstruct")
ALLOCATIONS = ("sensitivity", "uniform")
SKIP_KINDS = ("pointwise", "conv", "depthwise", "fc", "first", "last")
DEFAULT_SKIP = ("depthwise", "conv")


@dataclass
class PruneOptions:
    sparsity: float = 0.5
    method: str = "reconstruct"
    skip: Sequence[str] = DEFAULT_SKIP  # layer kinds, "first", "last", or parts of layer names
    calibration: Sequence[str] = ()
    num_calib: int = 128  # chosen on held-back calibration images: 128 beat 64 on every proxy
    threads: Optional[int] = None
    max_layer_sparsity: float = 0.9  # cap per layer (guards heads of classes absent from calibration)
    sequential: bool = True  # refit each layer on the already-pruned model's activations (False: dense ones)
    damp: float = 0.01
    allocation: Optional[str] = None  # "sensitivity" | "uniform"; None: sensitivity when calibrated
    holdout: float = 0.25  # share of calibration inputs kept aside to measure output error
    normalization: Optional[Sequence[float]] = None  # input (mean, std); default from sidecar or 127.5
    progress: Optional[Callable[[str], None]] = None

    def validate(self) -> None:
        if not 0.0 < float(self.sparsity) < 1.0:
            raise ConfigError(f"--sparsity must be between 0 and 1 (exclusive), got {self.sparsity}")
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if not 0.0 < float(self.max_layer_sparsity) <= 1.0:
            raise ConfigError(f"--max-layer-sparsity must be in (0, 1], got {self.max_layer_sparsity}")
        if self.sparsity > self.max_layer_sparsity:
            raise ConfigError(f"--sparsity {self.sparsity} is above --max-layer-sparsity "
                              f"{self.max_layer_sparsity}")
        if self.method == "reconstruct" and not self.calibration:
            raise ConfigError("--method reconstruct needs --calibration DIR (images or videos)")
        if self.allocation is None:
            self.allocation = "sensitivity" if self.calibration else "uniform"
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, not {self.allocation!r}")
        if self.allocation == "sensitivity" and not self.calibration:
            raise ConfigError("--allocation sensitivity needs --calibration DIR (or use --allocation uniform)")
        if int(self.num_calib) < 1:
            raise ConfigError(f"--num-calib must be at least 1, got {self.num_calib}")


@dataclass
class LayerResult:
    name: str
    kind: str
    size: int
    sparsity_before: float
    sparsity: float  # achieved fraction of weights at the zero point
    target: float
    method: str
    rel_error: Optional[float] = None  # relative output error on calibration data (reconstruct)

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class PruneReport:
    src: str
    out: str
    method: str
    target: float
    layers: list[LayerResult]
    sizes: dict = field(default_factory=dict)  # {"src"/"out": {"raw", "gzip", "zstd"}}
    invoke_ms: dict = field(default_factory=dict)  # {"src", "out"}
    seconds: float = 0.0
    n_calib: int = 0
    agreement: Optional[float] = None  # relative error of the detection heads on calibration data

    @property
    def pruned_weights(self) -> int:
        return int(sum(round(r.sparsity * r.size) for r in self.layers))

    @property
    def total_weights(self) -> int:
        return int(sum(r.size for r in self.layers))

    @property
    def overall_sparsity(self) -> float:
        return self.pruned_weights / max(self.total_weights, 1)

    def to_dict(self) -> dict:
        return {"src": self.src, "out": self.out, "method": self.method, "target": self.target,
                "overall_sparsity": self.overall_sparsity, "pruned_weights": self.pruned_weights,
                "total_weights": self.total_weights, "sizes": self.sizes, "invoke_ms": self.invoke_ms,
                "seconds": self.seconds, "n_calib": self.n_calib, "agreement": self.agreement,
                "layers": [r.to_dict() for r in self.layers]}

    def save_accuracy(self, map_value: float, annotations) -> None:
        """Record a measured mAP of the pruned model in its sidecar."""
        from ...sidecar import update_sidecar

        update_sidecar(self.out, accuracy={"dataset": str(annotations), "mAP": float(map_value)})

    def format_table(self) -> str:
        lines = [f"{'layer':<52} {'kind':<9} {'weights':>8} {'before':>7} {'after':>7} {'rel.err':>8}"]
        for r in self.layers:
            err = "" if r.rel_error is None else f"{r.rel_error:8.1e}"
            lines.append(f"{short_name(r.name):<52} {r.kind:<9} {r.size:>8} {r.sparsity_before:7.1%} "
                         f"{r.sparsity:7.1%} {err:>8}")
        lines.append(f"overall: {self.pruned_weights}/{self.total_weights} weights zero "
                     f"({self.overall_sparsity:.1%}) in {len(self.layers)} layers, method {self.method}, "
                     f"{self.seconds:.1f} s")
        for key in ("src", "out"):
            s = self.sizes.get(key)
            if s:
                z = f", zstd {s['zstd'] / 1e6:.2f} MB" if s.get("zstd") else ""
                lines.append(f"{key:>3} size: raw {s['raw'] / 1e6:.2f} MB, gzip {s['gzip'] / 1e6:.2f} MB{z}")
        if self.invoke_ms:
            lines.append("invoke ms (median): " + ", ".join(f"{k} {v:.2f}" for k, v in self.invoke_ms.items()))
        if self.agreement is not None:
            lines.append(f"head output error vs dense on held-out calibration inputs: {self.agreement:.2e}")
        return "\n".join(lines)


def short_name(name: str, width: int = 52) -> str:
    """A layer name in ``width`` characters: both ends kept (the scope and the op), ``...`` between."""
    if len(name) <= width:
        return name
    head = (width - 3) // 2
    return f"{name[:head]}...{name[-(width - 3 - head):]}"


# ---------------------------------------------------------------------------------------------
# layer selection


def select_layers(layers: list[pl.PrunableLayer], skip: Sequence[str]) -> list[pl.PrunableLayer]:
    """Layers to prune: all prunable ones minus those named by ``skip`` tokens."""
    tokens = [t.strip() for t in skip if t and t.strip()]
    first = layers[0].op_index if layers else None
    chosen = []
    for layer in layers:
        drop = False
        for t in tokens:
            if t in ("pointwise", "conv", "depthwise", "fc"):
                drop |= layer.kind == t
            elif t == "first":
                drop |= layer.op_index == first
            elif t in ("last", "heads"):
                drop |= layer.feeds_output
            else:
                drop |= t in layer.name
        if not drop:
            chosen.append(layer)
    return chosen


def _upstream(model, layers: list[pl.PrunableLayer]) -> dict[int, set[int]]:
    """For each layer (by op index), the op indices of the given layers upstream of it."""
    sg = model.subgraphs[0]
    producer = {}
    for i, op in enumerate(sg.operators):
        for t in op.outputs:
            producer[int(t)] = i
    ops = {layer.op_index for layer in layers}
    out: dict[int, set[int]] = {}
    for layer in layers:
        seen, stack, found = set(), [layer.input], set()
        while stack:
            p = producer.get(stack.pop())
            if p is None or p in seen:
                continue
            seen.add(p)
            if p in ops:
                found.add(p)
            stack.extend(int(t) for t in sg.operators[p].inputs if t >= 0)
        out[layer.op_index] = found
    return out


def levels(model, layers: list[pl.PrunableLayer]) -> list[list[pl.PrunableLayer]]:
    """Group layers so that no layer has another of its group upstream (graph order kept)."""
    up = _upstream(model, layers)
    level: dict[int, int] = {}
    for layer in sorted(layers, key=lambda x: x.op_index):
        level[layer.op_index] = 1 + max((level[u] for u in up[layer.op_index]), default=-1)
    groups: dict[int, list] = {}
    for layer in layers:
        groups.setdefault(level[layer.op_index], []).append(layer)
    return [groups[k] for k in sorted(groups)]


# ---------------------------------------------------------------------------------------------
# activations


class ModelFile:
    """A ``ModelT`` written to a temporary .tflite so an interpreter can load it."""

    def __init__(self, model):
        self.dir = tempfile.TemporaryDirectory(prefix="edgedet-prune-")
        self.path = Path(self.dir.name) / "model.tflite"
        self.path.write_bytes(model_to_bytes(model))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        self.dir.cleanup()


def _interpreter(path, threads, preserve=True):
    from ...tflite import load_interpreter

    return load_interpreter(path, threads, preserve_all_tensors=preserve)


def capture(path, inputs: list[np.ndarray], tensors: Sequence[int], threads=None,
            preserve: bool = True) -> dict[int, list]:
    """Raw values of ``tensors`` for every input. ``preserve`` (XNNPACK off) makes intermediate
    tensors real; without it only graph outputs and inputs of non-delegated ops are valid."""
    interp = _interpreter(path, threads, preserve)
    index = interp.get_input_details()[0]["index"]
    out: dict[int, list] = {t: [] for t in tensors}
    for x in inputs:
        interp.set_tensor(index, x)
        interp.invoke()
        for t in tensors:
            out[t].append(np.array(interp.get_tensor(t)))
    return out


def _dequant(q: np.ndarray, quant) -> np.ndarray:
    if quant is None:
        return q.astype(np.float64)
    scale, zp = quant
    return (q.astype(np.float64) - zp) * scale


def layer_inputs(model, layer: pl.PrunableLayer, raw: np.ndarray) -> np.ndarray:
    """One image's raw input tensor -> the layer's input matrix ``[rows, fan_in]`` (real values)."""
    x = _dequant(raw, pl.input_quant(model, layer))
    if layer.kind == "fc":
        return x.reshape(-1, layer.shape[1])
    x = x.reshape(x.shape[-3:])  # [H, W, C]
    if layer.kind == "pointwise":
        pad = pl.layer_padding(model, layer)
        sh, sw = pad["stride"]
        return x[::sh, ::sw].reshape(-1, x.shape[-1])
    if layer.kind == "conv":
        _, kh, kw, _ = layer.shape
        return im2col(x, kh, kw, **pl.layer_padding(model, layer))
    raise ValueError(f"no input matrix for {layer.kind} layers")


def head_tensors(model) -> list[int]:
    """The tensors that carry the detector's raw outputs: inputs of a final custom op, else outputs."""
    sg = model.subgraphs[0]
    last = sg.operators[-1]
    code = model.operatorCodes[last.opcodeIndex]
    if code.customCode:
        consts = {i for i, t in enumerate(sg.tensors) if pl.tensor_array(model, t) is not None}
        return [int(t) for t in last.inputs if t >= 0 and int(t) not in consts]
    return [int(t) for t in sg.outputs]


def head_error(dense: dict[int, list], pruned: dict[int, list]) -> float:
    """Mean relative squared error of the head tensors, pruned vs dense (raw stored values)."""
    errs = []
    for t, ds in dense.items():
        d = np.stack(ds).astype(np.float64)
        p = np.stack(pruned[t]).astype(np.float64)
        d0 = d - d.mean()
        errs.append(float(np.sum((p - d) ** 2) / max(np.sum(d0 ** 2), 1e-12)))
    return float(np.mean(errs)) if errs else 0.0


# ---------------------------------------------------------------------------------------------
# pruning one layer


def _grid(model, layer: pl.PrunableLayer) -> Grid:
    wq = pl.weight_quant(model, layer)
    if not wq.quantized:
        return Grid(None, None)
    n = layer.out_channels
    scale = np.broadcast_to(wq.scale.reshape(-1), (n,)) if wq.scale.size == 1 else wq.scale
    zp = np.broadcast_to(wq.zero_point.reshape(-1), (n,)) if wq.zero_point.size == 1 else wq.zero_point
    return Grid(np.asarray(scale, float), np.asarray(zp, float), wq.qmin, wq.qmax)


def prune_magnitude(model, layer: pl.PrunableLayer, sparsity: float) -> None:
    w = pl.real_weights(model, layer)
    keep = magnitude_mask(w, sparsity)
    pl.write_weights(model, layer, pl.quantize_weights(model, layer, w, keep))


class _Stats:
    """Accumulated ``H = Xp^T Xp`` and ``C = Xp^T Xd`` of one layer over the calibration set."""

    def __init__(self):
        self.h = None
        self.c = None  # None while the inputs are the dense model's own

    def add(self, xp: np.ndarray, xd: np.ndarray | None) -> None:
        h = augmented_gram(xp)
        self.h = h if self.h is None else self.h + h
        if xd is not None:
            c = augmented_cross(xp, xd)
            self.c = c if self.c is None else self.c + c


def prune_reconstruct(model, layer: pl.PrunableLayer, sparsity: float, stats: _Stats,
                      damp: float = 0.01) -> float:
    """Prune one layer in place with the data-aware method; returns its relative output error."""
    w = pl.real_weights(model, layer)
    b = pl.bias_real(model, layer)
    has_bias = layer.bias is not None and pl.tensor_array(
        model, model.subgraphs[0].tensors[layer.bias]) is not None
    wa = np.concatenate([w, b[:, None]], axis=1)
    if stats.c is not None:  # inputs changed by upstream pruning: refit to the dense outputs
        wa = retarget(wa, stats.h, stats.c, damp)
    w_t, b_t = wa[:, :-1], wa[:, -1]
    if not has_bias:  # nowhere to put a mean shift: keep the bias column at zero
        b_t = np.zeros_like(b_t)
    w_new, b_new, keep = sparsegpt(w_t, b_t, stats.h, sparsity, _grid(model, layer), damp=damp)
    if not has_bias:
        b_new = np.zeros_like(b_new)
    pl.write_weights(model, layer, pl.quantize_weights(model, layer, w_new, keep))
    if has_bias:
        pl.write_bias(model, layer, b_new)
    # error against what the dense layer would output on the dense inputs (via retargeted ref)
    w_q = pl.real_weights(model, layer)
    b_q = pl.bias_real(model, layer) if has_bias else np.zeros_like(b_new)
    return output_error(w_q, b_q, w_t, b_t, stats.h)


# ---------------------------------------------------------------------------------------------
# the whole model


def layer_targets(layers: list[pl.PrunableLayer], sparsity: float, cap: float,
                  already: dict[int, float]) -> dict[int, float]:
    """Per-layer sparsity: uniform, never below what a layer already has, capped at ``cap``."""
    return {layer.op_index: float(min(cap, max(sparsity, already.get(layer.op_index, 0.0))))
            for layer in layers}


def _say(opts: PruneOptions, msg: str) -> None:
    if opts.progress is not None:
        opts.progress(msg)


def split_calibration(inputs: list, holdout: float) -> tuple[list, list]:
    """``(fit, held)``: every k-th input is held out to measure the pruned model honestly."""
    if holdout <= 0 or len(inputs) < 4:
        return list(inputs), list(inputs)
    step = max(2, int(round(1.0 / holdout)))
    held = inputs[step - 1::step]
    fit = [x for i, x in enumerate(inputs) if i % step != step - 1]
    return fit, held


class _Snapshot:
    """Saved weight and bias buffers of one layer, to try a pruning and undo it."""

    def __init__(self, model, layer: pl.PrunableLayer):
        sg = model.subgraphs[0]
        self.model = model
        self.buffers = [sg.tensors[t].buffer for t in (layer.weight, layer.bias) if t is not None]
        self.data = [np.array(model.buffers[b].data, copy=True) for b in self.buffers]

    def restore(self) -> None:
        for b, d in zip(self.buffers, self.data):
            self.model.buffers[b].data = d.copy()


class Pruner:
    """Prunes layers of one model, with dense-input statistics computed once per layer."""

    def __init__(self, model, opts: PruneOptions, fit: list, dense: dict | None):
        self.model, self.opts, self.fit, self.dense = model, opts, fit, dense
        self._dense_stats: dict[int, _Stats] = {}

    def dense_stats(self, layer: pl.PrunableLayer) -> _Stats:
        st = self._dense_stats.get(layer.op_index)
        if st is None:
            st = _Stats()
            for raw in self.dense[layer.input]:
                st.add(layer_inputs(self.model, layer, raw), None)
            self._dense_stats[layer.op_index] = st
        return st

    def stats(self, layer: pl.PrunableLayer, current: dict | None) -> _Stats:
        if current is None:
            return self.dense_stats(layer)
        st = _Stats()
        for raw_p, raw_d in zip(current[layer.input], self.dense[layer.input]):
            st.add(layer_inputs(self.model, layer, raw_p), layer_inputs(self.model, layer, raw_d))
        return st

    def method_for(self, layer: pl.PrunableLayer) -> str:
        return "magnitude" if self.opts.method == "magnitude" or layer.kind == "depthwise" else "reconstruct"

    def prune(self, layer: pl.PrunableLayer, sparsity: float, current: dict | None = None) -> Optional[float]:
        if self.method_for(layer) == "magnitude":
            prune_magnitude(self.model, layer, sparsity)
            return None
        return prune_reconstruct(self.model, layer, sparsity, self.stats(layer, current), self.opts.damp)


SENSITIVITY_GRID = (0.3, 0.5, 0.7, 0.85, 0.95)


def measure_sensitivity(model, layers, pruner: Pruner, held: list, heads: list[int], dense_heads: dict,
                        grid=SENSITIVITY_GRID, threads=None, say=None,
                        score: Optional[Callable[[Path], float]] = None) -> dict[int, list]:
    """Per layer: ``[(sparsity, head error on held-out calibration inputs)]``, one layer at a time.

    ``score(model_path)`` replaces the head error (e.g. an mAP drop) when given."""
    curves: dict[int, list] = {}
    for n, layer in enumerate(layers):
        if say:
            say(f"sensitivity {n + 1}/{len(layers)}: {layer.name}")
        snap = _Snapshot(model, layer)
        points = []
        for s in grid:
            pruner.prune(layer, s)
            achieved = pl.sparsity_of(model, layer)
            with ModelFile(model) as path:
                if score is not None:
                    value = score(path)
                else:
                    value = head_error(dense_heads, capture(path, held, heads, threads, preserve=False))
            points.append((achieved, value))
            snap.restore()
        curves[layer.op_index] = points
    return curves


def prune_model(model, opts: PruneOptions, layers: list[pl.PrunableLayer] | None = None,
                targets: dict[int, float] | None = None, inputs: list[np.ndarray] | None = None,
                curves: dict | None = None) -> tuple[list[LayerResult], Optional[float]]:
    """Prune ``model`` (a ``ModelT``) in place; returns per-layer results and the head error
    on held-out calibration inputs (None without calibration inputs).

    ``curves``: a dict to cache the measured per-layer sensitivity in (filled when empty, reused
    when not: pruning the same model to several sparsities measures it once)."""
    from .alloc import allocate

    opts.validate()
    all_layers = pl.find_layers(model)
    if layers is None:
        layers = select_layers(all_layers, opts.skip)
    if not all_layers:
        raise ModelError("the model has no convolution or fully-connected layer with constant weights "
                         "to prune")
    if not layers:
        raise ConfigError("--skip leaves no layer to prune")
    if opts.method == "reconstruct" and not inputs:
        raise ConfigError("--method reconstruct needs calibration inputs")
    if opts.allocation == "sensitivity" and not inputs:
        raise ConfigError("--allocation sensitivity needs --calibration inputs")
    before = {layer.op_index: pl.sparsity_of(model, layer) for layer in layers}
    fit, held = split_calibration(inputs or [], opts.holdout)
    heads = head_tensors(model)
    data_layers = [x for x in layers if x.kind != "depthwise"] if opts.method == "reconstruct" else []
    dense = None
    dense_heads = None
    if inputs:
        with ModelFile(model) as path:
            if data_layers:
                _say(opts, f"reading activations of {len(fit)} calibration inputs")
                dense = capture(path, fit, sorted({x.input for x in data_layers}), opts.threads)
            dense_heads = capture(path, held, heads, opts.threads, preserve=False)
    pruner = Pruner(model, opts, fit, dense)
    if targets is None:
        if opts.allocation == "uniform":
            targets = layer_targets(layers, opts.sparsity, opts.max_layer_sparsity, before)
        else:
            grid = tuple(s for s in SENSITIVITY_GRID if s <= opts.max_layer_sparsity) or (opts.max_layer_sparsity,)
            if not curves:
                measured = measure_sensitivity(model, layers, pruner, held, heads, dense_heads, grid,
                                               opts.threads, say=lambda m: _say(opts, m))
                if curves is None:
                    curves = measured
                else:
                    curves.update(measured)
            targets = allocate(curves, {x.op_index: x.size for x in layers}, opts.sparsity, before,
                               opts.max_layer_sparsity)
    errors: dict[int, float] = {}
    for layer in layers:  # layers without calibration data first (they do not read activations)
        if layer not in data_layers:
            pruner.prune(layer, targets[layer.op_index])
    changed = len(data_layers) < len(layers)
    groups = levels(model, data_layers) if (opts.sequential and data_layers) else (
        [data_layers] if data_layers else [])
    for gi, group in enumerate(groups):
        _say(opts, f"pruning {gi + 1}/{len(groups)}: {len(group)} layer(s), from {group[0].name}")
        current = None
        if changed and opts.sequential:
            with ModelFile(model) as path:
                current = capture(path, fit, sorted({x.input for x in group}), opts.threads)
        for layer in group:
            errors[layer.op_index] = pruner.prune(layer, targets[layer.op_index], current)
        changed = True
    agreement = None
    if inputs:
        with ModelFile(model) as path:
            agreement = head_error(dense_heads, capture(path, held, heads, opts.threads, preserve=False))
    results = [LayerResult(name=x.name, kind=x.kind, size=x.size, sparsity_before=before[x.op_index],
                           sparsity=pl.sparsity_of(model, x), target=targets[x.op_index],
                           method=pruner.method_for(x), rel_error=errors.get(x.op_index))
               for x in layers]
    return results, agreement


def file_sizes(data: bytes) -> dict:
    """Raw, gzip -9 and (if ``zstandard`` is installed) zstd -19 sizes of ``data`` in bytes."""
    sizes = {"raw": len(data), "gzip": len(gzip.compress(data, compresslevel=9, mtime=0))}
    try:
        import zstandard
    except ImportError:
        sizes["zstd"] = None
    else:
        sizes["zstd"] = len(zstandard.ZstdCompressor(level=19).compress(data))
    return sizes


def invoke_ms(path, threads=None, runs: int = 30, sample: np.ndarray | None = None) -> float:
    """Median invoke time in ms with the default (XNNPACK) interpreter."""
    from ...tflite import median_invoke_ms

    return median_invoke_ms(path, threads, runs=runs, warmup=1, sample=sample, fill="zeros")


def load_calibration(src, opts: PruneOptions) -> list[np.ndarray]:
    from ...sidecar import load_sidecar
    from .calib import calibration_inputs

    norm = opts.normalization
    if norm is None:
        norm = (load_sidecar(src).get("input") or {}).get("normalization")
    interp = _interpreter(src, opts.threads, preserve=False)
    return calibration_inputs(opts.calibration, opts.num_calib, interp, norm)


def prune(src, out, opts: PruneOptions, *, measure: bool = True) -> PruneReport:
    """Prune ``src`` into ``out`` (written atomically, with a sidecar); see the module docstring."""
    t0 = time.perf_counter()
    opts.validate()
    src, out = Path(src), Path(out)
    if out.exists() and out.resolve() == src.resolve():
        raise ConfigError("output must differ from the source model")
    model = read_model(src)
    if not pl.find_layers(model):
        raise ModelError(f"{src}: no convolution or fully-connected layer with constant weights to prune")
    inputs = None
    if opts.method == "reconstruct":
        _say(opts, "reading calibration images")
        inputs = load_calibration(src, opts)
    results, agreement = prune_model(model, opts, inputs=inputs)
    data = model_to_bytes(model)
    write_atomic(out, data)
    report = PruneReport(src=str(src), out=str(out), method=opts.method, target=opts.sparsity, layers=results,
                         n_calib=len(inputs or []), agreement=agreement)
    if measure:
        report.sizes = {"src": file_sizes(src.read_bytes()), "out": file_sizes(data)}
        sample = inputs[0] if inputs else None
        report.invoke_ms = {"src": invoke_ms(src, opts.threads, sample=sample),
                            "out": invoke_ms(out, opts.threads, sample=sample)}
    report.seconds = time.perf_counter() - t0
    _write_sidecar(src, out, opts, report)
    return report


def _write_sidecar(src: Path, out: Path, opts: PruneOptions, report: PruneReport) -> None:
    from ...sidecar import load_sidecar, resolve_relative, save_sidecar

    data = load_sidecar(src)
    labels = data.get("labels")
    if isinstance(labels, str):  # keep the label file reachable from the new location
        data["labels"] = str(resolve_relative(src, labels).resolve())
    if labels is None:  # a registry model's file given by path: the registry knows its labels
        from ...registry import registry_labels_for_file

        known = registry_labels_for_file(src)
        if known is not None:
            data["labels"] = str(known)
    anchors = data.get("anchors")
    if isinstance(anchors, dict) and isinstance(anchors.get("file"), str):
        data["anchors"] = {**anchors, "file": str(resolve_relative(src, anchors["file"]).resolve())}
    for key in ("accuracy", "speed", "published"):  # measured on the dense model: no longer true
        data.pop(key, None)
    if data.get("name"):
        data["name"] = f"{data['name']}-pruned{round(opts.sparsity * 100)}"
    data["source"] = {"path": str(src.resolve())}  # the parent model (its checksum is not ours)
    history = list(data.get("history") or [])
    history.append({
        "tool": "prune", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from": src.name,
        "method": opts.method, "target_sparsity": opts.sparsity,
        "overall_sparsity": round(report.overall_sparsity, 4), "layers": len(report.layers),
        "skip": list(opts.skip), "max_layer_sparsity": opts.max_layer_sparsity,
        "num_calib": report.n_calib, "sequential": opts.sequential,
    })
    data["history"] = history
    save_sidecar(out, data)


def default_assets() -> Path:
    env = os.environ.get("EDGEDET_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "assets"
