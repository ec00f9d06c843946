"""The model metadata sidecar: ``model.yaml`` beside ``model.tflite``.

Holds what the ``.tflite`` cannot say: labels, normalization, resize mode, anchors / box coder
(for raw-output models), postprocess options, where the model came from, and measured accuracy
and speed. Tools that change a model (convert, prune, strip) write a sidecar for their output and
append what they did to ``history``. Keys (all optional)::

    name: ssd_mobilenet_v1_coco_quant
    labels: coco_labels.txt          # path relative to the sidecar, or an inline list
    label_offset: 0                  # model class index + offset = line in the label file
    input: {normalization: [mean, std], resize: stretch|letterbox, color: rgb}
    postprocess: {form: op|raw, score_threshold, iou_threshold, max_detections, num_classes,
                  use_regular_nms, y_scale, x_scale, h_scale, w_scale, score_activation: sigmoid|softmax|none}
    anchors: {file: model.anchors.npy, format: yxhw}   # or {generator: tf_od_grid|torchvision|mediapipe, ...}
    source: {url | path, sha256}
    quantization: {...}; calibration: {...}
    accuracy: {dataset, mAP, AP50, ...}; speed: {invoke_ms_p50, threads, machine}
    history: [{tool, date, ...}]
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from .errors import ModelError
from .tflite import write_atomic


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".yaml")


def load_sidecar(model_path: str | os.PathLike) -> dict:
    """The sidecar of ``model_path`` as a dict ({} when there is none)."""
    path = sidecar_path(model_path)
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ModelError(f"invalid model sidecar {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"invalid model sidecar {path}: expected a mapping")
    return data


def save_sidecar(model_path: str | os.PathLike, data: dict) -> Path:
    """Write the sidecar atomically (replacing any previous one)."""
    path = sidecar_path(model_path)
    write_atomic(path, yaml.safe_dump(_plain(data), sort_keys=False).encode())
    return path


def update_sidecar(model_path: str | os.PathLike, **sections) -> dict:
    """Merge ``sections`` into the existing sidecar (one level deep) and save it."""
    data = load_sidecar(model_path)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        elif key == "history" and isinstance(value, list):
            data["history"] = list(data.get("history") or []) + value
        else:
            data[key] = value
    save_sidecar(model_path, data)
    return data


def resolve_relative(model_path: str | os.PathLike, ref: str) -> Path:
    """A path named in a sidecar, relative to the sidecar's folder unless absolute."""
    p = Path(ref)
    return p if p.is_absolute() else sidecar_path(model_path).parent / p


def _plain(value):
    """numpy scalars/arrays and Paths to plain YAML types."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if np is not None:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
    return value
