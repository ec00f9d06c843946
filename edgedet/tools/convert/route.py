"""``edgedet convert``'s entry: a TF1 Object Detection API export goes to ``tf1.convert_tf1``,
anything else (``.tflite``, SavedModel, Keras) to ``converter.convert``. User labels are read here
(a text file, one name a line, or a ``.pbtxt`` label map by id) and reach the output's sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ...errors import ConfigError
from ...sidecar import update_sidecar
from .converter import ConvertReport, accuracy_summary
from .converter import convert as convert_model
from .tf1 import convert_tf1, is_tf1_export, read_label_map


def read_labels(labels) -> Optional[list]:
    """Labels given by the user: None, a list, a text file or a ``.pbtxt`` label map."""
    if labels is None or isinstance(labels, (list, tuple)):
        return None if labels is None else [str(x) for x in labels]
    from ...labels import read_label_file

    path = Path(labels)
    return read_label_map(path) if path.suffix.lower() == ".pbtxt" else read_label_file(path)


def convert(src, out, *, labels=None, log: Optional[Callable[[str], None]] = None, **kwargs) -> ConvertReport:
    """Convert ``src`` to ``out``: see ``converter.convert`` (its keywords) and ``tf1.convert_tf1``."""
    log = log or (lambda msg: None)
    names = read_labels(labels)
    if not is_tf1_export(src):
        return convert_model(src, out, labels=names, log=log, **kwargs)
    images, annotations = kwargs.pop("eval_images", None), kwargs.pop("eval_annotations", None)
    limit, progress = kwargs.pop("eval_limit", None), kwargs.pop("progress", True)
    kwargs.pop("measure_speed", None)
    if kwargs.pop("input_size", None):
        raise ConfigError("--input-size is for a .tflite with a dynamic input; a TF1 export has its own size")
    if (images is None) != (annotations is None):
        raise ConfigError("--eval needs both --images and --annotations")
    report = convert_tf1(src, out, labels=names, log=log, **kwargs)
    if images is not None:
        from ..evaluate import evaluate

        log("evaluating the converted model")
        report.accuracy_after = accuracy_summary(evaluate(out, images, annotations, threads=kwargs.get("threads"),
                                                          limit=limit, progress=progress))
        update_sidecar(out, accuracy=report.accuracy_after)
    return report
