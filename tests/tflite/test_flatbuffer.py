"""Writing .tflite files: what other readers (OpenVINO's, TensorFlow's) need in every operator."""

from __future__ import annotations

import numpy as np

from edgedet import tflite as tfl
from edgedet.tflite.flatbuffer import builtin_options_name, unreadable_operators


def test_options_table_names():
    assert builtin_options_name("CONV_2D") == "Conv2DOptions"
    assert builtin_options_name("DEPTHWISE_CONV_2D") == "DepthwiseConv2DOptions"
    assert builtin_options_name("QUANTIZE") == "QuantizeOptions"
    assert builtin_options_name("DEQUANTIZE") == "DequantizeOptions"
    assert builtin_options_name("RESHAPE") == "ReshapeOptions"
    assert builtin_options_name("CONCATENATION") == "ConcatenationOptions"
    assert builtin_options_name("AVERAGE_POOL_2D") == "Pool2DOptions"
    assert builtin_options_name("MEAN") == "ReducerOptions"
    assert builtin_options_name("LOGISTIC") is None


def test_written_model_gets_missing_options_and_codes_and_runs_the_same(fpnlite_model, tmp_path):
    model = tfl.read_model(fpnlite_model)
    sg = model.subgraphs[0]
    # what ai-edge-quantizer writes: options left out where they hold the defaults (and a
    # reshape's shape is its second input), only the new code field set
    stripped = 0
    for op in sg.operators:
        opts = op.builtinOptions
        reshape = tfl.opcode_name(model, op.opcodeIndex) == "RESHAPE" and len(op.inputs) > 1
        if opts is not None and (reshape or vars(opts) == vars(type(opts)())):
            op.builtinOptions, op.builtinOptionsType = None, 0
            stripped += 1
    for code in model.operatorCodes:
        if not code.customCode:
            code.deprecatedBuiltinCode = 0
    assert stripped > 10
    assert len(unreadable_operators(model)) > stripped
    out = tmp_path / "rewritten.tflite"
    tfl.write_model(model, out)
    written = tfl.read_model(out)
    assert unreadable_operators(written) == []
    for op in written.subgraphs[0].operators:
        if tfl.opcode_name(written, op.opcodeIndex) == "RESHAPE" and len(op.inputs) > 1:
            shape = tfl.tensor_array(written, written.subgraphs[0].tensors[op.inputs[1]])
            if shape is not None:
                assert list(op.builtinOptions.newShape) == shape.tolist()

    outs = []
    for path in (fpnlite_model, out):
        rng = np.random.default_rng(0)
        interp = tfl.load_interpreter(path, 1)
        d = interp.get_input_details()[0]
        interp.set_tensor(d["index"], rng.uniform(-1, 1, d["shape"]).astype(np.float32))
        interp.invoke()
        outs.append([interp.get_tensor(o["index"]).copy() for o in interp.get_output_details()])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
