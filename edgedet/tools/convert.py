"""``edgedet convert``: a model in, a deployable ``.tflite`` (+ sidecar) out.

Sources: a ``.tflite`` (float, dynamic-range or fp16-weight), a TensorFlow SavedModel directory or
a ``.keras`` / ``.h5`` file (through ``edgedet.tools.tf_convert``, which needs TensorFlow), or a
freshly built SSDLite (``edgedet.tools.build_ssdlite``). ``.tflite`` sources are converted here:

* ``quantize``: ``int8`` (full integer, calibrated), ``fp16`` (float16 weights) or ``dynamic``
  (int8 weights, float activations) — see ``edgedet.tools.quantize``;
* ``postprocess``: ``keep`` the ``TFLite_Detection_PostProcess`` op (in float) or ``strip`` it
  (raw outputs + anchors for our own decode, ``edgedet.tools.strip``).

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
from typing import Callable, Optional, Union

from ..errors import ConfigError, EdgedetError, ModelError
from ..sidecar import load_sidecar, resolve_relative, save_sidecar, update_sidecar

QUANTIZE_MODES = ("int8", "fp16", "dynamic")
POSTPROCESS_MODES = ("keep", "strip")
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
        lines.append(f"  size      {self.size_before / 1e6:.2f} MB -> {self.size_after / 1e6:.2f} MB")
        if self.invoke_ms_before is not None and self.invoke_ms_after is not None:
            lines.append(f"  invoke    {self.invoke_ms_before:.1f} ms -> {self.invoke_ms_after:.1f} ms "
                         f"({self.speedup:.2f}x, {self.threads} threads, median of one run each)")
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


def _sha256(path) -> str:
    from .calibration import sha256_file

    return sha256_file(path)


def _publish(tmp_model: Path, out: Path) -> None:
    """Write a finished scratch model to ``out`` (atomically) with its sidecar; side files that live
    in the scratch folder (anchors of a stripped model) are copied beside ``out``."""
    from ..tflite_file import write_atomic

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


def _strip(src: Path, dst: Path) -> dict:
    try:
        from .strip import strip_postprocess
    except ImportError as exc:
        raise EdgedetError("--postprocess strip needs edgedet.tools.strip, which is not installed") from exc
    result = strip_postprocess(src, dst)
    return result if isinstance(result, dict) else {}


def _has_postprocess(path) -> bool:
    from .. import tflite_file as tfl
    from .quantize import POSTPROCESS_OP

    model = tfl.read_model(path)
    return any(tfl.opcode_name(model, op.opcodeIndex) == POSTPROCESS_OP for op in model.subgraphs[0].operators)


def convert(src, out, *, quantize: Optional[str] = None, calibration=None, num_calib: Optional[int] = None,
            postprocess: str = "keep", percentile: Union[str, float] = "auto", threads: Optional[int] = None,
            eval_images=None, eval_annotations=None, eval_limit: Optional[int] = None, labels=None,
            measure_speed: bool = True, progress: bool = True,
            log: Optional[Callable[[str], None]] = None) -> ConvertReport:
    """Convert ``src`` to ``out``; see the module docstring. Returns what was measured."""
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, not {quantize!r}")
    if postprocess not in POSTPROCESS_MODES:
        raise ConfigError(f"--postprocess must be keep or strip, not {postprocess!r}")
    if out.suffix.lower() != ".tflite":
        raise ConfigError(f"output must be a .tflite file: {out}")
    if (eval_images is None) != (eval_annotations is None):
        raise ConfigError("--eval needs both --images and --annotations")
    kind = source_kind(src)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise ConfigError("the output must not be the source model")
    calib_set = None
    if quantize == "int8":
        if calibration is None:
            raise ConfigError("--quantize int8 needs --calibration DIR (make one with `edgedet calibration build`)")
        from .calibration import load_calibration_set

        calib_set = load_calibration_set(calibration, limit=num_calib)
    elif calibration is not None and quantize != "int8":
        log("note: --calibration is only used by --quantize int8")
    if percentile not in ("auto", "mse"):
        try:
            percentile = float(percentile)
        except ValueError as exc:
            raise ConfigError(f"--percentile must be 'auto', 'mse' or a number, not {percentile!r}") from exc
        if not 50.0 < percentile <= 100.0:
            raise ConfigError("--percentile must be in (50, 100]")

    if kind != "tflite":
        return _convert_tf(src, out, kind, quantize, calib_set, postprocess, t0, log)

    from .quantize import (
        choose_percentile,
        compare_models,
        copy_sidecar,
        invoke_ms,
        quantize_dynamic,
        quantize_fp16,
        quantize_int8,
    )

    report = ConvertReport(source=str(src), out=str(out), mode=quantize or "float",
                           size_before=src.stat().st_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgedet-convert-") as tmp:
        tmp = Path(tmp)
        work_src = src
        if postprocess == "strip":
            if not _has_postprocess(src):
                raise ModelError(f"{src} has no TFLite_Detection_PostProcess op to strip")
            work_src = tmp / ("stripped_" + out.name)
            log("stripping the postprocess op")
            _strip(src, work_src)
        result_path = tmp / out.name
        result, held = None, []
        if quantize == "int8":
            cal, held = calib_set.split()
            if percentile == "auto":
                if not held:
                    raise ConfigError("--percentile auto needs at least 2 calibration images (use a number)")
                log(f"choosing the range percentile on {len(held)} held-out calibration images")
                percentile, scores = choose_percentile(work_src, cal, held, threads=threads, log=log)
                report.agreement = {"images": len(held), **scores[percentile]}
            images = list(calib_set.images)
            log(f"quantizing to int8 with {len(images)} calibration images")
            result = quantize_int8(work_src, result_path, images, percentile=percentile, threads=threads)
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
        if held and quantize == "int8" and not report.agreement:
            report.agreement = {"images": len(held), **compare_models(work_src, result_path, held, threads=threads)}
        if measure_speed:
            from ..runtime import default_threads

            report.threads = int(threads or default_threads())
            report.invoke_ms_before = round(invoke_ms(src, report.threads), 2)
            report.invoke_ms_after = round(invoke_ms(result_path, report.threads), 2)
        if eval_images is not None:
            from .evaluate import evaluate

            log("evaluating the source model")
            before = evaluate(src, eval_images, eval_annotations, threads=threads, labels=labels,
                              limit=eval_limit, progress=progress)
            log("evaluating the converted model")
            after = evaluate(result_path, eval_images, eval_annotations, threads=threads, labels=labels,
                             limit=eval_limit, progress=progress)
            report.accuracy_before = _acc(before)
            report.accuracy_after = _acc(after)
        sections: dict = {
            "source": {"path": str(src.resolve()), "sha256": _sha256(src)},
            "history": [{"tool": "edgedet convert", "date": _now(), "quantize": quantize or "none",
                         "postprocess": postprocess}],
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
        update_sidecar(result_path, **sections)
        _publish(result_path, out)
    report.size_after = out.stat().st_size
    report.seconds = time.perf_counter() - t0
    return report


def _acc(report) -> dict:
    return {"dataset": report.dataset, "n_images": report.n_images,
            **{k: round(float(v), 4) for k, v in report.metrics.items()}, "settings": report.settings}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _convert_tf(src: Path, out: Path, kind: str, quantize, calib_set, postprocess, t0, log) -> ConvertReport:
    try:
        from .tf_convert import convert_tf
    except ImportError as exc:
        raise EdgedetError(
            f"converting a {kind.replace('_', ' ')} needs TensorFlow: pip install 'edgedet[convert]'"
        ) from exc
    log(f"converting {kind.replace('_', ' ')} {src} with TensorFlow")
    info = convert_tf(src, out, quantize=quantize,
                      calibration_images=list(calib_set.images) if calib_set else None,
                      postprocess=postprocess)
    report = ConvertReport(source=str(src), out=str(out), mode=quantize or "float",
                           size_after=out.stat().st_size if out.exists() else 0,
                           recipe=dict(info or {}), seconds=time.perf_counter() - t0)
    if calib_set is not None:
        report.calibration = calib_set.describe()
        update_sidecar(out, calibration=report.calibration)
    return report


def build(out, *, backbone: str = "mobilenet_v2", width: float = 1.0, input_size: int = 320,
          num_classes: int = 90, quantize: Optional[str] = None, calibration=None,
          num_calib: Optional[int] = None, postprocess: str = "keep",
          log: Optional[Callable[[str], None]] = None) -> ConvertReport:
    """``--build ssdlite``: a new SSDLite model (``edgedet.tools.build_ssdlite``, needs TensorFlow)."""
    t0 = time.perf_counter()
    out = Path(out)
    calib_set = None
    if quantize == "int8" and calibration is not None:
        from .calibration import load_calibration_set

        calib_set = load_calibration_set(calibration, limit=num_calib)
    elif quantize == "int8" and log:
        # an untrained model has no scenes of its own: a seeded synthetic set is documented and enough
        log("no --calibration: quantizing the untrained model with a seeded synthetic calibration set")
    try:
        from .build_ssdlite import build_ssdlite
    except ImportError as exc:
        raise EdgedetError("--build ssdlite needs TensorFlow: pip install 'edgedet[convert]'") from exc
    if log:
        log(f"building SSDLite {backbone} x{width} {input_size}px, {num_classes} classes")
    info = build_ssdlite(out, backbone=backbone, width=width, input_size=input_size, num_classes=num_classes,
                         quantize=quantize, calibration_images=list(calib_set.images) if calib_set else None,
                         postprocess=postprocess)
    report = ConvertReport(source=f"build:ssdlite:{backbone}", out=str(out), mode=quantize or "float",
                           size_after=out.stat().st_size if out.exists() else 0, recipe=dict(info or {}),
                           seconds=time.perf_counter() - t0)
    if calib_set is not None:
        report.calibration = calib_set.describe()
        update_sidecar(out, calibration=report.calibration)
    return report
