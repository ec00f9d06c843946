"""Data-aware rounding of int8 conv weights (AdaRound-style, per layer, calibration inputs only).

Rounding each weight to the nearest int8 level minimizes the error of the weights, not of the
layer's output. For an output channel with float weights ``w``, scale ``s`` and integer weights
``q``, the output error over the layer's inputs ``x`` is ``(s q - w)^T H (s q - w)`` with ``H``
the covariance of the input patches (the mean part is removed afterwards by bias correction;
the uncentered second moment when there is none). ``round_layers`` starts from nearest rounding
and moves one integer weight of each channel by +-1 at a time, always the move that lowers that
quadratic the most, until no move helps: a greedy search of the integer grid around ``w / s``.

Only layers whose float weights are not already on their int8 grid are touched: a model
converted from int8 hybrid weights has most layers on it exactly (nothing to gain) and a few
small float ones (e.g. the stem and the first inverted-residual block), where the rounding error
is large and feeds every later layer.

``compensate_layers`` (error-compensating rounding) goes further, on every layer: the int8 model's
own inputs ``x_hat`` differ from the float model's ``x`` (activation rounding upstream), and the
integer weights can absorb part of that. Per output channel it lowers
``E[(s q . x_hat - w . x)^2] = (s q)^T H (s q) - 2 (s q)^T C w + const`` with ``H = E[x_hat x_hat^T]``
and ``C = E[x_hat x^T]`` (covariances when bias correction takes care of the mean: the output
mean left after it, ``w (E[x_hat] - E[x])``, does not depend on ``q``), by the same greedy +-1
search. Layers go in order of conv depth, one pass of the int8 model per depth, so that each
layer sees the inputs of the layers already re-rounded and bias-corrected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ... import tflite as tfl
from .bias import ConvLayer, add_to_bias, conv_layers, dequantized_weights, weight_shift
from .graph import store_constant
from .measure import tensor_value

_SAME = 0
_QMAX = 127


@dataclass
class Window:
    """Sliding-window geometry of a CONV_2D / DEPTHWISE_CONV_2D."""

    kh: int
    kw: int
    stride_h: int
    stride_w: int
    dil_h: int
    dil_w: int
    same: bool


def window_of(op, weight_shape) -> Window:
    o = op.builtinOptions
    return Window(int(weight_shape[1]), int(weight_shape[2]), int(o.strideH or 1), int(o.strideW or 1),
                  int(o.dilationHFactor or 1), int(o.dilationWFactor or 1), int(o.padding or 0) == _SAME)


def _pad_1d(size: int, k: int, stride: int, dil: int, same: bool) -> tuple[int, int, int]:
    """(pad_before, pad_after, out_size) as TFLite computes them."""
    span = (k - 1) * dil + 1
    if not same:
        return 0, 0, (size - span) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2, out


def patches(x: np.ndarray, win: Window, positions: Optional[np.ndarray] = None) -> np.ndarray:
    """Input patches ``[N, kh, kw, C]`` of ``x`` (``[1, H, W, C]``) at the output positions
    ``positions`` (flat indices; all when None), zero-padded as the convolution pads."""
    _, h, w, _ = x.shape
    pt, pb, oh = _pad_1d(h, win.kh, win.stride_h, win.dil_h, win.same)
    pl, pr, ow = _pad_1d(w, win.kw, win.stride_w, win.dil_w, win.same)
    xp = np.pad(x[0], ((pt, pb), (pl, pr), (0, 0)))
    pos = np.arange(oh * ow) if positions is None else positions
    rows = (pos // ow)[:, None] * win.stride_h + np.arange(win.kh)[None, :] * win.dil_h
    cols = (pos % ow)[:, None] * win.stride_w + np.arange(win.kw)[None, :] * win.dil_w
    return xp[rows[:, :, None], cols[:, None, :]]  # [N, kh, kw, C]


def output_size(x_shape, win: Window) -> int:
    return (_pad_1d(int(x_shape[1]), win.kh, win.stride_h, win.dil_h, win.same)[2]
            * _pad_1d(int(x_shape[2]), win.kw, win.stride_w, win.dil_w, win.same)[2])


class PatchMoments:
    """Running first and second moments of a layer's input patches: one ``[d, d]`` matrix for a
    CONV_2D (``d = kh * kw * C``), one ``[kh * kw, kh * kw]`` per channel for a depthwise conv.

    With ``ref`` patches given to ``add`` (the float model's patches at the same positions, the
    added ones being the int8 model's), the cross moments ``E[x_hat x^T]`` are kept too."""

    def __init__(self, depthwise: bool):
        self.depthwise = depthwise
        self.n = 0
        self.s1: Optional[np.ndarray] = None
        self.s2: Optional[np.ndarray] = None
        self.r1: Optional[np.ndarray] = None
        self.s12: Optional[np.ndarray] = None

    def _flat(self, p: np.ndarray) -> np.ndarray:
        p = p.astype(np.float64)
        return p.reshape(p.shape[0], -1, p.shape[-1]) if self.depthwise else p.reshape(p.shape[0], -1)

    def _sums(self, p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.depthwise:  # [N, kh*kw, C]
            return p.sum(0).T, np.einsum("nic,njc->cij", p, r)
        return p.sum(0), p.T @ r

    def add(self, p: np.ndarray, ref: Optional[np.ndarray] = None) -> None:
        """Accumulate patches ``p`` (``[N, kh, kw, C]``) and, when given, the cross moments with
        ``ref`` (same shape, same positions)."""
        p = self._flat(p)
        s1, s2 = self._sums(p, p)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        if ref is not None:
            r = self._flat(ref)
            r1, s12 = self._sums(r, r)[0], self._sums(p, r)[1]
            self.r1 = r1 if self.r1 is None else self.r1 + r1
            self.s12 = s12 if self.s12 is None else self.s12 + s12
        self.n += p.shape[0]

    def matrix(self, centered: bool) -> np.ndarray:
        """``E[x x^T]`` of the patches (their covariance when ``centered``)."""
        m2 = self.s2 / max(self.n, 1)
        if not centered:
            return m2
        mu = self.s1 / max(self.n, 1)
        return m2 - mu[..., :, None] * mu[..., None, :]

    def cross(self, centered: bool) -> np.ndarray:
        """``E[x x_ref^T]`` (the cross-covariance when ``centered``); ``matrix`` when no ``ref``
        patches were added."""
        if self.s12 is None:
            return self.matrix(centered)
        m2 = self.s12 / max(self.n, 1)
        if not centered:
            return m2
        mu, mr = self.s1 / max(self.n, 1), self.r1 / max(self.n, 1)
        return m2 - mu[..., :, None] * mr[..., None, :]


def greedy_round(w: np.ndarray, s: np.ndarray, h: np.ndarray, *, c: Optional[np.ndarray] = None,
                 max_move: Optional[int] = None, max_steps: int = 4096) -> np.ndarray:
    """Integer weights ``q`` (``[O, d]``, within +-127) lowering ``(s q - w)^T H (s q - w)`` per
    row from nearest rounding, one +-1 move per row and step. ``h`` is ``[d, d]`` (shared) or
    ``[O, d, d]`` (one per row); ``s`` ``[O]`` the per-row scales.

    With ``c`` (same shape as ``h``: ``E[x_hat x^T]`` for quantized inputs ``x_hat`` of float
    inputs ``x``, ``h`` then being ``E[x_hat x_hat^T]``) the quadratic is
    ``E[(s q . x_hat - w . x)^2] = (s q)^T H (s q) - 2 (s q)^T C w + const``: the integer weights
    also compensate the error of their inputs. ``c = h`` gives the same search as none.
    ``max_move``: each ``q`` stays within that many steps of nearest rounding."""
    s = s.reshape(-1, 1)
    near = np.clip(np.round(w / s), -_QMAX, _QMAX)
    lo, hi = (-_QMAX, _QMAX) if max_move is None else (np.maximum(near - max_move, -_QMAX),
                                                       np.minimum(near + max_move, _QMAX))
    q = near.copy()
    r = s * q - w
    shared = h.ndim == 2
    g = 2 * s * (r @ h if shared else np.einsum("od,ode->oe", r, h))
    if c is not None:  # gradient of the cross form: 2 s (H s q - C w) = 2 s (H r - (C - H) w)
        dc = c - h
        g -= 2 * s * (w @ dc.T if shared else np.einsum("oed,od->oe", dc, w))
    diag = np.diagonal(h)[None, :] if shared else np.diagonal(h, axis1=1, axis2=2)
    rows = np.arange(w.shape[0])
    for _ in range(max_steps):
        step = -np.sign(g)
        gain = -np.abs(g) + s * s * diag  # change of the quadratic for that move
        gain[(q + step > hi) | (q + step < lo) | (step == 0)] = np.inf
        i = np.argmin(gain, axis=1)
        act = gain[rows, i] < -1e-12 * np.maximum(np.abs(g).max(axis=1), 1e-30)
        if not act.any():
            break
        o, j, d = rows[act], i[act], step[rows[act], i[act]]
        q[o, j] += d
        hj = h[j] if shared else h[o, j]
        g[o] += 2 * (s[o, 0] ** 2 * d)[:, None] * hj
    return q


def _on_grid(layer: ConvLayer, scale: np.ndarray, axis: int) -> bool:
    w = np.moveaxis(layer.float_weights, axis, 0).reshape(scale.size, -1)
    err = np.abs(w / scale.reshape(-1, 1) - np.round(w / scale.reshape(-1, 1)))
    return bool(err.max() < 1e-3)


@dataclass
class Target:
    """A layer to re-round: its weights' output axis, its input's name in the float model, and
    its window."""

    layer: ConvLayer
    axis: int
    float_input: str
    window: Window


def targets(qmodel, float_model, *, off_grid_only: bool = True) -> list:
    """The CONV_2D / depthwise (multiplier 1) layers of ``qmodel`` whose float weights are off
    their int8 grid (all of them unless ``off_grid_only``), in graph order."""
    sg, fsg = qmodel.subgraphs[0], float_model.subgraphs[0]
    float_input = {}
    for op in fsg.operators:
        if tfl.opcode_name(float_model, op.opcodeIndex) in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            float_input[tfl.tensor_name(fsg.tensors[op.inputs[1]])] = tfl.tensor_name(fsg.tensors[op.inputs[0]])
    out = []
    for la in conv_layers(qmodel, float_model):
        if la.kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        wt = sg.tensors[la.w]
        scale = np.asarray(wt.quantization.scale, np.float64)
        axis = 0 if la.kind == "CONV_2D" else 3
        if la.kind == "DEPTHWISE_CONV_2D" and int(wt.shape[3]) != int(sg.tensors[la.x].shape[3]):
            continue
        if scale.size != int(wt.shape[axis]) or (off_grid_only and _on_grid(la, scale, axis)):
            continue
        name = float_input.get(tfl.tensor_name(wt))
        if name is not None:
            out.append(Target(la, axis, name, window_of(sg.operators[la.op_index], wt.shape)))
    return out


def collect_moments(float_path, tgts: Sequence[Target], inputs: Sequence[np.ndarray], *,
                    threads: Optional[int] = None, positions: int = 2048, seed: int = 0) -> list:
    """``PatchMoments`` of each target's float input patches over ``inputs`` (``positions``
    random output positions per image)."""
    return collect_moments_of_subsets(float_path, tgts, inputs, [range(len(inputs))], threads=threads,
                                      positions=positions, seed=seed)[0]


def collect_moments_of_subsets(float_path, tgts: Sequence[Target], inputs: Sequence[np.ndarray],
                               subsets: Sequence, *, threads: Optional[int] = None, positions: int = 2048,
                               seed: int = 0, progress=None) -> list:
    """``collect_moments`` of each subset of ``inputs`` (index lists, ascending; each with the
    random positions of a pass over it alone), from one pass over the images of every subset.
    The float model runs cut after the targets' inputs (the same kernels, so the same values)."""
    from pathlib import Path

    from ...tflite import load_interpreter

    run_path = Path(float_path)
    model = tfl.read_model(float_path)
    produced = {tfl.tensor_name(model.subgraphs[0].tensors[int(o)])
                for op in model.subgraphs[0].operators for o in op.outputs}
    wanted = sorted({t.float_input for t in tgts})
    if set(wanted) & produced:
        run_path = run_path.with_name(run_path.stem + "_moments.tflite")
        write_truncated(model, sorted(set(wanted) & produced), run_path)
    interp = load_interpreter(run_path, threads, preserve_all_tensors=True)
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    moments = [[PatchMoments(t.layer.kind == "DEPTHWISE_CONV_2D") for t in tgts] for _ in subsets]
    rngs = [np.random.default_rng(seed) for _ in subsets]
    members = [set(s) for s in subsets]
    in_index = interp.get_input_details()[0]["index"]
    for k in sorted(set().union(*members)):
        interp.set_tensor(in_index, inputs[k])
        interp.invoke()
        values = [interp.get_tensor(index[t.float_input]) for t in tgts]
        for moms, rng, m in zip(moments, rngs, members):
            if k not in m:
                continue
            for t, mom, v in zip(tgts, moms, values):
                n = output_size(v.shape, t.window)
                mom.add(patches(v, t.window, rng.choice(n, size=min(positions, n), replace=False)))
        if progress is not None:
            progress()
    return moments


def _rows(qmodel, t: Target) -> tuple:
    """``t``'s int8 weight tensor, its per-channel scales and its float weights, output axis first."""
    wt = qmodel.subgraphs[0].tensors[t.layer.w]
    return wt, np.asarray(wt.quantization.scale, np.float64), np.moveaxis(t.layer.float_weights, t.axis, 0)


def _store_rows(qmodel, t: Target, wt, q: np.ndarray, shape) -> None:
    store_constant(qmodel, wt, np.moveaxis(q.reshape(shape), 0, t.axis).astype(np.int8))


def reround(qmodel, t: Target, mom: PatchMoments, *, centered: bool, max_move: Optional[int] = None) -> None:
    """Re-round ``t``'s int8 weights in ``qmodel`` (same scales) by ``greedy_round``, with the
    cross moments of ``mom`` when it has them (``compensate_layers``)."""
    wt, scale, w = _rows(qmodel, t)
    h = mom.matrix(centered)
    norm = max(float(np.abs(h).max()), 1e-30)  # the minimizer does not depend on H's scale
    c = None if mom.s12 is None else mom.cross(centered) / norm
    q = greedy_round(w.reshape(w.shape[0], -1), scale, h / norm, c=c, max_move=max_move)
    _store_rows(qmodel, t, wt, q, w.shape)


def round_layers(qmodel, float_model, float_path, inputs: Sequence[np.ndarray], *,
                 threads: Optional[int] = None, centered: bool = True, positions: int = 2048,
                 seed: int = 0, moments_of=None) -> int:
    """Re-round the int8 weights (same scales) of the ``targets`` of ``qmodel`` (float weights
    from ``float_model``, written at ``float_path``) on the float input patch statistics of
    ``inputs``; ``qmodel`` is edited in place. Returns the number of layers re-rounded.
    ``moments_of``: a function of the targets giving their ``collect_moments`` over ``inputs``
    (already collected), instead of a pass here."""
    tgts = targets(qmodel, float_model)
    if not tgts:
        return 0
    if moments_of is not None:
        moments = moments_of(tgts)
    else:
        moments = collect_moments(float_path, tgts, inputs, threads=threads, positions=positions, seed=seed)
    for t, mom in zip(tgts, moments):
        reround(qmodel, t, mom, centered=centered)
    return len(tgts)


def conv_depths(model) -> dict:
    """``{op_index: depth}``: the number of CONV_2D / DEPTHWISE_CONV_2D ops on the longest path
    from the model input to each op, itself included (operators are in topological order). Layers
    of one depth never feed each other."""
    sg = model.subgraphs[0]
    producer: dict = {}
    depth: dict = {}
    for k, op in enumerate(sg.operators):
        d = max((depth[producer[int(i)]] for i in op.inputs if int(i) in producer), default=0)
        depth[k] = d + (tfl.opcode_name(model, op.opcodeIndex) in ("CONV_2D", "DEPTHWISE_CONV_2D"))
        for o in op.outputs:
            producer[int(o)] = k
    return depth


def write_truncated(model, names: Sequence[str], path) -> None:
    """Write ``model`` cut after the last operator that produces one of the tensors ``names``,
    with those tensors as its outputs (``model`` itself is left as it was): a pass that reads
    early tensors does not run the rest of the network."""
    sg = model.subgraphs[0]
    index = {tfl.tensor_name(t): i for i, t in enumerate(sg.tensors)}
    wanted = [index[n] for n in names]
    last = max((k for k, op in enumerate(sg.operators) if set(int(o) for o in op.outputs) & set(wanted)),
               default=-1)
    ops, outs, sigs = sg.operators, sg.outputs, model.signatureDefs
    try:
        sg.operators = ops[:last + 1]
        sg.outputs = np.asarray(wanted, np.int32)
        model.signatureDefs = []
        tfl.write_model(model, path)
    finally:
        sg.operators, sg.outputs, model.signatureDefs = ops, outs, sigs


def compensate_layers(qmodel, float_model, float_path, inputs: Sequence[np.ndarray], work, *,
                      threads: Optional[int] = None, centered: bool = True, correct_bias: bool = True,
                      max_move: Optional[int] = 1, max_depth: Optional[int] = None, min_ratio: float = 16.0,
                      positions: int = 2048, seed: int = 0) -> list:
    """Error-compensating rounding of every CONV_2D / depthwise (multiplier 1) layer of ``qmodel``
    (edited in place; float weights from ``float_model``, written at ``float_path``).

    Layers are taken one conv depth per pass (``conv_depths``): for each pass the int8
    model as it stands and the float model, both cut after the pass's inputs (``write_truncated``
    into ``work``, a scratch file, and beside it), run on ``inputs``, and each layer of the pass
    gets the integer weights (same scales, within ``max_move`` of nearest rounding) that lower
    ``E[(s q . x_hat - w . x)^2]`` per output channel, ``x_hat`` being its int8 input patches
    (produced by the layers already re-rounded) and ``x`` the float ones at the same positions
    (``greedy_round`` with cross moments; covariances when ``centered``). A layer with fewer than
    ``min_ratio`` patches per weight of an output channel keeps nearest rounding. With
    ``correct_bias`` each layer's weight-rounding mean shift ``(W_q - W) E[x_hat]`` is then taken
    out of its bias (``bias.weight_error_correction`` for that layer), so that later
    passes see the corrected outputs. ``max_depth``: only the layers up to that conv depth
    (``conv_depths``). Returns the layers handled (``ConvLayer``)."""
    from pathlib import Path

    from ...tflite import load_interpreter

    sg = qmodel.subgraphs[0]
    depth = conv_depths(qmodel)
    tgts = [t for t in targets(qmodel, float_model, off_grid_only=False)
            if max_depth is None or depth[t.layer.op_index] <= max_depth]
    if not tgts:
        return []
    work = Path(work)
    fwork = work.with_name(work.stem + "_float.tflite")
    done = []
    by_depth: dict = {}
    for t in tgts:
        by_depth.setdefault(depth[t.layer.op_index], []).append(t)
    for k, level in enumerate(sorted(by_depth)):
        layers = by_depth[level]
        names = [tfl.tensor_name(sg.tensors[t.layer.x]) for t in layers]
        write_truncated(qmodel, sorted(set(names)), work)
        write_truncated(float_model, sorted({t.float_input for t in layers}), fwork)
        qi = load_interpreter(work, threads, preserve_all_tensors=True)
        fi = load_interpreter(fwork, threads, preserve_all_tensors=True)
        q_det = {d["name"]: d for d in qi.get_tensor_details()}
        f_index = {d["name"]: d["index"] for d in fi.get_tensor_details()}
        q_in, f_in = qi.get_input_details()[0]["index"], fi.get_input_details()[0]["index"]
        moments = [PatchMoments(t.layer.kind == "DEPTHWISE_CONV_2D") for t in layers]
        means = [0.0] * len(layers)
        rng = np.random.default_rng(seed + k)
        for x in inputs:
            fi.set_tensor(f_in, x)
            qi.set_tensor(q_in, x)
            fi.invoke()
            qi.invoke()
            for j, (t, name, mom) in enumerate(zip(layers, names, moments)):
                v, vq = fi.get_tensor(f_index[t.float_input]), tensor_value(qi, q_det[name])
                n = output_size(v.shape, t.window)
                pos = rng.choice(n, size=min(positions, n), replace=False)
                mom.add(patches(vq, t.window, pos), patches(v, t.window, pos))
                means[j] = means[j] + vq.reshape(-1, vq.shape[-1]).mean(0) / len(inputs)
        for t, mom, mean in zip(layers, moments, means):
            if mom.n >= min_ratio * mom.s2.shape[-1]:  # else too few patches for its weights: nearest
                reround(qmodel, t, mom, centered=centered, max_move=max_move)
            if correct_bias:
                dw = dequantized_weights(qmodel, sg.tensors[t.layer.w]) - t.layer.float_weights
                add_to_bias(qmodel, t.layer, -weight_shift(t.layer, dw, mean))
            done.append(t.layer)
    return done
