"""The float graph as a trainable Keras model, and its trained weights back into the graph."""

from __future__ import annotations

import re

import numpy as np

from .graph import FloatGraph


def import_tf():
    from ...convert.tf import import_tf as _import

    return _import()


def build_keras(graph: FloatGraph, batch: int | None = None, features: tuple = ()):
    """A Keras functional model ``image [B, H, W, 3] (float, normalized) -> (boxes, logits)``, followed
    by the activations of the layers named in ``features`` when given."""
    tf, keras = import_tf()
    h, w = graph.input_size
    inp = keras.Input((h, w, 3), batch_size=batch, name="image")
    tensors = {graph.input_name: inp}
    for la in graph.layers:
        tensors[la.name] = _apply(keras, la, [tensors[n] for n in la.inputs])
    boxes = keras.layers.Identity(name="raw_boxes")(tensors[graph.boxes])
    logits = keras.layers.Identity(name="raw_scores")(tensors[graph.logits])
    extra = [keras.layers.Identity(name=f"feature_{i}")(tensors[n]) for i, n in enumerate(features)]
    model = keras.Model(inp, [boxes, logits] + extra, name="ssd")
    load_weights(model, graph)
    return model


def _keras_name(name: str) -> str:
    """A valid Keras layer name for a tensor name (``/`` -> ``__``, other characters -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name.replace("/", "__"))


def _apply(keras, la, xs):
    name = _keras_name(la.name)
    if la.kind == "reshape":
        return keras.layers.Reshape(la.shape, name=name)(xs[0])
    if la.kind == "concat":
        return keras.layers.Concatenate(axis=la.axis, name=name)(xs)
    if la.kind == "depthwise":
        y = keras.layers.DepthwiseConv2D(la.kernel.shape[:2], la.stride, la.padding, name=name)(xs[0])
    else:
        y = keras.layers.Conv2D(la.kernel.shape[3], la.kernel.shape[:2], la.stride, la.padding, name=name)(xs[0])
    if la.activation == "relu6":
        return keras.layers.ReLU(6.0, name=name + "__relu6")(y)
    if la.activation == "relu":
        return keras.layers.ReLU(name=name + "__relu")(y)
    return y


def load_weights(model, graph: FloatGraph) -> None:
    """Copy the graph's kernels and biases into ``model``'s layers."""
    for la in graph.layers:
        if la.kernel is not None:
            model.get_layer(_keras_name(la.name)).set_weights([la.kernel, la.bias])


def kernel_variable(model, name: str):
    """The kernel variable of the Keras layer built for graph layer ``name``."""
    return model.get_layer(_keras_name(name)).kernel


def store_weights(model, graph: FloatGraph) -> FloatGraph:
    """A copy of ``graph`` carrying ``model``'s (trained) kernels and biases."""
    out = graph.copy()
    for la in out.layers:
        if la.kernel is not None:
            k, b = model.get_layer(_keras_name(la.name)).get_weights()
            la.kernel, la.bias = np.asarray(k, np.float32), np.asarray(b, np.float32)
    return out


def pixels_to_input(graph: FloatGraph, pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., H, W, 3]`` pixels as the float graph's input (the file's input quantization)."""
    scale, zp = graph.input_quant
    return ((pixels.astype(np.float32) - zp) * scale).astype(np.float32)
