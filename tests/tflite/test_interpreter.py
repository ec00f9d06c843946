"""Interpreters from a file or from bytes in memory: the same model, the same outputs."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.errors import ModelError
from edgedet.tflite import load_interpreter, load_interpreter_from_bytes, model_from_bytes, model_to_bytes


def _run(interp, x):
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def test_from_bytes_runs_like_from_the_file(fpnlite_model):
    data = fpnlite_model.read_bytes()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 320, 320, 3)).astype(np.float32)
    a = _run(load_interpreter(fpnlite_model, 1), x)
    b = _run(load_interpreter_from_bytes(data, 1), x)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_bytes_round_trip_through_the_flatbuffer(blazeface_model):
    data = blazeface_model.read_bytes()
    again = model_to_bytes(model_from_bytes(data))
    x = np.random.default_rng(1).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    for u, v in zip(_run(load_interpreter_from_bytes(data, 1), x), _run(load_interpreter_from_bytes(again, 1), x)):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("data", [b"", b"hello, not a model at all", b"\x18\x00\x00\x00TFL3" + b"\xff" * 64])
def test_foreign_bytes_are_one_line_model_errors(data):
    with pytest.raises(ModelError) as err:
        load_interpreter_from_bytes(data, 1, "thing.tflite")
    assert "thing.tflite" in str(err.value) and "\n" not in str(err.value)


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_interpreter(tmp_path / "nope.tflite")
