"""Our SSD postprocess: anchors, the box coder, NMS and the decoder that ties them together."""

from __future__ import annotations

from .anchors import anchors_for_model, generate_anchors, load_anchor_file
from .box_coder import decode_boxes, encode_boxes
from .decode import DecodeSettings, SSDDecoder
from .nms import iou_matrix, nms, nms_sorted

__all__ = [
    "DecodeSettings",
    "SSDDecoder",
    "anchors_for_model",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "iou_matrix",
    "load_anchor_file",
    "nms",
    "nms_sorted",
]
