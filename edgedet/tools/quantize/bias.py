"""Bias correction of an int8 model against its float source (calibration inputs only).

Rounding the weights to int8 shifts the mean of every output channel: for inputs ``x`` of the
QUANTIZED model, ``E[W_q x] - E[W x] = (W_q - W) E[x]``. ``weight_error_correction`` measures the
per-channel means ``E[x]`` of every conv's input in the int8 model over the calibration inputs and
subtracts that shift from the int32 bias (in the bias scale ``input_scale * weight_scale[c]``).
For convolutions and depthwise convolutions the mean is taken per input channel and multiplied by
the sum of the kernel's rounding error over its window (the padding border is ignored).

``empirical_correction`` goes further on the convolutions WITHOUT a fused activation (the linear
bottleneck projections and the prediction convs): it moves each output channel's mean onto the
float model's, ``E[y_float] - E[y_int8]``, which also absorbs the mean drift that activation
quantization upstream has caused. Layers are corrected in order, a few groups at a time, each
group measured on the model with the previous groups already corrected. Convs with a fused ReLU /
ReLU6 are left to the weight-error correction: their stored output is clipped, so its mean does not
move linearly with the bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ... import tflite as tfl
from .graph import INT8, INT32, fused_activation, store_constant

BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")  # bias at input 2
_NO_ACTIVATION = 0


@dataclass
class ConvLayer:
    op_index: int
    kind: str
    x: int
    w: int
    b: int
    y: int
    float_weights: np.ndarray
    fused_activation: int


def conv_layers(qmodel, float_model) -> list:
    """The int8 convs of ``qmodel`` with a unique int32 bias, and their float weights (matched by
    the weight tensor's name in ``float_model``)."""
    fsg = float_model.subgraphs[0]
    float_w = {}
    for op in fsg.operators:
        if tfl.opcode_name(float_model, op.opcodeIndex) in BIASED_OPS:
            t = fsg.tensors[op.inputs[1]]
            arr = tfl.tensor_array(float_model, t)
            if arr is not None:
                float_w[tfl.tensor_name(t)] = arr.astype(np.float64)
    sg = qmodel.subgraphs[0]
    uses: dict = {}
    for op in sg.operators:
        for i in op.inputs:
            if i >= 0:
                uses[int(i)] = uses.get(int(i), 0) + 1
    layers = []
    for k, op in enumerate(sg.operators):
        kind = tfl.opcode_name(qmodel, op.opcodeIndex)
        if kind not in BIASED_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (int(i) for i in op.inputs[:3])
        if int(sg.tensors[w].type) != INT8 or int(sg.tensors[b].type) != INT32 or uses.get(b, 0) != 1:
            continue
        fw = float_w.get(tfl.tensor_name(sg.tensors[w]))
        if fw is None or sg.tensors[x].quantization is None:
            continue
        layers.append(ConvLayer(k, kind, x, w, b, int(op.outputs[0]), fw, fused_activation(op)))
    return layers


def dequantized_weights(qmodel, tensor) -> np.ndarray:
    """The float values of the int8 weights ``tensor`` (symmetric: no zero point)."""
    q = tfl.tensor_array(qmodel, tensor).astype(np.float64)
    scale = np.asarray(tensor.quantization.scale, np.float64)
    axis = int(tensor.quantization.quantizedDimension or 0)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    return q * scale.reshape(shape)


def weight_shift(layer: ConvLayer, dw: np.ndarray, mean_x: np.ndarray) -> np.ndarray:
    """``(W_q - W) E[x]`` per output channel for per-input-channel means ``mean_x``."""
    if layer.kind == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C*m]
        c = mean_x.size
        per_out = dw.sum(axis=(0, 1, 2))
        mult = per_out.size // c
        return per_out * np.repeat(mean_x, mult)
    if layer.kind == "CONV_2D":  # [O, kh, kw, I]
        return dw.sum(axis=(1, 2)) @ mean_x
    return dw @ mean_x  # FULLY_CONNECTED [O, I]


def _channel_means(interp, details: dict, names: Sequence[str], inputs) -> dict:
    sums: dict = {n: 0.0 for n in names}
    in_index = interp.get_input_details()[0]["index"]
    for x in inputs:
        interp.set_tensor(in_index, x)
        interp.invoke()
        for n in names:
            d = details[n]
            raw = interp.get_tensor(d["index"])
            scale, zp = d["quantization"]
            flat = raw.reshape(-1, raw.shape[-1])
            if np.issubdtype(raw.dtype, np.integer):  # an exact integer sum: the float64 mean's value
                v = flat.sum(0, dtype=np.int64).astype(np.float64) / flat.shape[0]
            else:
                v = flat.astype(np.float64).mean(0)
            if scale and np.issubdtype(raw.dtype, np.integer):
                v = (v - zp) * scale
            sums[n] = sums[n] + v
    return {n: s / max(len(inputs), 1) for n, s in sums.items()}


def add_to_bias(qmodel, layer: ConvLayer, delta: np.ndarray) -> None:
    """Add the float ``delta`` (per output channel) to ``layer``'s int32 bias, in bias steps."""
    sg = qmodel.subgraphs[0]
    b = sg.tensors[layer.b]
    scale = np.asarray(b.quantization.scale, np.float64)
    q = tfl.tensor_array(qmodel, b).astype(np.int64) + np.round(delta / scale).astype(np.int64)
    store_constant(qmodel, b, np.clip(q, -(2 ** 31 - 1), 2 ** 31 - 1).astype(np.int32))


def weight_error_correction(qmodel, float_model, inputs: Sequence[np.ndarray], work: Path, *,
                            threads: Optional[int] = None, layers=None) -> int:
    """Subtract ``(W_q - W) E[x]`` from every conv's bias (``qmodel`` edited in place); returns
    the number of layers corrected. ``work`` is a scratch file path."""
    from ...tflite import load_interpreter

    sg = qmodel.subgraphs[0]
    layers = conv_layers(qmodel, float_model) if layers is None else layers
    tfl.write_model(qmodel, work)
    # one thread: integer kernels give the same values at any thread count, and a second thread
    # only spins (4x the CPU time per invoke measured on a busy 2-core machine)
    interp = load_interpreter(work, 1, preserve_all_tensors=True)
    details = {d["name"]: d for d in interp.get_tensor_details()}
    names = sorted({tfl.tensor_name(sg.tensors[la.x]) for la in layers} & set(details))
    means = _channel_means(interp, details, names, inputs)
    done = 0
    for la in layers:
        n = tfl.tensor_name(sg.tensors[la.x])
        if n not in means:
            continue
        dw = dequantized_weights(qmodel, sg.tensors[la.w]) - la.float_weights
        add_to_bias(qmodel, la, -weight_shift(la, dw, means[n]))
        done += 1
    return done


def empirical_correction(qmodel, float_model, float_path, inputs: Sequence[np.ndarray], work: Path, *,
                         threads: Optional[int] = None, groups: int = 6) -> int:
    """Move the mean of every linear conv's output channels onto the float model's (in ``groups``
    sequential passes); returns the number of layers corrected."""
    from ...tflite import load_interpreter

    sg = qmodel.subgraphs[0]
    layers = [la for la in conv_layers(qmodel, float_model) if la.fused_activation == _NO_ACTIVATION]
    fi = load_interpreter(float_path, threads, preserve_all_tensors=True)
    fdet = {d["name"]: d for d in fi.get_tensor_details()}
    names = [tfl.tensor_name(sg.tensors[la.y]) for la in layers]
    layers = [la for la, n in zip(layers, names) if n in fdet]
    names = [n for n in names if n in fdet]
    float_means = _channel_means(fi, fdet, names, inputs)
    done = 0
    for group in np.array_split(np.arange(len(layers)), max(1, min(groups, len(layers)))):
        if not len(group):
            continue
        tfl.write_model(qmodel, work)
        qi = load_interpreter(work, threads, preserve_all_tensors=True)
        qdet = {d["name"]: d for d in qi.get_tensor_details()}
        gnames = [names[k] for k in group if names[k] in qdet]
        qmeans = _channel_means(qi, qdet, gnames, inputs)
        for k in group:
            n = names[k]
            if n in qmeans:
                add_to_bias(qmodel, layers[k], float_means[n] - qmeans[n])
                done += 1
    return done
