"""A pruned float graph back to a deployable ``.tflite``: float (with the detection op) through
``edgedet.tools.convert``, then full int8 through ``edgedet.tools.quantize``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

from .graph import FloatGraph
from .net import build_keras, import_tf


def _side(graph: FloatGraph, labels: Optional[list]) -> dict:
    opts = graph.detection_options
    columns = graph.layer(graph.layer(graph.logits).inputs[0]).shape[-1]
    post = {"num_classes": int(opts.get("num_classes") or columns - 1),
            "score_activation": "sigmoid"}
    post.update({k: float(opts[k]) for k in ("y_scale", "x_scale", "h_scale", "w_scale") if k in opts})
    side: dict = {"postprocess": post, "input": {"normalization": [127.5, 127.5], "resize": "stretch"}}
    if labels is not None:
        side["labels"] = list(labels)
    return side


def export_float(graph: FloatGraph, out, *, labels: Optional[list] = None) -> dict:
    """``out``: the float ``.tflite`` of ``graph`` ending in the detection op (the source's options and
    anchors), with its sidecar; returns the conversion report."""
    from ...convert.tf import Calibration, convert_loaded, source_from_keras

    tf, _ = import_tf()
    out = Path(out)
    model = build_keras(graph, batch=1)
    source = source_from_keras(model, out.with_suffix(".keras"))
    h, w = graph.input_size
    opts = graph.detection_options
    return convert_loaded(tf, source, out, side=_side(graph, labels), quantize=None,
                          calibration=Calibration(h, w), detection_op="fuse", anchors=graph.anchors,
                          labels=labels, max_detections=int(opts.get("max_detections", 100)),
                          iou_threshold=float(opts.get("nms_iou_threshold", 0.6)), score_activation="sigmoid",
                          history={"tool": "edgedet prune --structured"})


def export_int8(graph: FloatGraph, out, calibration_images: Sequence, *, labels: Optional[list] = None,
                log=None):
    """``out``: the int8 ``.tflite`` of ``graph`` (float export, then ``quantize_int8`` on the image files
    ``calibration_images``), with the float export's sidecar; returns the ``QuantizeResult``."""
    from ....sidecar import update_sidecar
    from ...quantize import copy_sidecar, quantize_int8

    with tempfile.TemporaryDirectory(prefix="edgedet-structured-") as tmp:
        float_path = Path(tmp) / "pruned_float.tflite"
        export_float(graph, float_path, labels=labels)
        result = quantize_int8(float_path, out, list(calibration_images), log=log)
        copy_sidecar(float_path, out)
    if result.sidecar:
        update_sidecar(out, **result.sidecar)
    return result
