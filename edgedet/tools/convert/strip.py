"""``--detection-op strip``: write a model without its detection op (``edgedet.tflite.detection_op``).

The raw SSD outputs become the graph outputs; what the op knew goes to the output's sidecar (the
``postprocess`` section our decode reads) and to ``<out stem>.anchors.npy``.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np

from ...errors import ModelError
from ...sidecar import load_sidecar, resolve_relative, save_sidecar, sidecar_path
from ...tflite import DETECTION_OP, Stripped, read_model, strip_detection_op, write_model


def decode_section(stripped: Stripped) -> dict:
    """The sidecar ``postprocess`` section that lets our decode reproduce the stripped op."""
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


def strip_file(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Write ``dst`` (.tflite without the detection op), its sidecar and ``<dst stem>.anchors.npy``;
    return a summary."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".tflite":
        raise ModelError(f"output must be a .tflite path: {dst}")
    if dst.resolve() == src.resolve():
        raise ModelError("output must differ from the input model")
    stripped = strip_detection_op(read_model(src))
    anchors_path = dst.with_suffix(".anchors.npy")
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_model(stripped.model, dst)
    tmp = anchors_path.with_name(anchors_path.name + ".part.npy")
    np.save(tmp, stripped.anchors)
    os.replace(tmp, anchors_path)
    data = _stripped_sidecar(src, dst, stripped, anchors_path)
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


def _stripped_sidecar(src: Path, dst: Path, stripped: Stripped, anchors_path: Path) -> dict:
    data = dict(load_sidecar(src))
    labels = data.get("labels")
    if isinstance(labels, str):  # keep a relative label path valid from the new place
        data["labels"] = os.path.relpath(resolve_relative(src, labels).resolve(), dst.parent.resolve())
    data["postprocess"] = decode_section(stripped)
    data["anchors"] = {"file": anchors_path.name, "format": "yxhw"}
    data["outputs"] = {"boxes": stripped.boxes_name, "scores": stripped.scores_name}
    history = list(data.get("history") or [])
    history.append({"tool": "strip", "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "source": str(src), "removed": DETECTION_OP})
    data["history"] = history
    return data
