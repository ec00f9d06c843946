"""The model file and its runtime.

* ``flatbuffer``: read, inspect and write ``.tflite`` files (``ModelT`` objects);
* ``interpreter``: load a TFLite interpreter from a file or from bytes in memory;
* ``detection_op``: the ``TFLite_Detection_PostProcess`` op (the detection op) — find it, read its
  options, strip it in memory.

Only the core lives here: nothing in this package imports ``edgedet.tools``.
"""

from __future__ import annotations

from .detection_op import (
    DETECTION_OP,
    Stripped,
    find_detection_op,
    read_detection_op_options,
    scores_activation,
    strip_detection_op,
)
from .flatbuffer import (
    model_from_bytes,
    model_to_bytes,
    opcode_name,
    read_model,
    schema,
    set_tensor_array,
    tensor_array,
    tensor_name,
    write_atomic,
    write_model,
)
from .interpreter import (
    default_threads,
    interpreter_class,
    load_interpreter,
    load_interpreter_from_bytes,
    median_invoke_ms,
)

__all__ = [
    "DETECTION_OP", "Stripped", "default_threads", "find_detection_op", "interpreter_class", "load_interpreter",
    "load_interpreter_from_bytes", "median_invoke_ms", "model_from_bytes", "model_to_bytes", "opcode_name",
    "read_detection_op_options",
    "scores_activation", "read_model", "schema", "set_tensor_array", "strip_detection_op", "tensor_array",
    "tensor_name", "write_atomic", "write_model",
]
