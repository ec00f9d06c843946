"""Read, inspect and write ``.tflite`` flatbuffers (the model file itself).

Uses the schema bindings shipped inside ``ai_edge_litert`` (no TensorFlow needed). Large
buffers stored by offset after the flatbuffer (as ai-edge-quantizer writes them) are resolved
on read, so ``model.buffers[i].data`` always holds the bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ModelError

_TENSOR_DTYPES = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    6: np.bool_,
    7: np.int16,
    9: np.int8,
    10: np.float64,
}


def _fb():
    try:
        from ai_edge_litert.tools import flatbuffer_utils  # type: ignore
    except ImportError as exc:  # pragma: no cover - depends on install
        raise ModelError("editing .tflite files needs ai-edge-litert (pip install ai-edge-litert)") from exc
    return flatbuffer_utils


def schema():
    """The generated flatbuffer schema module (``ModelT``, ``OperatorT``, ``BuiltinOperator``...)."""
    from ai_edge_litert import schema_py_generated  # type: ignore

    return schema_py_generated


def read_model(path: str | os.PathLike):
    """Return the model as a mutable ``ModelT`` object; one-line ``ModelError`` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    return model_from_bytes(path.read_bytes(), path)


def model_from_bytes(data: bytes, what: object = "model"):
    """The ``ModelT`` of model bytes already in memory (``what`` names them in errors)."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"not a .tflite model (no TFL3 identifier): {what}")
    try:
        model = _fb().read_model_from_bytearray(bytearray(data))
    except Exception as exc:  # corrupt flatbuffer
        raise ModelError(f"corrupt .tflite model {what}: {exc}") from exc
    for buf in model.buffers or []:
        # buffers stored by offset come back as bytearray slices, which the schema's Pack writes
        # one byte per Python call (seconds per model); as uint8 arrays the written bytes are the same
        if buf is not None and buf.data is not None and not isinstance(buf.data, np.ndarray):
            buf.data = np.frombuffer(bytes(buf.data), np.uint8)
    return model


def model_to_bytes(model) -> bytes:
    """The serialized model. Operator codes get both their code fields and builtin operators
    missing their options table get it first (``complete_operator_codes``,
    ``complete_builtin_options``): readers such as OpenVINO's refuse a model without them."""
    complete_operator_codes(model)
    complete_builtin_options(model)
    return bytes(_fb().convert_object_to_bytearray(model))


_PLACEHOLDER_FOR_GREATER_OP_CODES = 127


def complete_operator_codes(model) -> int:
    """Set both code fields of every operator code as TFLite writes them: ``builtinCode`` and
    ``deprecatedBuiltinCode`` = ``min(code, 127)``. A code written with only ``builtinCode``
    (a ``QUANTIZE``, 114, with a deprecated code 0) reads as ``ADD`` to readers that take the
    deprecated field for codes below 127. Returns how many were changed."""
    done = 0
    for code in model.operatorCodes or []:
        builtin = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
        want = (builtin, min(builtin, _PLACEHOLDER_FOR_GREATER_OP_CODES))
        if (int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0)) != want:
            code.builtinCode, code.deprecatedBuiltinCode = want
            done += 1
    return done


# builtin operators whose options table is not named after the operator
_OPTIONS_BY_OP = {"AVERAGE_POOL_2D": "Pool2DOptions", "MAX_POOL_2D": "Pool2DOptions", "L2_POOL_2D": "Pool2DOptions",
                  **{op: "ReducerOptions" for op in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD",
                                                     "REDUCE_ANY", "REDUCE_ALL")}}


def builtin_options_name(op_name: str) -> str | None:
    """The schema's options table of the builtin operator ``op_name`` (``"CONV_2D"`` ->
    ``"Conv2DOptions"``), or None when the operator has none (``LOGISTIC``, ``RELU6``...)."""
    if op_name in _OPTIONS_BY_OP:
        return _OPTIONS_BY_OP[op_name]
    key = op_name.replace("_", "").lower() + "options"
    names = {k.lower(): k for k in vars(schema().BuiltinOptions) if not k.startswith("_") and k != "NONE"}
    return names.get(key)


def complete_builtin_options(model) -> int:
    """Give every builtin operator of ``model`` whose schema has an options table and that has
    none its table with the values the runtime assumes when it is absent (the schema defaults;
    a ``RESHAPE`` gets its new shape from its shape input or its output). Returns how many were
    set."""
    fb = schema()
    done = 0
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            if op.builtinOptions is not None or model.operatorCodes[op.opcodeIndex].customCode:
                continue
            name = builtin_options_name(opcode_name(model, op.opcodeIndex))
            if name is None:
                continue
            options = getattr(fb, name + "T")()
            if name == "ReshapeOptions":
                options.newShape = _reshape_target(model, sg, op)
            op.builtinOptionsType = getattr(fb.BuiltinOptions, name)
            op.builtinOptions = options
            done += 1
    return done


def unreadable_operators(model) -> list[str]:
    """What readers other than TFLite's own refuse in ``model`` (one line each): builtin operators
    without the options table their schema has, operator codes whose two code fields disagree."""
    fb = schema()
    problems = []
    for k, code in enumerate(model.operatorCodes or []):
        builtin = int(code.builtinCode or 0)
        if int(code.deprecatedBuiltinCode or 0) != min(builtin, _PLACEHOLDER_FOR_GREATER_OP_CODES):
            problems.append(f"operator code {k} ({opcode_name(model, k)}): deprecated code "
                            f"{code.deprecatedBuiltinCode}, code {builtin}")
    for si, sg in enumerate(model.subgraphs or []):
        for oi, op in enumerate(sg.operators or []):
            if model.operatorCodes[op.opcodeIndex].customCode:
                continue
            name = opcode_name(model, op.opcodeIndex)
            want = builtin_options_name(name)
            if want is not None and (op.builtinOptions is None
                                     or int(op.builtinOptionsType or 0) != getattr(fb.BuiltinOptions, want)):
                problems.append(f"operator {si}:{oi} {name} without its {want}")
    return problems


def _reshape_target(model, sg, op):
    """A RESHAPE's new shape: its constant shape input, else its output's static shape (None when
    neither is known)."""
    inputs = [int(i) for i in op.inputs] if op.inputs is not None else []
    if len(inputs) > 1 and inputs[1] >= 0:
        shape = tensor_array(model, sg.tensors[inputs[1]])
        if shape is not None:
            return [int(v) for v in shape.reshape(-1)]
    out = sg.tensors[int(op.outputs[0])]
    signature = out.shapeSignature if out.shapeSignature is not None else out.shape
    if out.shape is not None and all(int(v) >= 0 for v in signature):
        return [int(v) for v in out.shape]
    return None


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename: never a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_model(model, path: str | os.PathLike) -> None:
    write_atomic(path, model_to_bytes(model))


def opcode_name(model, opcode_index: int) -> str:
    """Builtin op name (e.g. ``CONV_2D``) or the custom code (e.g. ``TFLite_Detection_PostProcess``)."""
    code = model.operatorCodes[opcode_index]
    if code.customCode:
        cc = code.customCode
        return cc.decode() if isinstance(cc, (bytes, bytearray)) else str(cc)
    builtin = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
    names = {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}
    return names.get(builtin, str(builtin))


def tensor_array(model, tensor) -> np.ndarray | None:
    """The constant data of ``tensor`` as a numpy array of its dtype and shape (a copy), or None."""
    buf = model.buffers[tensor.buffer]
    if buf is None or buf.data is None or len(buf.data) == 0:
        return None
    dtype = _TENSOR_DTYPES.get(int(tensor.type))
    if dtype is None:
        return None
    arr = np.frombuffer(bytes(buf.data), dtype=dtype)
    shape = list(tensor.shape) if tensor.shape is not None else [arr.size]
    return arr.reshape(shape).copy()


def set_tensor_array(model, tensor, values: np.ndarray) -> None:
    """Replace the constant data of ``tensor`` (same dtype; shape may be unchanged only)."""
    dtype = _TENSOR_DTYPES[int(tensor.type)]
    arr = np.ascontiguousarray(values, dtype=dtype)
    model.buffers[tensor.buffer].data = np.frombuffer(arr.tobytes(), dtype=np.uint8)


def tensor_name(tensor) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, (bytes, bytearray)) else str(name)
