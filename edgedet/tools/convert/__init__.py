"""``edgedet convert``: a model in (``.tflite``, TensorFlow SavedModel / Keras, or a freshly built
SSDLite), a deployable ``.tflite`` and its sidecar out.

Modules: ``route`` (the entry: which converter a source goes to), ``converter`` (the command's
work and report), ``strip`` (a file without the detection op), ``tf`` (TensorFlow sources, needs
the ``convert`` extra), ``ssdlite`` and ``anchors`` (build an SSDLite and its anchor spec), ``tf1``
(TF1 Object Detection API exports: frozen graph, zoo tarball, its ``saved_model/``; needs the
``convert`` extra), ``classes`` (keep only some classes).
"""

from __future__ import annotations

from .classes import KeepClassesReport, check_classes, keep_classes, parse_classes
from .converter import DETECTION_OP_MODES, QUANTIZE_MODES, ConvertReport, build, source_kind
from .route import convert, read_labels
from .ssdlite import build_ssdlite
from .strip import decode_section, strip_file
from .tf import convert_tf
from .tf1 import convert_tf1, is_tf1_export

__all__ = ["DETECTION_OP_MODES", "QUANTIZE_MODES", "ConvertReport", "KeepClassesReport", "build", "build_ssdlite",
           "check_classes", "convert", "convert_tf", "convert_tf1", "decode_section", "is_tf1_export", "keep_classes",
           "parse_classes", "read_labels", "source_kind", "strip_file"]
