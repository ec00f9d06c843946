"""``edgedet prune``: one-shot pruning of a ``.tflite`` model's weights, without training.

Modules: ``pruner`` (``prune`` and ``PruneOptions``), ``layers`` (the prunable layers of a file
and their stored weights), ``recon`` (masks and the layer-wise reconstruction), ``alloc``
(per-layer sparsity from sensitivity curves), ``calib`` (calibration inputs), ``sensitivity``
(the accuracy-vs-sparsity curve) and ``eval`` (mAP of a pruned file).
"""

from __future__ import annotations

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
from .sensitivity import SensitivityReport, plot_curve, run_sensitivity

__all__ = ["ALLOCATIONS", "DEFAULT_SKIP", "METHODS", "PruneOptions", "PruneReport", "SensitivityReport",
           "file_sizes", "invoke_ms", "load_calibration", "map_of", "plot_curve", "prune", "prune_model",
           "run_sensitivity"]
