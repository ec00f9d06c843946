"""The Detector: one model, three steps (``prepare`` -> ``infer`` -> ``decode``), or ``detect`` for all.

The pipeline runs ``prepare`` + ``infer`` in one thread and ``decode`` in another: ``infer`` copies
the outputs it returns, so the next ``invoke`` never changes what a decode is reading. ``prepare``
reuses one preallocated input array (call ``prepare`` + ``infer`` from one thread only).

Who decodes (``decoder``, ``--decoder``):

* ``op``: the model's in-graph ``TFLite_Detection_PostProcess`` op (form-op models only);
* ``edgedet``: edgedet's numpy decode + NMS (``edgedet.postprocess``); a form-op model is stripped
  of its op at load, and this decode reproduces the op (same boxes, classes and scores);
* ``auto``: ``edgedet`` whenever the op can be stripped (its anchors are a constant tensor) - it
  gives the op's detections bit for bit and takes less time than the op itself (measured with
  ``tools/bench_decode.py``, see docs/models.md) - else ``op``.

``decode`` returns final detections: boxes in pixels of the frame (``Prepared.to_frame``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .config import config_from_dict, renamed
from .detections import Detections
from .errors import ConfigError
from .labels import class_ids_for, fit_labels, generic_labels, read_label_file
from .model import DECODERS, LoadedModel, ModelInfo, open_model
from .postprocess.decode import DecodeSettings, SSDDecoder
from .preprocess import Prepared, Preprocessor, letterbox_or_stretch
from .sidecar import resolve_relative

__all__ = ["Detector", "Prepared", "RawOutputs", "ModelInfo"]

log = logging.getLogger("edgedet.model")


@dataclass
class RawOutputs:
    """Copies of the model's output tensors of one invoke (by role) and how long the invoke took."""

    arrays: dict[str, np.ndarray]
    invoke_ms: float


class Detector:
    """Object detection with one SSD ``.tflite`` model."""

    def __init__(self, loaded: LoadedModel, path: Path, labels: list[str], *, score_threshold: float,
                 iou_threshold: Optional[float], max_detections: Optional[int], class_agnostic: bool,
                 resize: str, classes: Optional[Sequence[Union[str, int]]]) -> None:
        self._m = loaded
        self.path = path
        self.interpreter = loaded.interpreter
        self.labels = labels
        spec = loaded.input_spec
        self.input_size: tuple[int, int] = (spec.width, spec.height)
        self.score_threshold = float(score_threshold)
        opts = loaded.options
        self.iou_threshold = float(opts.iou_threshold if iou_threshold is None else iou_threshold)
        self.max_detections = int(opts.max_detections if max_detections is None else max_detections)
        self.class_agnostic = bool(class_agnostic)
        self.class_filter: Optional[np.ndarray] = (
            None if classes is None or len(classes) == 0 else np.array(class_ids_for(classes, labels), np.int32)
        )
        self.preprocessor = Preprocessor(spec, resize)
        self._input_index = loaded.input_index
        self.last_timings: dict[str, float] = {}
        self._load_args: Optional[dict] = None  # the constructor's settings, set by from_path (for replica)
        self.decoder: Optional[SSDDecoder] = None
        if loaded.decoder == "ours":
            mode = "fast" if (class_agnostic or not opts.use_regular_nms) else "regular"
            settings = DecodeSettings(
                score_threshold=self.score_threshold,
                iou_threshold=self.iou_threshold,
                max_detections=self.max_detections,
                mode=mode,
                max_classes_per_detection=opts.max_classes_per_detection if mode == "fast" else 1,
                detections_per_class=opts.detections_per_class,
                background=opts.background,
                scales=(opts.y_scale, opts.x_scale, opts.h_scale, opts.w_scale),
                box_order=opts.box_order,
                size_transform=opts.size_transform,
                score_activation=opts.score_activation,
            )
            details = {d["index"]: d for d in self.interpreter.get_output_details()}
            self.decoder = SSDDecoder(loaded.anchors, settings, boxes_quant=loaded.roles.boxes_quant,
                                      scores_quant=loaded.roles.scores_quant,
                                      scores_dtype=details[loaded.roles.scores]["dtype"])
        roles = loaded.roles
        self._outputs = {"boxes": roles.boxes, "scores": roles.scores}
        if loaded.decoder == "op":
            self._outputs.update(classes=roles.classes, count=roles.count)
        self.info = ModelInfo(
            path=path,
            form=loaded.form,
            input_size=self.input_size,
            input_dtype=np.dtype(spec.dtype).name,
            input_quantization=(float(spec.scale), int(spec.zero_point)),
            normalization=None if spec.mean is None else (tuple(spec.mean), tuple(spec.std)),
            color=spec.color,
            num_anchors=int(loaded.num_anchors),
            num_classes=int(opts.num_classes),
            options=opts,
            postprocess=loaded.decoder,
            resize=resize,
            backend=loaded.backend,
            threads=loaded.threads,
            anchors_source=loaded.anchors_source,
            name=str(loaded.sidecar.get("name") or path.stem),
        )

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: Union[str, os.PathLike], *, threads: Optional[int] = None,
                  labels: Union[str, os.PathLike, Sequence[str], None] = None, score_threshold: float = 0.5,
                  iou_threshold: Optional[float] = None, max_detections: Optional[int] = None,
                  class_agnostic: bool = False, decoder: str = "auto", resize: str = "auto",
                  classes: Optional[Sequence[Union[str, int]]] = None, postprocess: Optional[str] = None) -> Detector:
        """Load a model. ``labels``: a label file, a list, or None (the sidecar's, else ``class0..``).

        ``iou_threshold`` / ``max_detections`` default to the model's own. ``class_agnostic=True``
        forces one NMS over all classes; False keeps the model's own NMS (the op's fast mode is
        class-agnostic; raw models get per-class NMS). ``decoder``: see the module docstring
        (``postprocess`` is its old name, where ``ours`` means ``edgedet``). The settings get the
        checks of the configuration (``ConfigError`` naming the ``model.*`` key) before the file is read.
        """
        path = Path(path)
        decoder = _checked_decoder(score_threshold=score_threshold, iou_threshold=iou_threshold,
                                   max_detections=max_detections, decoder=decoder, postprocess=postprocess)
        loaded = _open(path, threads, decoder, iou_threshold, max_detections, class_agnostic)
        names = _labels(labels, loaded, path)
        if labels is None and names == generic_labels(len(names)):
            log.warning("model %s has no labels: its %d classes are named class0..class%d (give --labels or a "
                        "sidecar `labels:`)", path.name, len(names), len(names) - 1)
        mode = letterbox_or_stretch(resize, (loaded.sidecar.get("input") or {}).get("resize"))
        det = cls(loaded, path, names, score_threshold=score_threshold, iou_threshold=iou_threshold,
                  max_detections=max_detections, class_agnostic=class_agnostic, resize=mode, classes=classes)
        det._load_args = {"labels": names, "score_threshold": score_threshold, "iou_threshold": iou_threshold,
                          "max_detections": max_detections, "class_agnostic": class_agnostic,
                          "resize": mode, "classes": classes}
        return det

    def replica(self, threads: int) -> Detector:
        """Another detector for the same model and settings with its own interpreter of ``threads``
        threads (and its own input array): for running invokes of several frames at once. Built
        from the model bytes already loaded (no file read, no strip)."""
        if self._load_args is None:
            raise TypeError("only a detector made by Detector.from_path can be replicated")
        twin = type(self)(self._m.replica(threads), self.path, **self._load_args)
        twin._load_args = self._load_args
        return twin

    # -- the three steps --------------------------------------------------------------------------
    @property
    def threads(self) -> int:
        """Threads of this detector's interpreter."""
        return int(self.info.threads)

    def prepare(self, image: np.ndarray, fmt: str = "BGR", frame_size: Optional[tuple[int, int]] = None) -> Prepared:
        """Resize + colour + normalize ``image`` into the model's (reused) input array. ``frame_size``:
        the frame ``image`` is a smaller copy of (a camera's lores stream): ``decode`` gives boxes in
        that frame's pixels."""
        return self.preprocessor.prepare(image, fmt, frame_size)

    def infer(self, prepared: Prepared) -> RawOutputs:
        """Run the model on a prepared input; returns copies of its outputs."""
        interp = self.interpreter
        t0 = time.perf_counter()
        interp.set_tensor(self._input_index, prepared.tensor)
        interp.invoke()
        ms = (time.perf_counter() - t0) * 1000.0
        arrays = {role: interp.get_tensor(idx) for role, idx in self._outputs.items()}  # get_tensor copies
        return RawOutputs(arrays, ms)

    def decode(self, raw: RawOutputs, prepared: Prepared) -> Detections:
        """Final detections: boxes in frame pixels (clipped; ``Prepared.to_frame``), 0-based class
        ids, filtered by ``classes``."""
        if self.decoder is None:
            a = raw.arrays
            n = int(np.asarray(a["count"]).reshape(-1)[0])
            boxes = a["boxes"].reshape(-1, 4)[:n]
            scores = a["scores"].reshape(-1)[:n].astype(np.float32)
            cls = a["classes"].reshape(-1)[:n].astype(np.int32)
            keep = scores >= np.float32(self.score_threshold)
            boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
            if len(scores) > self.max_detections:
                boxes, scores, cls = boxes[: self.max_detections], scores[: self.max_detections], cls[
                    : self.max_detections]
        else:
            boxes, scores, cls = self.decoder(raw.arrays["boxes"], raw.arrays["scores"])
        if self.class_filter is not None and len(cls):
            keep = np.isin(cls, self.class_filter)
            boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
        if len(scores) == 0:
            return Detections.empty()
        return Detections(prepared.to_frame(boxes), scores, cls)

    def detect(self, image: np.ndarray, fmt: str = "BGR") -> Detections:
        prepared = self.prepare(image, fmt)
        raw = self.infer(prepared)
        t0 = time.perf_counter()
        dets = self.decode(raw, prepared)
        self.last_timings = {
            "preprocess_ms": prepared.preprocess_ms,
            "invoke_ms": raw.invoke_ms,
            "decode_ms": (time.perf_counter() - t0) * 1000.0,
        }
        return dets

    def __repr__(self) -> str:
        i = self.info
        return (f"Detector({self.path.name}, form={i.form}, postprocess={i.postprocess}, "
                f"input={i.input_size[0]}x{i.input_size[1]} {i.input_dtype}, classes={i.num_classes})")


def _checked_decoder(*, postprocess: Optional[str], **settings) -> str:
    """The settings checked as ``model.*`` options of a config file; the decoder under its model name."""
    if postprocess is not None:
        settings["decoder"] = renamed("model.postprocess").new_value(postprocess)
    model = config_from_dict({"model": {k: v for k, v in settings.items() if v is not None}}).model
    if model.decoder in DECODERS:
        return model.decoder
    return _MODEL_DECODER[model.decoder]


_MODEL_DECODER = {"edgedet": "ours"}  # edgedet's decoder under the name open_model gives it


def _open(path: Path, threads, decoder: str, iou_threshold, max_detections, class_agnostic) -> LoadedModel:
    loaded = open_model(path, threads=threads, decoder=decoder)
    if loaded.decoder == "op":
        _check_op_can(loaded, iou_threshold, max_detections, class_agnostic)
    return loaded


def _check_op_can(loaded: LoadedModel, iou_threshold, max_detections, class_agnostic) -> None:
    o = loaded.options
    if iou_threshold is not None and abs(float(iou_threshold) - o.iou_threshold) > 1e-6:
        raise ConfigError(f"model.iou_threshold: the in-graph op's NMS IoU is fixed at {o.iou_threshold:g}; "
                          "use --decoder edgedet for another")
    if max_detections is not None and int(max_detections) > o.max_detections:
        raise ConfigError(f"model.max_detections: the in-graph op returns at most {o.max_detections}; "
                          "use --decoder edgedet for more")
    if class_agnostic and o.use_regular_nms:
        raise ConfigError("model.class_agnostic: the in-graph op does per-class NMS; use --decoder edgedet")


def _labels(labels, loaded: LoadedModel, path: Path) -> list[str]:
    n = loaded.options.num_classes
    side = loaded.sidecar
    if labels is not None:
        if isinstance(labels, (str, os.PathLike)):
            return fit_labels(read_label_file(labels), n, source=f"label file {labels}")
        return fit_labels(list(labels), n, source="labels")
    offset = int(side.get("label_offset", 0) or 0)
    entry = side.get("labels")
    if isinstance(entry, str):
        file = resolve_relative(path, entry)
        return fit_labels(read_label_file(file), n, offset=offset, source=f"label file {file}")
    if isinstance(entry, list):
        return fit_labels(entry, n, offset=offset, source="model sidecar labels")
    from .postprocess.anchors import recognise

    if loaded.form == "raw" and loaded.anchors_source.startswith("generator mediapipe") and n == 1:
        known = recognise(loaded.input_spec.size, loaded.num_anchors, 16, 1)
        if known is not None:
            return list(known["labels"])
    from .registry import registry_labels_for_file

    known_file = registry_labels_for_file(path)
    if known_file is not None:  # a registry model used by path, without its sidecar
        return fit_labels(read_label_file(known_file), n, source=f"label file {known_file}")
    return generic_labels(n)
