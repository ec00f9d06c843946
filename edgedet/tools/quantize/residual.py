"""Residual-stream equalization for per-tensor int8 activations (float model, before quantizing).

MobileNetV2's linear bottleneck projections (CONV_2D without activation) write the residual
stream of a stage: the stage's first projection output and every ADD that joins a later
projection into it. These tensors have no ReLU and their channels span very different ranges,
yet each gets one int8 range for all its channels: the narrow channels get few levels.

A *stream* is a set of such tensors closed under the ADDs that join them. Dividing channel ``c``
of every tensor of a stream by ``s_c`` leaves the float function unchanged when

- every producer writes the scaled channel: a CONV_2D without activation (its weights' output
  channel ``c`` and bias divided by ``s_c``) or an ADD without activation of two stream tensors;
- every reader undoes it: a CONV_2D (its weights' input channel ``c`` multiplied by ``s_c``), a
  DEPTHWISE_CONV_2D with channel multiplier 1 (its kernel's channel ``c`` multiplied by ``s_c``),
  or one of the stream's ADDs.

A stream with any other producer or reader (a model output, a reshape, a weight shared with
another layer) is left alone. The producers' weights are quantized per output channel along the
scaled axis (free); the readers' weights along their output axis, so multiplying an input channel
by ``s_c < 1`` costs them some relative precision on that channel: ``alpha`` and ``max_gain``
bound the trade.

The factors come from calibration statistics: ``r[t, c]`` is the largest ``|x|`` of channel ``c``
of stream tensor ``t``, ``p_c = max_t r[t, c] / max_c' r[t, c']`` its profile (1 for a tensor's
widest channel) and ``s_c = max(p_c ** alpha, 1 / max_gain)``. No tensor's range grows (``s_c >=
p_c``), narrow channels are magnified by up to ``max_gain``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ... import tflite as tfl
from .graph import float_array, fused_activation, store_constant

_NO_ACTIVATION = 0
STREAM_READERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD")


@dataclass
class Stream:
    """The tensors of one residual stream, the ops writing them and the ops reading them."""

    tensors: list = field(default_factory=list)
    producers: list = field(default_factory=list)  # CONV_2D ops (ADDs are internal)
    readers: list = field(default_factory=list)  # (op, kind) of CONV_2D / DEPTHWISE_CONV_2D
    channels: int = 0


class _Graph:
    """Producer / reader maps of a float model's only subgraph, and which constants are private."""

    def __init__(self, model):
        self.model = model
        self.sg = sg = model.subgraphs[0]
        self.kind = {id(op): tfl.opcode_name(model, op.opcodeIndex) for op in sg.operators}
        self.producer: dict = {}
        self.readers: dict = {}
        for op in sg.operators:
            for o in op.outputs:
                self.producer[int(o)] = op
            for i in op.inputs:
                if i >= 0:
                    self.readers.setdefault(int(i), []).append(op)
        buffer_uses: dict = {}
        for t in sg.tensors:
            buffer_uses[t.buffer] = buffer_uses.get(t.buffer, 0) + 1
        self.buffer_uses = buffer_uses
        self.outputs = {int(i) for i in sg.outputs}

    def private(self, i: int) -> bool:
        """A constant used by exactly one op, in a buffer of its own."""
        return (i >= 0 and len(self.readers.get(i, [])) == 1
                and self.buffer_uses.get(self.sg.tensors[i].buffer, 0) == 1
                and tfl.tensor_array(self.model, self.sg.tensors[i]) is not None)

    def linear_conv(self, op) -> bool:
        return (self.kind[id(op)] == "CONV_2D" and fused_activation(op) == _NO_ACTIVATION and len(op.inputs) > 2
                and self.private(int(op.inputs[1])) and self.private(int(op.inputs[2])))

    def stream_add(self, op) -> bool:
        return self.kind[id(op)] == "ADD" and fused_activation(op) == _NO_ACTIVATION and len(op.inputs) == 2

    def reader_ok(self, op, t: int) -> bool:
        kind = self.kind[id(op)]
        if kind == "ADD":
            return self.stream_add(op)
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D") or int(op.inputs[0]) != t:
            return False
        if not self.private(int(op.inputs[1])):
            return False
        w = self.sg.tensors[int(op.inputs[1])]
        return kind == "CONV_2D" or int(w.shape[-1]) == int(self.sg.tensors[t].shape[-1])


def _grow(g: _Graph, seed: int) -> Optional[Stream]:
    """The stream holding ``seed`` (a linear conv's output), or None when it cannot be scaled."""
    members, todo = set(), [seed]
    while todo:
        t = todo.pop()
        if t in members:
            continue
        members.add(t)
        if t in g.outputs:
            return None
        p = g.producer.get(t)
        if p is None or not (g.linear_conv(p) or g.stream_add(p)):
            return None
        if g.stream_add(p):
            todo.extend(int(i) for i in p.inputs)
        for r in g.readers.get(t, []):
            if not g.reader_ok(r, t):
                return None
            if g.kind[id(r)] == "ADD":
                todo.extend([int(i) for i in r.inputs] + [int(r.outputs[0])])
    tensors = sorted(members)
    channels = {int(g.sg.tensors[t].shape[-1]) for t in tensors}
    if len(channels) != 1:
        return None
    producers = [g.producer[t] for t in tensors if g.kind[id(g.producer[t])] == "CONV_2D"]
    readers, seen = [], set()
    for t in tensors:
        for r in g.readers.get(t, []):
            if g.kind[id(r)] != "ADD" and id(r) not in seen:
                seen.add(id(r))
                readers.append((r, g.kind[id(r)]))
    return Stream(tensors, producers, readers, channels.pop())


def residual_streams(model) -> list:
    """Every stream of ``model`` (a float ``ModelT``) that can be equalized, in graph order."""
    g = _Graph(model)
    streams, covered = [], set()
    for op in g.sg.operators:
        if not g.linear_conv(op):
            continue
        seed = int(op.outputs[0])
        if seed in covered:
            continue
        s = _grow(g, seed)
        if s is not None:
            streams.append(s)
            covered.update(s.tensors)
    return streams


def channel_ranges(float_path, streams: Sequence[Stream], names: Sequence[Sequence[str]],
                   inputs: Sequence[np.ndarray], *, threads: Optional[int] = None) -> list:
    """Per stream, ``r[t, c]``: the largest ``|x|`` of each channel of each of its tensors (named
    ``names``) over ``inputs``, from the float model at ``float_path``."""
    from ...tflite import load_interpreter

    interp = load_interpreter(float_path, threads, preserve_all_tensors=True)
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    ranges = [np.zeros((len(n), s.channels)) for s, n in zip(streams, names)]
    in_index = interp.get_input_details()[0]["index"]
    for x in inputs:
        interp.set_tensor(in_index, x)
        interp.invoke()
        for r, tensor_names in zip(ranges, names):
            for k, n in enumerate(tensor_names):
                v = interp.get_tensor(index[n])
                np.maximum(r[k], np.abs(v.reshape(-1, v.shape[-1])).max(0), out=r[k])
    return ranges


def stream_scales(r: np.ndarray, *, alpha: float = 0.5, max_gain: float = 8.0) -> np.ndarray:
    """``s_c`` for the per-tensor, per-channel ranges ``r[t, c]`` of one stream (see the module
    docstring); channels never seen nonzero keep 1."""
    top = r.max(axis=1, keepdims=True)
    profile = (r / np.maximum(top, 1e-12)).max(axis=0)
    s = np.maximum(profile ** alpha, 1.0 / max_gain)
    return np.where(profile > 0, np.minimum(s, 1.0), 1.0)


def _scale(model, tensor, factors: np.ndarray, axis: int) -> None:
    values = float_array(model, tensor)
    shape = [1] * values.ndim
    shape[axis] = factors.size
    store_constant(model, tensor, (values * factors.reshape(shape)).astype(np.float32))


def apply_scales(model, stream: Stream, s: np.ndarray) -> None:
    """Divide the stream's channel ``c`` by ``s[c]`` (producers) and undo it in its readers."""
    sg = model.subgraphs[0]
    for op in stream.producers:  # CONV_2D [O, kh, kw, I], bias [O]
        _scale(model, sg.tensors[int(op.inputs[1])], 1.0 / s, 0)
        _scale(model, sg.tensors[int(op.inputs[2])], 1.0 / s, 0)
    for op, _ in stream.readers:  # CONV_2D [O, kh, kw, I] and DEPTHWISE [1, kh, kw, C]: the last axis
        _scale(model, sg.tensors[int(op.inputs[1])], s, 3)


def equalize_streams(model, float_path, inputs: Sequence[np.ndarray], *, threads: Optional[int] = None,
                     alpha: float = 0.5, max_gain: float = 8.0) -> dict:
    """Equalize every residual stream of ``model`` (a float ``ModelT`` also written at
    ``float_path``, edited in place) with ranges measured on ``inputs``. Returns
    ``{"streams": n, "tensors": n, "max_gain": largest 1 / s_c applied}``."""
    streams = residual_streams(model)
    if not streams:
        return {"streams": 0, "tensors": 0, "max_gain": 1.0}
    sg = model.subgraphs[0]
    names = [[tfl.tensor_name(sg.tensors[t]) for t in s.tensors] for s in streams]
    ranges = channel_ranges(float_path, streams, names, inputs, threads=threads)
    gain = 1.0
    for stream, r in zip(streams, ranges):
        s = stream_scales(r, alpha=alpha, max_gain=max_gain)
        apply_scales(model, stream, s)
        gain = max(gain, float(1.0 / s.min()))
    return {"streams": len(streams), "tensors": sum(len(s.tensors) for s in streams), "max_gain": round(gain, 3)}


def equalized_copy(float_model, float_path: Path, out_path: Path, inputs, **kwargs) -> dict:
    """Write a residual-equalized copy of ``float_model`` (at ``float_path``) to ``out_path``."""
    stats = equalize_streams(float_model, float_path, inputs, **kwargs)
    tfl.write_model(float_model, out_path)
    return stats
