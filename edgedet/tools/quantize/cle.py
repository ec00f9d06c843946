"""Cross-layer range equalization for per-tensor int8 activations (float model, before quantizing).

A convolution followed by ReLU / ReLU6 whose output feeds only a depthwise convolution (the stem
and every expansion conv of MobileNetV2, the pointwise convs of separable FPN / head layers) shares
one int8 range over all its output channels: a channel whose calibrated maximum ``m_c`` is far
below the tensor's maximum ``M`` gets few of the 256 levels. Scaling that channel's weights and
bias by ``s_c = M / m_c`` and the depthwise kernel's channel ``c`` by ``1 / s_c`` leaves the float
function unchanged (ReLU is positively homogeneous; the ReLU6 clip at 6 is never reached by the
scaled calibration values, since ``m_c s_c = M <= 6``) and gives every channel the full range.
Both weights are quantized per output channel along the scaled axis, so their int8 precision is
unchanged: the gain is free. Beyond the calibration maximum a channel is clipped at ``m_c``
instead of ``M`` (at ``max_scale`` times less at most).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ... import tflite as tfl
from .graph import float_array, fused_activation, store_constant

_RELU, _RELU6 = 1, 3


def equalization_pairs(model) -> list:
    """``(producer_op, depthwise_op)`` pairs: a CONV_2D / DEPTHWISE_CONV_2D with a fused ReLU or
    ReLU6 whose output only feeds one DEPTHWISE_CONV_2D (channel multiplier 1), with weights and
    biases used by no other op."""
    sg = model.subgraphs[0]
    consumers: dict = {}
    tensor_uses: dict = {}
    for op in sg.operators:
        for i in op.inputs:
            if i >= 0:
                consumers.setdefault(int(i), []).append(op)
                tensor_uses[int(i)] = tensor_uses.get(int(i), 0) + 1
    buffer_uses: dict = {}
    for t in sg.tensors:
        buffer_uses[t.buffer] = buffer_uses.get(t.buffer, 0) + 1
    outputs = {int(i) for i in sg.outputs}

    def private(i) -> bool:
        return i >= 0 and tensor_uses.get(int(i), 0) == 1 and buffer_uses.get(sg.tensors[i].buffer, 0) == 1

    pairs = []
    for op in sg.operators:
        kind = tfl.opcode_name(model, op.opcodeIndex)
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D") or fused_activation(op) not in (_RELU, _RELU6):
            continue
        if len(op.inputs) < 3 or not (private(op.inputs[1]) and private(op.inputs[2])):
            continue
        y = int(op.outputs[0])
        users = consumers.get(y, [])
        if y in outputs or len(users) != 1:
            continue
        nxt = users[0]
        if tfl.opcode_name(model, nxt.opcodeIndex) != "DEPTHWISE_CONV_2D" or int(nxt.inputs[0]) != y:
            continue
        if not private(nxt.inputs[1]):
            continue
        w = sg.tensors[nxt.inputs[1]]
        if int(w.shape[-1]) != int(sg.tensors[y].shape[-1]):  # channel multiplier 1 only
            continue
        pairs.append((op, nxt))
    return pairs


def equalize(model, float_path, inputs: Sequence[np.ndarray], *, threads: Optional[int] = None,
             max_scale: float = 16.0) -> int:
    """Equalize the output channel ranges of every pair of ``equalization_pairs`` (``model``, a
    float ``ModelT`` also written at ``float_path``, edited in place), measured as the per-channel
    maxima over ``inputs``. Returns the number of pairs changed."""
    from ...tflite import load_interpreter

    pairs = equalization_pairs(model)
    if not pairs:
        return 0
    sg = model.subgraphs[0]
    interp = load_interpreter(float_path, threads, preserve_all_tensors=True)
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    names = [tfl.tensor_name(sg.tensors[a.outputs[0]]) for a, _ in pairs]
    maxima = {n: None for n in names if n in index}
    in_index = interp.get_input_details()[0]["index"]
    for x in inputs:
        interp.set_tensor(in_index, x)
        interp.invoke()
        for n in maxima:
            v = interp.get_tensor(index[n])
            m = v.reshape(-1, v.shape[-1]).max(0).astype(np.float64)
            maxima[n] = m if maxima[n] is None else np.maximum(maxima[n], m)
    changed = 0
    for (a, b), n in zip(pairs, names):
        m = maxima.get(n)
        if m is None:
            continue
        top = float(m.max())
        if top <= 0:
            continue
        s = np.where(m > 0, top / np.maximum(m, 1e-12), 1.0)
        s = np.clip(s, 1.0, max_scale)
        if np.all(s < 1.01):
            continue
        wa, ba, wb = sg.tensors[a.inputs[1]], sg.tensors[a.inputs[2]], sg.tensors[b.inputs[1]]
        wa_v = float_array(model, wa)
        if tfl.opcode_name(model, a.opcodeIndex) == "CONV_2D":  # [O, kh, kw, I]
            wa_v = wa_v * s.reshape(-1, 1, 1, 1)
        else:  # depthwise [1, kh, kw, C]
            wa_v = wa_v * s.reshape(1, 1, 1, -1)
        store_constant(model, wa, wa_v.astype(np.float32))
        store_constant(model, ba, (float_array(model, ba) * s).astype(np.float32))
        store_constant(model, wb, (float_array(model, wb) / s.reshape(1, 1, 1, -1)).astype(np.float32))
        changed += 1
    return changed


def equalized_copy(float_model, float_path: Path, out_path: Path, inputs, *, threads=None) -> int:
    """Write an equalized copy of ``float_model`` (at ``float_path``) to ``out_path``."""
    n = equalize(float_model, float_path, inputs, threads=threads)
    tfl.write_model(float_model, out_path)
    return n
