"""TensorFlow SavedModel / Keras model -> ``.tflite`` (float, fp16, dynamic-range or full int8).

Needs the ``[convert]`` extra (``tensorflow-cpu``); TensorFlow is imported only inside the
functions that use it, never when ``edgedet`` itself is imported.

The source is a SavedModel directory (signature ``serving_default``) or a Keras file (``.keras``,
``.h5``) taking one image ``[1, H, W, 3]``. When it is an SSD with raw outputs (box encodings
``[1, N, 4]`` and class scores ``[1, N, K]``) and its anchors are known, the converted model can end
in the ``TFLite_Detection_PostProcess`` op (decode + NMS inside the model, as in the classic
TFLite detection models): the fused op is declared by a ``tf.function`` whose
``experimental_implements`` attribute names the op, which the converter turns into the custom op.

Anchors come from (first found): the ``anchors`` argument (``[N, 4]`` yxhw array or ``.npy``),
the source's sidecar (``<source>.yaml``: ``anchors: {file: ...}`` or ``{generator: tf_od_grid, ...}``),
or the standard SSD MobileNet grid for the input size when its anchor count equals N.

int8 calibration images are prepared exactly as at inference (``edgedet.preprocess``: stretch
resize to the input size, RGB, ``(x - 127.5) / 127.5`` unless the source sidecar says otherwise),
plus one grey-ramp image so that the input range is the full pixel range (the quantized input
then takes the pixel values themselves).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ...errors import ConfigError, EdgedetError, ModelError, SourceError
from ...tflite import DETECTION_OP

QUANTIZE_MODES = (None, "int8", "fp16", "dynamic")
DETECTION_OP_MODES = ("keep", "fuse", "strip", "raw")
INPUT_DTYPES = ("uint8", "int8")
OP_OUTPUT_NAMES = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
RAW_OUTPUT_NAMES = ("box_encodings", "class_predictions")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
EXTRA_HINT = "needs the [convert] extra: pip install 'edgedet[convert]'"


# -- TensorFlow, lazily ---------------------------------------------------------------------------

def import_tf():
    """``(tensorflow, keras)``, or an ``EdgedetError`` naming the extra to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf  # type: ignore
    except ImportError as exc:
        raise EdgedetError(f"converting TensorFlow models {EXTRA_HINT}") from exc
    try:
        import keras  # type: ignore
    except ImportError:  # pragma: no cover - keras ships with tensorflow >= 2.16
        keras = tf.keras
    try:
        import absl.logging  # type: ignore

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass
    tf.get_logger().setLevel("ERROR")
    return tf, keras


# -- detection op options -------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectionOpOptions:
    """Attributes of the fused ``TFLite_Detection_PostProcess`` op (TF OD API defaults)."""

    num_classes: int
    max_detections: int = 100
    max_classes_per_detection: int = 1
    detections_per_class: int = 100
    use_regular_nms: bool = False
    nms_score_threshold: float = 1e-8
    nms_iou_threshold: float = 0.6
    y_scale: float = 10.0
    x_scale: float = 10.0
    h_scale: float = 5.0
    w_scale: float = 5.0

    def implements(self) -> str:
        """The ``experimental_implements`` string the converter turns into the custom op."""
        ints = ("max_detections", "max_classes_per_detection", "detections_per_class", "num_classes")
        floats = ("nms_score_threshold", "nms_iou_threshold", "y_scale", "x_scale", "h_scale", "w_scale")
        parts = [f'name: "{DETECTION_OP}"']
        parts += [f'attr {{ key: "{k}" value {{ i: {int(getattr(self, k))} }} }}' for k in ints]
        parts.append(f'attr {{ key: "use_regular_nms" value {{ b: {str(self.use_regular_nms).lower()} }} }}')
        parts += [f'attr {{ key: "{k}" value {{ f: {float(getattr(self, k))!r} }} }}' for k in floats]
        return " ".join(parts)

    def to_sidecar(self, form: str, score_activation: str = "none") -> dict:
        return {"form": form, "num_classes": self.num_classes, "max_detections": self.max_detections,
                "iou_threshold": self.nms_iou_threshold, "use_regular_nms": self.use_regular_nms,
                "y_scale": self.y_scale, "x_scale": self.x_scale, "h_scale": self.h_scale,
                "w_scale": self.w_scale, "score_activation": score_activation}


def detection_op_fn(tf, options: DetectionOpOptions):
    """A ``tf.function(box_encodings, class_predictions, anchors)`` the converter fuses into the op.

    Its body is a placeholder: only its signature and ``experimental_implements`` reach the file.
    """

    @tf.function(experimental_implements=options.implements())
    def detection_postprocess(box_encodings, class_predictions, anchors):
        boxes = tf.constant(0.0, dtype=tf.float32, name="boxes")
        classes = tf.constant(0.0, dtype=tf.float32, name="classes")
        scores = tf.constant(0.0, dtype=tf.float32, name="scores")
        count = tf.constant(0.0, dtype=tf.float32, name="num_detections")
        return boxes, classes, scores, count

    return detection_postprocess


# -- calibration data -----------------------------------------------------------------------------

def expand_images(paths: Sequence[os.PathLike | str]) -> list[Path]:
    """Image files of ``paths`` (folders are listed, sorted); a missing path is a ``SourceError``."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise SourceError(f"calibration image not found: {p}")
    return out


def ramp_image(height: int = 64, width: int = 256) -> np.ndarray:
    """A BGR grey ramp 0..255: makes the calibrated input range the full pixel range."""
    row = np.linspace(0, 255, width).round().astype(np.uint8)
    return np.repeat(np.repeat(row[None, :, None], height, 0), 3, 2)


def synthetic_images(count: int, height: int, width: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Deterministic photo-like BGR images for calibrating an untrained model.

    Each: a smooth random colour field (8x8 noise upscaled) with 3-8 filled rectangles and
    ellipses of random colour, a gentle blur and a little pixel noise. Used only when no real
    images are given; a model meant to run on real scenes should be calibrated on real images.
    """
    import cv2

    rng = np.random.default_rng(seed)
    for _ in range(count):
        base = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
        img = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
        for _shape in range(int(rng.integers(3, 9))):
            colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            w = int(rng.integers(width // 16 + 1, width // 2 + 2))
            h = int(rng.integers(height // 16 + 1, height // 2 + 2))
            if rng.random() < 0.5:
                cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), colour, -1)
            else:
                cv2.ellipse(img, (x0, y0), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, colour, -1)
        img = cv2.GaussianBlur(img, (3, 3), 0)
        img += rng.normal(0, 4, img.shape).astype(np.float32)
        yield np.clip(img, 0, 255).astype(np.uint8)


def _read_bgr(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SourceError(f"cannot read calibration image {path}")
    return img


@dataclass
class Calibration:
    """A representative dataset: model-ready float inputs and what they came from."""

    height: int
    width: int
    mean: tuple = (127.5, 127.5, 127.5)
    std: tuple = (127.5, 127.5, 127.5)
    images: list = field(default_factory=list)  # [Path]; empty -> synthetic
    count: int = 100
    seed: int = 0

    @property
    def kind(self) -> str:
        return "images" if self.images else "synthetic"

    def bgr_images(self) -> Iterator[np.ndarray]:
        yield ramp_image()
        if self.images:
            for p in self.images[: self.count]:
                yield _read_bgr(p)
        else:
            yield from synthetic_images(self.count, max(self.height, 64), max(self.width, 64), self.seed)

    def arrays(self) -> Iterator[np.ndarray]:
        """``[1, H, W, 3]`` float32 inputs, prepared by the same code as at inference."""
        from ...preprocess import InputSpec, Preprocessor

        pre = Preprocessor(InputSpec(self.width, self.height, np.dtype(np.float32), mean=tuple(self.mean),
                                     std=tuple(self.std), color="rgb"), resize="stretch")
        for img in self.bgr_images():
            yield pre.prepare(img).tensor.copy()

    def describe(self) -> dict:
        d = {"kind": self.kind, "count": (min(len(self.images), self.count) if self.images else self.count),
             "preprocess": "stretch, rgb, (x - mean) / std", "full_range_ramp": True}
        if self.images:
            parents = sorted({str(p.parent) for p in self.images[: self.count]})
            d["folders"] = parents[:10]
        else:
            d["seed"] = self.seed
        return d


# -- sources --------------------------------------------------------------------------------------

@dataclass
class TfSource:
    """A model taking one fixed-size float image ``[1, H, W, 3]`` and returning named outputs.

    ``call(image) -> {name: tensor}`` is traceable by ``tf.function``. A Keras model is exported
    once, with the final serving function, by ``keras.export.ExportArchive`` (then converted with
    ``from_saved_model``); a SavedModel is converted from a concrete function.
    """

    path: Path
    kind: str  # savedmodel | keras
    call: Callable
    height: int
    width: int
    outputs: dict  # name -> shape list
    keras_model: object = None
    loaded: object = None  # the SavedModel object owning the variables

    def input_spec(self, tf):
        return tf.TensorSpec((1, self.height, self.width, 3), tf.float32, name="image")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def load_source(src: os.PathLike | str, input_size: Optional[tuple] = None) -> TfSource:
    """Load a SavedModel directory or a Keras file; one-line ``ModelError`` for anything else."""
    tf, keras = import_tf()
    path = Path(src)
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".tflite":
            raise ModelError(f"{path} is already a .tflite model (TensorFlow conversion takes a SavedModel "
                             "directory or a .keras/.h5 file)")
        if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
            raise ModelError(f"not a TensorFlow model: {path} (expected a SavedModel directory or .keras/.h5)")
        try:
            model = keras.models.load_model(str(path), compile=False)
        except Exception as exc:
            raise ModelError(f"cannot load Keras model {path}: {_first_line(exc)}") from exc
        return source_from_keras(model, path, input_size)
    if not (path / "saved_model.pb").is_file():
        raise ModelError(f"not a SavedModel directory (no saved_model.pb): {path}")
    return _load_saved_model(tf, path, input_size)


def source_from_keras(model, label: Path, input_size: Optional[tuple] = None) -> TfSource:
    """An in-memory Keras model (one image input) as a convertible source."""
    tf, _ = import_tf()
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ModelError("the Keras model must take one image input [batch, height, width, 3]")
    shape = list(model.inputs[0].shape)
    h, w = (input_size or shape[1:3])
    if h is None or w is None:
        raise ModelError("the Keras model's input size is not fixed: give input_size")
    if shape[3] not in (None, 3):
        raise ModelError(f"the Keras model input is not an RGB image (shape {shape})")
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(model.outputs):
        names = [f"output_{i}" for i in range(len(model.outputs))]

    def call(image):
        out = model(image, training=False)
        if isinstance(out, dict):
            return dict(out)
        if not isinstance(out, (list, tuple)):
            out = [out]
        return dict(zip(names, out))

    probe = call(tf.zeros((1, int(h), int(w), 3), tf.float32))
    outputs = {k: list(v.shape) for k, v in probe.items()}
    return TfSource(Path(label), "keras", call, int(h), int(w), outputs, keras_model=model)


def _load_saved_model(tf, path: Path, input_size: Optional[tuple]) -> TfSource:
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelError(f"cannot load SavedModel {path}: {_first_line(exc)}") from exc
    sigs = getattr(loaded, "signatures", {}) or {}
    if not sigs:
        raise ModelError(f"the SavedModel {path} has no serving signature")
    fn = sigs["serving_default"] if "serving_default" in sigs else next(iter(sigs.values()))
    _, kw = fn.structured_input_signature
    if len(kw) != 1:
        raise ModelError(f"the model must take one image input, it takes {len(kw)}: {', '.join(kw)}")
    input_name, spec = next(iter(kw.items()))
    shape = spec.shape.as_list() if spec.shape.rank is not None else []
    if len(shape) != 4 or shape[3] not in (None, 3):
        raise ModelError(f"the model input {input_name!r} is not an image [1, H, W, 3] (shape {shape})")
    if spec.dtype != tf.float32:
        raise ModelError(f"the model input {input_name!r} is {spec.dtype.name}, expected float32")
    h, w = (input_size or shape[1:3])
    if h is None or w is None:
        raise ModelError("the model's input size is not fixed: give input_size")

    def call(image):
        return dict(fn(**{input_name: image}))

    outputs = {k: (v.shape.as_list() if v.shape.rank is not None else []) for k, v in fn.structured_outputs.items()}
    return TfSource(path, "savedmodel", call, int(h), int(w), outputs, loaded=loaded)


def find_ssd_outputs(outputs: dict) -> Optional[tuple[str, str]]:
    """``(box_name, score_name)`` when the outputs are a raw SSD's ``[1, N, 4]`` and ``[1, N, K]``."""
    rank3 = {k: list(v) for k, v in outputs.items() if len(v) == 3}
    boxes = [k for k, s in rank3.items() if s[2] == 4]
    if len(rank3) != 2 or not boxes:
        return None
    if len(boxes) == 2:  # both last dim 4 (3 classes + background): tell by name
        named = [k for k in boxes if "box" in k.lower() or "loc" in k.lower() or "regress" in k.lower()]
        if len(named) != 1:
            return None
        boxes = named
    box = boxes[0]
    score = next(k for k in rank3 if k != box)
    if rank3[box][1] != rank3[score][1] or rank3[score][2] is None or rank3[score][2] < 1:
        return None
    return box, score


# -- anchors --------------------------------------------------------------------------------------

def resolve_anchors(anchors, side: dict, src: Path, height: int, width: int,
                    num: int) -> tuple[Optional[np.ndarray], dict]:
    """Anchors ``[num, 4]`` yxhw and where they came from; ``(None, {why})`` when unknown."""
    from ...sidecar import resolve_relative, sidecar_path
    from .anchors import spec_from_sidecar, ssd_anchors, standard_spec

    info: dict = {}
    arr = None
    if anchors is not None:
        if isinstance(anchors, (str, os.PathLike)):
            try:
                arr = np.load(str(anchors))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read anchors {anchors}: {_first_line(exc)}") from exc
            info = {"from": "file", "path": str(anchors)}
        else:
            arr = np.asarray(anchors)
            info = {"from": "argument"}
    elif isinstance(side.get("anchors"), dict):
        entry = side["anchors"]
        if entry.get("file"):
            f = resolve_relative(sidecar_path(src), str(entry["file"]))
            try:
                arr = np.load(str(f))
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot read anchors {f} named in the sidecar: {_first_line(exc)}") from exc
            if str(entry.get("format", "yxhw")) != "yxhw":
                raise ModelError(f"anchors {f}: format {entry.get('format')!r} not supported (need yxhw)")
            info = {"from": "sidecar", "path": str(f)}
        elif entry.get("generator") == "tf_od_grid":
            spec = spec_from_sidecar(entry)
            if not spec.feature_map_sizes:
                spec = standard_spec(height, width, **{k: v for k, v in spec.__dict__.items()
                                                      if k != "feature_map_sizes"})
            arr = ssd_anchors(spec)
            info = {"from": "sidecar", **spec.to_sidecar()}
    else:
        spec = standard_spec(height, width)
        cand = ssd_anchors(spec)
        if len(cand) == num:
            arr, info = cand, {"from": "derived", **spec.to_sidecar()}
        else:
            return None, {"why": f"{num} boxes do not match the standard SSD grid for {height}x{width} "
                                 f"({len(cand)} anchors) and no anchors were given"}
    arr = np.asarray(arr, np.float32).reshape(-1, 4) if arr is not None else None
    if arr is None or len(arr) != num:
        got = "none" if arr is None else len(arr)
        raise ModelError(f"anchors ({got}) do not match the model's {num} boxes")
    return arr, info


# -- conversion -----------------------------------------------------------------------------------

def make_converter(tf, source: TfSource, serve_body: Callable, workdir: Path):
    """A ``TFLiteConverter`` for ``serve_body(image) -> dict`` over ``source``'s variables."""
    spec = source.input_spec(tf)
    if source.keras_model is not None:
        import keras  # type: ignore

        archive = keras.export.ExportArchive()
        archive.track(source.keras_model)
        archive.add_endpoint(name="serving_default", fn=serve_body, input_signature=[spec])
        target = workdir / "saved_model"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                archive.write_out(str(target), verbose=False)
        except Exception as exc:
            raise ModelError(f"cannot export the Keras model: {_first_line(exc)}") from exc
        return tf.lite.TFLiteConverter.from_saved_model(str(target))
    fn = tf.function(serve_body, input_signature=[spec])
    return tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], source.loaded)


def convert_with(tf, conv, *, quantize: Optional[str], calibration: Optional[Calibration],
                 input_dtype: str = "uint8") -> bytes:
    """Set the converter up for ``quantize`` and run it; one-line ``ModelError`` on failure."""
    conv.allow_custom_ops = True
    if quantize == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if calibration is None:
            raise ConfigError("int8 quantization needs calibration data")

        def representative():
            for arr in calibration.arrays():
                yield [arr]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        conv.inference_input_type = tf.uint8 if input_dtype == "uint8" else tf.int8
    try:
        return bytes(conv.convert())
    except EdgedetError:
        raise
    except Exception as exc:
        raise ModelError(f"TFLite conversion failed: {_first_line(exc)}") from exc


def tidy_outputs(data: bytes, max_detections: int) -> bytes:
    """Name and order the outputs: the op's four (boxes, classes, scores, count) or raw (boxes, scores).

    The converter orders outputs by signature key and leaves the op's output shapes empty;
    this gives them the order and names of the classic detection models and static shapes.
    """
    from ...tflite import model_from_bytes, model_to_bytes, opcode_name

    model = model_from_bytes(data)
    g = model.subgraphs[0]
    sig = model.signatureDefs[0] if model.signatureDefs else None
    by_key = {}
    if sig is not None:
        for t in sig.outputs:
            key = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            by_key[key] = t.tensorIndex
    op = next((o for o in g.operators if opcode_name(model, o.opcodeIndex) == DETECTION_OP), None)
    if op is not None and set(op.outputs) == set(g.outputs):
        order = list(op.outputs)
        names = OP_OUTPUT_NAMES
        shapes = ([1, max_detections, 4], [1, max_detections], [1, max_detections], [1])
        for idx, shape in zip(order, shapes):
            t = g.tensors[idx]
            if t.shape is None or len(t.shape) == 0:
                t.shape = np.array(shape, np.int32)
    elif all(k in by_key for k in RAW_OUTPUT_NAMES) and len(g.outputs) == 2:
        order = [by_key[k] for k in RAW_OUTPUT_NAMES]
        names = RAW_OUTPUT_NAMES
    else:
        return data
    g.outputs = np.array(order, np.int32)
    for idx, name in zip(order, names):
        g.tensors[idx].name = name.encode()
    return model_to_bytes(model)


def describe_tflite(path: Path) -> dict:
    """Op counts and input/output names, shapes, dtypes and quantization of a ``.tflite``."""
    from ...tflite import load_interpreter, opcode_name, read_model

    model = read_model(path)
    ops: Counter = Counter()
    for g in model.subgraphs:
        for o in g.operators:
            ops[opcode_name(model, o.opcodeIndex)] += 1
    interp = load_interpreter(path, threads=1)

    def io(details):
        return [{"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                 "quantization": [float(d["quantization"][0]), int(d["quantization"][1])]} for d in details]

    return {"ops": dict(ops), "num_ops": int(sum(ops.values())), "inputs": io(interp.get_input_details()),
            "outputs": io(interp.get_output_details())}


def _size(path: Path) -> int:
    if path.is_dir():
        return int(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))
    return int(path.stat().st_size)


def check_options(quantize, detection_op, input_dtype) -> None:
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize: expected one of none, int8, fp16, dynamic, got {quantize!r}")
    if detection_op not in DETECTION_OP_MODES:
        raise ConfigError(f"detection_op: expected one of {', '.join(DETECTION_OP_MODES)}, got {detection_op!r}")
    if input_dtype not in INPUT_DTYPES:
        raise ConfigError(f"input type: expected uint8 or int8, got {input_dtype!r}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _carry_sidecar(side: dict, src: Path, out: Path) -> dict:
    """The parts of the source sidecar that stay true after conversion, paths re-based to ``out``."""
    from ...sidecar import resolve_relative, sidecar_path

    keep = {k: v for k, v in side.items() if k in ("name", "labels", "label_offset", "input", "source")}
    labels = keep.get("labels")
    if isinstance(labels, str):
        f = resolve_relative(sidecar_path(src), labels)
        keep["labels"] = os.path.relpath(f, sidecar_path(out).parent)
    return keep


def convert_tf(src, out, *, quantize: str | None = None, calibration_images: list[Path] | None = None,
               num_calib: int = 100, detection_op: str = "keep", anchors=None, labels: list | None = None,
               input_dtype: str = "uint8", input_size: tuple | None = None, max_detections: int = 100,
               iou_threshold: float = 0.6, score_activation: str | None = None) -> dict:
    """Convert a TF SavedModel or Keras model to ``out`` (.tflite) and write its sidecar.

    ``quantize``: None (float32), ``"fp16"``, ``"dynamic"`` (int8 weights) or ``"int8"`` (full
    integer; needs ``calibration_images`` (files or folders), of which ``num_calib`` are used; model
    input ``input_dtype`` uint8 or int8, outputs float32).
    ``detection_op``: ``"keep"`` ends an SSD in the detection op (``TFLite_Detection_PostProcess``) when its anchors are
    known (else leaves it raw), ``"fuse"`` insists on it, ``"strip"``/``"raw"`` never fuses.
    ``score_activation`` (sigmoid|softmax|none) of a raw SSD's scores: the argument, else the
    source sidecar's, else guessed from a few forward passes (values outside [0, 1] -> sigmoid).
    Returns a report: sizes, op counts, input/output names, shapes and dtypes, seconds.
    """
    t0 = time.perf_counter()
    quantize = normalize_quantize(quantize)
    check_options(quantize, detection_op, input_dtype)
    src, out = Path(src), Path(out)
    check_output(out)
    if quantize == "int8" and not calibration_images:
        raise ConfigError("int8 quantization needs calibration images (a folder of representative photos)")
    from ...sidecar import load_sidecar

    side = load_sidecar(src) if src.exists() else {}
    calib_paths = expand_images(calibration_images) if calibration_images else []
    if quantize == "int8" and not calib_paths:
        raise SourceError("no images found in the calibration paths")
    tf, _ = import_tf()
    source = load_source(src, input_size)
    mean, std = _normalization(side)
    calibration = Calibration(source.height, source.width, mean, std, calib_paths, int(num_calib))
    report = convert_loaded(tf, source, out, side=side, quantize=quantize, calibration=calibration,
                            detection_op=detection_op, anchors=anchors, labels=labels,
                            input_dtype=input_dtype, max_detections=max_detections,
                            iou_threshold=iou_threshold, score_activation=score_activation,
                            history={"tool": "edgedet convert (tensorflow)", "source": str(src)})
    report["source_size_bytes"] = _size(src)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def normalize_quantize(quantize):
    return None if quantize in (None, "none", "float", "float32") else quantize


def check_output(out: Path) -> None:
    if out.suffix.lower() != ".tflite":
        raise ConfigError(f"output must be a .tflite file, got {out}")
    if out.exists() and out.is_dir():
        raise ConfigError(f"output {out} is a directory")


def _normalization(side: dict) -> tuple[tuple, tuple]:
    from ...preprocess import parse_normalization

    norm = (side.get("input") or {}).get("normalization") or [127.5, 127.5]
    mean, std = parse_normalization(norm)
    if mean is None:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return mean, std


@dataclass
class _Head:
    """How the SSD head of a source ends in the output: raw outputs or fused into the detection op."""

    ssd: Optional[tuple[str, str]] = None  # (box key, score key) of the source's raw SSD outputs
    fuse: bool = False
    anchors: Optional[np.ndarray] = None
    anchor_info: dict = field(default_factory=dict)
    options: Optional[DetectionOpOptions] = None
    activation: str = "none"

    @property
    def form(self) -> Optional[str]:
        return "op" if self.fuse else ("raw" if self.ssd is not None else None)


def _plan_head(tf, source: TfSource, side: dict, calibration: Calibration, *, detection_op: str, anchors,
               max_detections: int, iou_threshold: float, score_activation: Optional[str]) -> _Head:
    """Find the source's SSD outputs and decide whether the detection op is fused after them."""
    ssd = find_ssd_outputs(source.outputs)
    if ssd is None and detection_op == "fuse":
        raise ModelError("cannot fuse the detection op: the model has no raw SSD outputs "
                         "(box encodings [1, N, 4] and scores [1, N, K])")
    if ssd is None:
        return _Head()
    box_key, score_key = ssd
    n = int(source.outputs[box_key][1])
    k = int(source.outputs[score_key][2])
    pside = side.get("postprocess") or {}
    num_classes = int(pside.get("num_classes") or (k - 1 if k > 1 else 1))
    if not 0 <= k - num_classes <= 1:
        raise ModelError(f"scores have {k} columns but the sidecar says {num_classes} classes")
    activation = score_activation or pside.get("score_activation") or _guess_activation(
        tf, source, score_key, calibration)
    if activation not in ("sigmoid", "softmax", "none"):
        raise ConfigError(f"score_activation: expected sigmoid, softmax or none, got {activation!r}")
    options = DetectionOpOptions(
        num_classes=num_classes, max_detections=int(max_detections),
        nms_iou_threshold=float(iou_threshold),
        y_scale=float(pside.get("y_scale", 10.0)), x_scale=float(pside.get("x_scale", 10.0)),
        h_scale=float(pside.get("h_scale", 5.0)), w_scale=float(pside.get("w_scale", 5.0)))
    anchor_arr, anchor_info = resolve_anchors(anchors, side, source.path, source.height, source.width, n)
    fuse = False
    if detection_op in ("keep", "fuse"):
        if anchor_arr is None and detection_op == "fuse":
            raise ModelError(f"cannot fuse the detection op: {anchor_info['why']}")
        fuse = anchor_arr is not None
    return _Head(ssd, fuse, anchor_arr, anchor_info, options, activation)


def convert_loaded(tf, source: TfSource, out: Path, *, side: dict, quantize: Optional[str],
                   calibration: Calibration, detection_op: str = "keep", anchors=None,
                   labels: list | None = None, input_dtype: str = "uint8", max_detections: int = 100,
                   iou_threshold: float = 0.6, score_activation: str | None = None,
                   history: dict | None = None) -> dict:
    """Convert a loaded source to ``out``, write the sidecar (and anchors file) and return the report."""
    from ...sidecar import save_sidecar
    from ...tflite import write_atomic

    head = _plan_head(tf, source, side, calibration, detection_op=detection_op, anchors=anchors,
                      max_detections=max_detections, iou_threshold=iou_threshold,
                      score_activation=score_activation)
    serve = _serving_body(tf, source, head.ssd, head.fuse, head.options, head.anchors, head.activation)
    with tempfile.TemporaryDirectory(prefix="edgedet-tfconv-") as tmp:
        conv = make_converter(tf, source, serve, Path(tmp))
        data = convert_with(tf, conv, quantize=quantize, calibration=calibration if quantize == "int8" else None,
                            input_dtype=input_dtype)
    data = tidy_outputs(data, int(max_detections))
    write_atomic(out, data)

    form = head.form
    described = describe_tflite(out)
    if form is None and DETECTION_OP in described["ops"]:
        form = "op"  # the source declared the op itself (e.g. a TF OD API TFLite-friendly export)
    sc = _sidecar(source, out, side, head, form, calibration, labels)
    qinfo: dict = {"mode": quantize or "float32"}
    if quantize == "int8":
        qinfo.update({"input_dtype": input_dtype, "weights": "int8 per-channel", "activations": "int8",
                      "tool": f"tflite_converter (tensorflow {tf.__version__})"})
        sc["calibration"] = calibration.describe()
    sc["quantization"] = qinfo
    hist = {"tool": "edgedet convert (tensorflow)", "date": _now(), "quantize": quantize or "none",
            "postprocess": form or "none", "tensorflow": tf.__version__, **(history or {})}
    sc["history"] = list(side.get("history") or []) + [hist]
    sidecar = save_sidecar(out, sc)

    report = {"out": str(out), "source": str(source.path), "source_kind": source.kind,
              "quantize": quantize or "none", "postprocess": form or "none", "size_bytes": _size(out),
              "input_size": [source.height, source.width], "sidecar": str(sidecar)}
    if head.options is not None:
        report.update({"num_classes": head.options.num_classes, "score_activation": head.activation,
                       "num_anchors": int(len(head.anchors)) if head.anchors is not None else None,
                       "anchors": head.anchor_info.get("from", head.anchor_info.get("why"))})
    if quantize == "int8":
        report["calibration"] = calibration.describe()
    report.update(described)
    return report


def _sidecar(source: TfSource, out: Path, side: dict, head: _Head, form: Optional[str], calibration: Calibration,
             labels: Optional[list]) -> dict:
    """The output's sidecar: the source's carried over, with input, labels, decode settings and
    anchors (an ``.anchors.npy`` file beside a raw model)."""
    from ...tflite import write_atomic

    sc = _carry_sidecar(side, source.path, out)
    sc.setdefault("name", out.stem)
    mean, std = calibration.mean, calibration.std
    uniform = len(set(mean)) == 1 and len(set(std)) == 1
    sc["input"] = {**(sc.get("input") or {}),
                   "normalization": [float(mean[0]), float(std[0])] if uniform else [list(mean), list(std)],
                   "resize": (sc.get("input") or {}).get("resize", "stretch"), "color": "rgb"}
    pp_opts = head.options
    if form is not None and pp_opts is None:
        sc["postprocess"] = {**(sc.get("postprocess") or {}), "form": form}
        if labels is not None:
            sc["labels"] = [str(x) for x in labels]
    elif form is not None:
        if labels is not None:
            sc["labels"] = [str(x) for x in labels]
        elif "labels" not in sc:
            sc["labels"] = [f"class{i}" for i in range(pp_opts.num_classes)]
        sc.setdefault("label_offset", 0)
        sc["postprocess"] = pp_opts.to_sidecar(form, "none" if head.fuse else head.activation)
        if form == "raw":
            k = int(source.outputs[head.ssd[1]][2])
            sc["postprocess"]["background"] = k - pp_opts.num_classes
        if head.anchors is not None:
            entry = {key: v for key, v in head.anchor_info.items() if key not in ("from", "path")}
            if form == "raw":
                afile = out.with_suffix(".anchors.npy")
                buf = io.BytesIO()
                np.save(buf, head.anchors.astype(np.float32))
                write_atomic(afile, buf.getvalue())
                entry = {"file": afile.name, "format": "yxhw", **entry}
            else:
                entry = {"embedded": True, "format": "yxhw", **entry}
            entry["count"] = int(len(head.anchors))
            sc["anchors"] = entry
    return sc


def _guess_activation(tf, source: TfSource, score_key: str, calibration: Calibration) -> str:
    """sigmoid when the raw scores leave [0, 1] on a few calibration inputs, else none."""
    for i, arr in enumerate(calibration.arrays()):
        s = np.asarray(source.call(tf.constant(arr))[score_key])
        if s.min() < 0 or s.max() > 1:
            return "sigmoid"
        if i >= 2:
            break
    return "none"


def _serving_body(tf, source: TfSource, ssd, fuse: bool, pp_opts, anchors, activation: str) -> Callable:
    """What is converted: the source, then (when fusing) the score activation and the detection op."""
    call = source.call
    if ssd is None:
        return call
    box_key, score_key = ssd
    if not fuse:
        def raw(image):
            out = call(image)
            return {RAW_OUTPUT_NAMES[0]: out[box_key], RAW_OUTPUT_NAMES[1]: out[score_key]}

        return raw
    pp = detection_op_fn(tf, pp_opts)
    anchor_const = tf.constant(np.asarray(anchors, np.float32))

    def detect(image):
        out = call(image)
        boxes, scores = out[box_key], out[score_key]
        if activation == "sigmoid":
            scores = tf.math.sigmoid(scores)
        elif activation == "softmax":
            scores = tf.nn.softmax(scores, axis=-1)
        return dict(zip(OP_OUTPUT_NAMES, pp(boxes, scores, anchor_const)))

    return detect


__all__: Sequence[str] = ["convert_tf", "import_tf", "DetectionOpOptions", "detection_op_fn", "Calibration",
                          "synthetic_images", "expand_images", "describe_tflite", "tidy_outputs",
                          "find_ssd_outputs", "resolve_anchors", "load_source", "source_from_keras",
                          "make_converter", "convert_with", "convert_loaded"]
