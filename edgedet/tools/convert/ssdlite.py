"""Build an UNTRAINED SSDlite MobileNetV2 detector as a ``.tflite`` (float or int8) with its sidecar.

The architecture of the MobileNetV2 paper's SSDlite (and of the TF Object Detection API's
``ssdlite_mobilenet_v2`` config), with random weights — a model of the right shape, ops and
quantization for format, runtime and speed tests, not one that finds anything:

- backbone: ``keras.applications.MobileNetV2(alpha=width, weights=None)``; features from the
  expansion layer of block 13 (stride 16) and the last 1x1 conv (stride 32);
- 4 extra layers, each 1x1 conv (depth/2) then a 3x3 depthwise-separable stride-2 conv (depth),
  depths 512, 256, 256, 128 times ``width`` (at least 16), BN + ReLU6 throughout;
- on each of the 6 maps, SSDlite box and class heads: depthwise 3x3 + BN + ReLU6, then a 1x1
  projection to ``anchors * 4`` box encodings and ``anchors * (classes + 1)`` class logits
  (background first; class bias initialised to -4.6, a 1 % prior as in the TF OD configs);
- random kernels are He-normal (``_he_init``), so the untrained outputs vary with the image;
- anchors: the TF OD API ``ssd_anchor_generator`` (6 maps, scales 0.2..0.95, aspect ratios
  1, 2, 0.5, 3, 1/3 plus an interpolated scale, 3 anchors on the first map): 2034 at 320x320;
- box coder scales 10, 10, 5, 5; scores are the sigmoid of the logits.

The model ends in ``TFLite_Detection_PostProcess`` (the detection op, ``detection_op="keep"``) or outputs the raw box
encodings and class logits (``"strip"``; anchors saved beside it as ``<model>.anchors.npy``).
int8 models are calibrated on ``calibration_images`` when given, else on a deterministic
synthetic set (``edgedet.tools.convert.tf.synthetic_images``).
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...errors import ConfigError, SourceError

BACKBONES = ("mobilenet_v2",)
EXTRA_DEPTHS = (512, 256, 256, 128)
MIN_DEPTH = 16
CLASS_BIAS_INIT = -4.6
BOX_SCALES = {"y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0}


def _depth(d: int, width: float) -> int:
    return max(int(d * width), MIN_DEPTH)


def ssdlite_keras_model(*, width: float = 1.0, input_size: int = 320, num_classes: int = 90, seed: int = 0):
    """The untrained Keras model ``image -> (box_encodings [1,N,4], class_logits [1,N,C+1])``.

    Returns ``(model, feature_map_sizes)``. Weights are drawn from ``seed`` (Python and NumPy
    global random states are restored afterwards).
    """
    from .anchors import standard_spec
    from .tf import import_tf

    tf, keras = import_tf()
    layers = keras.layers
    py_state, np_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(int(seed))
    try:
        backbone = keras.applications.MobileNetV2(input_shape=(input_size, input_size, 3), alpha=width,
                                                  include_top=False, weights=None)
        feats = [backbone.get_layer("block_13_expand_relu").output, backbone.get_layer("out_relu").output]
        x = feats[-1]
        for i, depth in enumerate(EXTRA_DEPTHS):
            name = f"extra_{i + 2}"
            x = _conv_bn(layers, x, _depth(depth // 2, width), f"{name}_1x1")
            x = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name=f"{name}_dw")(x)
            x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
            x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
            x = _conv_bn(layers, x, _depth(depth, width), f"{name}_pw")
            feats.append(x)
        sizes = [(int(f.shape[1]), int(f.shape[2])) for f in feats]
        spec = standard_spec(input_size, input_size, feature_map_sizes=sizes)
        boxes, classes = [], []
        for i, (f, n_anchors) in enumerate(zip(feats, spec.anchors_per_location())):
            boxes.append(_head(layers, f, n_anchors * 4, 4, f"box_{i}", "zeros"))
            classes.append(_head(layers, f, n_anchors * (num_classes + 1), num_classes + 1, f"class_{i}",
                                 keras.initializers.Constant(CLASS_BIAS_INIT)))
        box_enc = layers.Concatenate(axis=1, name="box_encodings")(boxes)
        logits = layers.Concatenate(axis=1, name="class_predictions")(classes)
        model = keras.Model(backbone.input, {"box_encodings": box_enc, "class_predictions": logits},
                            name=f"ssdlite_mobilenet_v2_{width:g}_{input_size}")
        _he_init(keras, model, np.random.default_rng(int(seed)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return model, sizes


def _he_init(keras, model, rng: np.random.Generator) -> None:
    """Variance-preserving random kernels: normal, std sqrt(gain / fan_in).

    With Keras' default (Glorot) kernels and untrained batch norms (mean 0, variance 1) the
    activations shrink layer after layer and the heads see zeros: every box and score the same.
    Gain 2 before a ReLU6, 1 for the linear projections (bottleneck ``project`` and head ``proj``).
    """
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            continue
        kernel = layer.kernel
        shape = tuple(int(d) for d in kernel.shape)
        fan_in = shape[0] * shape[1] * (1 if isinstance(layer, keras.layers.DepthwiseConv2D) else shape[2])
        gain = 1.0 if layer.name.endswith(("project", "_proj")) else 2.0
        kernel.assign(rng.normal(0.0, np.sqrt(gain / fan_in), shape).astype(np.float32))


def _conv_bn(layers, x, filters: int, name: str):
    x = layers.Conv2D(filters, 1, use_bias=False, name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x)


def _head(layers, x, filters: int, per_anchor: int, name: str, bias_init):
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, bias_initializer=bias_init, name=f"{name}_proj")(x)
    return layers.Reshape((-1, per_anchor), name=f"{name}_reshape")(x)


def _check(backbone, width, input_size, num_classes, detection_op) -> None:
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone: expected one of {', '.join(BACKBONES)}, got {backbone!r}")
    if not 0.25 <= float(width) <= 1.4:
        raise ConfigError(f"width: expected a multiplier between 0.25 and 1.4 (e.g. 0.5, 0.75, 1.0), got {width}")
    if not isinstance(input_size, int) or not 64 <= input_size <= 1024:
        raise ConfigError(f"input size: expected an integer from 64 to 1024, got {input_size!r}")
    if not isinstance(num_classes, int) or not 1 <= num_classes <= 1000:
        raise ConfigError(f"classes: expected 1 to 1000, got {num_classes!r}")
    if detection_op not in ("keep", "fuse", "strip", "raw"):
        raise ConfigError(f"detection_op: expected keep or strip, got {detection_op!r}")


def build_ssdlite(out, *, backbone="mobilenet_v2", width=1.0, input_size=320, num_classes=90,
                  quantize: str | None = "int8", calibration_images: list[Path] | None = None,
                  detection_op: str = "keep", labels: Optional[Sequence[str]] = None, num_calib: int = 100,
                  input_dtype: str = "uint8", max_detections: int = 100, seed: int = 0,
                  keras_out=None) -> dict:
    """Build the untrained SSDlite, convert it to ``out`` (.tflite) and write the sidecar.

    ``quantize``: None/"fp16"/"dynamic"/"int8"; int8 calibrates on ``calibration_images`` (files or
    folders, ``num_calib`` used) or, without them, on ``num_calib`` synthetic images. ``labels``
    default to ``class0 .. class{N-1}``. ``keras_out`` also saves the Keras model (``.keras``) with
    a sidecar naming its anchors, so that ``convert_tf`` can convert it again.
    Returns the conversion report plus build figures (parameters, maps, anchors, seconds).
    """
    from . import tf as tfc
    from .anchors import standard_spec

    t0 = time.perf_counter()
    width = float(width)
    quantize = tfc.normalize_quantize(quantize)
    _check(backbone, width, input_size, num_classes, detection_op)
    tfc.check_options(quantize, detection_op, input_dtype)
    out = Path(out)
    tfc.check_output(out)
    if labels is not None and len(labels) != num_classes:
        raise ConfigError(f"labels: {len(labels)} given for {num_classes} classes")
    calib_paths = tfc.expand_images(calibration_images) if calibration_images else []
    if calibration_images and not calib_paths:
        raise SourceError("no images found in the calibration paths")
    tf, keras = tfc.import_tf()

    model, sizes = ssdlite_keras_model(width=width, input_size=input_size, num_classes=num_classes, seed=seed)
    built_s = time.perf_counter() - t0
    spec = standard_spec(input_size, input_size, feature_map_sizes=sizes)
    side = {
        "name": out.stem,
        "source": {"built": f"ssdlite_{backbone}", "trained": False, "width": width, "input_size": input_size,
                   "seed": int(seed)},
        "input": {"normalization": [127.5, 127.5], "resize": "stretch", "color": "rgb"},
        "anchors": spec.to_sidecar(),
        "postprocess": {"num_classes": num_classes, "score_activation": "sigmoid", **BOX_SCALES},
    }
    if keras_out is not None:
        _save_keras(model, Path(keras_out), side, labels, num_classes)
    calibration = tfc.Calibration(input_size, input_size, (127.5,) * 3, (127.5,) * 3, calib_paths,
                                  int(num_calib), seed=int(seed))
    source = tfc.source_from_keras(model, Path(f"ssdlite_{backbone}"))
    report = tfc.convert_loaded(
        tf, source, out, side=side, quantize=quantize, calibration=calibration, detection_op=detection_op,
        labels=list(labels) if labels is not None else None, input_dtype=input_dtype,
        max_detections=max_detections,
        history={"tool": "edgedet convert --build ssdlite", "backbone": backbone, "width": width,
                 "input_size": input_size, "num_classes": num_classes, "trained": False, "seed": int(seed)})
    report.update({"source": f"ssdlite_{backbone} (untrained)", "source_kind": "built", "backbone": backbone,
                   "width": width, "parameters": int(model.count_params()),
                   "feature_maps": [list(s) for s in sizes], "num_anchors": int(sum(
                       h * w * a for (h, w), a in zip(sizes, spec.anchors_per_location()))),
                   "build_seconds": round(built_s, 2), "seconds": round(time.perf_counter() - t0, 2)})
    return report


def _save_keras(model, path: Path, side: dict, labels, num_classes: int) -> None:
    from ...sidecar import save_sidecar

    if path.suffix != ".keras":
        raise ConfigError(f"keras_out must end in .keras, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # Keras' own numpy-2 copy= deprecation, once per weight
        warnings.simplefilter("ignore", DeprecationWarning)
        model.save(str(path))
    save_sidecar(path, {**side, "labels": list(labels) if labels is not None else
                        [f"class{i}" for i in range(num_classes)], "label_offset": 0})


__all__: Sequence[str] = ["build_ssdlite", "ssdlite_keras_model"]
