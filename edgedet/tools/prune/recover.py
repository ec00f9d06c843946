"""Recovery of an unstructured-pruned SSD: a short label-free distillation of the pruned network
against the dense one with every zero weight held at zero, written back into the pruned file.

The pruned file is read as a float graph (``structured.graph``), trained as a Keras network
towards the dense one on random crops and flips of the calibration pool (``structured.distill``
with masks), and the trained weights and biases go back into the same file in each layer's own
quantization (its scales and zero points, so the file keeps the source's format and every pruned
weight stays exactly at its zero point). Needs the ``convert`` extra (TensorFlow). The pool is
split as in structured pruning: every 5th image is held back and only measured (agreement with the
dense model before and after), never trained on.

Measured on SSD MobileNet v1 (held-back calibration images): exporting the recovered network to
int8 through ``edgedet.tools.quantize`` instead lost more agreement than the recovery gained (and
the quantizer's adaptive rounding moves some zeros); writing back into the uint8 file kept most of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ...errors import ConfigError, ModelError

EXTRA_HINT = "pip install 'edgedet[convert]'"


@dataclass(frozen=True)
class RecoverOptions:
    """``steps`` of ``batch`` random crops/flips of the fitting images at ``learning_rate`` (Adam),
    on a pool of up to ``pool`` calibration images (every 5th held back). Chosen on held-back
    calibration images (docs/pruning.md)."""

    steps: int = 600
    learning_rate: float = 3e-5
    batch: int = 8
    feature_weight: float = 1.0  # > 0: also match the pruned convs' outputs (normalised MSE), heads excepted
    pool: int = 512
    seed: int = 0


@dataclass
class RecoverReport:
    steps: int = 0
    proxies: dict = field(default_factory=dict)  # "pruned" / "recovered" -> held-back agreement with the dense model
    seconds: dict = field(default_factory=dict)  # phase -> wall seconds
    zeros: dict = field(default_factory=dict)  # "pruned" / "recovered" -> weights at their zero point (trained layers)
    layers: int = 0  # layers written back

    def format_lines(self) -> list:
        from .structured import format_proxy

        lines = [f"held-back agreement with the dense model, {k}: {format_proxy(v)}" for k, v in self.proxies.items()]
        lines.append(f"recovery: {self.steps} steps, {self.layers} layers retrained; weights at zero "
                     f"{self.zeros.get('pruned', 0)} before, {self.zeros.get('recovered', 0)} after")
        lines.append("minutes: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in self.seconds.items()))
        return lines

    def to_dict(self) -> dict:
        return dict(vars(self))


def require_tensorflow(what: str, skip_hint: str = "") -> None:
    """A one-line ``ConfigError`` when TensorFlow is not installed (checked before any work)."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise ConfigError(f"{what} needs TensorFlow: {EXTRA_HINT}{skip_hint}")


def zero_masks(graph) -> dict:
    """Layer -> 0/1 mask of its kernel's nonzero weights, for every layer with a zero weight."""
    return {la.name: (la.kernel != 0).astype(np.float32) for la in graph.layers
            if la.kernel is not None and not la.kernel.all()}


def feature_layers(graph, masks: dict) -> dict:
    """Masked convolutions other than the predictors (whose outputs only feed reshapes) -> all their
    channels: the layers whose outputs the feature term matches."""
    return {name: np.arange(graph.layer(name).out_channels) for name in masks
            if graph.layer(name).kind == "conv"
            and not all(c.kind == "reshape" for c in graph.consumers(name))}


def stored_matrix(layer) -> np.ndarray:
    """A float graph layer's kernel as the file stores it, ``[out_channels, fan_in]`` (``layers`` order)."""
    k = layer.kernel
    if layer.kind == "depthwise":  # Keras [kh, kw, C, 1] -> file [1, kh, kw, C] -> [C, kh*kw]
        return k[..., 0].reshape(-1, k.shape[2]).T
    return k.transpose(3, 0, 1, 2).reshape(k.shape[3], -1)  # Keras [kh, kw, in, out] -> file [out, kh, kw, in]


def write_back(graph, model) -> tuple:
    """Store ``graph``'s kernels and biases into the matching layers of ``model`` (the file it was read
    from), each in the layer's own quantization with its zero-point weights kept there. Returns
    (layers written, weights at the zero point before, after)."""
    from ...tflite import tensor_name
    from . import layers as pl

    sg = model.subgraphs[0]
    trained = {la.name: la for la in graph.layers if la.kernel is not None}
    written = before = after = 0
    for layer in pl.find_layers(model):
        source = trained.get(tensor_name(sg.tensors[layer.output]))
        if source is None:
            continue
        zp = pl.zero_points(model, layer)[:, None]
        keep = pl.stored_weights(model, layer) != zp
        stored = pl.quantize_weights(model, layer, stored_matrix(source).astype(np.float64), keep)
        pl.write_weights(model, layer, stored)
        pl.write_bias(model, layer, source.bias.astype(np.float64))
        written += 1
        before += int((~keep).sum())
        after += int((pl.stored_weights(model, layer) == zp).sum())
    return written, before, after


def recover(dense_src, pruned_src, out, calibration: Sequence, options: RecoverOptions = RecoverOptions(),
            log: Optional[Callable[[str], None]] = None) -> RecoverReport:
    """``out``: ``pruned_src`` distilled towards ``dense_src`` with its zeros held, in ``pruned_src``'s format."""
    from ...tflite import model_to_bytes, read_model, write_atomic
    from .structured import DistillOptions, ImagePool, augmented_views, distill, held_proxy, read_graph
    from .structured.net import pixels_to_input

    say = log or (lambda _msg: None)
    report, t0 = RecoverReport(), time.perf_counter()
    dense, pruned = read_graph(dense_src), read_graph(pruned_src)
    if [la.name for la in dense.layers] != [la.name for la in pruned.layers]:
        raise ModelError(f"{pruned_src} is not a pruned copy of {dense_src} (their layers differ)")
    masks = zero_masks(pruned)
    pool = ImagePool.load(calibration, options.pool)
    if not pool.fit or not pool.held:
        raise ConfigError("recovery needs at least 2 calibration images (or skip it with --distill-steps 0)")
    held = pixels_to_input(dense, augmented_views(pool.held, dense.input_size, 2, seed=1))
    report.proxies["pruned"] = held_proxy(dense, pruned, held)
    report.seconds["load"] = time.perf_counter() - t0
    say(f"recovering: {options.steps} steps of {options.batch} views of {len(pool.fit)} images, zeros held")
    keep = feature_layers(pruned, masks) if options.feature_weight > 0 else None
    dopts = DistillOptions(steps=options.steps, batch=options.batch, learning_rate=options.learning_rate,
                           feature_weight=options.feature_weight, max_seconds=float("inf"), seed=options.seed)
    trained, drep = distill(dense, pruned, pool.fit, dopts, log=say, masks=masks, keep=keep)
    report.steps = drep.steps
    report.seconds["recovery"] = drep.seconds
    t1 = time.perf_counter()
    model = read_model(pruned_src)
    report.layers, report.zeros["pruned"], report.zeros["recovered"] = write_back(trained, model)
    write_atomic(Path(out), model_to_bytes(model))
    report.proxies["recovered"] = held_proxy(dense, read_graph(out), held)
    report.seconds["write"] = time.perf_counter() - t1
    return report


def prune_and_recover(src, out, opts, options: RecoverOptions = RecoverOptions()):
    """``prune`` (``PruneOptions`` ``opts``) into a scratch file, then ``recover`` it into ``out``; returns
    (``PruneReport`` describing ``out``, ``RecoverReport``)."""
    import tempfile

    from ...sidecar import load_sidecar, save_sidecar
    from .pruner import file_sizes, invoke_ms, prune
    from .structured import read_graph

    t0 = time.perf_counter()
    try:  # before any work: the graph must be one recovery can train
        read_graph(src)
    except ModelError as exc:
        raise ModelError(f"recovery cannot train this model ({exc}); skip it with --distill-steps 0") from exc
    with tempfile.TemporaryDirectory(prefix="edgedet-prune-") as tmp:
        pruned = Path(tmp) / "pruned.tflite"
        report = prune(src, pruned, opts, measure=False)
        rec = recover(src, pruned, out, opts.calibration, options, log=opts.progress)
        meta = load_sidecar(pruned)
    meta["history"] = list(meta.get("history") or []) + [{
        "tool": "prune-recover", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": rec.steps,
        "learning_rate": options.learning_rate, "batch": options.batch, "feature_weight": options.feature_weight,
        "zeros_kept": rec.zeros.get("recovered", 0) >= rec.zeros.get("pruned", 0)}]
    save_sidecar(out, meta)
    report.out = str(out)
    report.sizes = {"src": file_sizes(Path(src).read_bytes()), "out": file_sizes(Path(out).read_bytes())}
    report.invoke_ms = {"src": invoke_ms(src, opts.threads), "out": invoke_ms(out, opts.threads)}
    report.seconds = time.perf_counter() - t0
    return report, rec
