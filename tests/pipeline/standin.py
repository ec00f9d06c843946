"""A tiny stand-in detector with the ``Detector`` API, for tests of the pipeline machinery.

It "detects" one box in the middle of every frame (class 0, score 0.9) and can be made slow
(``infer_s``) or failing (``fail_at``). Real-model tests use ``edgedet.detector.Detector``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgedet.detections import Detections


@dataclass
class _Prepared:
    width: int
    height: int


@dataclass
class _Raw:
    index: int
    invoke_ms: float


class StandinDetector:
    labels = ["person", "car"]
    input_size = (300, 300)

    def __init__(self, infer_s: float = 0.0, fail_at: int | None = None) -> None:
        self.infer_s = infer_s
        self.fail_at = fail_at
        self.calls = 0
        self.formats: list[str] = []

    def prepare(self, image, fmt="BGR"):
        self.formats.append(fmt)
        h, w = image.shape[:2]
        if fmt == "YUV420":
            h = h * 2 // 3
        return _Prepared(w, h)

    def infer(self, prepared):
        t0 = time.perf_counter()
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("stand-in failure")
        self.calls += 1
        if self.infer_s:
            time.sleep(self.infer_s)
        return _Raw(self.calls, (time.perf_counter() - t0) * 1000.0)

    def decode(self, raw, prepared):
        w, h = prepared.width, prepared.height
        return Detections(np.array([[w * 0.25, h * 0.25, w * 0.75, h * 0.75]], np.float32),
                          np.array([0.9], np.float32), np.array([0], np.int32))

    def detect(self, image):
        p = self.prepare(image)
        return self.decode(self.infer(p), p)
