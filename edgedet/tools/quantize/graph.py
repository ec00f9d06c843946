"""The float graph the quantizer works on: op and tensor helpers shared by every quantize module,
the preparation of a float model for the quantizer, and the prediction head's tensors."""

from __future__ import annotations

import numpy as np

from ... import tflite as tfl
from ...errors import ModelError
from ...tflite import DETECTION_OP, read_detection_op_options

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
FLOAT32, FLOAT16, INT32, UINT8, INT8 = 0, 1, 2, 3, 9  # TensorType codes


def ops_of(model, sg=None):
    sg = sg or model.subgraphs[0]
    return [(op, tfl.opcode_name(model, op.opcodeIndex)) for op in sg.operators]


def has_data(model, tensor) -> bool:
    buf = model.buffers[tensor.buffer]
    return buf is not None and buf.data is not None and len(buf.data) > 0


def quant_params(tensor):
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    scale = np.asarray(q.scale, np.float32)
    zp = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros_like(scale), np.int64)
    return scale, zp, int(q.quantizedDimension or 0)


def dequantize_tensor(model, tensor) -> np.ndarray:
    """Float32 values of a quantized or float16 constant: ``scale * (q - zp)`` along its axis."""
    arr = tfl.tensor_array(model, tensor)
    if arr is None:
        raise ModelError(f"tensor {tfl.tensor_name(tensor)} has no data")
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    qa = quant_params(tensor)
    if qa is None:
        return arr.astype(np.float32)
    scale, zp, axis = qa
    shape = [1] * arr.ndim
    if len(scale) > 1:
        shape[axis] = len(scale)
    return ((arr.astype(np.float32) - zp.reshape(shape).astype(np.float32)) * scale.reshape(shape)).astype(
        np.float32)


def set_float(model, tensor, values: np.ndarray) -> None:
    tensor.type = FLOAT32
    tensor.quantization = None
    arr = np.ascontiguousarray(values, np.float32)
    model.buffers[tensor.buffer].data = np.frombuffer(arr.tobytes(), np.uint8)
    model.buffers[tensor.buffer].offset = 0
    model.buffers[tensor.buffer].size = 0




def float_array(model, tensor) -> np.ndarray:
    """The constant data of ``tensor`` as float64."""
    return tfl.tensor_array(model, tensor).astype(np.float64)


def store_constant(model, tensor, values: np.ndarray) -> None:
    """Replace the constant data of ``tensor`` (its own dtype) and drop any stored offset."""
    tfl.set_tensor_array(model, tensor, values)
    model.buffers[tensor.buffer].offset = 0
    model.buffers[tensor.buffer].size = 0


def fused_activation(op) -> int:
    """The op's fused activation code (0 none, 1 ReLU, 3 ReLU6...)."""
    opts = op.builtinOptions
    return int(getattr(opts, "fusedActivationFunction", 0) or 0) if opts is not None else 0


def opcode_index(model, builtin_name: str) -> int:
    schema = tfl.schema()
    code = getattr(schema.BuiltinOperator, builtin_name)
    for i, oc in enumerate(model.operatorCodes):
        if not oc.customCode and max(int(oc.builtinCode or 0), int(oc.deprecatedBuiltinCode or 0)) == code:
            return i
    oc = schema.OperatorCodeT()
    oc.builtinCode = code
    oc.deprecatedBuiltinCode = min(code, 127)
    oc.version = 1
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def is_integer_model(model) -> bool:
    """True when the model's activations are already integer (e.g. a uint8 SSD)."""
    sg = model.subgraphs[0]
    for op, name in ops_of(model, sg):
        if name in CONV_OPS:
            t = sg.tensors[op.inputs[0]]
            if int(t.type) in (INT8, UINT8, 7):
                return True
    return False




def prepare_float_model(model) -> dict:
    """Make ``model`` (a ``ModelT``, edited in place) a plain float model the quantizer accepts."""
    sg = model.subgraphs[0]
    if len(model.subgraphs) != 1:
        raise ModelError("only single-subgraph models can be quantized")
    if is_integer_model(model):
        raise ModelError("the model is already integer-quantized (its activations are int8/uint8)")
    stats = {"dequantized_weights": 0, "folded_dequantize_ops": 0, "had_detection_op": False}
    consumers: dict = {}
    for op, _ in ops_of(model, sg):
        for i in op.inputs:
            if i >= 0:
                consumers.setdefault(i, []).append(op)
    # 1. fold DEQUANTIZE ops whose input is a constant (fp16 / int8 weights)
    keep_ops = []
    for op, name in ops_of(model, sg):
        if name == "DEQUANTIZE" and has_data(model, sg.tensors[op.inputs[0]]):
            src, dst = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
            values = dequantize_tensor(model, src)
            dst.buffer = src.buffer
            set_float(model, dst, values.reshape(list(dst.shape)))
            stats["folded_dequantize_ops"] += 1
            continue
        keep_ops.append(op)
    sg.operators = keep_ops
    # 2. hybrid kernels: quantized constant weights consumed directly by float ops
    seen = set()
    for op, name in ops_of(model, sg):
        if name == DETECTION_OP:
            continue
        for i in op.inputs:
            if i < 0 or i in seen:
                continue
            t = sg.tensors[i]
            if has_data(model, t) and int(t.type) in (INT8, UINT8, FLOAT16, 7) and (
                    int(t.type) == FLOAT16 or quant_params(t) is not None):
                seen.add(i)
                set_float(model, t, dequantize_tensor(model, t))
                stats["dequantized_weights"] += 1
    # buffers shared by several tensors could be converted twice: the seen set guards by tensor,
    # and the TF exporters do not share weight buffers between differently typed tensors.
    # 3. static output shapes for the detection op
    for op, name in ops_of(model, sg):
        if name == DETECTION_OP:
            stats["had_detection_op"] = True
            opts = read_detection_op_options(op)
            n = int(opts.get("max_detections", 10)) * int(opts.get("max_classes_per_detection", 1))
            for t, shape in zip(op.outputs, ([1, n, 4], [1, n], [1, n], [1])):
                sg.tensors[t].shape = np.array(shape, np.int32)
                sg.tensors[t].shapeSignature = None
    # 4. a signature (the quantizer calibrates through signatures)
    if not model.signatureDefs:
        schema = tfl.schema()
        sig = schema.SignatureDefT()
        sig.signatureKey = "serving_default"
        sig.subgraphIndex = 0
        sig.inputs, sig.outputs = [], []
        for k, i in enumerate(sg.inputs):
            m = schema.TensorMapT()
            m.name, m.tensorIndex = f"input_{k}" if len(sg.inputs) > 1 else "input", int(i)
            sig.inputs.append(m)
        for k, i in enumerate(sg.outputs):
            m = schema.TensorMapT()
            m.name, m.tensorIndex = f"output_{k}", int(i)
            sig.outputs.append(m)
        model.signatureDefs = [sig]
        stats["added_signature"] = True
    return stats




def head_roots(model) -> list:
    """Tensor indices of the head's box encodings and scores: the detection op's two first
    inputs or, in a raw-output model, its outputs ``[1, N, 4]`` then ``[1, N, C]`` (up to two)."""
    sg = model.subgraphs[0]
    roots = None
    for op in sg.operators:
        if tfl.opcode_name(model, op.opcodeIndex) == DETECTION_OP:
            roots = [int(op.inputs[0]), int(op.inputs[1])]
    if roots is None:
        outs = [int(i) for i in sg.outputs]
        roots = sorted(outs, key=lambda t: int(sg.tensors[t].shape[-1]) != 4)[:2]
    return roots


def head_parts(model) -> dict:
    """``{"boxes": names, "scores": names}``: the head tensors on the way to the box encodings and
    to the class predictions (from the prediction convolutions on), for op-form and raw models."""
    sg = model.subgraphs[0]
    producer = {}
    for op, name in ops_of(model, sg):
        for o in op.outputs:
            producer[int(o)] = (op, name)
    parts = {}
    for key, root in zip(("boxes", "scores"), head_roots(model)):
        names, stack, seen = set(), [root], set()
        while stack:
            t = int(stack.pop())
            if t < 0 or t in seen:
                continue
            seen.add(t)
            tensor = sg.tensors[t]
            if has_data(model, tensor):
                continue
            names.add(tfl.tensor_name(tensor))
            prod = producer.get(t)
            if prod is None or prod[1] in CONV_OPS:
                continue
            stack.extend(prod[0].inputs)
        parts[key] = names
    parts.setdefault("boxes", set())
    parts.setdefault("scores", set())
    return parts



def background_columns(model, sidecar: dict) -> int:
    """How many leading class columns of the head's scores the decoding never reads (the
    background): the detection op's columns beyond its ``num_classes`` or, in a raw model, the
    sidecar's ``postprocess`` ``background`` (or its columns beyond ``num_classes``); 0 when
    nothing says."""
    sg = model.subgraphs[0]
    score = head_roots(model)[1] if len(head_roots(model)) > 1 else None
    if score is None or sg.tensors[score].shape is None or not len(sg.tensors[score].shape):
        return 0
    cols = int(sg.tensors[score].shape[-1])
    for op, name in ops_of(model, sg):
        if name == DETECTION_OP:
            n = read_detection_op_options(op).get("num_classes")
            return max(0, cols - int(n)) if n else 0
    pp = sidecar.get("postprocess") or {}
    if pp.get("background") is not None:
        return max(0, min(int(pp["background"]), cols - 1))
    if pp.get("num_classes") is not None:
        return max(0, cols - int(pp["num_classes"]))
    return 0
