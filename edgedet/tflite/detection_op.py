"""The detection op: the ``TFLite_Detection_PostProcess`` custom op that ends many SSD exports.

It reads (box encodings ``[1,N,4]``, class predictions ``[1,N,C+1]``, anchors ``[N,4]`` constant,
yxhw, possibly quantized) and outputs boxes, classes, scores and a count. Its class predictions
usually come from a LOGISTIC op (so they are already probabilities) and include a background
column 0 that the op skips.

Here: finding the op, reading its options (a flexbuffer map) and stripping it in memory, so that
the raw SSD outputs become the graph outputs and what the op knew (anchors, options) is returned
beside the model for our own decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import ModelError
from .flatbuffer import model_to_bytes, opcode_name, schema, tensor_array, tensor_name

DETECTION_OP = "TFLite_Detection_PostProcess"


@dataclass
class Stripped:
    """A model without its detection op, and what the op knew."""

    model: object  # ModelT without the op
    anchors: np.ndarray  # [N, 4] float32 yxhw, dequantized
    options: dict  # the op's custom options
    background: int  # leading background columns of the class predictions
    boxes_name: str
    scores_name: str
    score_activation: str = "none"
    _bytes: bytes = field(default=b"", repr=False)

    @property
    def model_bytes(self) -> bytes:
        if not self._bytes:
            self._bytes = model_to_bytes(self.model)
        return self._bytes


def find_detection_op(model) -> Optional[tuple[int, int]]:
    """(subgraph index, operator index) of the detection op in a ``ModelT``, or None."""
    for si, sub in enumerate(model.subgraphs or []):
        for oi, op in enumerate(sub.operators or []):
            if opcode_name(model, op.opcodeIndex) == DETECTION_OP:
                return si, oi
    return None


def read_detection_op_options(op) -> dict:
    """The detection op's custom options (a flexbuffer map) as a dict."""
    raw = op.customOptions
    if raw is None or len(raw) == 0:
        return {}
    try:
        from flatbuffers import flexbuffers  # type: ignore

        value = flexbuffers.Loads(bytes(bytearray(raw)))
    except Exception as exc:
        raise ModelError(f"cannot read the {DETECTION_OP} options: {exc}") from exc
    return dict(value) if isinstance(value, dict) else {}


def _dequantized(model, tensor) -> np.ndarray:
    arr = tensor_array(model, tensor)
    if arr is None:
        raise ModelError(f"the {DETECTION_OP} op's anchors are not a constant tensor: cannot strip it")
    q = tensor.quantization
    if arr.dtype.kind in "iu" and q is not None and q.scale is not None and len(q.scale):
        scale = np.float32(q.scale[0])
        zp = np.float32(q.zeroPoint[0] if q.zeroPoint is not None and len(q.zeroPoint) else 0)
        return ((arr.astype(np.float32) - zp) * scale).astype(np.float32)
    return arr.astype(np.float32)


def strip_detection_op(model) -> Stripped:
    """Strip the detection op from a ``ModelT`` (modified in place) and return it with the op's
    anchors and options. One-line ``ModelError`` when there is no op or it cannot be stripped."""
    found = find_detection_op(model)
    if found is None:
        raise ModelError(f"model has no {DETECTION_OP} op to strip")
    si, oi = found
    sub = model.subgraphs[si]
    op = sub.operators[oi]
    inputs = [int(i) for i in op.inputs]
    if len(inputs) < 3:
        raise ModelError(f"the {DETECTION_OP} op has {len(inputs)} inputs (expected 3)")
    options = read_detection_op_options(op)
    boxes_t, scores_t, anchors_t = (sub.tensors[i] for i in inputs[:3])
    anchors = _dequantized(model, anchors_t).reshape(-1, 4)
    num_classes = int(options.get("num_classes", 0) or 0)
    cols = int(scores_t.shape[-1])
    if num_classes <= 0 or num_classes > cols:
        raise ModelError(f"the {DETECTION_OP} op says {num_classes} classes for {cols} score columns")
    activation = _score_activation(model, sub, inputs[1], scores_t)
    sub.operators.pop(oi)
    sub.outputs = np.array(inputs[:2], dtype=np.int32)
    remap = drop_unused_tensors(model, si)
    drop_unused_opcodes(model)
    boxes_name, scores_name = tensor_name(boxes_t), tensor_name(scores_t)
    _fix_signatures(model, si, remap)
    return Stripped(model, anchors, options, cols - num_classes, boxes_name, scores_name, activation)


def scores_activation(model, scores_index: int, subgraph: int = 0) -> str:
    """What the class scores tensor ``scores_index`` of a ``ModelT`` holds: ``none`` (probabilities:
    made by LOGISTIC / SOFTMAX, or quantized) or ``sigmoid`` (float logits)."""
    sub = model.subgraphs[subgraph]
    return _score_activation(model, sub, int(scores_index), sub.tensors[int(scores_index)])


def _score_activation(model, sub, scores_index: int, scores_t) -> str:
    """``none`` when the op's class input is already a probability (after LOGISTIC / SOFTMAX, or
    quantized), else ``sigmoid`` (float logits)."""
    producer = next((o for o in sub.operators if scores_index in list(o.outputs)), None)
    # look through type casts (an int8 body ends LOGISTIC -> DEQUANTIZE before the float op)
    while producer is not None and opcode_name(model, producer.opcodeIndex) in ("DEQUANTIZE", "QUANTIZE", "CAST"):
        src = int(producer.inputs[0])
        producer = next((o for o in sub.operators if src in list(o.outputs)), None)
    if producer is not None and opcode_name(model, producer.opcodeIndex) not in ("LOGISTIC", "SOFTMAX"):
        # quantized outputs in [0, 1] are probabilities too; float outputs of anything else are logits
        q = scores_t.quantization
        if scores_t.type not in (3, 9) or q is None or q.scale is None:
            return "sigmoid"
    return "none"


def drop_unused_tensors(model, si: int) -> dict[int, int]:
    """Remove the tensors of subgraph ``si`` that nothing uses (their buffers emptied); returns the
    old -> new tensor index map."""
    sub = model.subgraphs[si]
    used: set[int] = set(int(i) for i in sub.inputs) | set(int(i) for i in sub.outputs)
    for o in sub.operators:
        used.update(int(i) for i in o.inputs if i >= 0)
        used.update(int(i) for i in o.outputs if i >= 0)
        if o.intermediates is not None:
            used.update(int(i) for i in o.intermediates if i >= 0)
    kept, remap = _keep_used(sub.tensors, used)
    dropped_buffers = {int(t.buffer) for i, t in enumerate(sub.tensors) if i not in used}
    sub.tensors = kept

    def rm(arr):
        return np.array([remap[int(i)] if i >= 0 else int(i) for i in arr], dtype=np.int32)

    sub.inputs, sub.outputs = rm(sub.inputs), rm(sub.outputs)
    for o in sub.operators:
        o.inputs, o.outputs = rm(o.inputs), rm(o.outputs)
        if o.intermediates is not None:
            o.intermediates = rm(o.intermediates)
    still = {int(t.buffer) for s in model.subgraphs for t in s.tensors}
    for b in dropped_buffers - still:
        if b > 0 and b < len(model.buffers):
            model.buffers[b].data = None
            if hasattr(model.buffers[b], "offset"):
                model.buffers[b].offset = 0
                model.buffers[b].size = 0
    return remap


def _keep_used(items: list, used: set[int]) -> tuple[list, dict[int, int]]:
    """The items whose index is in ``used``, in order, and the old -> new index map."""
    kept = [item for i, item in enumerate(items) if i in used]
    remap = {old: new for new, old in enumerate(i for i in range(len(items)) if i in used)}
    return kept, remap


def drop_unused_opcodes(model) -> None:
    """Remove operator codes no operator uses (renumbering the operators' opcode indices)."""
    used = {int(o.opcodeIndex) for s in model.subgraphs for o in s.operators}
    model.operatorCodes, remap = _keep_used(model.operatorCodes, used)
    for s in model.subgraphs:
        for o in s.operators:
            o.opcodeIndex = remap[int(o.opcodeIndex)]


def _fix_signatures(model, si: int, remap: dict[int, int]) -> None:
    """Signature inputs follow the renumbered tensors; outputs become the two raw outputs."""
    sub = model.subgraphs[si]
    for sig in model.signatureDefs or []:
        if int(sig.subgraphIndex or 0) != si:
            continue
        for tm in sig.inputs or []:
            tm.tensorIndex = remap.get(int(tm.tensorIndex), int(tm.tensorIndex))
        outs = []
        for name, idx in (("box_encodings", int(sub.outputs[0])), ("class_predictions", int(sub.outputs[1]))):
            tm = schema().TensorMapT()
            tm.name = name
            tm.tensorIndex = idx
            outs.append(tm)
        sig.outputs = outs
