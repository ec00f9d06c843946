"""Weight-only modes: float16 weights, and dynamic range (int8 weights, float activations)."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import numpy as np

from ... import tflite as tfl
from .graph import CONV_OPS, FLOAT16, FLOAT32, INT8, has_data, opcode_index, ops_of, prepare_float_model
from .int8 import QuantizeResult, require_quantizer, restore_io_names


def quantize_fp16(src, out) -> QuantizeResult:
    """float16 weights (conv and fully-connected) with ``DEQUANTIZE`` ops; float activations.

    Halves the weight size; XNNPACK folds the ``DEQUANTIZE`` at load and runs in float32.
    """
    t0 = time.perf_counter()
    model = tfl.read_model(src)
    prepared = prepare_float_model(model)
    schema = tfl.schema()
    sg = model.subgraphs[0]
    deq = opcode_index(model, "DEQUANTIZE")
    new_ops, converted = [], 0
    for op, name in ops_of(model, sg):
        if name not in CONV_OPS:
            continue
        idx = op.inputs[1]
        t = sg.tensors[idx]
        if int(t.type) != FLOAT32 or not has_data(model, t):
            continue
        values = tfl.tensor_array(model, t)
        half = schema.TensorT()
        half.shape = np.array(t.shape, np.int32)
        half.type = FLOAT16
        half.name = (tfl.tensor_name(t) + "_fp16").encode()
        buf = schema.BufferT()
        buf.data = np.frombuffer(values.astype(np.float16).tobytes(), np.uint8)
        model.buffers.append(buf)
        half.buffer = len(model.buffers) - 1
        sg.tensors.append(half)
        old = t.buffer
        model.buffers.append(schema.BufferT())
        t.buffer = len(model.buffers) - 1  # the float tensor becomes the DEQUANTIZE output
        if not any(other.buffer == old for other in sg.tensors):
            model.buffers[old].data = None
        d = schema.OperatorT()
        d.opcodeIndex = deq
        d.inputs = np.array([len(sg.tensors) - 1], np.int32)
        d.outputs = np.array([idx], np.int32)
        new_ops.append(d)
        converted += 1
    sg.operators = new_ops + list(sg.operators)
    tfl.write_model(model, out)
    recipe = {"mode": "fp16", "weights": "float16", "activations": "float32"}
    return QuantizeResult(Path(out), "fp16", recipe, {"weights_fp16": converted}, 0, time.perf_counter() - t0,
                          prepared)


def quantize_dynamic(src, out) -> QuantizeResult:
    """Dynamic range: int8 per-channel weights, float activations (quantized on the fly)."""
    import tempfile

    aeq = require_quantizer()
    from ai_edge_quantizer import recipe as aeq_recipe

    t0 = time.perf_counter()
    model = tfl.read_model(src)
    prepared = prepare_float_model(model)
    qt = aeq.Quantizer(bytearray(tfl.model_to_bytes(model)))
    qt.load_quantization_recipe(aeq_recipe.dynamic_wi8_afp32())
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            np.errstate(all="ignore"):
        result = qt.quantize(enable_progress_report=False)
    with tempfile.TemporaryDirectory(prefix="edgedet-dq-") as tmp:
        qpath = Path(tmp) / "q.tflite"
        qpath.write_bytes(bytes(result.quantized_model))
        qmodel = tfl.read_model(qpath)
    restore_io_names(qmodel, model)
    sg = qmodel.subgraphs[0]
    n = sum(1 for op, name in ops_of(qmodel, sg) if name in CONV_OPS and int(sg.tensors[op.inputs[1]].type) == INT8)
    tfl.write_model(qmodel, out)
    recipe = {"mode": "dynamic", "tool": "ai-edge-quantizer", "weights": "int8 symmetric per-channel",
              "activations": "float32 (int8 on the fly)"}
    return QuantizeResult(Path(out), "dynamic", recipe, {"weights_int8": n}, 0, time.perf_counter() - t0,
                          prepared)

