"""A ``.tflite`` SSD as a float graph of numpy layers: read, run (reference), slice channels.

The graph covers what the detection op reads: convolutions (regular, pointwise, depthwise, with
their fused ReLU/ReLU6), reshapes and concatenations, ending in the box encodings and the class
logits. Quantized weights are dequantized (``scale * (q - zero_point)``); the detection op's
anchors and options are kept beside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from ....errors import ModelError
from ....tflite import DETECTION_OP, opcode_name, read_detection_op_options, read_model, tensor_array, tensor_name

ACTIVATIONS = {0: None, 1: "relu", 3: "relu6"}


@dataclass
class Layer:
    """One op of the float graph. ``kernel`` is in Keras layout: conv ``[kh, kw, in, out]``,
    depthwise ``[kh, kw, channels, 1]``."""

    name: str
    kind: str  # conv | depthwise | reshape | concat
    inputs: list
    kernel: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    stride: int = 1
    padding: str = "same"
    activation: Optional[str] = None
    shape: tuple = ()  # reshape target, without the batch dimension
    axis: int = -1

    @property
    def out_channels(self) -> int:
        return int(self.kernel.shape[2] if self.kind == "depthwise" else self.kernel.shape[3])


@dataclass
class FloatGraph:
    """Layers in graph order; ``boxes`` and ``logits`` name the raw SSD outputs."""

    layers: list
    input_name: str
    input_size: tuple  # (height, width)
    boxes: str
    logits: str
    anchors: np.ndarray
    detection_options: dict = field(default_factory=dict)
    input_quant: tuple = (1.0 / 128.0, 128)  # how a uint8 pixel maps to the float input

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def consumers(self, name: str) -> list:
        return [layer for layer in self.layers if name in layer.inputs]

    def copy(self) -> FloatGraph:
        layers = [replace(la, inputs=list(la.inputs),
                          kernel=None if la.kernel is None else la.kernel.copy(),
                          bias=None if la.bias is None else la.bias.copy()) for la in self.layers]
        return replace(self, layers=layers)

    def macs(self) -> int:
        """Multiply-accumulates of the convolutions for one image."""
        return sum(_layer_macs(la, hw) for la, hw in zip(self.layers, self.spatial_sizes()) if la.kernel is not None)

    def spatial_sizes(self) -> list:
        """Output height*width of every layer (0 for reshapes and concatenations)."""
        h, w = self.input_size
        size = {self.input_name: (h, w)}
        out = []
        for la in self.layers:
            if la.kernel is None:
                out.append(0)
                continue
            ih, iw = size[la.inputs[0]]
            oh, ow = -(-ih // la.stride), -(-iw // la.stride)
            size[la.name] = (oh, ow)
            out.append(oh * ow)
        return out


def _layer_macs(layer: Layer, hw: int) -> int:
    kh, kw, cin, cout = layer.kernel.shape
    return int(hw * kh * kw * (cin if layer.kind == "depthwise" else cin * cout))


def _dequantized(model, tensor) -> np.ndarray:
    arr = tensor_array(model, tensor)
    if arr is None:
        raise ModelError(f"tensor {tensor_name(tensor)} has no data")
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0 or arr.dtype == np.float32:
        return arr.astype(np.float32)
    scale = np.asarray(q.scale, np.float32)
    zp = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros_like(scale), np.float32)
    shape = [1] * arr.ndim
    if len(scale) > 1:
        shape[int(q.quantizedDimension or 0)] = len(scale)
    return (arr.astype(np.float32) - zp.reshape(shape)) * scale.reshape(shape)


def _implicit_activation(tensor) -> int:
    """ReLU6 (3) when a quantized output can only hold [0, 6] (the clamp is the output range), else none."""
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) != 1 or int(tensor.type) not in (3, 9):
        return 0
    qmin = 0 if int(tensor.type) == 3 else -128
    lo = float(q.scale[0]) * (qmin - int(q.zeroPoint[0]))
    hi = float(q.scale[0]) * (qmin + 255 - int(q.zeroPoint[0]))
    return 3 if abs(lo) < 1e-6 and abs(hi - 6.0) < 0.05 else 0


def _conv_layer(model, sg, op, kind: str) -> Layer:
    w = _dequantized(model, sg.tensors[op.inputs[1]])
    b = _dequantized(model, sg.tensors[op.inputs[2]]).reshape(-1)
    opts = op.builtinOptions
    stride = int(opts.strideH or 1)
    if int(opts.strideW or 1) != stride or int(getattr(opts, "dilationHFactor", 1) or 1) != 1:
        raise ModelError("only square strides without dilation are supported")
    act = int(getattr(opts, "fusedActivationFunction", 0) or 0) or _implicit_activation(sg.tensors[op.outputs[0]])
    if act not in ACTIVATIONS:
        raise ModelError(f"unsupported fused activation {act}")
    kernel = w[0][..., None] if kind == "depthwise" else np.transpose(w, (1, 2, 3, 0))
    return Layer(tensor_name(sg.tensors[op.outputs[0]]), kind, [tensor_name(sg.tensors[op.inputs[0]])],
                 np.ascontiguousarray(kernel), b, stride, "same" if int(opts.padding or 0) == 0 else "valid",
                 ACTIVATIONS[act])


def _resolve(alias: dict, name: str) -> str:
    while name in alias:
        name = alias[name]
    return name


def read_graph(path) -> FloatGraph:
    """The float graph of the SSD ``.tflite`` at ``path`` (ending in the detection op)."""
    model = read_model(path)
    sg = model.subgraphs[0]
    names = [opcode_name(model, op.opcodeIndex) for op in sg.operators]
    if DETECTION_OP not in names:
        raise ModelError(f"{path}: no {DETECTION_OP} op (structured pruning needs an SSD ending in it)")
    det = sg.operators[names.index(DETECTION_OP)]
    producer = {int(o): i for i, op in enumerate(sg.operators) for o in op.outputs}
    box_t, score_t = int(det.inputs[0]), int(det.inputs[1])
    if names[producer[score_t]] == "LOGISTIC":
        score_t = int(sg.operators[producer[score_t]].inputs[0])
    layers, alias = [], {}
    for op, name in zip(sg.operators, names):
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            layers.append(_conv_layer(model, sg, op, "conv" if name == "CONV_2D" else "depthwise"))
        elif name == "RESHAPE":
            out = sg.tensors[op.outputs[0]]
            layers.append(Layer(tensor_name(out), "reshape", [tensor_name(sg.tensors[op.inputs[0]])],
                                shape=tuple(int(s) for s in out.shape[1:])))
        elif name == "CONCATENATION":
            layers.append(Layer(tensor_name(sg.tensors[op.outputs[0]]), "concat",
                                [tensor_name(sg.tensors[t]) for t in op.inputs], axis=int(op.builtinOptions.axis)))
        elif name in ("DEQUANTIZE", "QUANTIZE"):  # identities of the float graph
            alias[tensor_name(sg.tensors[op.outputs[0]])] = tensor_name(sg.tensors[op.inputs[0]])
        elif name not in ("LOGISTIC", DETECTION_OP):
            raise ModelError(f"{path}: op {name} is not supported (the trainable graph has convolutions, "
                             "reshapes and concatenations only)")
    for la in layers:
        la.inputs = [_resolve(alias, n) for n in la.inputs]
    inp = sg.tensors[sg.inputs[0]]
    q = inp.quantization
    iq = (float(q.scale[0]), int(q.zeroPoint[0])) if q is not None and q.scale is not None and len(q.scale) else (
        1.0 / 127.5, 127.5)
    anchors = _dequantized(model, sg.tensors[det.inputs[2]])
    return FloatGraph(layers, tensor_name(inp), (int(inp.shape[1]), int(inp.shape[2])),
                      _resolve(alias, tensor_name(sg.tensors[box_t])),
                      _resolve(alias, tensor_name(sg.tensors[score_t])), anchors, read_detection_op_options(det), iq)
