"""The detection op (``TFLite_Detection_PostProcess``): found, its options read, stripped in memory."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.errors import ModelError
from edgedet.tflite import (
    DETECTION_OP,
    find_detection_op,
    load_interpreter,
    load_interpreter_from_bytes,
    read_detection_op_options,
    read_model,
    strip_detection_op,
)


def test_the_op_and_its_options_are_found(v1_model, blazeface_model):
    model = read_model(v1_model)
    si, oi = find_detection_op(model)
    options = read_detection_op_options(model.subgraphs[si].operators[oi])
    assert (options["num_classes"], options["max_detections"]) == (90, 10)
    assert options["y_scale"] == 10 and options["h_scale"] == 5
    assert find_detection_op(read_model(blazeface_model)) is None


def test_stripped_in_memory_the_raw_outputs_are_the_ops_inputs(v1_model):
    stripped = strip_detection_op(read_model(v1_model))
    assert find_detection_op(stripped.model) is None
    assert stripped.anchors.shape == (1917, 4) and stripped.anchors.dtype == np.float32
    assert stripped.background == 1 and stripped.options["num_classes"] == 90
    assert stripped.score_activation == "none"  # scores come after the in-graph LOGISTIC
    raw = load_interpreter_from_bytes(stripped.model_bytes, 1)
    by_name = {d["name"]: tuple(d["shape"]) for d in raw.get_output_details()}
    assert by_name == {stripped.boxes_name: (1, 1917, 4), stripped.scores_name: (1, 1917, 91)}

    # the raw outputs equal what the op model computes in front of its op (the same kernels: no XNNPACK)
    raw = load_interpreter_from_bytes(stripped.model_bytes, 1, xnnpack=False)
    full = load_interpreter(v1_model, 1, preserve_all_tensors=True)
    x = np.random.default_rng(0).integers(0, 256, (1, 300, 300, 3), dtype=np.uint8)
    for interp in (raw, full):
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
    tensors = {d["name"]: d["index"] for d in full.get_tensor_details()}
    for d in raw.get_output_details():
        np.testing.assert_array_equal(raw.get_tensor(d["index"]), full.get_tensor(tensors[d["name"]]))


def test_a_model_without_the_op_cannot_be_stripped(blazeface_model):
    with pytest.raises(ModelError, match=DETECTION_OP):
        strip_detection_op(read_model(blazeface_model))
