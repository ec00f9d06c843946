"""One-shot channel pruning of a :class:`FloatGraph` with least-squares refits.

A *target* is a backbone pointwise convolution (a 1x1 conv reading a depthwise one). Removing its
output channel ``c`` removes channel ``c`` of the depthwise convolutions reading it and input
channel ``c`` of every convolution reading either (the *readers*). The graph is walked once, dense
and pruned side by side on the same images; at each target the readers' inputs in the pruned
network ``X`` and their dense pre-activations ``Y`` give, per reader, the ridge problem
``min ||X W - Y||^2 + lam ||W||^2``. Channels are removed one at a time (optimal brain surgeon on
that quadratic: the channel whose removal, with the other weights re-solved, adds the least error,
summed over readers, each normalised by its output energy); the readers keep the re-solved weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .forward import consumer_counts, release, run_layer
from .graph import FloatGraph, Layer


@dataclass(frozen=True)
class Target:
    name: str  # the pointwise conv whose output channels are removed
    depthwise: tuple  # depthwise convs reading it
    readers: tuple  # convs whose input channels follow (directly or through a depthwise)


@dataclass
class OneShotReport:
    keep: dict = field(default_factory=dict)  # target -> kept channel indices
    errors: dict = field(default_factory=dict)  # reader -> relative least-squares error after the refit
    macs_before: int = 0
    macs_after: int = 0


def is_pointwise(layer: Layer) -> bool:
    return layer.kind == "conv" and layer.kernel.shape[:2] == (1, 1)


def backbone_pointwise(graph: FloatGraph) -> list:
    """The 1x1 convs that read a depthwise conv, in graph order (``Conv2d_k_pointwise`` is number k)."""
    kinds = {la.name: la.kind for la in graph.layers}
    return [la.name for la in graph.layers if is_pointwise(la) and kinds.get(la.inputs[0]) == "depthwise"]


def find_targets(graph: FloatGraph, numbers) -> list:
    """Targets for the backbone pointwise convs numbered ``numbers`` (1-based)."""
    names = backbone_pointwise(graph)
    out = []
    for k in numbers:
        name = names[k - 1]
        dws, readers = [], []
        for c in graph.consumers(name):
            if c.kind == "depthwise":
                dws.append(c.name)
                readers.extend(r.name for r in graph.consumers(c.name) if is_pointwise(r))
            elif is_pointwise(c):
                readers.append(c.name)
            else:
                raise ValueError(f"{name} feeds {c.name} ({c.kind}), which channel pruning cannot follow")
        out.append(Target(name, tuple(dws), tuple(readers)))
    return out


def keep_count(channels: int, ratio: float, multiple: int = 8) -> int:
    """Channels kept when removing ``ratio`` of them, rounded to a ``multiple`` (at least one multiple)."""
    return int(max(multiple, multiple * round(channels * (1.0 - ratio) / multiple)))


class ReaderStats:
    """Per reader: ``X^T X`` (pruned inputs, with a ones column), ``X^T Y`` (``Y`` the dense
    pre-activations) and ``||Y||^2``, accumulated over chunks of images."""

    def __init__(self, xp: np.ndarray, xd: np.ndarray, layer: Layer, chunk: int = 8):
        c = xp.shape[-1]
        self.wd = np.concatenate([layer.kernel[0, 0], layer.bias[None, :]], axis=0).astype(np.float32)
        self.gpp = np.zeros((c + 1, c + 1))
        self.rhs = np.zeros((c + 1, self.wd.shape[1]))
        self.energy = 0.0
        for i in range(0, len(xp), chunk):
            a = _with_ones(xp[i:i + chunk].reshape(-1, c))
            y = _with_ones(xd[i:i + chunk].reshape(-1, c)) @ self.wd
            self.gpp += a.T @ a
            self.rhs += a.T @ y
            self.energy += float(np.sum(y.astype(np.float64) ** 2))
        self.const = self.energy


def _with_ones(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)


def _ridge_inverse(gpp: np.ndarray, lam: float) -> np.ndarray:
    reg = lam * float(np.mean(np.diag(gpp)[:-1]))
    eye = np.eye(len(gpp))
    eye[-1, -1] = 0.0  # no penalty on the bias
    return np.linalg.inv(gpp + reg * eye)


def obs_select(stats: list, keep: int, lam: float) -> tuple[np.ndarray, list]:
    """Greedy removal down to ``keep`` channels; ``(kept indices, per-reader weights [kept+1, out])``."""
    hinv = [_ridge_inverse(s.gpp, lam) for s in stats]
    ws = [h @ s.rhs for h, s in zip(hinv, stats)]
    c = len(stats[0].gpp) - 1
    alive = np.ones(c, bool)
    for _ in range(c - keep):
        cost = np.zeros(c)
        for h, w, s in zip(hinv, ws, stats):
            d = np.diag(h)[:c]
            cost += (w[:c] ** 2).sum(axis=1) / np.maximum(d, 1e-30) / max(s.energy, 1e-30)
        cost[~alive] = np.inf
        q = int(np.argmin(cost))
        for i, (h, w) in enumerate(zip(hinv, ws)):
            col = h[:, q:q + 1] / h[q, q]
            ws[i] = w - col @ w[q:q + 1]
            hinv[i] = h - col @ h[q:q + 1]
        alive[q] = False
    kept = np.flatnonzero(alive)
    rows = np.concatenate([kept, [c]])
    return kept, [w[rows] for w in ws]


def relative_error(s: ReaderStats, w: np.ndarray, rows: np.ndarray) -> float:
    """``||X W - Y||^2 / ||Y||^2`` of weights ``w`` on the rows ``rows`` of the statistics."""
    g = s.gpp[np.ix_(rows, rows)]
    err = float(np.sum(w * (g @ w)) - 2 * np.sum(w * s.rhs[rows]) + s.const)
    return err / max(s.energy, 1e-30)


def schedule(graph: FloatGraph, targets: list) -> list:
    """Layer indices in graph order, except that each target's depthwise convs come right after it
    (so that its channels are chosen before any reader runs)."""
    index = {la.name: i for i, la in enumerate(graph.layers)}
    moved = {index[d]: index[t.name] for t in targets for d in t.depthwise}
    order = []
    for i in range(len(graph.layers)):
        if i in moved:
            continue
        order.append(i)
        order.extend(sorted(d for d, src in moved.items() if src == i))
    return order


def prune_graph(dense: FloatGraph, inputs: np.ndarray, targets: list, ratios: dict, lam: float = 1e-3,
                multiple: int = 8) -> tuple[FloatGraph, OneShotReport]:
    """The pruned copy of ``dense``: ``ratios[target]`` of each target's channels removed, readers refit
    on ``inputs`` (float ``[N, H, W, 3]``)."""
    pruned = dense.copy()
    report = OneShotReport(macs_before=dense.macs())
    pending = list(targets)
    acts_d, acts_p = {dense.input_name: inputs}, {dense.input_name: inputs}
    left_d, left_p = consumer_counts(dense), consumer_counts(dense)
    done = set()
    for i in schedule(dense, targets):
        la_d, la_p = dense.layers[i], pruned.layers[i]
        acts_d[la_d.name] = run_layer(la_d, [acts_d[n] for n in la_d.inputs])
        acts_p[la_p.name] = run_layer(la_p, [acts_p[n] for n in la_p.inputs])
        release(acts_d, left_d, la_d)
        release(acts_p, left_p, la_p)
        done.add(la_p.name)
        while pending and all(n in done for n in (pending[0].name,) + pending[0].depthwise):
            t = pending.pop(0)
            _prune_target(dense, pruned, t, acts_d, acts_p, ratios.get(t.name, 0.0), lam, multiple, report)
    report.macs_after = pruned.macs()
    return pruned, report


def _prune_target(dense: FloatGraph, pruned: FloatGraph, t: Target, acts_d: dict, acts_p: dict, ratio: float,
                  lam: float, multiple: int, report: OneShotReport) -> None:
    """Choose ``t``'s kept channels, slice the pruned graph (and its live activations), refit the readers."""
    channels = pruned.layer(t.name).out_channels
    keep = keep_count(channels, ratio, multiple) if ratio > 0 else channels
    if keep >= channels:
        return
    srcs = [pruned.layer(r).inputs[0] for r in t.readers]
    stats = [ReaderStats(acts_p[s], acts_d[s], dense.layer(r)) for s, r in zip(srcs, t.readers)]
    kept, weights = obs_select(stats, keep, lam)
    rows = np.concatenate([kept, [channels]])
    for r, w, st in zip(t.readers, weights, stats):
        layer = pruned.layer(r)
        layer.kernel = np.ascontiguousarray(w[:-1][None, None].astype(np.float32))
        layer.bias = w[-1].astype(np.float32)
        report.errors[r] = relative_error(st, w, rows)
    p = pruned.layer(t.name)
    p.kernel, p.bias = np.ascontiguousarray(p.kernel[..., kept]), p.bias[kept]
    for name in t.depthwise:
        d = pruned.layer(name)
        d.kernel, d.bias = np.ascontiguousarray(d.kernel[:, :, kept]), d.bias[kept]
    for name in (t.name,) + t.depthwise:
        if name in acts_p:
            acts_p[name] = np.ascontiguousarray(acts_p[name][..., kept])
    report.keep[t.name] = kept
