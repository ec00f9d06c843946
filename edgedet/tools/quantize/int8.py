"""Post-training quantization of ``.tflite`` detectors (no TensorFlow): int8, fp16, dynamic range.

``quantize_int8`` turns a float model (or a dynamic-range / fp16-weight one: its weights are
dequantized first, ``scale * (q - zero_point)`` per channel) into a full-integer model with
``ai-edge-quantizer``:

1. ``prepare_float_model``: dequantize hybrid weights, fold ``DEQUANTIZE`` of constants, give the
   detection op's (``TFLite_Detection_PostProcess``) outputs static shapes, add a signature when there is none.
2. Calibration inputs: the calibration images preprocessed exactly as at inference (stretch or
   letterbox resize, RGB, the sidecar's normalization).
3. Ranges: GLOBAL over the whole calibration set (not per-image averages). The prediction head
   (the tensors between the last convolutions and the detection op: box encodings and class
   logits) gets one range for the logits and one for the box encodings, each shared by every
   tensor on its way and chosen by the error of what is read downstream: the scores after the
   sigmoid (of the class columns the decoding reads: no background column), the box encodings
   weighted by their anchor's score (``head``,
   ``head_ranges="task"``; "minmax" keeps their min/max); the rest of the network uses
   ``percentile`` of the pooled values (100 = plain min/max; ``"mse"`` = per tensor, each end of
   the range cut where the int8 round trip of the pooled values has the least squared error).
   ``choose_percentile`` picks among candidates by the SNR of the raw head outputs against the
   float model on held-out calibration images (``measure.head_snr``). The model's float input gets the range,
   among its min/max widened by up to two int8 steps, whose round trip through int8 has the least
   error (``input_range``: pixels normalized to [-1, 1] would otherwise all sit halfway between
   two levels).
4. ``ai-edge-quantizer`` static int8 (weights per channel, activations per tensor); the model
   inputs/outputs and the detection op stay float (QUANTIZE/DEQUANTIZE at the edges), and so
   does the LOGISTIC that turns the class logits into the op's (or a raw model's) scores
   (``float_sigmoid``): int8 scores would come in 1/256 steps, which alone caps their SNR at
   ~17 dB on calibration frames.
5. Repair: output channels whose weights are all (or nearly) zero get a ~1e-11 weight scale and
   an int32 bias that overflows; their scales and biases are recomputed from the float model.
6. Adaptive rounding (``round``, ``weight_rounding="adaptive"``): the weights that were
   not already on their int8 grid (float layers of a hybrid source: its stem and first block) are
   re-rounded to lower each layer's output error on the calibration images.
   ``weight_rounding="compensate"``: every layer up to ``rounding_depth`` of the deepest conv
   depth is re-rounded (within ``rounding_max_move`` of nearest) against the int8 model's own
   inputs, to also absorb the activation error upstream (``round.compensate_layers``).
7. Bias correction (``bias``, ``bias_correction="weights"``): the mean output shift of
   int8 weight rounding, ``(W_q - W) E[x]`` with ``E[x]`` measured in the int8 model, is taken
   out of every conv's int32 bias.
8. int8 -> int8 ``QUANTIZE`` ops that copy a tensor onto its own scale and zero point (in front
   of the head's concatenations) are removed (``drop_identity_requantize``).
9. ``int8_census`` counts conv weights and activation tensors that are int8 in the result.

``Int8Calibration`` holds the prepared float model and the calibration inputs, and computes each
float-model statistic once for every image subset it is asked about (one pass over their
images): choosing the range rule on part of the images, then quantizing all of them
(``agreement.quantize_int8_auto``), runs the float model once per statistic, not once per
candidate.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ... import tflite as tfl
from ...errors import ConfigError, EdgedetError
from ...tflite import DETECTION_OP
from .blas import single_blas_thread
from .graph import CONV_OPS, FLOAT32, INT8, INT32, has_data, head_parts, ops_of, prepare_float_model, quant_params
from .progress import phase
from .ranges import input_range, input_values
from .source import calibration_preprocessor, load_inputs


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


def require_quantizer():
    """The ai-edge-quantizer module. Ctrl-C during its (long) import is held until the import ends:
    an interrupt inside a compiled extension's initialisation would otherwise surface as an
    ImportError and be reported as a missing package."""
    held: list[int] = []
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: held.append(1)) if main_thread else None
    try:
        from ai_edge_quantizer import quantizer as aeq_quantizer
    except ImportError as exc:
        if held:
            raise KeyboardInterrupt from None
        if importlib.util.find_spec("ai_edge_quantizer") is None:
            raise EdgedetError("int8 conversion needs ai-edge-quantizer: pip install 'edgedet[quantize]'") from exc
        raise EdgedetError(f"ai-edge-quantizer is installed but does not import ({exc})") from exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt
    return aeq_quantizer



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
    for op, name in ops_of(float_model, fsg):
        if name in CONV_OPS and len(op.inputs) > 2 and op.inputs[2] >= 0:
            t = fsg.tensors[op.inputs[2]]
            arr = tfl.tensor_array(float_model, t)
            if arr is not None:
                float_bias[tfl.tensor_name(t)] = arr.astype(np.float64)
    sg = qmodel.subgraphs[0]
    repaired = 0
    for op, name in ops_of(qmodel, sg):
        if name not in CONV_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (sg.tensors[i] for i in op.inputs[:3])
        if int(w.type) != INT8 or int(b.type) != INT32 or quant_params(x) is None:
            continue
        fb = float_bias.get(tfl.tensor_name(b))
        if fb is None:
            continue
        in_scale = float(quant_params(x)[0][0])
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
    for op, name in ops_of(model, sg):
        if name == "QUANTIZE" and int(op.outputs[0]) not in outputs:
            src, dst = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
            a, b = quant_params(src), quant_params(dst)
            if (int(src.type) == int(dst.type) == INT8 and a is not None and b is not None
                    and a[0].size == b[0].size == 1 and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])):
                alias[int(op.outputs[0])] = alias.get(int(op.inputs[0]), int(op.inputs[0]))
                continue
        keep.append(op)
    if alias:
        for op in keep:
            op.inputs = np.array([alias.get(int(i), int(i)) for i in op.inputs], np.int32)
        sg.operators = keep
    return len(alias)


def restore_io_names(qmodel, float_model) -> None:
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
    LOGISTIC that feeds the detection op its scores (or, without the op, outputs the scores)
    counts as part of the decoding (``float_score_sigmoid``), like the QUANTIZE / DEQUANTIZE at
    the model's edges."""
    sg = model.subgraphs[0]
    conv_total = conv_int8 = 0
    acts = set()
    ops = ops_of(model, sg)
    detection_ops = [op for op, name in ops if name == DETECTION_OP]
    score_inputs = ({int(op.inputs[1]) for op in detection_ops if len(op.inputs) > 1} if detection_ops
                    else {int(i) for i in sg.outputs})
    float_sigmoid = 0
    for op, name in ops:
        if name in ("QUANTIZE", "DEQUANTIZE", DETECTION_OP):
            continue
        out0 = int(op.outputs[0])
        if name == "LOGISTIC" and out0 in score_inputs and int(sg.tensors[out0].type) == FLOAT32:
            float_sigmoid += 1  # the score conversion in front of the decoding, kept float on purpose
            continue
        for i in list(op.inputs) + list(op.outputs):
            if i >= 0 and not has_data(model, sg.tensors[i]):
                acts.add(i)
        if name in CONV_OPS:
            conv_total += 1
            x, w = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]]
            y = sg.tensors[op.outputs[0]]
            if int(w.type) == INT8 and int(x.type) == INT8 and int(y.type) == INT8:
                conv_int8 += 1
    act_int8 = sum(1 for i in acts if int(sg.tensors[i].type) == INT8)
    return {"conv_int8": conv_int8, "conv_total": conv_total, "activations_int8": act_int8,
            "activations_total": len(acts), "float_score_sigmoid": float_sigmoid}


def census_of(path) -> dict:
    return int8_census(tfl.read_model(path))


BIAS_CORRECTIONS = ("none", "weights", "empirical", "both")
# int8 LOGISTIC output: scale 1/256, zero point -128; logits below this give 0 after rounding
LOGIT_FLOOR = float(np.log(0.25 / 256 / (1 - 0.25 / 256)))


def _score_sigmoid(model) -> Optional[str]:
    """Name of the LOGISTIC output the detection op reads as scores or, in a model without the
    op (raw outputs), the LOGISTIC that produces a model output; None when there is none."""
    sg = model.subgraphs[0]
    producer = {int(o): name for op, name in ops_of(model, sg) for o in op.outputs}
    for op, name in ops_of(model, sg):
        if name == DETECTION_OP and len(op.inputs) > 1:
            if producer.get(int(op.inputs[1])) == "LOGISTIC":
                return tfl.tensor_name(sg.tensors[op.inputs[1]])
            return None
    for i in sg.outputs:
        if producer.get(int(i)) == "LOGISTIC":
            return tfl.tensor_name(sg.tensors[i])
    return None


def _sigmoid_inputs(model, score_names: set) -> set:
    """The class-logit tensors (``score_names`` minus the LOGISTIC outputs) when the scores the
    detection op (or the decoder) reads come out of a LOGISTIC; empty otherwise."""
    sg = model.subgraphs[0]
    sig_out = {tfl.tensor_name(sg.tensors[o]) for op, name in ops_of(model, sg) if name == "LOGISTIC"
               for o in op.outputs}
    if not (sig_out & score_names):
        return set()
    return set(score_names) - sig_out

HEAD_RANGES = ("minmax", "same", "task")
WEIGHT_ROUNDINGS = ("nearest", "adaptive", "compensate")
INPUT_RANGES = ("minmax", "roundtrip")
HEAD_COLUMNS = ("read", "all")


@dataclass(frozen=True)
class QuantizeOptions:
    """How ``quantize_int8`` quantizes (the defaults are the measured best; see the module docstring).

    ``percentile``: the backbone's activation range rule (a percentile, 100 = min/max, or "mse").
    ``head_ranges``: "minmax" keeps the prediction head's full calibrated range, "same" gives it the
    body's rule, "task" one range for the class logits and one for the box encodings with the
    least error of the scores / score-weighted boxes (``edgedet.tools.quantize.head``).
    ``bias_correction`` (``edgedet.tools.quantize.bias``): "weights" removes the mean shift of int8
    weight rounding, "empirical" moves the linear convs' output means onto the float model's,
    "both" does one then the other; measured on up to ``bias_images`` of the calibration images.
    ``logit_floor``: when the scores come out of an int8 LOGISTIC, the class logits' range starts
    at ``LOGIT_FLOOR`` at the lowest (see there). ``float_sigmoid``: the LOGISTIC that turns class
    logits into the scores stays float (continuous scores instead of 1/256 steps; the logits are
    dequantized in front of it). ``equalize``: cross-layer range equalization of ReLU conv ->
    depthwise conv pairs first (``edgedet.tools.quantize.cle``). ``residual_equalize``: equalize
    the channels of the linear bottlenecks' residual streams first
    (``edgedet.tools.quantize.residual``, factors ``p_c ** residual_alpha``, narrow channels
    magnified ``residual_max_gain`` times at most). ``input_ranges``: "roundtrip" widens the float
    input's range by the fraction of a step with the least int8 round-trip error, "minmax" keeps it.
    ``weight_rounding``: "nearest", "adaptive" (the off-grid weights, on float input statistics)
    or "compensate" (the layers up to ``rounding_depth`` times the deepest conv depth, against
    the int8 model's inputs, integer weights within ``rounding_max_move`` of nearest rounding,
    on ``rounding_images`` of the calibration images; see ``round.compensate_layers``).
    ``head_columns``: "read" chooses the class-logit range on the columns the decoding reads
    (a background column, ``graph.background_columns``, neither enters the error nor bounds the
    range), "all" on every column.
    """

    percentile: Union[float, str] = "mse"
    threads: Optional[int] = None
    head_ranges: str = "task"
    bias_correction: str = "weights"
    bias_images: int = 64
    logit_floor: bool = True
    float_sigmoid: bool = True
    equalize: bool = False
    residual_equalize: bool = False
    residual_alpha: float = 0.5
    residual_max_gain: float = 8.0
    weight_rounding: str = "adaptive"
    input_ranges: str = "roundtrip"
    rounding_max_move: Optional[int] = 1
    rounding_depth: float = 0.8
    rounding_images: int = 32
    head_columns: str = "read"

    def validate(self) -> QuantizeOptions:
        """One-line ``ConfigError`` for a choice that is not one of the known ones."""
        choices = (("head ranges", self.head_ranges, HEAD_RANGES),
                   ("bias correction", self.bias_correction, BIAS_CORRECTIONS),
                   ("input ranges", self.input_ranges, INPUT_RANGES),
                   ("head columns", self.head_columns, HEAD_COLUMNS),
                   ("weight rounding", self.weight_rounding, WEIGHT_ROUNDINGS))
        for what, value, allowed in choices:
            if value not in allowed:
                raise ConfigError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
        return self


@dataclass
class _Head:
    """The prediction head's tensors and how the scores come out of it."""

    parts: dict  # {"boxes": names, "scores": names}
    sigmoid_logits: set  # the class-logit tensors in front of a score LOGISTIC
    float_ops: list  # output names of the ops kept float (the score sigmoid)
    logit_floor: bool  # the floor applies (an int8 score sigmoid)

    @classmethod
    def of(cls, model, opts: QuantizeOptions) -> _Head:
        parts = head_parts(model)
        score_sigmoid = _score_sigmoid(model)
        float_ops = [score_sigmoid] if opts.float_sigmoid and score_sigmoid else []
        # the floor only holds for an int8 sigmoid
        return cls(parts, _sigmoid_inputs(model, parts["scores"]), float_ops, opts.logit_floor and not float_ops)

    @property
    def names(self) -> set:
        return self.parts["boxes"] | self.parts["scores"]


@dataclass
class _Scratch:
    """The prepared float model in a scratch folder (file and bytes), kept in step with its ``ModelT``."""

    folder: Path
    float_bytes: bytes

    @property
    def float_path(self) -> Path:
        return self.folder / "float.tflite"

    def update(self, model) -> None:
        self.float_bytes = tfl.model_to_bytes(model)
        self.float_path.write_bytes(self.float_bytes)


def quantize_int8(src, out, calibration_images: Sequence, options: Optional[QuantizeOptions] = None,
                  log: Optional[Callable[[str], None]] = None, **overrides) -> QuantizeResult:
    """Full-integer int8 ``out`` from the float / hybrid model ``src`` (see the module docstring),
    calibrated on the image files ``calibration_images``. ``options`` (``QuantizeOptions``, the
    defaults when None) with any of its fields given as keywords instead (``percentile=99.99``).
    ``log``: where the phases' progress lines go (a bar per phase on a terminal)."""
    import tempfile

    if not calibration_images:
        raise ConfigError("int8 quantization needs calibration images")
    opts = replace(options or QuantizeOptions(), **overrides).validate()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgedet-q-") as tmp, single_blas_thread():
        calibration = Int8Calibration(src, calibration_images, opts, {"all": range(len(calibration_images))},
                                      Path(tmp), log=log)
        result = calibration.quantize(out, "all", opts.percentile)
    result.seconds = time.perf_counter() - t0
    return result


class Int8Calibration:
    """A float model prepared for int8 quantization with its calibration inputs, and the float
    model's statistics over named subsets of them (``subsets``: name -> image indices).

    Every statistic of the float model that a quantization needs (activation ranges, head
    histograms, the input patch moments of adaptive rounding, the quantizer's tensor list) is
    computed once, for EVERY subset in one pass over their images, each subset's result being the
    one a pass over that subset alone gives (its own random draws): quantizing one subset with
    several range rules, then another subset, runs the float model once per statistic."""

    def __init__(self, src, images: Sequence, opts: QuantizeOptions, subsets: dict, folder: Path,
                 log: Optional[Callable[[str], None]] = None):
        self.src, self.opts, self.log = src, opts, log
        self.aeq = require_quantizer()
        self.model = tfl.read_model(src)
        self.prepared = prepare_float_model(self.model)
        self.head = _Head.of(self.model, opts)
        self.scratch = _Scratch(Path(folder), tfl.model_to_bytes(self.model))
        self.scratch.float_path.write_bytes(self.scratch.float_bytes)
        with phase("preprocessing the calibration images", len(images), log):
            self.inputs, self.signature, self.in_name = _calibration(src, self.model, self.scratch, images,
                                                                     opts.threads)
        self.subsets = {name: sorted(int(k) for k in idx) for name, idx in subsets.items()}
        self.equalized, self.streams = 0, {"streams": 0}
        if opts.equalize or opts.residual_equalize:
            if len(self.subsets) != 1:
                raise ConfigError("equalization changes the float model: one image subset per calibration")
            self.equalized, self.streams = _equalize(self.model, self.scratch, self.of(next(iter(self.subsets))),
                                                     opts)
        self._templates: dict = {}
        self._stats: Optional[dict] = None
        self._task: Optional[dict] = None
        self._moments: dict = {}

    @property
    def template(self) -> dict:
        """The tensors the quantizer wants ranges for (its QSVs from the first image of the first subset)."""
        return self.template_of(next(iter(self.subsets)))

    def template_of(self, name: str) -> dict:
        """The quantizer's QSV template from the first image of the subset ``name``."""
        first = self.subsets[name][0]
        if first not in self._templates:
            self._templates[first] = _aeq_qsv_template(self.aeq, self.scratch.float_bytes, self.inputs[first],
                                                       self.in_name, self.signature)
        return self._templates[first]

    def of(self, name: str) -> list:
        """The calibration inputs of the subset ``name``."""
        return [self.inputs[k] for k in self.subsets[name]]

    def _union(self, subsets: dict) -> int:
        return len(set().union(*map(set, subsets.values())))

    def stats(self) -> dict:
        """``{subset: ranges.RangeStats}`` of every tensor the quantizer asks about."""
        if self._stats is None:
            from .ranges import collect_range_stats

            exact = self.head.names if self.opts.head_ranges != "same" else frozenset()
            pooled = len(self.subsets) > 1 or _robust(self.opts.percentile)
            with phase("activation ranges", self._union(self.subsets), self.log) as step:
                stats = collect_range_stats(self.scratch.float_path, self.inputs, set(self.template),
                                            list(self.subsets.values()), pooled=pooled, exact=exact,
                                            threads=self.opts.threads, progress=step)
            self._stats = dict(zip(self.subsets, stats))
        return self._stats

    def task(self) -> dict:
        """``{subset: head ranges chosen for what the detector reads}`` (``_task_ranges``)."""
        if self._task is None:
            minmax = {name: st.ranges(100.0) for name, st in self.stats().items()}
            with phase("head ranges", self._union(self.subsets), self.log) as step:
                chosen = _task_ranges(self.src, self.model, self.scratch, self.inputs, list(self.subsets.values()),
                                      list(minmax.values()), self.opts, progress=step)
            self._task = dict(zip(self.subsets, chosen))
        return self._task

    def moments(self, name: str, tgts: Sequence) -> list:
        """The float input patch moments of the rounding targets ``tgts`` over the rounding images
        of the subset ``name`` (``_every(subset, bias_images)``), collected for every subset at once."""
        from .round import collect_moments_of_subsets

        key = tuple((t.float_input, t.layer.kind, tuple(vars(t.window).values())) for t in tgts)
        if key not in self._moments:
            picks = {n: _every(idx, self.opts.bias_images) for n, idx in self.subsets.items()}
            with phase("rounding statistics", self._union(picks), self.log) as step:
                found = collect_moments_of_subsets(self.scratch.float_path, tgts, self.inputs, list(picks.values()),
                                                   threads=self.opts.threads, progress=step)
            self._moments[key] = dict(zip(picks, found))
        return self._moments[key][name]

    def ranges(self, name: str, percentile) -> tuple[dict, dict]:
        """``{tensor name: (lo, hi)}`` of the subset ``name`` with the backbone rule ``percentile``,
        and the head's chosen ranges (``{"logits": .., "boxes": ..}``, "task" head ranges only)."""
        ranges = self.stats()[name].ranges(percentile)
        head_chosen = {}
        if self.opts.head_ranges == "task":
            head_chosen = self.task()[name]
            groups = {"logits": self.head.sigmoid_logits or self.head.parts["scores"],
                      "boxes": self.head.parts["boxes"]}
            for key, (lo, hi) in head_chosen.items():
                for tensor in groups[key] & set(ranges):
                    ranges[tensor] = (lo, hi)
        if self.opts.input_ranges == "roundtrip":
            values = input_values(self.of(name))
            sg = self.model.subgraphs[0]
            for i in sg.inputs:
                tensor = tfl.tensor_name(sg.tensors[i])
                if tensor in ranges:
                    ranges[tensor] = input_range(values, *ranges[tensor])
        if self.head.logit_floor and self.head.sigmoid_logits:
            # an int8 LOGISTIC outputs multiples of 1/256: every logit below the floor gives 0,
            # so the logits' range need not reach lower (a finer step for the logits that matter)
            for tensor in self.head.sigmoid_logits & set(ranges):
                lo, hi = ranges[tensor]
                ranges[tensor] = (max(lo, LOGIT_FLOOR), hi)
        return ranges, head_chosen

    def quantize(self, out, name: str, percentile) -> QuantizeResult:
        """The int8 model of the subset ``name`` with the backbone range rule ``percentile``, written to ``out``."""
        t0 = time.perf_counter()
        opts = replace(self.opts, percentile=percentile)
        ranges, head_chosen = self.ranges(name, percentile)
        qmodel = _quantized(self.aeq, self.scratch, self.template_of(name), ranges, self.head.float_ops)
        repaired = repair_dead_channels(qmodel, self.model)
        inputs = self.of(name)
        with phase(f"weight corrections ({name} images, percentile {percentile})",
                   len(_every(inputs, opts.bias_images)), self.log):
            rerounded, corrected = _correct_weights(qmodel, self.model, self.scratch, inputs, opts,
                                                    moments_of=lambda tgts: self.moments(name, tgts))
        dropped = drop_identity_requantize(qmodel)
        restore_io_names(qmodel, self.model)
        census = int8_census(qmodel)
        hints = {}
        if _scores_are_dequantized_probabilities(qmodel):
            # the op now reads DEQUANTIZE(LOGISTIC(...)): say so, or a reader that looks only at the
            # op's direct producer would apply the sigmoid a second time
            hints["postprocess"] = {"score_activation": "none"}
        tfl.write_model(qmodel, out)
        recipe = _recipe(opts, self.head, head_chosen, self.prepared, corrected=corrected,
                         equalized=self.equalized, streams=self.streams["streams"], rerounded=rerounded,
                         dropped=dropped)
        return QuantizeResult(Path(out), "int8", recipe, census, repaired, time.perf_counter() - t0,
                              self.prepared, sidecar=hints)


def _robust(percentile) -> bool:
    return percentile == "mse" or float(percentile) < 100.0


def _calibration(src, model, scratch: _Scratch, images: Sequence, threads: Optional[int]) -> tuple:
    """The calibration inputs (preprocessed as at inference), the signature key and its input name."""
    from ...tflite import load_interpreter

    interp = load_interpreter(scratch.float_path, threads)
    # the source's sidecar decides preprocessing; the prepared float copy has the same input
    preprocessor = calibration_preprocessor(src, interp)
    sig = model.signatureDefs[0]
    signature = sig.signatureKey.decode() if isinstance(sig.signatureKey, bytes) else str(sig.signatureKey)
    in_name = sig.inputs[0].name
    in_name = in_name.decode() if isinstance(in_name, bytes) else str(in_name)
    return load_inputs(images, preprocessor), signature, in_name


def _every(inputs: Sequence, count: int) -> list:
    """Up to ``count`` of ``inputs``, spread evenly."""
    step = max(1, len(inputs) // max(1, count))
    return inputs[::step][:count]


def _equalize(model, scratch: _Scratch, inputs: Sequence, opts: QuantizeOptions) -> tuple[int, dict]:
    """Cross-layer and residual-stream equalization of the float model, when asked for."""
    equalized = 0
    if opts.equalize:
        from .cle import equalize

        equalized = equalize(model, scratch.float_path, _every(inputs, opts.bias_images), threads=opts.threads)
        scratch.update(model)
    streams = {"streams": 0}
    if opts.residual_equalize:
        from .residual import equalize_streams

        streams = equalize_streams(model, scratch.float_path, _every(inputs, opts.bias_images), threads=opts.threads,
                                   alpha=opts.residual_alpha, max_gain=opts.residual_max_gain)
        scratch.update(model)
    return equalized, streams


def _task_ranges(src, model, scratch: _Scratch, inputs: Sequence, subsets: Sequence, calibrated: Sequence,
                 opts: QuantizeOptions, progress=None) -> list:
    """The head's two ranges chosen for what the detector reads, for each subset of ``inputs``
    (``calibrated``: the min/max ranges of each)."""
    from ...sidecar import load_sidecar
    from .graph import background_columns
    from .head import task_ranges_of_subsets
    from .measure import head_tensor_names

    names = head_tensor_names(model)
    sidecar = load_sidecar(src)
    # a sigmoid in the graph, or one the decoder applies to raw logits (sidecar)
    activation = (sidecar.get("postprocess") or {}).get("score_activation")
    sigmoid = names["scores"] != names["logits"] or activation == "sigmoid"
    skip = background_columns(model, sidecar) if opts.head_columns == "read" else 0
    return task_ranges_of_subsets(model, scratch.folder / "head.tflite", inputs, names, subsets, calibrated,
                                  sigmoid=sigmoid, threads=opts.threads, skip_columns=skip, progress=progress)


def _quantized(aeq, scratch: _Scratch, template: dict, ranges: dict, float_ops: Sequence[str]):
    """The quantizer's int8 ``ModelT`` of the float model with ``ranges`` as its QSVs."""
    qsvs = {}
    for name, qsv in template.items():
        if name in ranges and "min" in qsv:
            lo, hi = ranges[name]
            qsvs[name] = {**qsv, "min": np.full_like(np.asarray(qsv["min"], np.float32), lo),
                          "max": np.full_like(np.asarray(qsv["max"], np.float32), hi)}
        else:
            qsvs[name] = qsv
    qt = aeq.Quantizer(bytearray(scratch.float_bytes))
    qt.load_quantization_recipe(int8_recipe(float_ops))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            np.errstate(all="ignore"):
        result = qt.quantize(qsvs, enable_progress_report=False)
    qpath = scratch.folder / "q.tflite"
    qpath.write_bytes(bytes(result.quantized_model))
    return tfl.read_model(qpath)  # resolves offset buffers


def _correct_weights(qmodel, model, scratch: _Scratch, inputs: Sequence, opts: QuantizeOptions,
                     moments_of=None) -> tuple[int, int]:
    """Weight re-rounding then bias correction of ``qmodel`` (in place); returns the number of
    re-rounded and of bias-corrected layers. ``moments_of``: ``round.round_layers``'s."""
    subset = _every(inputs, opts.bias_images)
    rerounded = corrected = 0
    compensated: set = set()
    work = scratch.folder / "bias.tflite"
    if opts.weight_rounding == "adaptive":
        from .round import round_layers

        rerounded = round_layers(qmodel, model, scratch.float_path, subset, threads=opts.threads,
                                 centered=opts.bias_correction != "none", moments_of=moments_of)
    elif opts.weight_rounding == "compensate":
        from .round import compensate_layers, conv_depths

        weight_bias = opts.bias_correction in ("weights", "both")
        max_depth = int(opts.rounding_depth * max(conv_depths(qmodel).values()))
        done = compensate_layers(qmodel, model, scratch.float_path, _every(inputs, opts.rounding_images), work,
                                 threads=opts.threads, centered=opts.bias_correction != "none",
                                 correct_bias=weight_bias, max_move=opts.rounding_max_move, max_depth=max_depth)
        rerounded = len(done)
        compensated = {la.op_index for la in done}
        corrected += len(done) if weight_bias else 0
    if opts.bias_correction != "none":
        from . import bias

        if opts.bias_correction in ("weights", "both"):
            rest = [la for la in bias.conv_layers(qmodel, model) if la.op_index not in compensated]
            if rest:
                corrected += bias.weight_error_correction(qmodel, model, subset, work, threads=opts.threads,
                                                          layers=rest)
        if opts.bias_correction in ("empirical", "both"):
            corrected += bias.empirical_correction(qmodel, model, scratch.float_path, subset, work,
                                                   threads=opts.threads)
    return rerounded, corrected


def _recipe(opts: QuantizeOptions, head: _Head, head_chosen: dict, prepared: dict, **counts) -> dict:
    """What the sidecar records of an int8 conversion."""
    recipe = {"mode": "int8", "tool": "ai-edge-quantizer", "weights": "int8 symmetric per-channel",
              "activations": "int8 asymmetric per-tensor", "io": "float32",
              "ranges": "global over the calibration set", "percentile": opts.percentile,
              "head_ranges": {"minmax": "min/max", "same": "as the body", "task": "score-weighted"}[opts.head_ranges],
              "head_range_values": {k: [round(v, 4) for v in r] for k, r in head_chosen.items()} or None,
              "head_columns": opts.head_columns if opts.head_ranges == "task" else None,
              "bias_correction": opts.bias_correction, "bias_corrected_layers": counts["corrected"],
              "logit_floor": round(LOGIT_FLOOR, 3) if head.logit_floor and head.sigmoid_logits else None,
              "float_ops": list(head.float_ops), "equalized_pairs": counts["equalized"],
              "residual_streams": counts["streams"], "weight_rounding": opts.weight_rounding,
              "rerounded_layers": counts["rerounded"], "input_ranges": opts.input_ranges,
              "identity_requantize_dropped": counts["dropped"],
              "detection_op": "float" if prepared["had_detection_op"] else "none"}
    try:
        from importlib.metadata import version

        recipe["tool_version"] = version("ai-edge-quantizer")
    except Exception:  # pragma: no cover
        pass
    return recipe


def _scores_are_dequantized_probabilities(model) -> bool:
    sg = model.subgraphs[0]
    producer = {}
    for op, name in ops_of(model, sg):
        for o in op.outputs:
            producer[int(o)] = (op, name)
    for op, name in ops_of(model, sg):
        if name == DETECTION_OP and len(op.inputs) > 1:
            p = producer.get(int(op.inputs[1]))
            if p is not None and p[1] == "DEQUANTIZE":
                p2 = producer.get(int(p[0].inputs[0]))
                return p2 is not None and p2[1] in ("LOGISTIC", "SOFTMAX")
    return False


