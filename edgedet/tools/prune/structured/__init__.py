"""Structured (channel) pruning of an SSD ``.tflite`` with least-squares refits and label-free
recovery by distillation; needs the ``convert`` extra (TensorFlow).

Modules: ``graph`` (the file as a float graph of numpy layers), ``forward`` (eager passes of it),
``net`` (the graph as a trainable Keras model), ``oneshot`` (channel choice and ridge refits),
``data`` (the unlabelled image pool and its crops/flips), ``distill`` (recovery against the dense
network) and ``export`` (back to a float and an int8 ``.tflite``); ``recipe`` (``prune_structured``: all of it,
with proxies on held-back calibration images).
"""

from __future__ import annotations

from .data import ImagePool, augmented_views
from .distill import DistillOptions, DistillReport, distill
from .export import export_float, export_int8
from .forward import run_graph
from .graph import FloatGraph, Layer, read_graph
from .oneshot import OneShotReport, find_targets, prune_graph
from .recipe import StructuredOptions, StructuredReport, format_proxy, held_proxy, prune_structured

__all__ = ["DistillOptions", "DistillReport", "FloatGraph", "ImagePool", "Layer", "OneShotReport",
           "StructuredOptions", "StructuredReport", "augmented_views", "distill", "export_float", "export_int8",
           "find_targets", "format_proxy", "held_proxy", "prune_graph", "prune_structured", "read_graph", "run_graph"]
