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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .. import tflite_file as tfl
from .quantize_bias import ConvLayer, conv_layers

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
    CONV_2D (``d = kh * kw * C``), one ``[kh * kw, kh * kw]`` per channel for a depthwise conv."""

    def __init__(self, depthwise: bool):
        self.depthwise = depthwise
        self.n = 0
        self.s1: Optional[np.ndarray] = None
        self.s2: Optional[np.ndarray] = None

    def add(self, p: np.ndarray) -> None:
        p = p.astype(np.float64)
        if self.depthwise:  # [N, kh*kw, C]
            p = p.reshape(p.shape[0], -1, p.shape[-1])
            s1, s2 = p.sum(0).T, np.einsum("nic,njc->cij", p, p)
        else:
            p = p.reshape(p.shape[0], -1)
            s1, s2 = p.sum(0), p.T @ p
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += p.shape[0]

    def matrix(self, centered: bool) -> np.ndarray:
        """``E[x x^T]`` of the patches (their covariance when ``centered``)."""
        m2 = self.s2 / max(self.n, 1)
        if not centered:
            return m2
        mu = self.s1 / max(self.n, 1)
        return m2 - mu[..., :, None] * mu[..., None, :]


def greedy_round(w: np.ndarray, s: np.ndarray, h: np.ndarray, *, max_steps: int = 4096) -> np.ndarray:
    """Integer weights ``q`` (``[O, d]``, within +-127) lowering ``(s q - w)^T H (s q - w)`` per
    row from nearest rounding, one +-1 move per row and step. ``h`` is ``[d, d]`` (shared) or
    ``[O, d, d]`` (one per row); ``s`` ``[O]`` the per-row scales."""
    s = s.reshape(-1, 1)
    q = np.clip(np.round(w / s), -_QMAX, _QMAX)
    r = s * q - w
    shared = h.ndim == 2
    g = 2 * s * (r @ h if shared else np.einsum("od,ode->oe", r, h))
    diag = np.diagonal(h)[None, :] if shared else np.diagonal(h, axis1=1, axis2=2)
    rows = np.arange(w.shape[0])
    for _ in range(max_steps):
        step = -np.sign(g)
        gain = -np.abs(g) + s * s * diag  # change of the quadratic for that move
        gain[(q + step > _QMAX) | (q + step < -_QMAX) | (step == 0)] = np.inf
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


def targets(qmodel, float_model) -> list:
    """The CONV_2D / depthwise (multiplier 1) layers of ``qmodel`` whose float weights are off
    their int8 grid, in graph order."""
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
        if scale.size != int(wt.shape[axis]) or _on_grid(la, scale, axis):
            continue
        name = float_input.get(tfl.tensor_name(wt))
        if name is not None:
            out.append(Target(la, axis, name, window_of(sg.operators[la.op_index], wt.shape)))
    return out


def collect_moments(float_path, tgts: Sequence[Target], inputs: Sequence[np.ndarray], *,
                    threads: Optional[int] = None, positions: int = 2048, seed: int = 0) -> list:
    """``PatchMoments`` of each target's float input patches over ``inputs`` (``positions``
    random output positions per image)."""
    from ..runtime import load_interpreter

    interp = load_interpreter(float_path, threads, preserve_all_tensors=True)
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    moments = [PatchMoments(t.layer.kind == "DEPTHWISE_CONV_2D") for t in tgts]
    rng = np.random.default_rng(seed)
    in_index = interp.get_input_details()[0]["index"]
    for x in inputs:
        interp.set_tensor(in_index, x)
        interp.invoke()
        for t, mom in zip(tgts, moments):
            v = interp.get_tensor(index[t.float_input])
            n = output_size(v.shape, t.window)
            mom.add(patches(v, t.window, rng.choice(n, size=min(positions, n), replace=False)))
    return moments


def _store_int8(qmodel, tensor, q: np.ndarray) -> None:
    tfl.set_tensor_array(qmodel, tensor, q.astype(np.int8))
    qmodel.buffers[tensor.buffer].offset = 0
    qmodel.buffers[tensor.buffer].size = 0


def reround(qmodel, t: Target, mom: PatchMoments, *, centered: bool) -> None:
    """Re-round ``t``'s int8 weights in ``qmodel`` (same scales) by ``greedy_round``."""
    wt = qmodel.subgraphs[0].tensors[t.layer.w]
    scale = np.asarray(wt.quantization.scale, np.float64)
    w = np.moveaxis(t.layer.float_weights, t.axis, 0)
    h = mom.matrix(centered)
    h = h / max(float(np.abs(h).max()), 1e-30)  # the minimizer does not depend on H's scale
    q = greedy_round(w.reshape(w.shape[0], -1), scale, h)
    _store_int8(qmodel, wt, np.moveaxis(q.reshape(w.shape), 0, t.axis))


def round_layers(qmodel, float_model, float_path, inputs: Sequence[np.ndarray], *,
                 threads: Optional[int] = None, centered: bool = True, positions: int = 2048,
                 seed: int = 0) -> int:
    """Re-round the int8 weights (same scales) of the ``targets`` of ``qmodel`` (float weights
    from ``float_model``, written at ``float_path``) on the float input patch statistics of
    ``inputs``; ``qmodel`` is edited in place. Returns the number of layers re-rounded."""
    tgts = targets(qmodel, float_model)
    if not tgts:
        return 0
    moments = collect_moments(float_path, tgts, inputs, threads=threads, positions=positions, seed=seed)
    for t, mom in zip(tgts, moments):
        reround(qmodel, t, mom, centered=centered)
    return len(tgts)
