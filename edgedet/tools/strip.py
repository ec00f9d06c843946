"""Remove the ``TFLite_Detection_PostProcess`` op from a model: the raw SSD outputs become the graph
outputs, and what the op knew (its anchors and options) goes to the sidecar and ``.anchors.npy``.

The op's inputs are (box encodings ``[1,N,4]``, class predictions ``[1,N,C+1]``, anchors ``[N,4]``
constant, yxhw, possibly quantized). Its class predictions usually come from a LOGISTIC op (so they
are already probabilities) and include a background column 0 that the op skips.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..model import POSTPROCESS_OP
from ..tflite_file import model_to_bytes, opcode_name, read_model, schema, tensor_array, tensor_name, write_model


@dataclass
class Stripped:
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


def _dequantized(model, tensor) -> np.ndarray:
    arr = tensor_array(model, tensor)
    if arr is None:
        raise ModelError(f"the {POSTPROCESS_OP} op's anchors are not a constant tensor: cannot strip it")
    q = tensor.quantization
    if arr.dtype.kind in "iu" and q is not None and q.scale is not None and len(q.scale):
        scale = np.float32(q.scale[0])
        zp = np.float32(q.zeroPoint[0] if q.zeroPoint is not None and len(q.zeroPoint) else 0)
        return ((arr.astype(np.float32) - zp) * scale).astype(np.float32)
    return arr.astype(np.float32)


def strip_in_memory(model) -> Stripped:
    """Strip the op from a ``ModelT`` (modified in place) and return it with the op's anchors/options."""
    from ..model import find_postprocess_op, read_op_options

    found = find_postprocess_op(model)
    if found is None:
        raise ModelError(f"model has no {POSTPROCESS_OP} op to strip")
    si, oi = found
    sub = model.subgraphs[si]
    op = sub.operators[oi]
    inputs = [int(i) for i in op.inputs]
    if len(inputs) < 3:
        raise ModelError(f"the {POSTPROCESS_OP} op has {len(inputs)} inputs (expected 3)")
    options = read_op_options(op)
    boxes_t, scores_t, anchors_t = (sub.tensors[i] for i in inputs[:3])
    anchors = _dequantized(model, anchors_t).reshape(-1, 4)
    num_classes = int(options.get("num_classes", 0) or 0)
    cols = int(scores_t.shape[-1])
    if num_classes <= 0 or num_classes > cols:
        raise ModelError(f"the {POSTPROCESS_OP} op says {num_classes} classes for {cols} score columns")
    # is the class input already a probability (after LOGISTIC / SOFTMAX)?
    producer = next((o for o in sub.operators if inputs[1] in list(o.outputs)), None)
    # look through type casts (an int8 body ends LOGISTIC -> DEQUANTIZE before the float op)
    while producer is not None and opcode_name(model, producer.opcodeIndex) in ("DEQUANTIZE", "QUANTIZE", "CAST"):
        src = int(producer.inputs[0])
        producer = next((o for o in sub.operators if src in list(o.outputs)), None)
    activation = "none"
    if producer is not None and opcode_name(model, producer.opcodeIndex) not in ("LOGISTIC", "SOFTMAX"):
        # quantized outputs in [0, 1] are probabilities too; float outputs of anything else are logits
        q = scores_t.quantization
        if scores_t.type not in (3, 9) or q is None or q.scale is None:
            activation = "sigmoid"
    sub.operators.pop(oi)
    sub.outputs = np.array(inputs[:2], dtype=np.int32)
    remap = drop_unused_tensors(model, si)
    drop_unused_opcodes(model)
    boxes_name, scores_name = tensor_name(boxes_t), tensor_name(scores_t)
    _fix_signatures(model, si, remap)
    return Stripped(model, anchors, options, cols - num_classes, boxes_name, scores_name, activation)


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
    remap = {}
    kept = []
    for old, t in enumerate(sub.tensors):
        if old in used:
            remap[old] = len(kept)
            kept.append(t)
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


def drop_unused_opcodes(model) -> None:
    """Remove operator codes no operator uses (renumbering the operators' opcode indices)."""
    used = {int(o.opcodeIndex) for s in model.subgraphs for o in s.operators}
    remap = {}
    codes = []
    for old, c in enumerate(model.operatorCodes):
        if old in used:
            remap[old] = len(codes)
            codes.append(c)
    model.operatorCodes = codes
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


def sidecar_postprocess(stripped: Stripped) -> dict:
    """The sidecar ``postprocess`` section that lets our decode reproduce the op."""
    o = stripped.options
    return {
        "form": "raw",
        "score_threshold": float(o.get("nms_score_threshold", 0.0)),
        "iou_threshold": float(o.get("nms_iou_threshold", 0.6)),
        "max_detections": int(o.get("max_detections", 10)),
        "num_classes": int(o.get("num_classes", 0)),
        "background": int(stripped.background),
        "use_regular_nms": bool(o.get("use_regular_nms", False)),
        "max_classes_per_detection": int(o.get("max_classes_per_detection", 1)),
        "detections_per_class": int(o.get("detections_per_class", 100)),
        "y_scale": float(o.get("y_scale", 10.0)),
        "x_scale": float(o.get("x_scale", 10.0)),
        "h_scale": float(o.get("h_scale", 5.0)),
        "w_scale": float(o.get("w_scale", 5.0)),
        "box_order": "yxhw",
        "size_transform": "exp",
        "score_activation": stripped.score_activation,
    }


def strip_postprocess(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write ``dst`` (.tflite without the op), its sidecar and ``<dst stem>.anchors.npy``; return a summary."""
    from ..sidecar import load_sidecar, resolve_relative, save_sidecar, sidecar_path

    src, dst = Path(src), Path(dst)
    if dst.suffix != ".tflite":
        raise ModelError(f"output must be a .tflite path: {dst}")
    if dst.resolve() == src.resolve():
        raise ModelError("output must differ from the input model")
    model = read_model(src)
    stripped = strip_in_memory(model)
    anchors_path = dst.with_suffix(".anchors.npy")
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_model(stripped.model, dst)
    tmp = anchors_path.with_name(anchors_path.name + ".part.npy")
    np.save(tmp, stripped.anchors)
    os.replace(tmp, anchors_path)

    data = dict(load_sidecar(src))
    labels = data.get("labels")
    if isinstance(labels, str):  # keep a relative label path valid from the new place
        data["labels"] = os.path.relpath(resolve_relative(src, labels).resolve(), dst.parent.resolve())
    data["postprocess"] = sidecar_postprocess(stripped)
    data["anchors"] = {"file": anchors_path.name, "format": "yxhw"}
    data["outputs"] = {"boxes": stripped.boxes_name, "scores": stripped.scores_name}
    history = list(data.get("history") or [])
    history.append({"tool": "strip", "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "source": str(src), "removed": POSTPROCESS_OP})
    data["history"] = history
    save_sidecar(dst, data)
    return {
        "model": str(dst),
        "sidecar": str(sidecar_path(dst)),
        "anchors_file": str(anchors_path),
        "num_anchors": int(len(stripped.anchors)),
        "num_classes": data["postprocess"]["num_classes"],
        "background": stripped.background,
        "outputs": data["outputs"],
        "postprocess": data["postprocess"],
    }
