"""What quantizing reads from the source model besides its graph: the calibration inputs,
preprocessed exactly as at inference, and the sidecar the output inherits."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import ConfigError


def copy_sidecar(src, dst, *, drop: Sequence[str] = ("accuracy", "speed", "quantization", "calibration",
                                                      "source", "name")) -> dict:
    """Give ``dst`` the sidecar of ``src`` (labels, input, postprocess, anchors) with absolute file
    references, minus the sections that describe ``src`` itself. Returns the data written."""
    from ...sidecar import load_sidecar, resolve_relative, save_sidecar

    data = dict(load_sidecar(src))
    if not data:
        return {}
    if isinstance(data.get("labels"), str):
        data["labels"] = str(resolve_relative(src, data["labels"]).resolve())
    anchors = data.get("anchors")
    if isinstance(anchors, dict) and isinstance(anchors.get("file"), str):
        data["anchors"] = {**anchors, "file": str(resolve_relative(src, anchors["file"]).resolve())}
    for key in drop:
        data.pop(key, None)
    save_sidecar(dst, data)
    return data


def calibration_preprocessor(model_path, interpreter=None):
    """The inference preprocessor (``edgedet.preprocess``) for ``model_path``'s float input.

    Calibration images go through exactly the resize, colour order and normalization that
    ``edgedet run`` applies (from the interpreter's input and the model sidecar).
    """
    from ...model import input_spec
    from ...preprocess import Preprocessor, letterbox_or_stretch
    from ...sidecar import load_sidecar

    if interpreter is None:
        from ...tflite import load_interpreter

        interpreter = load_interpreter(model_path, 1)
    side = load_sidecar(model_path)
    spec = input_spec(interpreter.get_input_details()[0], side)
    resize = letterbox_or_stretch(None, (side.get("input") or {}).get("resize"))
    return Preprocessor(spec, resize=resize)


def load_inputs(images: Sequence, preprocessor) -> list[np.ndarray]:
    """Model inputs ``[1, H, W, 3]`` (copies) for the calibration image files."""
    import cv2

    out = []
    for p in images:
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if image is None:
            raise ConfigError(f"cannot read calibration image {p}")
        out.append(preprocessor.prepare(image, "BGR").tensor.copy())
    return out

