"""What a detection ``.tflite`` is: its input, its outputs' roles, its SSD form and its metadata.

Two forms are understood:

* ``op``: the graph ends in the detection op, ``TFLite_Detection_PostProcess``
  (``edgedet.tflite.detection_op``; 4 outputs: boxes, classes, scores, count). The outputs are told
  apart by shape and value, never by position (TF1 and TF2 exports list them in different orders).
* ``raw``: box encodings ``[1, N, 4+]`` and class scores ``[1, N, C]`` (float or quantized) that
  our code decodes with anchors (a ``.anchors.npy`` file, an anchor spec in the sidecar, or a
  model we recognise, such as MediaPipe BlazeFace).
* ``decoded``: TensorFlow's own NMS in the graph (``NON_MAX_SUPPRESSION_V4/V5``, as TF2 Object
  Detection API exports keep it) beside already-decoded boxes ``[1, N, 4]`` (normalized corners)
  and class probabilities ``[1, N, C]``: our NMS runs on those, no anchors needed.

An input of dynamic size (``[1, 1, 1, 3]`` in the file, ``-1`` in its shape signature) is resized
to the sidecar's ``input.size`` (``edgedet convert --input-size`` writes it); without it the model
is refused (fed at 1x1 it would find nothing).

A form-``op`` model can also be opened *stripped* (the op removed in memory): its anchors and
options then come from the op itself and our decode + NMS replaces it.

The file is read once: the interpreter is built from the bytes in memory, and replicas
(``LoadedModel.replica``) from the same bytes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import ModelError
from .preprocess import InputSpec, default_normalization, parse_normalization
from .sidecar import load_sidecar
from .tflite import (
    DETECTION_OP,
    default_threads,
    find_detection_op,
    interpreter_class,
    load_interpreter_from_bytes,
    model_from_bytes,
    read_detection_op_options,
    strip_detection_op,
)


@dataclass(frozen=True)
class DecodeOptions:
    """The model's own decode + NMS settings: the detection op's options, or the sidecar's
    ``postprocess`` section."""

    num_classes: int
    max_detections: int = 100
    iou_threshold: float = 0.6
    score_threshold: float = 0.0  # the model's own candidate threshold
    use_regular_nms: bool = False  # False: top class per anchor + one class-agnostic NMS (the op's fast mode)
    max_classes_per_detection: int = 1
    detections_per_class: int = 100
    y_scale: float = 10.0
    x_scale: float = 10.0
    h_scale: float = 5.0
    w_scale: float = 5.0
    box_order: str = "yxhw"  # order of the 4 box encodings: yxhw (TF OD API) or xywh (torchvision, MediaPipe)
    size_transform: str = "exp"  # exp (TF, torchvision) or linear (MediaPipe)
    score_activation: str = "none"  # none (already probabilities), sigmoid or softmax
    background: int = 0  # leading background columns in the class scores (skipped)

    @classmethod
    def from_op(cls, opts: dict, *, background: int = 0) -> DecodeOptions:
        def get(key, default):
            v = opts.get(key, default)
            return default if v is None else v

        return cls(
            num_classes=int(get("num_classes", 90)),
            max_detections=int(get("max_detections", 10)),
            iou_threshold=float(get("nms_iou_threshold", 0.6)),
            score_threshold=float(get("nms_score_threshold", 0.0)),
            use_regular_nms=bool(get("use_regular_nms", False)),
            max_classes_per_detection=int(get("max_classes_per_detection", 1)),
            detections_per_class=int(get("detections_per_class", 100)),
            y_scale=float(get("y_scale", 10.0)),
            x_scale=float(get("x_scale", 10.0)),
            h_scale=float(get("h_scale", 5.0)),
            w_scale=float(get("w_scale", 5.0)),
            background=background,
        )

    def with_sidecar(self, section: dict) -> DecodeOptions:
        """Override with the sidecar's ``postprocess`` keys (op names and our names both accepted)."""
        names = {
            "nms_iou_threshold": "iou_threshold", "nms_score_threshold": "score_threshold",
        }
        fields = set(self.__dataclass_fields__)
        changes: dict[str, Any] = {}
        for key, value in (section or {}).items():
            key = names.get(key, key)
            if key in fields and value is not None:
                kind = type(getattr(self, key))
                changes[key] = kind(value)
        return replace(self, **changes)

    def validate(self) -> DecodeOptions:
        """One-line ModelError for settings our decoder does not know."""
        choices = {"box_order": ("yxhw", "xywh", "yxyx"), "size_transform": ("exp", "linear"),
                   "score_activation": ("none", "sigmoid", "softmax")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ModelError(f"model postprocess.{key}: expected one of {', '.join(allowed)}, "
                                 f"got {getattr(self, key)!r}")
        if self.num_classes < 1 or self.max_detections < 1 or not 0 < self.iou_threshold <= 1:
            raise ModelError(f"model postprocess: invalid num_classes/max_detections/iou_threshold "
                             f"({self.num_classes}, {self.max_detections}, {self.iou_threshold})")
        if min(self.y_scale, self.x_scale, self.h_scale, self.w_scale) <= 0:
            raise ModelError("model postprocess: box scales must be positive")
        return self

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class ModelInfo:
    """A summary of the loaded model (printed by ``edgedet models info`` and the run banner)."""

    path: Path
    form: str  # "op" (ends in the detection op), "raw" (box encodings + class scores) or "decoded" (TF's NMS)
    input_size: tuple[int, int]  # (w, h)
    input_dtype: str
    input_quantization: tuple[float, int]  # (scale, zero point); (0.0, 0) when float
    normalization: Optional[tuple[tuple, tuple]]  # (mean, std) per channel, None = raw pixels
    color: str
    num_anchors: int
    num_classes: int
    options: DecodeOptions
    postprocess: str  # who decodes: "op" or "ours"
    resize: str = "stretch"
    backend: str = ""
    threads: int = 1
    anchors_source: str = ""

    name: str = ""  # the sidecar's name, else the file's stem

    @property
    def op_options(self) -> dict:
        return self.options.as_dict()


@dataclass
class OutputRoles:
    """Interpreter output tensor indices by role."""

    boxes: int
    scores: int
    classes: Optional[int] = None  # form op only
    count: Optional[int] = None  # form op only
    boxes_quant: tuple[float, int] = (0.0, 0)
    scores_quant: tuple[float, int] = (0.0, 0)


@dataclass
class LoadedModel:
    interpreter: Any
    input_spec: InputSpec
    input_index: int
    roles: OutputRoles
    options: DecodeOptions
    form: str
    decoder: str  # "op" or "ours"
    anchors: Optional[np.ndarray] = None  # [N, 4] yxhw normalized, for our decode
    anchors_source: str = ""
    sidecar: dict = field(default_factory=dict)
    backend: str = ""
    threads: int = 1
    num_anchors: int = 0
    model_bytes: bytes = field(default=b"", repr=False)  # what ``interpreter`` was built from
    name: str = "model"  # the file, for errors
    input_shape: Optional[list] = None  # a dynamic input's size, set at load

    def replica(self, threads: int) -> LoadedModel:
        """The same model with a new interpreter of ``threads`` threads, built from ``model_bytes``
        (no file read, no strip, no probe: the tensor indices are the same)."""
        interp = load_interpreter_from_bytes(self.model_bytes, threads, self.name)
        if self.input_shape is not None:
            interp.resize_tensor_input(self.input_index, self.input_shape)
            interp.allocate_tensors()
        return replace(self, interpreter=interp, threads=int(threads))


# -- output roles ---------------------------------------------------------------------------------
def identify_op_outputs(details: list[dict], values: Optional[dict[int, np.ndarray]] = None,
                        op_order: Optional[list[int]] = None) -> OutputRoles:
    """Boxes ``[1,M,4]``, count ``[1]``, and classes vs scores (both ``[1,M]``) told apart by value:
    classes are whole numbers, scores lie in [0, 1] and never increase. Only when the values cannot
    tell (e.g. all zero) the op's own output order (boxes, classes, scores, count) decides."""
    boxes = [d for d in details if len(d["shape"]) == 3 and d["shape"][-1] == 4]
    counts = [d for d in details if int(np.prod(d["shape"])) == 1]
    vectors = [d for d in details if len(d["shape"]) == 2 and d not in counts]
    if len(details) != 4 or len(boxes) != 1 or len(counts) != 1 or len(vectors) != 2:
        shapes = ", ".join(str(list(d["shape"])) for d in details)
        raise ModelError(f"unexpected outputs of the {DETECTION_OP} op: {shapes}")

    def looks_like_classes(v: np.ndarray) -> bool:
        return bool(np.all(v == np.round(v)))

    def looks_like_scores(v: np.ndarray) -> bool:
        v = v.reshape(-1)
        return bool(np.all((v >= 0) & (v <= 1)) and np.all(np.diff(v) <= 0))

    a, b = vectors
    classes = scores = None
    if values is not None:
        va, vb = values[a["index"]], values[b["index"]]
        a_cls, b_cls = looks_like_classes(va), looks_like_classes(vb)
        a_sc, b_sc = looks_like_scores(va), looks_like_scores(vb)
        if a_cls and b_sc and not (b_cls and a_sc):
            classes, scores = a, b
        elif b_cls and a_sc and not (a_cls and b_sc):
            classes, scores = b, a
    if classes is None and op_order is not None:
        pos = {t: i for i, t in enumerate(op_order)}
        a_pos, b_pos = pos.get(a["index"]), pos.get(b["index"])
        if a_pos is not None and b_pos is not None:
            classes, scores = (a, b) if a_pos < b_pos else (b, a)
    if classes is None:
        classes, scores = a, b
    return OutputRoles(boxes=boxes[0]["index"], scores=scores["index"], classes=classes["index"],
                       count=counts[0]["index"])


def _quant(detail: dict) -> tuple[float, int]:
    scale, zp = detail.get("quantization", (0.0, 0))
    return float(scale), int(zp)


_BOX_WORDS = ("box", "regress", "loc", "bbox", "encod")
_SCORE_WORDS = ("class", "score", "conf", "logit", "prob")


def identify_raw_outputs(details: list[dict], sidecar_outputs: Optional[dict] = None) -> OutputRoles:
    """Box encodings ``[1,N,K>=4]`` and class scores ``[1,N,C]`` of a raw SSD model."""
    shapes = ", ".join(str(list(d["shape"])) for d in details)
    by_name = {d["name"]: d for d in details}
    if sidecar_outputs:
        try:
            b, s = by_name[sidecar_outputs["boxes"]], by_name[sidecar_outputs["scores"]]
            return OutputRoles(boxes=b["index"], scores=s["index"], boxes_quant=_quant(b), scores_quant=_quant(s))
        except KeyError as exc:
            raise ModelError(f"model sidecar names output {exc} which the model does not have") from exc
    cands = [d for d in details if len(d["shape"]) in (2, 3) and (len(d["shape"]) == 2 or d["shape"][0] == 1)]
    anchors_of = {d["index"]: int(d["shape"][-2]) for d in cands}
    pairs = []
    for b in cands:
        for s in cands:
            if b is s or anchors_of[b["index"]] != anchors_of[s["index"]] or anchors_of[b["index"]] < 2:
                continue
            if b["shape"][-1] < 4:
                continue
            score = 0
            bn, sn = b["name"].lower(), s["name"].lower()
            score += 2 * any(w in bn for w in _BOX_WORDS) + 2 * any(w in sn for w in _SCORE_WORDS)
            score += 1 if b["shape"][-1] == 4 else 0
            score -= 3 * any(w in bn for w in _SCORE_WORDS) + 3 * any(w in sn for w in _BOX_WORDS)
            pairs.append((score, b, s))
    if not pairs:
        raise ModelError(f"not an SSD detector: outputs {shapes} (expected box encodings [1,N,4] and "
                         f"class scores [1,N,C], or the {DETECTION_OP} op)")
    pairs.sort(key=lambda p: -p[0])
    if len(pairs) > 1 and pairs[0][0] == pairs[1][0] and {pairs[0][1]["index"], pairs[0][2]["index"]} != {
        pairs[1][1]["index"], pairs[1][2]["index"]
    }:
        raise ModelError(f"cannot tell box and score outputs apart ({shapes}): name them in the model "
                         "sidecar (outputs: {boxes: NAME, scores: NAME})")
    _, b, s = pairs[0]
    return OutputRoles(boxes=b["index"], scores=s["index"], boxes_quant=_quant(b), scores_quant=_quant(s))


# -- input ----------------------------------------------------------------------------------------
def input_spec(detail: dict, sidecar: dict) -> InputSpec:
    shape = [int(x) for x in detail["shape"]]
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise ModelError(f"not an SSD detector: input shape {shape} (expected [1, H, W, 3])")
    dtype = np.dtype(detail["dtype"])
    section = sidecar.get("input") or {}
    if "normalization" in section:
        try:
            mean, std = parse_normalization(section["normalization"])
        except Exception as exc:
            raise ModelError(str(exc)) from exc
    else:
        mean, std = default_normalization(dtype)
    if dtype.kind == "f" and mean is None:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    scale, zp = _quant(detail)
    return InputSpec(width=shape[2], height=shape[1], dtype=dtype, scale=scale, zero_point=zp, mean=mean,
                     std=std, color=str(section.get("color", "rgb")).lower())


# -- loading --------------------------------------------------------------------------------------
DECODERS = ("auto", "op", "ours")
log = logging.getLogger("edgedet.model")


def _backend() -> str:
    try:
        return interpreter_class()[2]
    except ModelError:
        return ""


def read_model_file(path: Path) -> bytes:
    """The bytes of the model file ``path`` (one-line ``ModelError`` when it is missing)."""
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model {path}: {exc.strerror or exc}") from exc


def open_model(path: str | os.PathLike, *, threads: Optional[int] = None, decoder: str = "auto") -> LoadedModel:
    """Load ``path`` (read once) and work out its form.

    ``decoder``: "op" keeps the detection op, "ours" strips it (in memory) for our decode, "auto"
    strips it when it can and keeps it otherwise (anchors that are not a constant, options we do not
    understand). Models without the op are always decoded by us ("op" is then an error).
    """
    path = Path(path)
    if decoder not in DECODERS:
        raise ModelError(f"decoder must be auto, op or ours, got {decoder!r}")
    data = read_model_file(path)
    model_t = model_from_bytes(data, path)
    sidecar = load_sidecar(path)
    nthreads = int(threads or default_threads())
    if find_detection_op(model_t) is None:
        if decoder == "op":
            raise ModelError(f"model has no {DETECTION_OP} op: decode it with our decoder ('ours')")
        interp = _interpreter(data, nthreads, path)
        shape = _fit_dynamic_input(interp, sidecar, path)
        if _has_tf_nms(model_t):
            lm = _finish_decoded_model(interp, sidecar, path, model_t)
        else:
            lm = _finish_raw_model(interp, None, sidecar, path, model_t=model_t)
        lm.model_bytes, lm.input_shape = data, shape
    else:
        lm = _open_op_model(data, model_t, path, nthreads, sidecar, decoder)
    lm.backend = _backend()
    lm.threads = nthreads
    lm.name = str(path)
    return lm


def _interpreter(data: bytes, threads: int, path: Path):
    return load_interpreter_from_bytes(data, threads, str(path))


def _open_op_model(data: bytes, model_t, path: Path, threads: int, sidecar: dict, decoder: str) -> LoadedModel:
    """A model that ends in the detection op: stripped for our decode ("auto", "ours"), or kept."""
    si, oi = find_detection_op(model_t)
    sub = model_t.subgraphs[si]
    op = sub.operators[oi]
    op_outputs = list(op.outputs)
    num_anchors = int(sub.tensors[op.inputs[0]].shape[-2])
    n_with_bg = int(sub.tensors[op.inputs[1]].shape[-1])
    options = DecodeOptions.from_op(read_detection_op_options(op))
    options = replace(options, background=max(0, n_with_bg - options.num_classes))
    if decoder in ("auto", "ours"):
        try:
            return _open_stripped(model_t, path, threads, sidecar)
        except ModelError:
            if decoder == "ours":
                raise
    lm = _finish_op_model(_interpreter(data, threads, path), op_outputs, options, sidecar)
    lm.num_anchors = num_anchors
    lm.model_bytes = data
    return lm


def _open_stripped(model_t, path: Path, threads: int, sidecar: dict) -> LoadedModel:
    """The detection op removed in memory (``model_t`` is changed); its anchors and options drive
    our decode."""
    stripped = strip_detection_op(model_t)
    data = stripped.model_bytes
    options = DecodeOptions.from_op(stripped.options, background=stripped.background)
    options = replace(options, score_activation=stripped.score_activation)
    lm = _finish_raw_model(_interpreter(data, threads, path), options, sidecar, path, anchors=stripped.anchors,
                           anchors_source=f"{DETECTION_OP} op constant",
                           outputs={"boxes": stripped.boxes_name, "scores": stripped.scores_name})
    lm.form = "op"
    lm.model_bytes = data
    return lm


def _finish_op_model(interp, op_outputs: list[int], options: DecodeOptions, sidecar: dict) -> LoadedModel:
    in_detail = interp.get_input_details()[0]
    spec = input_spec(in_detail, sidecar)
    details = interp.get_output_details()
    # probe once with a noise image: the values tell classes from scores
    rng = np.random.default_rng(0)
    info = np.iinfo(spec.dtype) if spec.dtype.kind in "iu" else None
    if info is not None:
        probe = rng.integers(info.min, info.max + 1, size=in_detail["shape"], dtype=spec.dtype)
    else:
        probe = rng.uniform(-1, 1, size=in_detail["shape"]).astype(spec.dtype)
    try:
        interp.set_tensor(in_detail["index"], probe)
        interp.invoke()
        values = {d["index"]: interp.get_tensor(d["index"]) for d in details}
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"model does not run: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    roles = identify_op_outputs(details, values, op_outputs)
    return LoadedModel(interp, spec, in_detail["index"], roles, options, form="op", decoder="op",
                       sidecar=sidecar, num_anchors=0)


def _finish_raw_model(interp, options: Optional[DecodeOptions], sidecar: dict, path: Path, *,
                      anchors: Optional[np.ndarray] = None, anchors_source: str = "",
                      outputs: Optional[dict] = None, model_t=None) -> LoadedModel:
    from .postprocess.anchors import anchors_for_model

    in_detail = interp.get_input_details()[0]
    spec = input_spec(in_detail, sidecar)
    details = interp.get_output_details()
    roles = identify_raw_outputs(details, outputs or sidecar.get("outputs"))
    by_index = {d["index"]: d for d in details}
    box_shape = [int(x) for x in by_index[roles.boxes]["shape"]]
    score_shape = [int(x) for x in by_index[roles.scores]["shape"]]
    num_anchors, num_cols = box_shape[-2], score_shape[-1]
    if anchors is None:
        anchors, anchors_source, defaults = anchors_for_model(path, sidecar, spec.size, num_anchors,
                                                              box_shape[-1], num_cols)
    else:
        defaults = {}
    if anchors.shape != (num_anchors, 4):
        raise ModelError(f"anchors have shape {list(anchors.shape)} but the model has {num_anchors} anchors")
    inferred = {} if model_t is None else _inferred_decode(model_t, roles.scores, num_cols)
    options = _raw_options(options, defaults, sidecar, num_cols, inferred, path)
    return LoadedModel(interp, spec, in_detail["index"], roles, options, form="raw", decoder="ours",
                       anchors=anchors.astype(np.float32), anchors_source=anchors_source, sidecar=sidecar,
                       num_anchors=num_anchors)


def _inferred_decode(model_t, scores_index: int, num_cols: int) -> dict:
    """What a raw model's graph says about its class scores, as ``edgedet convert`` reads a source:
    logits (float scores not made by LOGISTIC / SOFTMAX) or probabilities, and a background column
    first when there is more than one column (the TF Object Detection API's layout)."""
    from .tflite import scores_activation

    try:
        activation = scores_activation(model_t, scores_index)
    except (IndexError, AttributeError):  # an output the first subgraph does not name
        activation = None
    return {"score_activation": activation, "background": 1 if num_cols > 1 else 0}


def _raw_options(options: Optional[DecodeOptions], defaults: dict, sidecar: dict, num_cols: int,
                 inferred: Optional[dict] = None, path: Optional[Path] = None) -> DecodeOptions:
    """The decode options of raw outputs: the op's (a stripped model) or, for a raw model, its
    sidecar's; either way overridden by the sidecar's ``postprocess`` section and checked. What the
    sidecar leaves open is taken from ``inferred`` (the graph) and said in one log line."""
    pp = dict(defaults)
    if options is None:  # a raw model: its sidecar says how to decode it (an op model's op says it)
        pp.update(sidecar.get("postprocess") or {})
        _fill_inferred(pp, inferred or {}, num_cols, path)
        num_classes = pp.get("num_classes")
        background = pp.get("background")
        if num_classes is None:
            bg = int(background or 0)
            num_classes = num_cols - bg
        if background is None:
            background = max(0, num_cols - int(num_classes))
        options = DecodeOptions(num_classes=int(num_classes), background=int(background), use_regular_nms=True)
    return checked_options(options, pp, num_cols)


def checked_options(options: DecodeOptions, section: dict, num_cols: int) -> DecodeOptions:
    """``options`` with the sidecar's decode section applied, checked against the score columns."""
    try:
        options = options.with_sidecar(section).validate()
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model sidecar postprocess: {exc}") from exc
    if options.num_classes + options.background != num_cols:
        raise ModelError(f"class scores have {num_cols} columns but the model sidecar says "
                         f"{options.num_classes} classes + {options.background} background")
    return options


def _fill_inferred(pp: dict, inferred: dict, num_cols: int, path: Optional[Path]) -> None:
    """Settings the sidecar does not give, from the graph; one log line says what was assumed."""
    said = []
    if "score_activation" not in pp and inferred.get("score_activation"):
        pp["score_activation"] = inferred["score_activation"]
        said.append("class scores are logits (a sigmoid is applied)" if pp["score_activation"] == "sigmoid"
                    else "class scores are probabilities")
    if "num_classes" not in pp and "background" not in pp and inferred.get("background"):
        pp["background"] = int(inferred["background"])
        said.append(f"column 0 of {num_cols} is background ({num_cols - 1} classes)")
    if said:
        log.warning("model %s has no postprocess settings: %s (set postprocess.score_activation / background / "
                 "num_classes in its sidecar to change)", path.name if path else "", "; ".join(said))


# -- TensorFlow's own NMS in the graph, dynamic inputs ---------------------------------------------
TF_NMS_OPS = ("NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5")


def _has_tf_nms(model_t) -> bool:
    from .tflite import opcode_name

    return any(opcode_name(model_t, o.opcodeIndex) in TF_NMS_OPS for sub in model_t.subgraphs for o in sub.operators)


def _fit_dynamic_input(interp, sidecar: dict, path: Path) -> Optional[list]:
    """A dynamic-size input resized to the sidecar's ``input.size`` ([H, W] or N); returns the new
    shape (None when the input has a fixed size). One-line ``ModelError`` when the size is unknown."""
    detail = interp.get_input_details()[0]
    sig = [int(x) for x in detail.get("shape_signature", detail["shape"])]
    if len(sig) != 4 or all(x > 0 for x in sig[1:3]):
        return None
    size = (sidecar.get("input") or {}).get("size")
    if size is None:
        raise ModelError(f"{path.name}: the input has a dynamic size ({sig}, {[int(x) for x in detail['shape']]} "
                         "in the file): "
                         "its real size is not recorded; give it with `edgedet convert MODEL -o OUT --input-size N` "
                         "(or input: {size: [H, W]} in the sidecar)")
    try:
        h, w = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    except (TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"model sidecar input.size: expected N or [H, W], got {size!r}") from exc
    shape = [1, h, w, int(sig[3]) if sig[3] > 0 else 3]
    try:
        interp.resize_tensor_input(detail["index"], shape)
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"{path.name}: cannot run at input size {h}x{w}: {str(exc).splitlines()[0]}") from exc
    return shape


def _finish_decoded_model(interp, sidecar: dict, path: Path, model_t) -> LoadedModel:
    """TensorFlow's NMS in the graph: its already-decoded boxes ``[1, N, 4]`` and class
    probabilities ``[1, N, C]`` (the largest N among the outputs) get our NMS instead."""
    in_detail = interp.get_input_details()[0]
    spec = input_spec(in_detail, sidecar)
    try:  # one run: outputs behind the NMS get their real shapes
        interp.set_tensor(in_detail["index"], np.zeros(in_detail["shape"], in_detail["dtype"]))
        interp.invoke()
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"model does not run: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    details = [d for d in interp.get_output_details() if len(d["shape"]) == 3 and d["shape"][0] == 1]
    # (boxes, scores) pairs by N: TF2 exports name the pre-NMS ones raw_detection_*; else the largest N
    paired = {int(d["shape"][1]) for d in details if int(d["shape"][2]) == 4
              and sum(int(e["shape"][1]) == int(d["shape"][1]) for e in details) >= 2}
    raw = {int(d["shape"][1]) for d in details if "raw" in d["name"].lower()} & paired
    n = max(raw or paired, default=0)
    widest = [d for d in details if int(d["shape"][1]) == n]
    if n < 2:
        shapes = ", ".join(str([int(x) for x in d["shape"]]) for d in interp.get_output_details())
        raise ModelError(f"{path.name} ends in TensorFlow's own NMS and outputs only its final detections "
                         f"({shapes}): export it with its decoded boxes and scores as outputs (TF2 Object "
                         "Detection API: raw_detection_boxes / raw_detection_scores) or with "
                         "export_tflite_graph_tf2.py, whose TFLite_Detection_PostProcess edgedet runs")
    roles = identify_raw_outputs(widest, sidecar.get("outputs"))
    num_cols = int(next(d for d in widest if d["index"] == roles.scores)["shape"][2])
    pp = {**(sidecar.get("postprocess") or {}), "box_order": "yxyx"}
    _fill_inferred(pp, _inferred_decode(model_t, roles.scores, num_cols), num_cols, path)
    bg = int(pp.get("background", 0) or 0)
    base = DecodeOptions(num_classes=int(pp.get("num_classes") or num_cols - bg), background=bg,
                         use_regular_nms=True, box_order="yxyx")
    options = checked_options(base, pp, num_cols)
    return LoadedModel(interp, spec, in_detail["index"], roles, options, form="decoded", decoder="ours",
                       anchors=np.zeros((n, 4), np.float32), anchors_source="none: boxes decoded by the model",
                       sidecar=sidecar, num_anchors=n)
