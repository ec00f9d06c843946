"""``edgedet convert``: a model in, a deployable ``.tflite`` (+ sidecar) out.

Sources: a ``.tflite`` (float, dynamic-range or fp16-weight), a TensorFlow SavedModel directory or
a ``.keras`` / ``.h5`` file (through ``edgedet.tools.convert.tf``, which needs TensorFlow), or a
freshly built SSDLite (``edgedet.tools.convert.ssdlite``). ``.tflite`` sources are converted here:

* ``quantize``: ``int8`` (full integer, calibrated), ``fp16`` (float16 weights) or ``dynamic``
  (int8 weights, float activations) — see ``edgedet.tools.quantize``;
* ``detection_op``: ``keep`` the detection op (``TFLite_Detection_PostProcess``, in float) or
  ``strip`` it (raw outputs + anchors for our own decode, ``edgedet.tools.convert.strip``).

The output is written atomically (an interrupted run leaves no half-written file); its sidecar
records the source, the recipe, the calibration set and (with ``eval_images``) accuracy before
and after. ``ConvertReport.format_summary()`` is what the command prints.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ...errors import ConfigError, EdgedetError, ModelError
from ...sidecar import load_sidecar, resolve_relative, save_sidecar, update_sidecar
from ...tflite import DETECTION_OP, find_detection_op, read_model, write_atomic
from .strip import strip_file

QUANTIZE_MODES = ("int8", "fp16", "dynamic")
DETECTION_OP_MODES = ("keep", "strip")
TF_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class ConvertReport:
    source: str
    out: str
    mode: str
    size_before: int = 0
    size_after: int = 0
    threads: int = 0
    invoke_ms_before: Optional[float] = None
    invoke_ms_after: Optional[float] = None
    census: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)
    accuracy_before: dict = field(default_factory=dict)
    accuracy_after: dict = field(default_factory=dict)
    repaired_channels: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}

    @property
    def speedup(self) -> Optional[float]:
        if self.invoke_ms_before and self.invoke_ms_after:
            return self.invoke_ms_before / self.invoke_ms_after
        return None

    def format_summary(self) -> str:
        lines = [f"wrote {self.out} ({self.mode}) in {self.seconds:.1f} s"]
        if self.size_before:
            lines.append(f"  size      {self.size_before / 1e6:.2f} MB -> {self.size_after / 1e6:.2f} MB")
        else:  # a built model has no source file
            lines.append(f"  size      {self.size_after / 1e6:.2f} MB")
        if self.invoke_ms_before is not None and self.invoke_ms_after is not None:
            ratio = f"{self.speedup:.2f}x, " if self.speedup else ""
            lines.append(f"  invoke    {self.invoke_ms_before:.1f} ms -> {self.invoke_ms_after:.1f} ms "
                         f"({ratio}{self.threads} threads, median of one run each)")
        c = self.census
        if "conv_total" in c:
            lines.append(f"  int8      conv weights+activations {c['conv_int8']}/{c['conv_total']}, "
                         f"activation tensors {c['activations_int8']}/{c['activations_total']}"
                         + (f", {self.repaired_channels} dead channels repaired" if self.repaired_channels else ""))
        if self.recipe.get("percentile") is not None:
            head = self.recipe.get("head_ranges", "min/max")
            values = self.recipe.get("head_range_values") or {}
            if values:
                head += " (" + ", ".join(f"{k} [{lo:.2f}, {hi:.2f}]" for k, (lo, hi) in values.items()) + ")"
            lines.append(f"  ranges    global over the calibration set, backbone percentile "
                         f"{self.recipe['percentile']}, head {head}")
        if self.calibration:
            lines.append(f"  calib     {self.calibration.get('size')} images from {self.calibration.get('path')}")
        if self.agreement:
            a = self.agreement
            lines.append(f"  agreement on {a.get('images', '?')} held-out calibration images: "
                         + ", ".join(f"{k}={v}" for k, v in a.items() if k != "images"))
        if self.accuracy_before or self.accuracy_after:
            b, a = self.accuracy_before, self.accuracy_after
            nan = float("nan")
            lines.append(f"  accuracy  mAP {b.get('mAP', nan) * 100:.1f} -> {a.get('mAP', nan) * 100:.1f}, "
                         f"AP50 {b.get('AP50', nan) * 100:.1f} -> {a.get('AP50', nan) * 100:.1f} "
                         f"({a.get('dataset', b.get('dataset', ''))}, {a.get('n_images', '?')} images)")
        return "\n".join(lines)


def source_kind(src: Union[str, os.PathLike]) -> str:
    """``tflite``, ``saved_model`` or ``keras``; one-line ``ConfigError`` for anything else."""
    path = Path(src)
    if not path.exists():
        raise ConfigError(f"source model not found: {path}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise ConfigError(f"unsupported source {path}: a directory that is not a TensorFlow SavedModel")
    if path.suffix.lower() in TF_SUFFIXES:
        return "keras"
    with open(path, "rb") as fh:
        head = fh.read(8)
    if path.suffix.lower() == ".tflite" or head[4:8] == b"TFL3":
        return "tflite"
    raise ConfigError(
        f"unsupported source format {path.name}: expected a .tflite, a SavedModel directory or a .keras/.h5 file"
    )


def _publish(tmp_model: Path, out: Path) -> None:
    """Write a finished scratch model to ``out`` (atomically) with its sidecar; side files that live
    in the scratch folder (anchors of a stripped model) are copied beside ``out``."""
    data = load_sidecar(tmp_model)
    scratch = tmp_model.resolve().parent
    if isinstance(data.get("labels"), str):
        data["labels"] = os.path.relpath(resolve_relative(tmp_model, data["labels"]).resolve(), out.resolve().parent)
    anchors = data.get("anchors")
    if isinstance(anchors, dict) and isinstance(anchors.get("file"), str):
        f = resolve_relative(tmp_model, anchors["file"]).resolve()
        if f.parent == scratch:
            dest = out.parent / f"{out.stem}.anchors{f.suffix}"
            write_atomic(dest, f.read_bytes())
            data["anchors"] = {**anchors, "file": dest.name}
        else:
            data["anchors"] = {**anchors, "file": os.path.relpath(f, out.resolve().parent)}
    write_atomic(out, tmp_model.read_bytes())
    if data:
        save_sidecar(out, data)


def _sha256(path) -> str:
    from ..calibration import sha256_file

    return sha256_file(path)


def _has_detection_op(path) -> bool:
    return find_detection_op(read_model(path)) is not None


def _check_args(src: Path, out: Path, quantize: Optional[str], detection_op: str, eval_images,
                eval_annotations) -> str:
    """Every argument check before any work; returns the source kind."""
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, not {quantize!r}")
    if detection_op not in DETECTION_OP_MODES:
        raise ConfigError(f"--detection-op must be keep or strip, not {detection_op!r}")
    if out.suffix.lower() != ".tflite":
        raise ConfigError(f"output must be a .tflite file: {out}")
    if (eval_images is None) != (eval_annotations is None):
        raise ConfigError("--eval needs both --images and --annotations")
    kind = source_kind(src)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise ConfigError("the output must not be the source model")
    return kind


def _label_list(labels) -> list:
    """Labels given by the user: a list, or a text file (one a line)."""
    from ...labels import read_label_file

    if isinstance(labels, (list, tuple)):
        return [str(x) for x in labels]
    return read_label_file(labels)


def _carry_labels(result_path: Path, src: Path, labels, log) -> None:
    """The output's labels: ``labels`` when given, else the source's (its sidecar's, carried with
    it; else the registry's for a registry model's file)."""
    if labels is not None:
        update_sidecar(result_path, labels=_label_list(labels), label_offset=0)
        return
    if load_sidecar(result_path).get("labels") is not None:
        return
    from ...registry import registry_labels_for_file

    known = registry_labels_for_file(src)
    if known is not None:
        from ...labels import read_label_file

        update_sidecar(result_path, labels=read_label_file(known))
        log(f"labels: the registry's {known.name} (the source is a registry model's file)")
    else:
        log("note: the source has no labels: the output's classes are named class0.. (give --labels)")


def _record_input_size(model: Path, result_path: Path, size: int) -> None:
    """The real size of ``model``'s dynamic input, in ``result_path``'s sidecar."""
    from ...tflite import load_interpreter

    detail = load_interpreter(model, 1).get_input_details()[0]
    sig = [int(x) for x in detail.get("shape_signature", detail["shape"])]
    fixed = [int(x) for x in detail["shape"]][1:3]
    if len(sig) == 4 and all(x > 0 for x in sig[1:3]) and fixed != [size, size]:
        raise ConfigError(f"--input-size {size}: the model's input is fixed at {fixed[0]}x{fixed[1]}")
    update_sidecar(result_path, input={"size": [int(size), int(size)]})


def _percentile(percentile: Union[str, float]) -> Union[str, float]:
    if percentile in ("auto", "mse"):
        return percentile
    try:
        value = float(percentile)
    except ValueError as exc:
        raise ConfigError(f"--percentile must be 'auto', 'mse' or a number, not {percentile!r}") from exc
    if not 50.0 < value <= 100.0:
        raise ConfigError("--percentile must be in (50, 100]")
    return value


def _calibration_set(quantize: Optional[str], calibration, num_calib: Optional[int], log):
    if quantize == "int8":
        if calibration is None:
            raise ConfigError("--quantize int8 needs --calibration DIR (make one with `edgedet calibration build`)")
        from ..calibration import load_calibration_set

        return load_calibration_set(calibration, limit=num_calib)
    if calibration is not None:
        log("note: --calibration is only used by --quantize int8")
    return None


def convert(src, out, *, quantize: Optional[str] = None, calibration=None, num_calib: Optional[int] = None,
            detection_op: str = "keep", percentile: Union[str, float] = "auto", threads: Optional[int] = None,
            eval_images=None, eval_annotations=None, eval_limit: Optional[int] = None, labels=None,
            measure_speed: bool = True, progress: bool = True, input_size: Optional[int] = None,
            log: Optional[Callable[[str], None]] = None) -> ConvertReport:
    """Convert ``src`` to ``out``; see the module docstring. Returns what was measured.

    ``labels`` (a text label file or a list) go into the output's sidecar
    (and are used by the evaluation); without them the output keeps the source's labels: its
    sidecar's, else the registry's for a registry model's file (by checksum). ``input_size``: the
    real size of a model whose input size is dynamic, recorded in the sidecar (``input.size``).
    """
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    kind = _check_args(src, out, quantize, detection_op, eval_images, eval_annotations)
    calib_set = _calibration_set(quantize, calibration, num_calib, log)
    percentile = _percentile(percentile)
    if kind != "tflite":
        return _convert_tf(src, out, kind, quantize, calib_set, detection_op, t0, log)
    report = ConvertReport(source=str(src), out=str(out), mode=quantize or "float",
                           size_before=src.stat().st_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgedet-convert-") as tmp:
        tmp = Path(tmp)
        work_src = src
        if detection_op == "strip":
            if not _has_detection_op(src):
                raise ModelError(f"{src} has no {DETECTION_OP} op to strip")
            work_src = tmp / ("stripped_" + out.name)
            log("stripping the detection op")
            strip_file(src, work_src)
        result_path = tmp / out.name
        held = _quantize_step(report, work_src, result_path, quantize, calib_set, percentile, threads, log)
        if input_size:
            _record_input_size(work_src, result_path, input_size)
        if held and quantize == "int8" and not report.agreement:
            from ..quantize import compare_models

            report.agreement = {"images": len(held), **compare_models(work_src, result_path, held, threads=threads)}
        if measure_speed and not input_size:  # a dynamic input would be timed at its 1x1 placeholder
            _measure_speed(report, src, result_path, threads)
        if eval_images is not None:
            _evaluate_both(report, src, result_path, eval_images, eval_annotations, threads=threads, labels=labels,
                           limit=eval_limit, progress=progress, log=log)
        update_sidecar(result_path, **_sections(report, src, quantize, detection_op))
        _carry_labels(result_path, src, labels, log)
        _publish(result_path, out)
    report.size_after = out.stat().st_size
    report.seconds = time.perf_counter() - t0
    return report


def _quantize_step(report: ConvertReport, work_src: Path, result_path: Path, quantize: Optional[str], calib_set,
                   percentile, threads: Optional[int], log) -> Sequence:
    """``work_src`` quantized (or copied) to ``result_path`` with its sidecar; returns the held-out
    calibration images (int8 only)."""
    from ..quantize import (
        QuantizeOptions,
        copy_sidecar,
        quantize_dynamic,
        quantize_fp16,
        quantize_int8,
        quantize_int8_auto,
    )

    result, held = None, []
    if quantize == "int8":
        cal, held = calib_set.split()
        images = list(calib_set.images)
        if percentile == "auto":
            if not held:
                raise ConfigError("--percentile auto needs at least 2 calibration images (use a number)")
            log(f"choosing the range percentile on {len(held)} held-out calibration images")
            result, percentile, scores = quantize_int8_auto(work_src, result_path, images, held,
                                                            QuantizeOptions(threads=threads), log=log)
            report.agreement = {"images": len(held), **scores[percentile]}
        else:
            log(f"quantizing to int8 with {len(images)} calibration images")
            options = QuantizeOptions(percentile=percentile, threads=threads)
            result = quantize_int8(work_src, result_path, images, options, log=log)
        report.calibration = calib_set.describe()
    elif quantize == "fp16":
        result = quantize_fp16(work_src, result_path)
    elif quantize == "dynamic":
        result = quantize_dynamic(work_src, result_path)
    else:
        shutil.copyfile(work_src, result_path)
    if result is not None:
        report.census, report.recipe = result.census, result.recipe
        report.repaired_channels = result.repaired_channels
    copy_sidecar(work_src, result_path)
    if result is not None and result.sidecar:
        update_sidecar(result_path, **result.sidecar)
    return held


def _measure_speed(report: ConvertReport, src: Path, result_path: Path, threads: Optional[int]) -> None:
    from ...tflite import default_threads, median_invoke_ms

    report.threads = int(threads or default_threads())
    report.invoke_ms_before = round(median_invoke_ms(src, report.threads), 2)
    report.invoke_ms_after = round(median_invoke_ms(result_path, report.threads), 2)


def _evaluate_both(report: ConvertReport, src: Path, result_path: Path, images, annotations, *, log,
                   **kwargs) -> None:
    from ..evaluate import evaluate

    log("evaluating the source model")
    report.accuracy_before = accuracy_summary(evaluate(src, images, annotations, **kwargs))
    log("evaluating the converted model")
    report.accuracy_after = accuracy_summary(evaluate(result_path, images, annotations, **kwargs))


def _sections(report: ConvertReport, src: Path, quantize: Optional[str], detection_op: str) -> dict:
    """The sidecar sections that describe the conversion."""
    sections: dict = {
        "source": {"path": str(src.resolve()), "sha256": _sha256(src)},
        "history": [{"tool": "edgedet convert", "date": _now(), "quantize": quantize or "none",
                     "detection_op": detection_op}],
    }
    if report.recipe:
        sections["quantization"] = report.recipe
    if report.calibration:
        sections["calibration"] = report.calibration
    if report.accuracy_after:
        sections["accuracy"] = {**report.accuracy_after, "before": report.accuracy_before}
    if report.invoke_ms_after is not None:
        import platform

        sections["speed"] = {"invoke_ms_p50": report.invoke_ms_after, "threads": report.threads,
                             "machine": platform.machine(), "source_invoke_ms_p50": report.invoke_ms_before}
    return sections


def accuracy_summary(report) -> dict:
    return {"dataset": report.dataset, "n_images": report.n_images,
            **{k: round(float(v), 4) for k, v in report.metrics.items()}, "settings": report.settings}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _convert_tf(src: Path, out: Path, kind: str, quantize, calib_set, detection_op, t0, log) -> ConvertReport:
    try:
        from .tf import convert_tf
    except ImportError as exc:
        raise EdgedetError(
            f"converting a {kind.replace('_', ' ')} needs TensorFlow: pip install 'edgedet[convert]'"
        ) from exc
    log(f"converting {kind.replace('_', ' ')} {src} with TensorFlow")
    info = convert_tf(src, out, quantize=quantize,
                      calibration_images=list(calib_set.images) if calib_set else None,
                      detection_op=detection_op)
    report = ConvertReport(source=str(src), out=str(out), mode=quantize or "float",
                           size_after=out.stat().st_size if out.exists() else 0,
                           recipe=dict(info or {}), seconds=time.perf_counter() - t0)
    if calib_set is not None:
        report.calibration = calib_set.describe()
        update_sidecar(out, calibration=report.calibration)
    return report


def build(out, *, backbone: str = "mobilenet_v2", width: float = 1.0, input_size: int = 320,
          num_classes: int = 90, quantize: Optional[str] = None, calibration=None,
          num_calib: Optional[int] = None, detection_op: str = "keep",
          log: Optional[Callable[[str], None]] = None) -> ConvertReport:
    """``--build ssdlite``: a new SSDLite model (``edgedet.tools.convert.ssdlite``, needs TensorFlow)."""
    t0 = time.perf_counter()
    out = Path(out)
    calib_set = None
    if quantize == "int8" and calibration is not None:
        from ..calibration import load_calibration_set

        calib_set = load_calibration_set(calibration, limit=num_calib)
    elif quantize == "int8" and log:
        # an untrained model has no scenes of its own: a seeded synthetic set is documented and enough
        log("no --calibration: quantizing the untrained model with a seeded synthetic calibration set")
    try:
        from .ssdlite import build_ssdlite
    except ImportError as exc:
        raise EdgedetError("--build ssdlite needs TensorFlow: pip install 'edgedet[convert]'") from exc
    if log:
        log(f"building SSDLite {backbone} x{width} {input_size}px, {num_classes} classes")
    info = build_ssdlite(out, backbone=backbone, width=width, input_size=input_size, num_classes=num_classes,
                         quantize=quantize, calibration_images=list(calib_set.images) if calib_set else None,
                         detection_op=detection_op)
    report = ConvertReport(source=f"build:ssdlite:{backbone}", out=str(out), mode=quantize or "float",
                           size_after=out.stat().st_size if out.exists() else 0, recipe=dict(info or {}),
                           seconds=time.perf_counter() - t0)
    if calib_set is not None:
        report.calibration = calib_set.describe()
        update_sidecar(out, calibration=report.calibration)
    return report
