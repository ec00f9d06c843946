"""``--keep-classes person,car``: a model that predicts only the classes you want.

An SSD predicts, for every anchor, one score per class (plus background). The class-prediction
convolutions produce ``anchors_per_cell x (background + classes)`` channels; a RESHAPE per feature
map, a CONCATENATION over them and a LOGISTIC (or a DEQUANTIZE) lead to the class scores. Here the
flatbuffer itself is sliced: the predictors' output channels (weights, biases, per-channel
quantization), the shapes of every tensor on the way to the scores, the RESHAPE targets, and the
detection op's ``num_classes`` (or the sidecar's ``postprocess.num_classes`` of a raw model). The
sidecar's labels become the kept ones.

Scores are per-class sigmoids and the activations keep their quantization, so the kept columns
of the class scores are bit for bit those of the full model. The final detections match too with
per-class NMS; in the op's fast mode (top class per anchor, one class-agnostic NMS) a kept class
is no longer hidden by a stronger overlapping box of a dropped class, so they can differ.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...errors import ConfigError, ModelError
from ...sidecar import load_sidecar, save_sidecar
from ...tflite import (
    find_detection_op,
    model_from_bytes,
    model_to_bytes,
    opcode_name,
    read_detection_op_options,
    schema,
    set_tensor_array,
    tensor_array,
    tensor_name,
    write_atomic,
)

# ops between the predictors and the class scores that keep the class axis last and untouched
_PASS_THROUGH = ("LOGISTIC", "DEQUANTIZE", "QUANTIZE", "CAST", "RESHAPE", "CONCATENATION")


@dataclass
class KeepClassesReport:
    src: Path
    out: Path
    kept: list  # [str] labels, in model order
    ids: list  # [int] class ids in the source model
    num_classes: int  # of the source model
    predictors: int  # class-prediction convolutions sliced
    size_before: int = 0
    size_after: int = 0
    form: str = "op"
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"src": str(self.src), "out": str(self.out), "kept": list(self.kept), "ids": list(self.ids),
                "num_classes": self.num_classes, "predictors": self.predictors, "form": self.form,
                "size_before": self.size_before, "size_after": self.size_after}

    def format_summary(self) -> str:
        return (f"kept {len(self.kept)} of {self.num_classes} classes ({', '.join(self.kept)}): "
                f"{self.predictors} class predictors sliced, {self.size_before / 1e6:.2f} -> "
                f"{self.size_after / 1e6:.2f} MB, {self.out}")


@dataclass
class _ClassHead:
    """The ops and tensors from the predictors to the class scores."""

    convs: list  # operator indices of the class-prediction convolutions
    reshapes: list  # operator indices of RESHAPE ops on the way
    tensors: set  # tensor indices whose last axis is the class axis (after the reshapes)
    conv_outputs: set  # tensor indices whose last axis is anchors x classes


def parse_classes(text: str | Sequence[str]) -> list[str]:
    """``"person, car"`` or a list -> ``["person", "car"]`` (order kept, duplicates dropped)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = []
    for item in items:
        item = str(item).strip()
        if item and item.lower() not in (n.lower() for n in names):
            names.append(item)
    if not names:
        raise ConfigError("--keep-classes: give at least one class (e.g. person,car)")
    return names


def keep_classes(src: str | os.PathLike, out: str | os.PathLike, classes: str | Sequence[str], *,
                 labels: Optional[str | os.PathLike] = None) -> KeepClassesReport:
    """Write ``out``: ``src`` predicting only background + ``classes`` (labels or class ids), with its
    sidecar. ``src`` and ``out`` may be the same file. One-line errors for unknown classes or a
    graph that cannot be sliced."""
    src, out = Path(src), Path(out)
    det, ids = _resolve(src, classes, labels)
    model_labels = list(det.labels)
    options = det.info.options
    if options.score_activation == "softmax":
        raise ModelError(f"cannot slice classes of {src.name}: its scores are a softmax over the classes, "
                         "dropping classes would change the kept ones")
    data = src.read_bytes()
    sidecar = load_sidecar(src)
    model = model_from_bytes(data, src)
    found = find_detection_op(model)
    if found is not None:
        si, oi = found
        scores_index = int(model.subgraphs[si].operators[oi].inputs[1])
        form = "op"
    else:
        si, scores_index, form = 0, _raw_scores_index(src), "raw"
    sub = model.subgraphs[si]
    cols = int(sub.tensors[scores_index].shape[-1])
    background = cols - options.num_classes
    if background < 0:
        raise ModelError(f"{src}: {cols} score columns for {options.num_classes} classes")
    keep_cols = list(range(background)) + [background + i for i in ids]
    path = _trace(model, si, scores_index, cols)
    _slice(model, si, path, cols, np.array(keep_cols))
    if found is not None:
        _set_op_classes(model.subgraphs[si].operators[found[1]], len(ids))
    new = model_to_bytes(model)
    write_atomic(out, new)
    kept = [model_labels[i] for i in ids]
    save_sidecar(out, _sidecar(sidecar, src, out, kept, ids, len(model_labels), form))
    return KeepClassesReport(src, out, kept, ids, options.num_classes, len(path.convs), len(data), len(new), form)


def check_classes(src: str | os.PathLike, classes: str | Sequence[str], *,
                  labels: Optional[str | os.PathLike] = None) -> list[str]:
    """The labels ``classes`` name in ``src`` (model order); one-line ``ConfigError`` for an unknown
    one. Lets a command check ``--keep-classes`` before a long job."""
    det, ids = _resolve(Path(src), classes, labels)
    return [det.labels[i] for i in ids]


def _resolve(src: Path, classes, labels):
    from ...detector import Detector
    from ...labels import class_ids_for

    det = Detector.from_path(src, labels=labels, threads=1)
    model_labels = list(det.labels)
    try:
        ids = sorted(set(class_ids_for(parse_classes(classes), model_labels)))
    except ConfigError as exc:
        shown = ", ".join(model_labels[:6]) + (", ..." if len(model_labels) > 6 else "")
        raise ConfigError(f"--keep-classes: {str(exc).split(': ', 1)[-1]}; the model's labels are {shown} "
                          "(give --labels if they are wrong)") from exc
    return det, ids


def _raw_scores_index(src: Path) -> int:
    """The tensor index of a raw model's class scores (interpreter indices are the file's)."""
    from ...model import open_model

    return int(open_model(src, threads=1).roles.scores)


def _producers(sub) -> dict[int, int]:
    return {int(t): oi for oi, op in enumerate(sub.operators) for t in op.outputs}


def _consumers(sub) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for oi, op in enumerate(sub.operators):
        for t in op.inputs:
            if t >= 0:
                out.setdefault(int(t), []).append(oi)
    return out


def _trace(model, si: int, scores_index: int, cols: int) -> _ClassHead:
    """Walk back from the class scores to the class-prediction convolutions."""
    sub = model.subgraphs[si]
    producers = _producers(sub)
    path = _ClassHead([], [], set(), set())
    todo = [(scores_index, False)]  # (tensor, seen a reshape that made the class axis)
    while todo:
        t, packed = todo.pop()
        oi = producers.get(t)
        name = opcode_name(model, sub.operators[oi].opcodeIndex) if oi is not None else "graph input"
        (path.conv_outputs if packed else path.tensors).add(t)
        if name == "CONV_2D" and packed:
            path.convs.append(oi)
            continue
        if name not in _PASS_THROUGH or packed:
            raise ModelError(f"cannot slice classes: the class scores come through {name} "
                             f"({tensor_name(sub.tensors[t])}); only per-class sigmoid SSD heads can be sliced")
        op = sub.operators[oi]
        if name == "CONCATENATION":
            axis = int(op.builtinOptions.axis)
            if axis in (-1, len(sub.tensors[t].shape) - 1):
                raise ModelError("cannot slice classes: the scores are concatenated along the class axis")
            todo.extend((int(i), False) for i in op.inputs)
            continue
        src = int(op.inputs[0])
        if name == "RESHAPE":
            path.reshapes.append(oi)
            width = int(sub.tensors[src].shape[-1])
            todo.append((src, width != cols))
            if width != cols and width % cols:
                raise ModelError(f"cannot slice classes: {tensor_name(sub.tensors[src])} has {width} channels, "
                                 f"not a multiple of {cols}")
        else:
            todo.append((src, False))
    if not path.convs:
        raise ModelError("cannot slice classes: no class-prediction convolution found")
    _check_private(sub, path, scores_index)
    return path


def _check_private(sub, path: _ClassHead, scores_index: int) -> None:
    """Every tensor on the path (but the scores themselves) feeds only the path."""
    producers = _producers(sub)
    inside = set(path.convs) | set(path.reshapes) | {producers[t] for t in path.tensors if t in producers}
    consumers = _consumers(sub)
    for t in (path.tensors | path.conv_outputs) - {scores_index}:
        if any(oi not in inside for oi in consumers.get(t, [])) or t in set(int(i) for i in sub.outputs):
            raise ModelError(f"cannot slice classes: {tensor_name(sub.tensors[t])} is also used elsewhere")


def _slice(model, si: int, path: _ClassHead, cols: int, keep_cols: np.ndarray) -> None:
    sub = model.subgraphs[si]
    new_cols = len(keep_cols)
    done: set[int] = set()
    for oi in path.convs:
        op = sub.operators[oi]
        out_t = sub.tensors[int(op.outputs[0])]
        channels = int(out_t.shape[-1])
        per_cell = channels // cols
        rows = (np.arange(per_cell)[:, None] * cols + keep_cols[None, :]).reshape(-1)
        for ti in (int(op.inputs[1]), int(op.inputs[2]) if len(op.inputs) > 2 else -1):
            if ti >= 0 and ti not in done:
                _slice_constant(model, sub, ti, rows, channels)
                done.add(ti)
    for t in path.conv_outputs:
        tensor = sub.tensors[t]
        _set_last_dim(tensor, int(tensor.shape[-1]) // cols * new_cols)
    for t in path.tensors:
        _set_last_dim(sub.tensors[t], new_cols)
    for oi in path.reshapes:
        op = sub.operators[oi]
        if len(op.inputs) > 1 and int(op.inputs[1]) >= 0:
            shape_t = sub.tensors[int(op.inputs[1])]
            shape = tensor_array(model, shape_t)
            if shape is not None and int(shape.reshape(-1)[-1]) == cols:
                shape = shape.reshape(-1).copy()
                shape[-1] = new_cols
                _own_buffer(model, sub, int(op.inputs[1]))
                set_tensor_array(model, shape_t, shape)
        opts = op.builtinOptions
        if opts is not None and getattr(opts, "newShape", None) is not None and len(opts.newShape):
            ns = np.array(opts.newShape, dtype=np.int32)
            if ns[-1] == cols:
                ns[-1] = new_cols
                opts.newShape = ns


def _slice_constant(model, sub, ti: int, rows: np.ndarray, channels: int) -> None:
    """Keep ``rows`` of the leading axis of a weight or bias tensor (and its per-channel quantization)."""
    tensor = sub.tensors[ti]
    arr = tensor_array(model, tensor)
    if arr is None or arr.shape[0] != channels:
        raise ModelError(f"cannot slice classes: {tensor_name(tensor)} is not a constant with {channels} rows")
    q = tensor.quantization
    if q is not None and q.scale is not None and len(q.scale) == channels:
        if int(q.quantizedDimension or 0) != 0:
            raise ModelError(f"cannot slice classes: {tensor_name(tensor)} is quantized along axis "
                             f"{q.quantizedDimension}")
        q.scale = np.asarray(q.scale, dtype=np.float32)[rows]
        if q.zeroPoint is not None and len(q.zeroPoint) == channels:
            q.zeroPoint = np.asarray(q.zeroPoint, dtype=np.int64)[rows]
    _own_buffer(model, sub, ti)
    tensor.shape = np.array([len(rows)] + list(arr.shape[1:]), dtype=np.int32)
    if tensor.shapeSignature is not None and len(tensor.shapeSignature):
        tensor.shapeSignature = np.array(tensor.shape, dtype=np.int32)
    set_tensor_array(model, tensor, arr[rows])


def _own_buffer(model, sub, ti: int) -> None:
    """Give tensor ``ti`` a buffer of its own when another tensor shares it."""
    tensor = sub.tensors[ti]
    b = int(tensor.buffer)
    shared = sum(1 for s in model.subgraphs for t in s.tensors if int(t.buffer) == b)
    if shared > 1:
        buf = schema().BufferT()
        buf.data = np.frombuffer(bytes(model.buffers[b].data), dtype=np.uint8)
        model.buffers.append(buf)
        tensor.buffer = len(model.buffers) - 1


def _set_last_dim(tensor, n: int) -> None:
    shape = np.array(tensor.shape, dtype=np.int32)
    shape[-1] = n
    tensor.shape = shape
    if tensor.shapeSignature is not None and len(tensor.shapeSignature):
        sig = np.array(tensor.shapeSignature, dtype=np.int32)
        sig[-1] = n
        tensor.shapeSignature = sig


def _set_op_classes(op, num_classes: int) -> None:
    from flatbuffers import flexbuffers  # type: ignore

    options = read_detection_op_options(op)
    options["num_classes"] = int(num_classes)
    op.customOptions = np.frombuffer(bytes(flexbuffers.Dumps(options)), dtype=np.uint8)


def _sidecar(data: dict, src: Path, out: Path, kept: list, ids: list, num_classes: int, form: str) -> dict:
    data = dict(data)
    data["labels"] = list(kept)
    data.pop("label_offset", None)
    anchors = data.get("anchors")
    if isinstance(anchors, dict) and isinstance(anchors.get("file"), str) and src.resolve() != out.resolve():
        from ...sidecar import resolve_relative

        f = resolve_relative(src, anchors["file"]).resolve()
        data["anchors"] = {**anchors, "file": os.path.relpath(f, out.resolve().parent)}
    if form == "raw" or isinstance(data.get("postprocess"), dict) and "num_classes" in data["postprocess"]:
        data["postprocess"] = {**(data.get("postprocess") or {}), "num_classes": len(kept)}
    for key in ("accuracy", "speed"):
        data.pop(key, None)
    data["classes"] = {"kept": list(kept), "source_ids": [int(i) for i in ids], "source_classes": int(num_classes)}
    when = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    data["history"] = list(data.get("history") or []) + [
        {"tool": "keep-classes", "date": when, "src": str(src), "kept": list(kept)}]
    return data
