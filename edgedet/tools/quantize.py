"""Post-training quantization of ``.tflite`` detectors (no TensorFlow): int8, fp16, dynamic range.

``quantize_int8`` turns a float model (or a dynamic-range / fp16-weight one: its weights are
dequantized first, ``scale * (q - zero_point)`` per channel) into a full-integer model with
``ai-edge-quantizer``:

1. ``prepare_float_model``: dequantize hybrid weights, fold ``DEQUANTIZE`` of constants, give the
   ``TFLite_Detection_PostProcess`` outputs static shapes, add a signature when there is none.
2. Calibration inputs: the calibration images preprocessed exactly as at inference (stretch or
   letterbox resize, RGB, the sidecar's normalization).
3. Ranges: GLOBAL over the whole calibration set (not per-image averages). The prediction head
   (the tensors between the last convolutions and the postprocess op: box encodings and class
   logits) gets one range for the logits and one for the box encodings, each shared by every
   tensor on its way and chosen by the error of what is read downstream: the scores after the
   sigmoid, the box encodings weighted by their anchor's score (``quantize_head``,
   ``head_ranges="task"``; "minmax" keeps their min/max); the rest of the network uses
   ``percentile`` of the pooled values (100 = plain min/max; ``"mse"`` = per tensor, each end of
   the range cut where the int8 round trip of the pooled values has the least squared error).
   ``choose_percentile`` picks among candidates by the SNR of the raw head outputs against the
   float model on held-out calibration images (``quantize_measure.head_snr``). The model's float input gets the range,
   among its min/max widened by up to two int8 steps, whose round trip through int8 has the least
   error (``input_range``: pixels normalized to [-1, 1] would otherwise all sit halfway between
   two levels).
4. ``ai-edge-quantizer`` static int8 (weights per channel, activations per tensor); the model
   inputs/outputs and the postprocess op stay float (QUANTIZE/DEQUANTIZE at the edges), and so
   does the LOGISTIC that turns the class logits into the op's (or a raw model's) scores
   (``float_sigmoid``): int8 scores would come in 1/256 steps, which alone caps their SNR at
   ~17 dB on calibration frames.
5. Repair: output channels whose weights are all (or nearly) zero get a ~1e-11 weight scale and
   an int32 bias that overflows; their scales and biases are recomputed from the float model.
6. Adaptive rounding (``quantize_round``, ``weight_rounding="adaptive"``): the weights that were
   not already on their int8 grid (float layers of a hybrid source: its stem and first block) are
   re-rounded to lower each layer's output error on the calibration images.
   ``weight_rounding="compensate"``: every layer up to ``rounding_depth`` of the deepest conv
   depth is re-rounded (within ``rounding_max_move`` of nearest) against the int8 model's own
   inputs, to also absorb the activation error upstream (``quantize_round.compensate_layers``).
7. Bias correction (``quantize_bias``, ``bias_correction="weights"``): the mean output shift of
   int8 weight rounding, ``(W_q - W) E[x]`` with ``E[x]`` measured in the int8 model, is taken
   out of every conv's int32 bias.
8. int8 -> int8 ``QUANTIZE`` ops that copy a tensor onto its own scale and zero point (in front
   of the head's concatenations) are removed (``drop_identity_requantize``).
9. ``int8_census`` counts conv weights and activation tensors that are int8 in the result.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .. import tflite_file as tfl
from ..errors import ConfigError, EdgedetError, ModelError
from ..model import POSTPROCESS_OP
from .quantize_measure import head_roots

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
_FLOAT32, _FLOAT16, _INT32, _UINT8, _INT8 = 0, 1, 2, 3, 9


@dataclass
class QuantizeResult:
    path: Path
    mode: str
    recipe: dict
    census: dict = field(default_factory=dict)
    repaired_channels: int = 0
    seconds: float = 0.0
    prepared: dict = field(default_factory=dict)
    sidecar: dict = field(default_factory=dict)  # sections the output's sidecar needs (update_sidecar)


def _require_aeq():
    try:
        import ai_edge_quantizer  # noqa: F401
        from ai_edge_quantizer import quantizer as aeq_quantizer
    except ImportError as exc:
        raise EdgedetError("int8 conversion needs ai-edge-quantizer: pip install 'edgedet[quantize]'") from exc
    return aeq_quantizer


# ---------------------------------------------------------------------------------------------
# model surgery


def _ops(model, sg=None):
    sg = sg or model.subgraphs[0]
    return [(op, tfl.opcode_name(model, op.opcodeIndex)) for op in sg.operators]


def _has_data(model, tensor) -> bool:
    buf = model.buffers[tensor.buffer]
    return buf is not None and buf.data is not None and len(buf.data) > 0


def _q_arrays(tensor):
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    scale = np.asarray(q.scale, np.float32)
    zp = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros_like(scale), np.int64)
    return scale, zp, int(q.quantizedDimension or 0)


def dequantize_tensor(model, tensor) -> np.ndarray:
    """Float32 values of a quantized or float16 constant: ``scale * (q - zp)`` along its axis."""
    arr = tfl.tensor_array(model, tensor)
    if arr is None:
        raise ModelError(f"tensor {tfl.tensor_name(tensor)} has no data")
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    qa = _q_arrays(tensor)
    if qa is None:
        return arr.astype(np.float32)
    scale, zp, axis = qa
    shape = [1] * arr.ndim
    if len(scale) > 1:
        shape[axis] = len(scale)
    return ((arr.astype(np.float32) - zp.reshape(shape).astype(np.float32)) * scale.reshape(shape)).astype(
        np.float32)


def _set_float(model, tensor, values: np.ndarray) -> None:
    tensor.type = _FLOAT32
    tensor.quantization = None
    arr = np.ascontiguousarray(values, np.float32)
    model.buffers[tensor.buffer].data = np.frombuffer(arr.tobytes(), np.uint8)
    model.buffers[tensor.buffer].offset = 0
    model.buffers[tensor.buffer].size = 0


def is_integer_model(model) -> bool:
    """True when the model's activations are already integer (e.g. a uint8 SSD)."""
    sg = model.subgraphs[0]
    for op, name in _ops(model, sg):
        if name in CONV_OPS:
            t = sg.tensors[op.inputs[0]]
            if int(t.type) in (_INT8, _UINT8, 7):
                return True
    return False


def prepare_float_model(model) -> dict:
    """Make ``model`` (a ``ModelT``, edited in place) a plain float model the quantizer accepts."""
    sg = model.subgraphs[0]
    if len(model.subgraphs) != 1:
        raise ModelError("only single-subgraph models can be quantized")
    if is_integer_model(model):
        raise ModelError("the model is already integer-quantized (its activations are int8/uint8)")
    stats = {"dequantized_weights": 0, "folded_dequantize_ops": 0, "had_postprocess": False}
    consumers: dict = {}
    for op, _ in _ops(model, sg):
        for i in op.inputs:
            if i >= 0:
                consumers.setdefault(i, []).append(op)
    # 1. fold DEQUANTIZE ops whose input is a constant (fp16 / int8 weights)
    keep_ops = []
    for op, name in _ops(model, sg):
        if name == "DEQUANTIZE" and _has_data(model, sg.tensors[op.inputs[0]]):
            src, dst = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
            values = dequantize_tensor(model, src)
            dst.buffer = src.buffer
            _set_float(model, dst, values.reshape(list(dst.shape)))
            stats["folded_dequantize_ops"] += 1
            continue
        keep_ops.append(op)
    sg.operators = keep_ops
    # 2. hybrid kernels: quantized constant weights consumed directly by float ops
    seen = set()
    for op, name in _ops(model, sg):
        if name == POSTPROCESS_OP:
            continue
        for i in op.inputs:
            if i < 0 or i in seen:
                continue
            t = sg.tensors[i]
            if _has_data(model, t) and int(t.type) in (_INT8, _UINT8, _FLOAT16, 7) and (
                    int(t.type) == _FLOAT16 or _q_arrays(t) is not None):
                seen.add(i)
                _set_float(model, t, dequantize_tensor(model, t))
                stats["dequantized_weights"] += 1
    # buffers shared by several tensors could be converted twice: the seen set guards by tensor,
    # and the TF exporters do not share weight buffers between differently typed tensors.
    # 3. static output shapes for the postprocess op
    for op, name in _ops(model, sg):
        if name == POSTPROCESS_OP:
            stats["had_postprocess"] = True
            opts = postprocess_options(op)
            n = int(opts.get("max_detections", 10)) * int(opts.get("max_classes_per_detection", 1))
            for t, shape in zip(op.outputs, ([1, n, 4], [1, n], [1, n], [1])):
                sg.tensors[t].shape = np.array(shape, np.int32)
                sg.tensors[t].shapeSignature = None
    # 4. a signature (the quantizer calibrates through signatures)
    if not model.signatureDefs:
        schema = tfl.schema()
        sig = schema.SignatureDefT()
        sig.signatureKey = "serving_default"
        sig.subgraphIndex = 0
        sig.inputs, sig.outputs = [], []
        for k, i in enumerate(sg.inputs):
            m = schema.TensorMapT()
            m.name, m.tensorIndex = f"input_{k}" if len(sg.inputs) > 1 else "input", int(i)
            sig.inputs.append(m)
        for k, i in enumerate(sg.outputs):
            m = schema.TensorMapT()
            m.name, m.tensorIndex = f"output_{k}", int(i)
            sig.outputs.append(m)
        model.signatureDefs = [sig]
        stats["added_signature"] = True
    return stats


def postprocess_options(op) -> dict:
    from flatbuffers import flexbuffers

    return dict(flexbuffers.Loads(bytes(op.customOptions)))


def head_parts(model) -> dict:
    """``{"boxes": names, "scores": names}``: the head tensors on the way to the box encodings and
    to the class predictions (from the prediction convolutions on), for op-form and raw models."""
    sg = model.subgraphs[0]
    producer = {}
    for op, name in _ops(model, sg):
        for o in op.outputs:
            producer[int(o)] = (op, name)
    parts = {}
    for key, root in zip(("boxes", "scores"), head_roots(model)):
        names, stack, seen = set(), [root], set()
        while stack:
            t = int(stack.pop())
            if t < 0 or t in seen:
                continue
            seen.add(t)
            tensor = sg.tensors[t]
            if _has_data(model, tensor):
                continue
            names.add(tfl.tensor_name(tensor))
            prod = producer.get(t)
            if prod is None or prod[1] in CONV_OPS:
                continue
            stack.extend(prod[0].inputs)
        parts[key] = names
    parts.setdefault("boxes", set())
    parts.setdefault("scores", set())
    return parts


# ---------------------------------------------------------------------------------------------
# calibration data


def copy_sidecar(src, dst, *, drop: Sequence[str] = ("accuracy", "speed", "quantization", "calibration",
                                                      "source", "name")) -> dict:
    """Give ``dst`` the sidecar of ``src`` (labels, input, postprocess, anchors) with absolute file
    references, minus the sections that describe ``src`` itself. Returns the data written."""
    from ..sidecar import load_sidecar, resolve_relative, save_sidecar

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
    from ..model import input_spec
    from ..preprocess import Preprocessor, letterbox_or_stretch
    from ..sidecar import load_sidecar

    if interpreter is None:
        from ..runtime import load_interpreter

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


# ---------------------------------------------------------------------------------------------
# ranges


MSE_TAILS = (0.0, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def _int8_mse(pool: np.ndarray, a: float, b: float) -> float:
    a, b = min(a, 0.0), max(b, 0.0)
    scale = (b - a) / 255.0
    if scale <= 0:
        return np.inf
    rec = np.clip(np.round((pool - a) / scale), 0, 255) * scale + a
    return float(np.mean((pool - rec) ** 2))


def _mse_range(pool: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The clipping range with the least int8 round-trip error on ``pool``: each end chosen among
    the pooled quantiles that cut off a fraction ``MSE_TAILS`` of the values (coordinate search,
    the low end then the high end then the low end again)."""
    if pool.size > 1 << 18:
        pool = pool[np.random.default_rng(0).integers(0, pool.size, 1 << 18)]
    pool = np.sort(pool)
    lows = [lo] + [float(pool[int(t * (pool.size - 1))]) for t in MSE_TAILS[1:]] if lo < 0 else [lo]
    highs = [hi] + [float(pool[int((1.0 - t) * (pool.size - 1))]) for t in MSE_TAILS[1:]] if hi > 0 else [hi]
    a, b = lo, hi
    for _ in range(2):
        a = min(lows, key=lambda c: _int8_mse(pool, c, b))
        b = min(highs, key=lambda c: _int8_mse(pool, a, c))
    return min(a, 0.0), max(b, 0.0)


INPUT_WIDENINGS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def roundtrip_mse(values: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of ``values`` through int8 QUANTIZE / DEQUANTIZE with the range
    ``(lo, hi)`` as the int8 model will hold it: scale ``(hi - lo) / 255`` and an INTEGER zero
    point, both rounded half away from zero."""
    scale = (hi - lo) / 255.0
    if scale <= 0:
        return np.inf
    zp = float(np.clip(_round_half_away(np.asarray(-128.0 - lo / scale)), -128, 127))
    q = np.clip(_round_half_away(values / scale) + zp, -128, 127)
    return float(np.mean((values - (q - zp) * scale) ** 2))


def input_range(values: np.ndarray, lo: float, hi: float,
                widenings: Sequence[float] = INPUT_WIDENINGS) -> tuple[float, float]:
    """The range of a model input among ``(lo, hi)`` widened at one end by a fraction of a step
    (``widenings``) with the least ``roundtrip_mse`` of ``values``.

    Inputs normalized from 8-bit pixels, ``(p - 127.5) / 127.5``, sit exactly halfway between two
    int8 levels of the range ``[-1, 1]`` (step ``2 / 255``, zero point ``-0.5`` rounded): every
    pixel is off by half a step. A range a little wider puts the levels off the pixel grid, and
    the error of the first convolution's input drops about threefold."""
    step = (hi - lo) / 255.0
    candidates = [(lo, hi + f * step) for f in widenings] + [(lo - f * step, hi) for f in widenings if f]
    return min(candidates, key=lambda c: roundtrip_mse(values, *c))


def _input_values(inputs: Sequence[np.ndarray], samples: int = 1 << 20, seed: int = 0) -> np.ndarray:
    flat = np.concatenate([x.reshape(-1) for x in inputs]).astype(np.float64)
    if flat.size > samples:
        flat = flat[np.random.default_rng(seed).integers(0, flat.size, samples)]
    return flat


def collect_ranges(float_path, inputs: Sequence[np.ndarray], names: set, *,
                   percentile: Union[float, str] = 100.0, exact: set = frozenset(),
                   threads: Optional[int] = None, samples: int = 8192, seed: int = 0) -> dict:
    """Global ``{name: (min, max)}`` over all ``inputs`` for the activation tensors ``names``.

    Tensors in ``exact`` (and all when ``percentile >= 100``) get the true global min/max; the
    others the ``100 - percentile`` / ``percentile`` percentiles of values pooled from every
    image (a random sample of ``samples`` values per image and tensor), widened to include 0.
    ``percentile="mse"`` picks, per tensor, the percentile of ``MSE_PERCENTILES`` whose int8
    round trip of the pooled values has the least squared error.
    """
    from ..runtime import load_interpreter

    interp = load_interpreter(float_path, threads, preserve_all_tensors=True)
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    wanted = {n: index[n] for n in sorted(names) if n in index}  # sorted: the same samples every run
    in_index = interp.get_input_details()[0]["index"]
    rng = np.random.default_rng(seed)
    lo = {n: np.inf for n in wanted}
    hi = {n: -np.inf for n in wanted}
    pools: dict = {n: [] for n in wanted}
    mse = percentile == "mse"
    robust = mse or float(percentile) < 100.0
    for x in inputs:
        interp.set_tensor(in_index, x)
        interp.invoke()
        for n, i in wanted.items():
            v = interp.get_tensor(i)
            if v.dtype != np.float32:
                continue
            v = v.reshape(-1)
            lo[n] = min(lo[n], float(v.min()))
            hi[n] = max(hi[n], float(v.max()))
            if robust and n not in exact:
                pools[n].append(v if v.size <= samples else v[rng.integers(0, v.size, samples)])
    out = {}
    for n in wanted:
        if not np.isfinite(lo[n]):
            continue
        a, b = lo[n], hi[n]
        if robust and n not in exact and pools[n]:
            pool = np.concatenate(pools[n])
            if mse:
                a, b = _mse_range(pool, a, b)
            else:
                a = float(np.percentile(pool, 100.0 - percentile)) if a < 0 else a
                b = float(np.percentile(pool, percentile)) if b > 0 else b
        out[n] = (min(a, 0.0), max(b, 0.0))
    return out


# ---------------------------------------------------------------------------------------------
# int8


def int8_recipe(float_ops: Sequence[str] = ()) -> list:
    """The ai-edge-quantizer recipe: int8 everywhere, float model inputs/outputs; the ops whose
    output tensor is named in ``float_ops`` stay float (the quantizer's op scope is its output
    names, each followed by ";")."""
    import re

    act = {"num_bits": 8, "symmetric": False, "granularity": "TENSORWISE", "dtype": "INT"}
    wgt = {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE", "dtype": "INT"}
    base = {"activation_tensor_config": act, "weight_tensor_config": wgt, "compute_precision": "INTEGER",
            "explicit_dequantize": False, "skip_checks": False, "min_weight_elements": 0}
    return [
        {"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize", "op_config": base},
        # the model's own inputs and outputs stay float: QUANTIZE / DEQUANTIZE at the edges
        {"regex": ".*", "operation": "INPUT", "algorithm_key": "no_quantize"},
        {"regex": ".*", "operation": "OUTPUT", "algorithm_key": "no_quantize"},
    ] + [{"regex": f"^{re.escape(name)};", "operation": "*", "algorithm_key": "no_quantize"} for name in float_ops]


def _aeq_qsv_template(aeq_quantizer, float_bytes: bytes, sample: np.ndarray, input_name: str,
                      signature: str) -> dict:
    """The tensors the quantizer wants ranges for, with its QSV array shapes (one quick pass)."""
    qt = aeq_quantizer.Quantizer(bytearray(float_bytes))
    qt.load_quantization_recipe(int8_recipe())
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return qt.calibrate({signature: [{input_name: sample}]}, num_threads=1)


def repair_dead_channels(qmodel, float_model) -> int:
    """Recompute the int32 biases (and the weight scales of dead channels) from the float model.

    The quantizer gives an all-zero (or near-zero) output channel a ~1e-11 weight scale; its
    bias then overflows int32 and the channel's constant output is lost. Returns the number of
    channels repaired.
    """
    fsg = float_model.subgraphs[0]
    float_bias = {}
    for op, name in _ops(float_model, fsg):
        if name in CONV_OPS and len(op.inputs) > 2 and op.inputs[2] >= 0:
            t = fsg.tensors[op.inputs[2]]
            arr = tfl.tensor_array(float_model, t)
            if arr is not None:
                float_bias[tfl.tensor_name(t)] = arr.astype(np.float64)
    sg = qmodel.subgraphs[0]
    repaired = 0
    for op, name in _ops(qmodel, sg):
        if name not in CONV_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (sg.tensors[i] for i in op.inputs[:3])
        if int(w.type) != _INT8 or int(b.type) != _INT32 or _q_arrays(x) is None:
            continue
        fb = float_bias.get(tfl.tensor_name(b))
        if fb is None:
            continue
        in_scale = float(_q_arrays(x)[0][0])
        w_scale = np.asarray(w.quantization.scale, np.float64).copy()
        nch = w_scale.size
        # channels whose bias does not fit int32 at scale in_scale * w_scale (tiny weight scales of
        # all-zero or near-zero channels): widen the weight scale until it fits; their weights
        # (|w| <= 127 * old scale) then round to ~0, the bias constant is kept
        limit = 2 ** 31 - 1
        need = np.abs(fb) / (in_scale * limit) * 1.01 if nch > 1 else np.zeros(1)
        bad = (w_scale < need) | (w_scale < 1e-10) if nch > 1 else np.zeros(1, bool)
        if bad.any():
            axis = int(w.quantization.quantizedDimension or 0)
            wq = np.moveaxis(tfl.tensor_array(qmodel, w), axis, 0).astype(np.float64)
            new_scale = np.where(bad, np.maximum(need, 1e-6), w_scale)
            shape = (-1,) + (1,) * (wq.ndim - 1)
            wq = np.clip(np.round(wq * (w_scale / new_scale).reshape(shape)), -127, 127).astype(np.int8)
            tfl.set_tensor_array(qmodel, w, np.moveaxis(wq, 0, axis))
            qmodel.buffers[w.buffer].offset = 0
            qmodel.buffers[w.buffer].size = 0
            w_scale = new_scale
            w.quantization.scale = w_scale.astype(np.float32)
            dead = bad
            repaired += int(bad.sum())
        else:
            dead = bad
        bias_scale = in_scale * (w_scale if nch > 1 else np.full(fb.shape, w_scale[0]))
        bias_q = np.clip(np.round(fb / bias_scale), -limit, limit).astype(np.int32)
        old = tfl.tensor_array(qmodel, b)
        if dead.any() or not np.array_equal(old, bias_q):
            b.quantization.scale = bias_scale.astype(np.float32)
            b.quantization.zeroPoint = np.zeros(bias_scale.size, np.int64)
            tfl.set_tensor_array(qmodel, b, bias_q)
            qmodel.buffers[b.buffer].offset = 0
            qmodel.buffers[b.buffer].size = 0
    return repaired


def drop_identity_requantize(model) -> int:
    """Remove int8 -> int8 ``QUANTIZE`` ops whose input already has the output's scale and zero
    point (the quantizer puts one in front of every concatenation input; with one shared range
    they copy ~1 MB of logits per frame for nothing). Returns how many were removed."""
    sg = model.subgraphs[0]
    outputs = {int(i) for i in sg.outputs}
    alias: dict = {}
    keep = []
    for op, name in _ops(model, sg):
        if name == "QUANTIZE" and int(op.outputs[0]) not in outputs:
            src, dst = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
            a, b = _q_arrays(src), _q_arrays(dst)
            if (int(src.type) == int(dst.type) == _INT8 and a is not None and b is not None
                    and a[0].size == b[0].size == 1 and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])):
                alias[int(op.outputs[0])] = alias.get(int(op.inputs[0]), int(op.inputs[0]))
                continue
        keep.append(op)
    if alias:
        for op in keep:
            op.inputs = np.array([alias.get(int(i), int(i)) for i in op.inputs], np.int32)
        sg.operators = keep
    return len(alias)


def _restore_io_names(qmodel, float_model) -> None:
    """Give the quantized model's inputs/outputs the float model's tensor names (the quantizer
    names them ``<name>_dequant`` / ``<name>_quant``); the inner int8 tensors get ``<name>_int8``."""
    fsg, sg = float_model.subgraphs[0], qmodel.subgraphs[0]
    by_name = {tfl.tensor_name(t): i for i, t in enumerate(sg.tensors)}
    for f_idx, q_idx in list(zip(fsg.inputs, sg.inputs)) + list(zip(fsg.outputs, sg.outputs)):
        want = tfl.tensor_name(fsg.tensors[f_idx])
        have = tfl.tensor_name(sg.tensors[q_idx])
        if have == want:
            continue
        other = by_name.get(want)
        if other is not None and other != q_idx:
            sg.tensors[other].name = (want + "_int8").encode()
        sg.tensors[q_idx].name = want.encode()


def int8_census(model) -> dict:
    """How much of the network body is int8: conv weights and activation tensors (N of M). A float
    LOGISTIC that feeds the postprocess op its scores (or, without the op, outputs the scores)
    counts as part of the postprocess (``float_score_sigmoid``), like the QUANTIZE / DEQUANTIZE at
    the model's edges."""
    sg = model.subgraphs[0]
    conv_total = conv_int8 = 0
    acts = set()
    ops = _ops(model, sg)
    postprocess = [op for op, name in ops if name == POSTPROCESS_OP]
    score_inputs = ({int(op.inputs[1]) for op in postprocess if len(op.inputs) > 1} if postprocess
                    else {int(i) for i in sg.outputs})
    float_sigmoid = 0
    for op, name in ops:
        if name in ("QUANTIZE", "DEQUANTIZE", POSTPROCESS_OP):
            continue
        out0 = int(op.outputs[0])
        if name == "LOGISTIC" and out0 in score_inputs and int(sg.tensors[out0].type) == _FLOAT32:
            float_sigmoid += 1  # the score conversion in front of the postprocess, kept float on purpose
            continue
        for i in list(op.inputs) + list(op.outputs):
            if i >= 0 and not _has_data(model, sg.tensors[i]):
                acts.add(i)
        if name in CONV_OPS:
            conv_total += 1
            x, w = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]]
            y = sg.tensors[op.outputs[0]]
            if int(w.type) == _INT8 and int(x.type) == _INT8 and int(y.type) == _INT8:
                conv_int8 += 1
    act_int8 = sum(1 for i in acts if int(sg.tensors[i].type) == _INT8)
    return {"conv_int8": conv_int8, "conv_total": conv_total, "activations_int8": act_int8,
            "activations_total": len(acts), "float_score_sigmoid": float_sigmoid}


def census_of(path) -> dict:
    return int8_census(tfl.read_model(path))


BIAS_CORRECTIONS = ("none", "weights", "empirical", "both")
# int8 LOGISTIC output: scale 1/256, zero point -128; logits below this give 0 after rounding
LOGIT_FLOOR = float(np.log(0.25 / 256 / (1 - 0.25 / 256)))


def _score_sigmoid(model) -> Optional[str]:
    """Name of the LOGISTIC output the postprocess op reads as scores or, in a model without the
    op (raw outputs), the LOGISTIC that produces a model output; None when there is none."""
    sg = model.subgraphs[0]
    producer = {int(o): name for op, name in _ops(model, sg) for o in op.outputs}
    for op, name in _ops(model, sg):
        if name == POSTPROCESS_OP and len(op.inputs) > 1:
            if producer.get(int(op.inputs[1])) == "LOGISTIC":
                return tfl.tensor_name(sg.tensors[op.inputs[1]])
            return None
    for i in sg.outputs:
        if producer.get(int(i)) == "LOGISTIC":
            return tfl.tensor_name(sg.tensors[i])
    return None


def _sigmoid_inputs(model, score_names: set) -> set:
    """The class-logit tensors (``score_names`` minus the LOGISTIC outputs) when the scores the
    postprocess reads come out of a LOGISTIC; empty otherwise."""
    sg = model.subgraphs[0]
    sig_out = {tfl.tensor_name(sg.tensors[o]) for op, name in _ops(model, sg) if name == "LOGISTIC"
               for o in op.outputs}
    if not (sig_out & score_names):
        return set()
    return set(score_names) - sig_out

HEAD_RANGES = ("minmax", "same", "task")
WEIGHT_ROUNDINGS = ("nearest", "adaptive", "compensate")
INPUT_RANGES = ("minmax", "roundtrip")


def quantize_int8(src, out, calibration_images: Sequence, *, percentile: Union[float, str] = "mse",
                  threads: Optional[int] = None, head_ranges: str = "task",
                  bias_correction: str = "weights", bias_images: int = 64,
                  logit_floor: bool = True, float_sigmoid: bool = True,
                  equalize: bool = False, residual_equalize: bool = False,
                  residual_alpha: float = 0.5, residual_max_gain: float = 8.0,
                  weight_rounding: str = "adaptive", input_ranges: str = "roundtrip",
                  rounding_max_move: Optional[int] = 1, rounding_depth: float = 0.8,
                  rounding_images: int = 32) -> QuantizeResult:
    """Full-integer int8 ``out`` from the float / hybrid model ``src`` (see the module docstring).

    ``head_ranges``: "minmax" keeps the prediction head's full calibrated range, "same" gives it the
    body's rule (``percentile``), "task" one range for the class logits and one for the box
    encodings with the least error of the scores / score-weighted boxes (``quantize_head``).
    ``bias_correction`` (``edgedet.tools.quantize_bias``): "weights" removes the mean shift of int8
    weight rounding, "empirical" moves the linear convs' output means onto the float model's,
    "both" does one then the other; measured on up to ``bias_images`` of the calibration images.
    ``logit_floor``: when the scores come out of an int8 LOGISTIC, the class logits' range starts
    at ``LOGIT_FLOOR`` at the lowest (see there). ``float_sigmoid``: the LOGISTIC that turns class
    logits into the scores stays float (continuous scores instead of 1/256 steps; the logits are
    dequantized in front of it). ``equalize``:
    cross-layer range equalization of ReLU conv -> depthwise conv pairs first
    (``edgedet.tools.quantize_cle``). ``residual_equalize``: equalize the channels of the linear
    bottlenecks' residual streams first (``edgedet.tools.quantize_residual``, factors
    ``p_c ** residual_alpha``, narrow channels magnified ``residual_max_gain`` times at most).
    ``weight_rounding``: "nearest", "adaptive" (the off-grid weights, on float input statistics)
    or "compensate" (the layers up to ``rounding_depth`` times the deepest conv depth, against
    the int8 model's inputs, integer weights within ``rounding_max_move`` of nearest rounding,
    on ``rounding_images`` of the calibration images; see ``quantize_round.compensate_layers``).
    """
    import tempfile

    if not calibration_images:
        raise ConfigError("int8 quantization needs calibration images")
    if head_ranges not in HEAD_RANGES:
        raise ConfigError(f"head ranges must be one of {', '.join(HEAD_RANGES)}, not {head_ranges!r}")
    if bias_correction not in BIAS_CORRECTIONS:
        raise ConfigError(f"bias correction must be one of {', '.join(BIAS_CORRECTIONS)}, not {bias_correction!r}")
    if input_ranges not in INPUT_RANGES:
        raise ConfigError(f"input ranges must be one of {', '.join(INPUT_RANGES)}, not {input_ranges!r}")
    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise ConfigError(f"weight rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}, not {weight_rounding!r}")
    aeq = _require_aeq()
    t0 = time.perf_counter()
    model = tfl.read_model(src)
    prepared = prepare_float_model(model)
    float_bytes = tfl.model_to_bytes(model)
    parts = head_parts(model)
    head = parts["boxes"] | parts["scores"]
    sigmoid_logits = _sigmoid_inputs(model, parts["scores"])
    score_sigmoid = _score_sigmoid(model)
    float_ops = [score_sigmoid] if float_sigmoid and score_sigmoid else []
    if float_ops:
        logit_floor = False  # the floor only holds for an int8 sigmoid
    with tempfile.TemporaryDirectory(prefix="edgedet-q-") as tmp:
        float_path = Path(tmp) / "float.tflite"
        float_path.write_bytes(float_bytes)
        from ..runtime import load_interpreter

        interp = load_interpreter(float_path, threads)
        # the source's sidecar decides preprocessing; the prepared float copy has the same input
        preprocessor = calibration_preprocessor(src, interp)
        sig = model.signatureDefs[0]
        signature = sig.signatureKey.decode() if isinstance(sig.signatureKey, bytes) else str(sig.signatureKey)
        in_name = sig.inputs[0].name
        in_name = in_name.decode() if isinstance(in_name, bytes) else str(in_name)
        inputs = load_inputs(calibration_images, preprocessor)
        equalized = 0
        if equalize:
            from .quantize_cle import equalize as _equalize

            step = max(1, len(inputs) // max(1, bias_images))
            equalized = _equalize(model, float_path, inputs[::step][:bias_images], threads=threads)
            float_bytes = tfl.model_to_bytes(model)
            float_path.write_bytes(float_bytes)
        streams = {"streams": 0}
        if residual_equalize:
            from .quantize_residual import equalize_streams

            step = max(1, len(inputs) // max(1, bias_images))
            streams = equalize_streams(model, float_path, inputs[::step][:bias_images], threads=threads,
                                       alpha=residual_alpha, max_gain=residual_max_gain)
            float_bytes = tfl.model_to_bytes(model)
            float_path.write_bytes(float_bytes)
        template = _aeq_qsv_template(aeq, float_bytes, inputs[0], in_name, signature)
        ranges = collect_ranges(float_path, inputs, set(template), percentile=percentile,
                                exact=head if head_ranges != "same" else frozenset(), threads=threads)
        head_chosen = {}
        if head_ranges == "task":
            from ..sidecar import load_sidecar
            from .quantize_head import task_ranges
            from .quantize_measure import head_tensor_names

            names = head_tensor_names(model)
            # a sigmoid in the graph, or one the decoder applies to raw logits (sidecar)
            activation = (load_sidecar(src).get("postprocess") or {}).get("score_activation")
            sigmoid = names["scores"] != names["logits"] or activation == "sigmoid"
            head_chosen = task_ranges(model, Path(tmp) / "head.tflite", inputs, names, ranges, sigmoid=sigmoid,
                                      threads=threads)
            groups = {"logits": sigmoid_logits or parts["scores"], "boxes": parts["boxes"]}
            for key, (lo, hi) in head_chosen.items():
                for name in groups[key] & set(ranges):
                    ranges[name] = (lo, hi)
        if input_ranges == "roundtrip":
            values = _input_values(inputs)
            for i in model.subgraphs[0].inputs:
                name = tfl.tensor_name(model.subgraphs[0].tensors[i])
                if name in ranges:
                    ranges[name] = input_range(values, *ranges[name])
        if logit_floor and sigmoid_logits:
            # an int8 LOGISTIC outputs multiples of 1/256: every logit below the floor gives 0,
            # so the logits' range need not reach lower (a finer step for the logits that matter)
            for name in sigmoid_logits & set(ranges):
                lo, hi = ranges[name]
                ranges[name] = (max(lo, LOGIT_FLOOR), hi)
        qsvs = {}
        for name, qsv in template.items():
            if name in ranges and "min" in qsv:
                lo, hi = ranges[name]
                qsvs[name] = {**qsv, "min": np.full_like(np.asarray(qsv["min"], np.float32), lo),
                              "max": np.full_like(np.asarray(qsv["max"], np.float32), hi)}
            else:
                qsvs[name] = qsv
        qt = aeq.Quantizer(bytearray(float_bytes))
        qt.load_quantization_recipe(int8_recipe(float_ops))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                np.errstate(all="ignore"):
            result = qt.quantize(qsvs, enable_progress_report=False)
        qbytes = bytes(result.quantized_model)
        qpath = Path(tmp) / "q.tflite"
        qpath.write_bytes(qbytes)
        qmodel = tfl.read_model(qpath)  # resolves offset buffers
        repaired = repair_dead_channels(qmodel, model)
        step = max(1, len(inputs) // max(1, bias_images))
        subset = inputs[::step][:bias_images]
        rerounded = 0
        corrected = 0
        compensated: set = set()
        work = Path(tmp) / "bias.tflite"
        if weight_rounding == "adaptive":
            from .quantize_round import round_layers

            rerounded = round_layers(qmodel, model, float_path, subset, threads=threads,
                                     centered=bias_correction != "none")
        elif weight_rounding == "compensate":
            from .quantize_round import compensate_layers, conv_depths

            weight_bias = bias_correction in ("weights", "both")
            cstep = max(1, len(inputs) // max(1, rounding_images))
            max_depth = int(rounding_depth * max(conv_depths(qmodel).values()))
            done = compensate_layers(qmodel, model, float_path, inputs[::cstep][:rounding_images], work,
                                     threads=threads, centered=bias_correction != "none",
                                     correct_bias=weight_bias, max_move=rounding_max_move,
                                     max_depth=max_depth)
            rerounded = len(done)
            compensated = {la.op_index for la in done}
            corrected += len(done) if weight_bias else 0
        if bias_correction != "none":
            from . import quantize_bias

            if bias_correction in ("weights", "both"):
                rest = [la for la in quantize_bias.conv_layers(qmodel, model) if la.op_index not in compensated]
                if rest:
                    corrected += quantize_bias.weight_error_correction(qmodel, model, subset, work,
                                                                       threads=threads, layers=rest)
            if bias_correction in ("empirical", "both"):
                corrected += quantize_bias.empirical_correction(qmodel, model, float_path, subset, work,
                                                                threads=threads)
    dropped = drop_identity_requantize(qmodel)
    _restore_io_names(qmodel, model)
    census = int8_census(qmodel)
    hints = {}
    if _scores_are_dequantized_probabilities(qmodel):
        # the op now reads DEQUANTIZE(LOGISTIC(...)): say so, or a reader that looks only at the
        # op's direct producer would apply the sigmoid a second time
        hints["postprocess"] = {"score_activation": "none"}
    tfl.write_model(qmodel, out)
    recipe = {"mode": "int8", "tool": "ai-edge-quantizer", "weights": "int8 symmetric per-channel",
              "activations": "int8 asymmetric per-tensor", "io": "float32",
              "ranges": "global over the calibration set", "percentile": percentile,
              "head_ranges": {"minmax": "min/max", "same": "as the body", "task": "score-weighted"}[head_ranges],
              "head_range_values": {k: [round(v, 4) for v in r] for k, r in head_chosen.items()} or None,
              "bias_correction": bias_correction, "bias_corrected_layers": corrected,
              "logit_floor": round(LOGIT_FLOOR, 3) if logit_floor and sigmoid_logits else None,
              "float_ops": list(float_ops), "equalized_pairs": equalized,
              "residual_streams": streams["streams"], "weight_rounding": weight_rounding,
              "rerounded_layers": rerounded, "input_ranges": input_ranges, "identity_requantize_dropped": dropped,
              "postprocess": "float" if prepared["had_postprocess"] else "none"}
    try:
        from importlib.metadata import version

        recipe["tool_version"] = version("ai-edge-quantizer")
    except Exception:  # pragma: no cover
        pass
    return QuantizeResult(Path(out), "int8", recipe, census, repaired, time.perf_counter() - t0, prepared,
                          sidecar=hints)


def _scores_are_dequantized_probabilities(model) -> bool:
    sg = model.subgraphs[0]
    producer = {}
    for op, name in _ops(model, sg):
        for o in op.outputs:
            producer[int(o)] = (op, name)
    for op, name in _ops(model, sg):
        if name == POSTPROCESS_OP and len(op.inputs) > 1:
            p = producer.get(int(op.inputs[1]))
            if p is not None and p[1] == "DEQUANTIZE":
                p2 = producer.get(int(p[0].inputs[0]))
                return p2 is not None and p2[1] in ("LOGISTIC", "SOFTMAX")
    return False


# ---------------------------------------------------------------------------------------------
# measuring a quantized model against its source (on calibration data, never the eval set)


def invoke_ms(path, threads: Optional[int] = None, runs: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of one ``invoke()`` on a random input (XNNPACK, ``threads``)."""
    from ..runtime import median_invoke_ms

    return median_invoke_ms(path, threads, runs=runs, warmup=warmup)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def detection_agreement(ref, test, images: Sequence, *, score_threshold: float = 0.3,
                        iou_threshold: float = 0.5) -> dict:
    """How well ``test`` reproduces ``ref``'s detections (both ``detect(image) -> Detections``).

    Greedy one-to-one matching per class at ``iou_threshold``: F1 of the matches, mean IoU and
    mean absolute score difference of matched pairs.
    """
    import cv2

    tp = n_ref = n_test = 0
    ious, dscore = [], []
    for p in images:
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if image is None:
            raise ConfigError(f"cannot read image {p}")
        a, b = ref(image), test(image)
        a, b = a[a.scores >= score_threshold], b[b.scores >= score_threshold]
        n_ref += len(a)
        n_test += len(b)
        if not len(a) or not len(b):
            continue
        iou = _iou(a.xyxy, b.xyxy)
        iou[a.class_ids[:, None] != b.class_ids[None, :]] = 0
        while True:
            i, j = np.unravel_index(np.argmax(iou), iou.shape)
            if iou[i, j] < iou_threshold:
                break
            tp += 1
            ious.append(float(iou[i, j]))
            dscore.append(abs(float(a.scores[i]) - float(b.scores[j])))
            iou[i, :] = 0
            iou[:, j] = 0
    f1 = 2 * tp / max(n_ref + n_test, 1)
    return {"f1": round(f1, 4), "matched": tp, "ref": n_ref, "test": n_test,
            "mean_iou": round(float(np.mean(ious)), 4) if ious else 0.0,
            "score_mae": round(float(np.mean(dscore)), 4) if dscore else 0.0}


def compare_models(ref_path, test_path, images: Sequence, *, threads: Optional[int] = None,
                   score_threshold: float = 0.3) -> dict:
    """Detection agreement of two models on ``images`` (held-out calibration frames), both run by
    the inference ``Detector`` (op-form or raw models alike)."""
    from .evaluate import make_detector

    ref, _ = make_detector(ref_path, threads=threads, score_threshold=score_threshold)
    test, _ = make_detector(test_path, threads=threads, score_threshold=score_threshold)
    result = detection_agreement(ref.detect, test.detect, images, score_threshold=score_threshold)
    return {**result, "score_threshold": score_threshold}


def pseudo_map(ref_path, test_path, images: Sequence, *, threads: Optional[int] = None,
               teacher_threshold: float = 0.3) -> dict:
    """Label-free accuracy proxy on calibration images: the COCO mAP of ``test`` (scores >= 0.01,
    up to 100 detections) against ``ref``'s confident detections (>= ``teacher_threshold``) taken
    as ground truth. Sensitive to the ranking of low scores, as a real mAP is."""
    import cv2

    from .evaluate import CocoSet, coco_metrics, make_detector

    ref, _ = make_detector(ref_path, threads=threads, score_threshold=teacher_threshold)
    test, _ = make_detector(test_path, threads=threads, score_threshold=0.01, max_detections=100)
    gt_images, gt_anns, results = [], [], []
    classes = set()
    for k, p in enumerate(images):
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if image is None:
            raise ConfigError(f"cannot read image {p}")
        h, w = image.shape[:2]
        gt_images.append({"id": k + 1, "file_name": str(p), "width": w, "height": h})
        a, b = ref.detect(image), test.detect(image)
        for box, c in zip(a.xyxy.tolist(), a.class_ids.tolist()):
            x1, y1, x2, y2 = box
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": k + 1, "category_id": int(c) + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            classes.add(int(c) + 1)
        for box, c, sc in zip(b.xyxy.tolist(), b.class_ids.tolist(), b.scores.tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": k + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": sc})
    data = {"images": gt_images, "annotations": gt_anns,
            "categories": [{"id": c, "name": str(c)} for c in sorted(classes | {r["category_id"] for r in results})]}
    metrics = coco_metrics(CocoSet(Path("pseudo"), Path("."), gt_images, data["categories"], data), results)
    return {"pseudo_mAP": round(metrics["mAP"], 4), "pseudo_AP50": round(metrics["AP50"], 4),
            "teacher_boxes": len(gt_anns)}


PERCENTILE_CANDIDATES = (100.0, 99.99, "mse")


def choose_percentile(src, calibration, held_out, *, candidates: Sequence = PERCENTILE_CANDIDATES,
                      threads: Optional[int] = None, log=None) -> tuple:
    """Quantize with each candidate range rule (ranges from ``calibration``) and keep the one whose
    raw head outputs are closest to the float model's on the ``held_out`` calibration images:
    highest mean of the confidence-weighted box SNR and the score SNR (``quantize_measure.head_snr``,
    every anchor of every held-out image). Detection F1 against the source is reported beside it.
    Returns the chosen candidate and ``{candidate: measures}``."""
    import tempfile

    from ..sidecar import update_sidecar
    from .quantize_measure import head_snr

    scores = {}
    with tempfile.TemporaryDirectory(prefix="edgedet-pct-") as tmp:
        model = tfl.read_model(src)
        prepare_float_model(model)
        float_path = Path(tmp) / "float.tflite"
        tfl.write_model(model, float_path)
        held_inputs = load_inputs(held_out, calibration_preprocessor(src))
        for p in candidates:
            out = Path(tmp) / f"p{p}.tflite"
            result = quantize_int8(src, out, calibration, percentile=p, threads=threads)
            copy_sidecar(src, out)
            if result.sidecar:
                update_sidecar(out, **result.sidecar)
            snr = head_snr(float_path, out, held_inputs, threads=threads)
            agree = compare_models(src, out, held_out, threads=threads)
            scores[p] = {"snr_db": snr["mean"], "box_snr_db": snr.get("boxes_w"),
                         "score_snr_db": snr.get("scores", snr.get("logits")), "f1": agree["f1"]}
            if log:
                log(f"percentile {p}: {scores[p]}")
    best = max(candidates, key=lambda p: scores[p]["snr_db"])
    return best, scores


# ---------------------------------------------------------------------------------------------
# fp16 weights and dynamic range


def _opcode_index(model, builtin_name: str) -> int:
    schema = tfl.schema()
    code = getattr(schema.BuiltinOperator, builtin_name)
    for i, oc in enumerate(model.operatorCodes):
        if not oc.customCode and max(int(oc.builtinCode or 0), int(oc.deprecatedBuiltinCode or 0)) == code:
            return i
    oc = schema.OperatorCodeT()
    oc.builtinCode = code
    oc.deprecatedBuiltinCode = min(code, 127)
    oc.version = 1
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def quantize_fp16(src, out) -> QuantizeResult:
    """float16 weights (conv and fully-connected) with ``DEQUANTIZE`` ops; float activations.

    Halves the weight size; XNNPACK folds the ``DEQUANTIZE`` at load and runs in float32.
    """
    t0 = time.perf_counter()
    model = tfl.read_model(src)
    prepared = prepare_float_model(model)
    schema = tfl.schema()
    sg = model.subgraphs[0]
    deq = _opcode_index(model, "DEQUANTIZE")
    new_ops, converted = [], 0
    for op, name in _ops(model, sg):
        if name not in CONV_OPS:
            continue
        idx = op.inputs[1]
        t = sg.tensors[idx]
        if int(t.type) != _FLOAT32 or not _has_data(model, t):
            continue
        values = tfl.tensor_array(model, t)
        half = schema.TensorT()
        half.shape = np.array(t.shape, np.int32)
        half.type = _FLOAT16
        half.name = (tfl.tensor_name(t) + "_fp16").encode()
        buf = schema.BufferT()
        buf.data = np.frombuffer(values.astype(np.float16).tobytes(), np.uint8)
        model.buffers.append(buf)
        half.buffer = len(model.buffers) - 1
        sg.tensors.append(half)
        old = t.buffer
        model.buffers.append(schema.BufferT())
        t.buffer = len(model.buffers) - 1  # the float tensor becomes the DEQUANTIZE output
        if not any(other.buffer == old for other in sg.tensors):
            model.buffers[old].data = None
        d = schema.OperatorT()
        d.opcodeIndex = deq
        d.inputs = np.array([len(sg.tensors) - 1], np.int32)
        d.outputs = np.array([idx], np.int32)
        new_ops.append(d)
        converted += 1
    sg.operators = new_ops + list(sg.operators)
    tfl.write_model(model, out)
    recipe = {"mode": "fp16", "weights": "float16", "activations": "float32"}
    return QuantizeResult(Path(out), "fp16", recipe, {"weights_fp16": converted}, 0, time.perf_counter() - t0,
                          prepared)


def quantize_dynamic(src, out) -> QuantizeResult:
    """Dynamic range: int8 per-channel weights, float activations (quantized on the fly)."""
    import tempfile

    aeq = _require_aeq()
    from ai_edge_quantizer import recipe as aeq_recipe

    t0 = time.perf_counter()
    model = tfl.read_model(src)
    prepared = prepare_float_model(model)
    qt = aeq.Quantizer(bytearray(tfl.model_to_bytes(model)))
    qt.load_quantization_recipe(aeq_recipe.dynamic_wi8_afp32())
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            np.errstate(all="ignore"):
        result = qt.quantize(enable_progress_report=False)
    with tempfile.TemporaryDirectory(prefix="edgedet-dq-") as tmp:
        qpath = Path(tmp) / "q.tflite"
        qpath.write_bytes(bytes(result.quantized_model))
        qmodel = tfl.read_model(qpath)
    _restore_io_names(qmodel, model)
    sg = qmodel.subgraphs[0]
    n = sum(1 for op, name in _ops(qmodel, sg) if name in CONV_OPS and int(sg.tensors[op.inputs[1]].type) == _INT8)
    tfl.write_model(qmodel, out)
    recipe = {"mode": "dynamic", "tool": "ai-edge-quantizer", "weights": "int8 symmetric per-channel",
              "activations": "float32 (int8 on the fly)"}
    return QuantizeResult(Path(out), "dynamic", recipe, {"weights_int8": n}, 0, time.perf_counter() - t0,
                          prepared)
