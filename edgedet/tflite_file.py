"""Read, inspect and write ``.tflite`` flatbuffers (for strip, quantize and prune).

Uses the schema bindings shipped inside ``ai_edge_litert`` (no TensorFlow needed). Large
buffers stored by offset after the flatbuffer (as ai-edge-quantizer writes them) are resolved
on read, so ``model.buffers[i].data`` always holds the bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import ModelError

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
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"not a .tflite model (no TFL3 identifier): {path}")
    try:
        return _fb().read_model_from_bytearray(bytearray(data))
    except Exception as exc:  # corrupt flatbuffer
        raise ModelError(f"corrupt .tflite model {path}: {exc}") from exc


def model_to_bytes(model) -> bytes:
    return bytes(_fb().convert_object_to_bytearray(model))


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
