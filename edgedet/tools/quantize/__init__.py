"""Post-training quantization of ``.tflite`` detectors (no TensorFlow): int8, fp16, dynamic range.

Modules: ``int8`` (``quantize_int8`` and its steps), ``weights`` (fp16 weights, dynamic range),
``graph`` (the float graph: op/tensor helpers, preparation, head tensors), ``source`` (calibration
inputs, sidecar), ``ranges`` (activation ranges, the int8 round trip), ``head`` (head ranges for
what the detector reads), ``measure`` (head SNR against the float model), ``agreement`` (detection
agreement, choosing the range rule), and the weight/bias refinements ``cle``, ``residual``,
``round``, ``bias``.
"""

from __future__ import annotations

from .agreement import (
    PERCENTILE_CANDIDATES,
    choose_percentile,
    compare_models,
    detection_agreement,
    pseudo_map,
    quantize_int8_auto,
)
from .graph import prepare_float_model
from .int8 import QuantizeOptions, QuantizeResult, census_of, int8_census, quantize_int8
from .measure import head_snr
from .source import calibration_preprocessor, copy_sidecar, load_inputs
from .weights import quantize_dynamic, quantize_fp16

__all__ = [
    "PERCENTILE_CANDIDATES", "QuantizeOptions", "QuantizeResult", "calibration_preprocessor", "census_of",
    "choose_percentile", "compare_models", "copy_sidecar", "detection_agreement", "head_snr", "int8_census",
    "load_inputs", "prepare_float_model", "pseudo_map", "quantize_dynamic", "quantize_fp16", "quantize_int8",
    "quantize_int8_auto",
]
