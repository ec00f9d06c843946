"""SSD anchors: ``[N, 4]`` float32 ``(y_center, x_center, h, w)`` in normalized input coordinates.

Sources, in the order a model is looked at:

1. the sidecar's ``anchors: {file: NAME.anchors.npy, format: yxhw|xywh|yxyx|xyxy}``;
2. the sidecar's ``anchors: {generator: tf_od_grid|tf_od_multiscale|torchvision|mediapipe, ...}``;
3. ``<model>.anchors.npy`` beside the model (yxhw);
4. a model we recognise by its shapes (MediaPipe BlazeFace short range).

Generators (all in row-major cell order: y, then x, then the anchors of a cell):

* ``tf_od_grid``: TF Object Detection API ``ssd_anchor_generator`` (MultipleGridAnchorGenerator):
  ``num_layers, min_scale, max_scale, aspect_ratios, interpolated_scale_aspect_ratio,
  reduce_boxes_in_lowest_layer, feature_map_sizes`` (default: from the input size and strides).
* ``tf_od_multiscale``: ``multiscale_anchor_generator`` (FPN): ``min_level, max_level, anchor_scale,
  aspect_ratios, scales_per_octave``.
* ``torchvision``: ``DefaultBoxGenerator``: ``aspect_ratios`` (per map), ``min_ratio, max_ratio,
  scales, steps, clip, feature_map_sizes``.
* ``mediapipe``: MediaPipe ``SsdAnchorsCalculator``: ``num_layers, min_scale, max_scale, strides,
  aspect_ratios, anchor_offset_x/y, interpolated_scale_aspect_ratio, reduce_boxes_in_lowest_layer,
  fixed_anchor_size``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import ModelError

FORMATS = ("yxhw", "xywh", "yxyx", "xyxy")


def to_yxhw(anchors: np.ndarray, fmt: str = "yxhw") -> np.ndarray:
    """Convert ``[N, 4]`` anchors given as centre-size (yxhw / xywh) or corners (yxyx / xyxy)."""
    a = np.asarray(anchors, np.float64).reshape(-1, 4)
    if fmt == "yxhw":
        out = a
    elif fmt == "xywh":
        out = a[:, [1, 0, 3, 2]]
    elif fmt in ("yxyx", "xyxy"):
        c = a if fmt == "yxyx" else a[:, [1, 0, 3, 2]]
        h, w = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
        out = np.stack([c[:, 0] + h / 2, c[:, 1] + w / 2, h, w], axis=1)
    else:
        raise ModelError(f"unknown anchor format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return np.ascontiguousarray(out, np.float32)


def load_anchor_file(path: str | os.PathLike, fmt: str = "yxhw") -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"anchor file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ModelError(f"cannot read anchor file {path}: {exc}") from exc
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ModelError(f"anchor file {path} must hold an [N, 4] array, got {list(arr.shape)}")
    return to_yxhw(arr, fmt)


def _grid(fm_h: int, fm_w: int, stride_y: float, stride_x: float, off_y: float, off_x: float,
          heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Anchors of one feature map: cells row-major, ``len(heights)`` anchors per cell."""
    yc = np.arange(fm_h, dtype=np.float64) * stride_y + off_y
    xc = np.arange(fm_w, dtype=np.float64) * stride_x + off_x
    k = len(heights)
    out = np.empty((fm_h, fm_w, k, 4), np.float64)
    out[..., 0] = yc[:, None, None]
    out[..., 1] = xc[None, :, None]
    out[..., 2] = np.asarray(heights, np.float64)[None, None, :]
    out[..., 3] = np.asarray(widths, np.float64)[None, None, :]
    return out.reshape(-1, 4)


def tf_od_grid_anchors(input_size: tuple[int, int] = (300, 300), *, num_layers: int = 6, min_scale: float = 0.2,
                       max_scale: float = 0.95, aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 0.3333),
                       interpolated_scale_aspect_ratio: float = 1.0, reduce_boxes_in_lowest_layer: bool = True,
                       base_anchor_size: Sequence[float] = (1.0, 1.0),
                       feature_map_sizes: Optional[Sequence] = None,
                       scales: Optional[Sequence[float]] = None) -> np.ndarray:
    """TF Object Detection API ``ssd_anchor_generator``. Defaults: SSD MobileNet v1/v2 COCO (1917 at 300)."""
    w, h = input_size
    if feature_map_sizes is None:
        feature_map_sizes = _tf_feature_maps(h, w, num_layers)
    fms = [(int(f), int(f)) if np.isscalar(f) else (int(f[0]), int(f[1])) for f in feature_map_sizes]
    if len(fms) != num_layers:
        raise ModelError(f"tf_od_grid anchors: {len(fms)} feature map sizes for {num_layers} layers")
    if scales is None:
        scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)]
        scales = list(scales) + [1.0]
    else:
        scales = list(scales) + [1.0]
    min_dim = min(h, w)
    base_h, base_w = base_anchor_size[0] * min_dim / h, base_anchor_size[1] * min_dim / w
    out = []
    for layer, (fm_h, fm_w) in enumerate(fms):
        scale, scale_next = scales[layer], scales[layer + 1]
        if layer == 0 and reduce_boxes_in_lowest_layer:
            specs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
        else:
            specs = [(scale, float(ar)) for ar in aspect_ratios]
            if interpolated_scale_aspect_ratio > 0.0:
                specs.append((math.sqrt(scale * scale_next), float(interpolated_scale_aspect_ratio)))
        s = np.array([p[0] for p in specs], np.float64)
        ar = np.sqrt(np.array([p[1] for p in specs], np.float64))
        sy, sx = 1.0 / fm_h, 1.0 / fm_w
        out.append(_grid(fm_h, fm_w, sy, sx, 0.5 * sy, 0.5 * sx, s / ar * base_h, s * ar * base_w))
    return np.concatenate(out).astype(np.float32)


def _tf_feature_maps(h: int, w: int, num_layers: int) -> list[tuple[int, int]]:
    """Feature map sizes of the usual SSD MobileNet backbones: strides 16, 32, 64, ... (ceil)."""
    sizes = []
    for i in range(num_layers):
        stride = 16 * 2 ** i
        sizes.append((math.ceil(h / stride), math.ceil(w / stride)))
    return sizes


def tf_od_multiscale_anchors(input_size: tuple[int, int] = (320, 320), *, min_level: int = 3, max_level: int = 7,
                             anchor_scale: float = 4.0, aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5),
                             scales_per_octave: int = 2, feature_map_sizes: Optional[Sequence] = None) -> np.ndarray:
    """TF Object Detection API ``multiscale_anchor_generator`` (FPN; 12804 anchors at 320)."""
    w, h = input_size
    levels = list(range(min_level, max_level + 1))
    if feature_map_sizes is None:
        feature_map_sizes = [(math.ceil(h / 2 ** lv), math.ceil(w / 2 ** lv)) for lv in levels]
    fms = [(int(f), int(f)) if np.isscalar(f) else (int(f[0]), int(f[1])) for f in feature_map_sizes]
    octave = np.array([2 ** (i / scales_per_octave) for i in range(scales_per_octave)], np.float64)
    ars = np.asarray(aspect_ratios, np.float64)
    # GridAnchorGenerator: meshgrid(scales, aspect_ratios) -> aspect-ratio-major order
    s = np.tile(octave, len(ars))
    ar = np.sqrt(np.repeat(ars, len(octave)))
    out = []
    for lv, (fm_h, fm_w) in zip(levels, fms):
        stride = 2.0 ** lv
        base = anchor_scale * stride
        off_y = stride / 2.0 if (h % stride == 0 or h == 1) else 0.0
        off_x = stride / 2.0 if (w % stride == 0 or w == 1) else 0.0
        grid = _grid(fm_h, fm_w, stride, stride, off_y, off_x, s / ar * base, s * ar * base)
        grid /= np.array([h, w, h, w], np.float64)
        out.append(grid)
    return np.concatenate(out).astype(np.float32)


def torchvision_anchors(input_size: tuple[int, int] = (300, 300), *, aspect_ratios: Sequence[Sequence[float]],
                        feature_map_sizes: Sequence, min_ratio: float = 0.15, max_ratio: float = 0.9,
                        scales: Optional[Sequence[float]] = None, steps: Optional[Sequence[int]] = None,
                        clip: bool = True) -> np.ndarray:
    """torchvision ``DefaultBoxGenerator`` (SSD300/SSDlite), as normalized yxhw."""
    w, h = input_size
    n = len(aspect_ratios)
    if scales is None:
        if n > 1:
            scales = [min_ratio + (max_ratio - min_ratio) * k / (n - 1.0) for k in range(n)] + [1.0]
        else:
            scales = [min_ratio, max_ratio]
    fms = [(int(f), int(f)) if np.isscalar(f) else (int(f[0]), int(f[1])) for f in feature_map_sizes]
    out = []
    for k, (fm_h, fm_w) in enumerate(fms):
        s_k = scales[k]
        s_prime = math.sqrt(scales[k] * scales[k + 1])
        wh = [(s_k, s_k), (s_prime, s_prime)]
        for ar in aspect_ratios[k]:
            sq = math.sqrt(ar)
            wh.extend([(s_k * sq, s_k / sq), (s_k / sq, s_k * sq)])
        whs = np.array(wh, np.float64)
        if clip:
            whs = np.clip(whs, 0, 1)
        if steps is not None:
            y_f, x_f = h / steps[k], w / steps[k]
        else:
            y_f, x_f = fm_h, fm_w
        out.append(_grid(fm_h, fm_w, 1.0 / y_f, 1.0 / x_f, 0.5 / y_f, 0.5 / x_f, whs[:, 1], whs[:, 0]))
    return np.concatenate(out).astype(np.float32)


def mediapipe_anchors(input_size: tuple[int, int] = (128, 128), *, num_layers: int = 4, min_scale: float = 0.1484375,
                      max_scale: float = 0.75, strides: Sequence[int] = (8, 16, 16, 16),
                      aspect_ratios: Sequence[float] = (1.0,), anchor_offset_x: float = 0.5,
                      anchor_offset_y: float = 0.5, interpolated_scale_aspect_ratio: float = 1.0,
                      reduce_boxes_in_lowest_layer: bool = False, fixed_anchor_size: bool = True) -> np.ndarray:
    """MediaPipe ``SsdAnchorsCalculator``. Defaults: BlazeFace short range (896 anchors at 128x128)."""
    w, h = input_size
    strides = list(strides)
    if len(strides) != num_layers:
        raise ModelError(f"mediapipe anchors: {len(strides)} strides for {num_layers} layers")

    def scale_of(i: int) -> float:
        if num_layers == 1:
            return (min_scale + max_scale) * 0.5
        return min_scale + (max_scale - min_scale) * i / (num_layers - 1.0)

    out = []
    layer = 0
    while layer < num_layers:
        heights, widths = [], []
        last = layer
        # layers sharing a stride share one grid
        while last < num_layers and strides[last] == strides[layer]:
            scale = scale_of(last)
            if last == 0 and reduce_boxes_in_lowest_layer:
                specs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
            else:
                specs = [(scale, float(ar)) for ar in aspect_ratios]
                if interpolated_scale_aspect_ratio > 0.0:
                    nxt = 1.0 if last == num_layers - 1 else scale_of(last + 1)
                    specs.append((math.sqrt(scale * nxt), float(interpolated_scale_aspect_ratio)))
            for s, ar in specs:
                r = math.sqrt(ar)
                heights.append(s / r)
                widths.append(s * r)
            last += 1
        stride = strides[layer]
        fm_h, fm_w = math.ceil(h / stride), math.ceil(w / stride)
        if fixed_anchor_size:
            heights, widths = [1.0] * len(heights), [1.0] * len(widths)
        out.append(_grid(fm_h, fm_w, 1.0 / fm_h, 1.0 / fm_w, anchor_offset_y / fm_h, anchor_offset_x / fm_w,
                         np.array(heights), np.array(widths)))
        layer = last
    return np.concatenate(out).astype(np.float32)


GENERATORS = {
    "tf_od_grid": tf_od_grid_anchors,
    "tf_od_multiscale": tf_od_multiscale_anchors,
    "torchvision": torchvision_anchors,
    "mediapipe": mediapipe_anchors,
}

# decode settings that go with MediaPipe anchors (fixed size 1: encodings are input pixels / size)
BLAZEFACE_SHORT_RANGE = {
    "anchors": {"generator": "mediapipe"},
    "postprocess": {"box_order": "xywh", "size_transform": "linear", "y_scale": 128.0, "x_scale": 128.0,
                    "h_scale": 128.0, "w_scale": 128.0, "score_activation": "sigmoid", "iou_threshold": 0.3,
                    "num_classes": 1, "background": 0, "use_regular_nms": False, "max_detections": 100},
    "labels": ["face"],
}


def generate_anchors(spec: dict, input_size: tuple[int, int]) -> np.ndarray:
    """Anchors from a sidecar ``anchors`` section with a ``generator`` (unknown parameters are an error)."""
    import inspect

    spec = dict(spec)
    name = spec.pop("generator", None)
    spec.pop("format", None)
    fn = GENERATORS.get(str(name))
    if fn is None:
        raise ModelError(f"unknown anchor generator {name!r} (expected one of {', '.join(GENERATORS)})")
    size = tuple(spec.pop("input_size", input_size))
    allowed = [p for p in inspect.signature(fn).parameters if p != "input_size"]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ModelError(f"anchor generator {name}: unknown parameter(s) {', '.join(unknown)} "
                         f"(known: {', '.join(allowed)})")
    try:
        return fn(size, **spec)
    except (TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"anchor generator {name}: {exc}") from exc


def recognise(input_size: tuple[int, int], num_anchors: int, box_len: int, num_cols: int) -> Optional[dict]:
    """Sidecar-like defaults for models we know by their shapes, or None."""
    if input_size == (128, 128) and num_anchors == 896 and box_len == 16 and num_cols == 1:
        return BLAZEFACE_SHORT_RANGE
    return None


def anchors_for_model(model_path: str | os.PathLike, sidecar: dict, input_size: tuple[int, int], num_anchors: int,
                      box_len: int = 4, num_cols: int = 1) -> tuple[np.ndarray, str, dict]:
    """``(anchors, where they came from, default postprocess options)`` for a raw-output model."""
    from ..sidecar import resolve_relative

    section = sidecar.get("anchors")
    defaults: dict = {}
    if isinstance(section, dict) and section.get("file"):
        path = resolve_relative(model_path, str(section["file"]))
        return load_anchor_file(path, str(section.get("format", "yxhw"))), f"file {path.name}", defaults
    if isinstance(section, dict) and section.get("generator"):
        return generate_anchors(section, input_size), f"generator {section['generator']}", defaults
    beside = Path(model_path).with_suffix(".anchors.npy")
    if beside.is_file():
        return load_anchor_file(beside), f"file {beside.name}", defaults
    known = recognise(input_size, num_anchors, box_len, num_cols)
    if known is not None:
        return (generate_anchors(known["anchors"], input_size), f"generator {known['anchors']['generator']}",
                dict(known["postprocess"]))
    raise ModelError(
        f"raw SSD outputs ({num_anchors} anchors) but no anchors: put {beside.name} beside the model or an "
        "anchors section in its sidecar"
    )
