"""Which layers of a ``.tflite`` can be pruned, and their weights as real numbers.

A prunable layer is a ``CONV_2D``, ``DEPTHWISE_CONV_2D`` or ``FULLY_CONNECTED`` op with a constant
weight tensor (float32, float16 behind a ``DEQUANTIZE`` op, or int8/uint8 with per-tensor or
per-channel quantization). Weights are
read as a real-valued ``[out_channels, fan_in]`` matrix (``fan_in`` = kernel h * w * in channels, in
the file's ``[O, kh, kw, I]`` order) and written back into the layer's own scales and zero points,
so the file keeps its size and layout: "pruned" means the stored value equals the zero point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import ModelError
from ...tflite import opcode_name, set_tensor_array, tensor_array, tensor_name

PRUNABLE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
KINDS = ("pointwise", "conv", "depthwise", "fc")


@dataclass
class WeightQuant:
    """How a weight tensor stores its values: ``real = scale[c] * (q - zero_point[c])``."""

    dtype: np.dtype
    scale: np.ndarray | None  # [C] (per channel, axis 0) or [1]; None for float weights
    zero_point: np.ndarray | None

    @property
    def quantized(self) -> bool:
        return self.scale is not None

    @property
    def qmin(self) -> int:
        if self.dtype == np.uint8:
            return 0
        # symmetric int8 weights (zero point 0) use -127..127 as the TFLite int8 spec asks
        return -127 if self.zero_point is not None and not np.any(self.zero_point) else -128

    @property
    def qmax(self) -> int:
        return 255 if self.dtype == np.uint8 else 127


@dataclass
class PrunableLayer:
    op_index: int
    name: str
    kind: str  # pointwise | conv | depthwise | fc
    weight: int  # tensor indices
    bias: int | None
    input: int
    output: int
    shape: tuple  # weight tensor shape as stored
    order: int = 0  # position among the prunable layers (graph order)
    feeds_output: bool = False  # its result reaches a graph output without another prunable layer
    extra: dict = field(default_factory=dict)

    @property
    def out_channels(self) -> int:
        return int(self.shape[-1] if self.kind == "depthwise" else self.shape[0])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def _quant_of(tensor) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None, None, 0
    scale = np.asarray(q.scale, dtype=np.float64)
    zp = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros(len(scale)), dtype=np.int64)
    return scale, zp, int(q.quantizedDimension or 0)


def find_layers(model, subgraph: int = 0) -> list[PrunableLayer]:
    """The prunable layers of ``model`` in graph order."""
    sg = model.subgraphs[subgraph]
    consumers: dict[int, list[int]] = {}
    for i, op in enumerate(sg.operators):
        for t in op.inputs if op.inputs is not None else []:
            if t >= 0:
                consumers.setdefault(int(t), []).append(i)
    producer = {int(t): i for i, op in enumerate(sg.operators) for t in (op.outputs if op.outputs is not None
                                                                          else [])}

    def constant(t: int) -> int:
        """The constant behind ``t``, also through a DEQUANTIZE op (float16 weights)."""
        p = producer.get(t)
        if p is not None and opcode_name(model, sg.operators[p].opcodeIndex) == "DEQUANTIZE":
            src = int(sg.operators[p].inputs[0])
            if int(sg.tensors[src].type) == 1 and tensor_array(model, sg.tensors[src]) is not None:
                return src
        return t

    layers: list[PrunableLayer] = []
    for i, op in enumerate(sg.operators):
        name = opcode_name(model, op.opcodeIndex)
        if name not in PRUNABLE_OPS or op.inputs is None or len(op.inputs) < 2:
            continue
        w_idx = constant(int(op.inputs[1]))
        wt = sg.tensors[w_idx]
        if tensor_array(model, wt) is None or int(wt.type) not in (0, 1, 3, 9):
            continue  # weights computed at run time, or a storage type we do not edit
        shape = tuple(int(s) for s in wt.shape)
        if name == "DEPTHWISE_CONV_2D":
            kind = "depthwise"
        elif name == "FULLY_CONNECTED":
            kind = "fc"
        elif len(shape) == 4 and shape[1] == 1 and shape[2] == 1:
            kind = "pointwise"
        else:
            kind = "conv"
        bias = constant(int(op.inputs[2])) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        layers.append(PrunableLayer(
            op_index=i, name=tensor_name(sg.tensors[int(op.outputs[0])]), kind=kind, weight=w_idx,
            bias=bias, input=int(op.inputs[0]), output=int(op.outputs[0]), shape=shape,
            order=len(layers)))
    # a layer "feeds an output" when no prunable layer is downstream of it (detection heads)
    prunable_ops = {layer.op_index for layer in layers}
    for layer in layers:
        seen, stack, downstream = set(), [layer.output], False
        while stack and not downstream:
            t = stack.pop()
            for c in consumers.get(t, []):
                if c in prunable_ops:
                    downstream = True
                    break
                if c in seen:
                    continue
                seen.add(c)
                stack.extend(int(o) for o in sg.operators[c].outputs)
        layer.feeds_output = not downstream
    return layers


def weight_quant(model, layer: PrunableLayer, subgraph: int = 0) -> WeightQuant:
    t = model.subgraphs[subgraph].tensors[layer.weight]
    scale, zp, axis = _quant_of(t)
    dtype = np.dtype({0: np.float32, 1: np.float16, 3: np.uint8, 9: np.int8}[int(t.type)])
    if scale is None:
        return WeightQuant(dtype, None, None)
    expected_axis = 3 if layer.kind == "depthwise" else 0
    if len(scale) > 1 and axis != expected_axis:
        raise ModelError(f"layer {layer.name}: per-channel weights quantized along axis {axis} "
                         f"(expected {expected_axis})")
    return WeightQuant(dtype, scale, zp)


def _per_channel(values: np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(values.reshape(-1), (n,)) if values.size == 1 else values.reshape(-1)


def _to_matrix(layer: PrunableLayer, arr: np.ndarray) -> np.ndarray:
    """Stored weight array -> ``[out_channels, fan_in]`` (a view-free copy)."""
    if layer.kind == "depthwise":  # [1, kh, kw, C] -> [C, kh*kw]
        return np.ascontiguousarray(arr.reshape(-1, arr.shape[-1]).T)
    return arr.reshape(arr.shape[0], -1).copy()


def _from_matrix(layer: PrunableLayer, mat: np.ndarray) -> np.ndarray:
    if layer.kind == "depthwise":
        return np.ascontiguousarray(mat.T).reshape(layer.shape)
    return mat.reshape(layer.shape)


def stored_weights(model, layer: PrunableLayer, subgraph: int = 0) -> np.ndarray:
    """The stored (quantized or float) weights as ``[out_channels, fan_in]``."""
    t = model.subgraphs[subgraph].tensors[layer.weight]
    return _to_matrix(layer, tensor_array(model, t))


def zero_points(model, layer: PrunableLayer, subgraph: int = 0) -> np.ndarray:
    """Per output channel stored value that means 0.0 (the zero point; 0 for float weights)."""
    wq = weight_quant(model, layer, subgraph)
    if not wq.quantized:
        return np.zeros(layer.out_channels)
    return _per_channel(wq.zero_point, layer.out_channels).astype(np.float64)


def real_weights(model, layer: PrunableLayer, subgraph: int = 0) -> np.ndarray:
    """Weights as float64 ``[out_channels, fan_in]`` real values."""
    wq = weight_quant(model, layer, subgraph)
    q = stored_weights(model, layer, subgraph).astype(np.float64)
    if not wq.quantized:
        return q
    n = layer.out_channels
    return (q - _per_channel(wq.zero_point, n)[:, None]) * _per_channel(wq.scale, n)[:, None]


def quantize_weights(model, layer: PrunableLayer, real: np.ndarray, mask: np.ndarray | None = None,
                     subgraph: int = 0) -> np.ndarray:
    """Real ``[out, fan_in]`` weights -> stored values in the layer's own scales (clipped).

    Entries where ``mask`` is False are set to exactly the zero point.
    """
    wq = weight_quant(model, layer, subgraph)
    if not wq.quantized:
        out = real.astype(wq.dtype)
        if mask is not None:
            out = np.where(mask, out, 0).astype(wq.dtype)
        return out
    n = layer.out_channels
    scale = _per_channel(wq.scale, n)[:, None]
    zp = _per_channel(wq.zero_point, n)[:, None]
    q = np.clip(np.rint(real / scale) + zp, wq.qmin, wq.qmax)
    if mask is not None:
        q = np.where(mask, q, zp)
    return q.astype(wq.dtype)


def write_weights(model, layer: PrunableLayer, stored: np.ndarray, subgraph: int = 0) -> None:
    """Store ``[out, fan_in]`` values (already in the tensor's dtype) into the weight buffer."""
    t = model.subgraphs[subgraph].tensors[layer.weight]
    set_tensor_array(model, t, _from_matrix(layer, stored))


def bias_real(model, layer: PrunableLayer, subgraph: int = 0) -> np.ndarray:
    """The bias as real values ``[out]`` (zeros when the layer has none)."""
    if layer.bias is None:
        return np.zeros(layer.out_channels)
    t = model.subgraphs[subgraph].tensors[layer.bias]
    arr = tensor_array(model, t)
    if arr is None:
        return np.zeros(layer.out_channels)
    scale, _, _ = _quant_of(t)
    arr = arr.astype(np.float64).reshape(-1)
    if scale is None or int(t.type) in (0, 1):
        return arr
    return arr * _per_channel(scale, layer.out_channels)


def write_bias(model, layer: PrunableLayer, real: np.ndarray, subgraph: int = 0) -> bool:
    """Store real bias values in the bias tensor's own type and scale. False if there is no bias."""
    if layer.bias is None:
        return False
    t = model.subgraphs[subgraph].tensors[layer.bias]
    if tensor_array(model, t) is None:
        return False
    scale, _, _ = _quant_of(t)
    if scale is None or int(t.type) in (0, 1):
        set_tensor_array(model, t, real)
        return True
    q = np.rint(real / _per_channel(scale, layer.out_channels))
    info = np.iinfo(np.int32)
    set_tensor_array(model, t, np.clip(q, info.min, info.max).astype(np.int32))
    return True


def sparsity_of(model, layer: PrunableLayer, subgraph: int = 0) -> float:
    """Fraction of weights stored exactly at their zero point."""
    stored = stored_weights(model, layer, subgraph).astype(np.float64)
    return float(np.mean(stored == zero_points(model, layer, subgraph)[:, None]))


def input_quant(model, layer: PrunableLayer, subgraph: int = 0) -> tuple[float, float] | None:
    """``(scale, zero_point)`` of the layer's input activation, or None when it is float."""
    scale, zp, _ = _quant_of(model.subgraphs[subgraph].tensors[layer.input])
    if scale is None:
        return None
    return float(scale[0]), float(zp[0])


def layer_padding(model, layer: PrunableLayer, subgraph: int = 0) -> dict:
    """Stride / padding / dilation of a conv layer (for building its input patches)."""
    op = model.subgraphs[subgraph].operators[layer.op_index]
    opts = op.builtinOptions
    if opts is None or layer.kind == "fc":
        return {"stride": (1, 1), "padding": "VALID", "dilation": (1, 1)}
    pad = "SAME" if int(getattr(opts, "padding", 0)) == 0 else "VALID"
    return {"stride": (int(opts.strideH or 1), int(opts.strideW or 1)), "padding": pad,
            "dilation": (int(getattr(opts, "dilationHFactor", 1) or 1),
                         int(getattr(opts, "dilationWFactor", 1) or 1))}
