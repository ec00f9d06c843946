"""Eager forward passes of a :class:`FloatGraph`, layer by layer (TensorFlow ops, numpy in and out)."""

from __future__ import annotations

import numpy as np

from .graph import FloatGraph, Layer
from .net import import_tf

CHUNK = 16


def run_layer(layer: Layer, xs: list) -> np.ndarray:
    """``layer`` applied to its input arrays (batched), in chunks of ``CHUNK`` images."""
    if layer.kind == "reshape":
        return xs[0].reshape((xs[0].shape[0],) + tuple(layer.shape))
    if layer.kind == "concat":
        return np.concatenate(xs, axis=layer.axis)
    tf, _ = import_tf()
    parts = [_conv(tf, layer, xs[0][i:i + CHUNK]) for i in range(0, len(xs[0]), CHUNK)]
    return np.concatenate(parts, axis=0)


def pre_activation(layer: Layer, x: np.ndarray) -> np.ndarray:
    """A convolution's output before its activation."""
    tf, _ = import_tf()
    plain = Layer(layer.name, layer.kind, layer.inputs, layer.kernel, layer.bias, layer.stride, layer.padding)
    return np.concatenate([_conv(tf, plain, x[i:i + CHUNK]) for i in range(0, len(x), CHUNK)], axis=0)


def _conv(tf, layer: Layer, x: np.ndarray) -> np.ndarray:
    strides = (1, layer.stride, layer.stride, 1)
    pad = layer.padding.upper()
    if layer.kind == "depthwise":
        y = tf.nn.depthwise_conv2d(x, layer.kernel, strides, pad)
    else:
        y = tf.nn.conv2d(x, layer.kernel, strides, pad)
    y = y + layer.bias
    if layer.activation == "relu6":
        y = tf.nn.relu6(y)
    elif layer.activation == "relu":
        y = tf.nn.relu(y)
    return y.numpy()


def run_graph(graph: FloatGraph, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes, logits)`` of the graph for float inputs ``x [N, H, W, 3]``."""
    acts = {graph.input_name: x}
    remaining = consumer_counts(graph)
    for la in graph.layers:
        acts[la.name] = run_layer(la, [acts[n] for n in la.inputs])
        release(acts, remaining, la, keep=(graph.boxes, graph.logits))
    return acts[graph.boxes], acts[graph.logits]


def consumer_counts(graph: FloatGraph) -> dict:
    """How many layers read each tensor (to free activations once read)."""
    counts: dict = {}
    for la in graph.layers:
        for n in la.inputs:
            counts[n] = counts.get(n, 0) + 1
    return counts


def release(acts: dict, remaining: dict, layer: Layer, keep=()) -> None:
    """Drop the activations ``layer`` was the last reader of."""
    for n in layer.inputs:
        remaining[n] -= 1
        if remaining[n] == 0 and n not in keep:
            acts.pop(n, None)
