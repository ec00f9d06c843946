"""``edgedet prune``: one-shot pruning of a ``.tflite`` model's weights, without training.

Modules: ``pruner`` (``prune`` and ``PruneOptions``), ``layers`` (the prunable layers of a file
and their stored weights), ``recon`` (masks and the layer-wise reconstruction), ``alloc``
(per-layer sparsity from sensitivity curves), ``calib`` (calibration inputs), ``sensitivity``
(the accuracy-vs-sparsity curve), ``eval`` (mAP of a pruned file), ``recover`` (distillation of a
pruned file against the dense one with its zeros held, then int8: ``prune_and_recover``) and
``structured`` (channel pruning with refits and recovery, ``prune_structured``); the last two need
TensorFlow when run.
"""

from __future__ import annotations

from .calib import input_spec, preprocess
from .eval import map_of
from .pruner import (
    ALLOCATIONS,
    DEFAULT_SKIP,
    METHODS,
    PruneOptions,
    PruneReport,
    file_sizes,
    invoke_ms,
    load_calibration,
    prune,
    prune_model,
)
from .recover import RecoverOptions, RecoverReport, prune_and_recover, recover, require_tensorflow
from .sensitivity import SensitivityReport, plot_curve, run_sensitivity
from .structured import DistillOptions, StructuredOptions, StructuredReport, format_proxy, prune_structured

__all__ = ["ALLOCATIONS", "DEFAULT_SKIP", "METHODS", "DistillOptions", "PruneOptions", "PruneReport",
           "RecoverOptions", "RecoverReport", "SensitivityReport", "StructuredOptions", "StructuredReport",
           "file_sizes", "format_proxy", "input_spec", "invoke_ms", "load_calibration", "map_of", "plot_curve",
           "preprocess", "prune", "prune_and_recover", "prune_model", "prune_structured", "recover",
           "require_tensorflow", "run_sensitivity"]
