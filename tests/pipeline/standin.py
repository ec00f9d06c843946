"""A tiny stand-in detector implementing the pipeline's ``Detector`` protocol, for tests of the
pipeline machinery.

It prepares frames for real (a 32x32 input, so boxes map back through ``Prepared`` like a model's)
and "detects" one box in the middle of every frame (class 0, score 0.9); it can be made slow
(``infer_s``) or failing (``fail_at``), and replicated. Real-model tests use
``edgedet.detector.Detector``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgedet.detections import Detections
from edgedet.preprocess import InputSpec, Prepared, Preprocessor

MIDDLE = np.array([[0.25, 0.25, 0.75, 0.75]], np.float32)  # (ymin, xmin, ymax, xmax) of the model input


@dataclass
class StandinInfo:
    name: str = "standin"
    threads: int = 1


@dataclass
class _Raw:
    index: int
    invoke_ms: float


class StandinDetector:
    labels = ["person", "car"]
    input_size = (32, 32)

    def __init__(self, infer_s: float = 0.0, fail_at: int | None = None, threads: int = 1) -> None:
        self.infer_s = infer_s
        self.fail_at = fail_at
        self.info = StandinInfo(threads=threads)
        self.calls = 0
        self.formats: list[str] = []
        self.replicas: list[StandinDetector] = []
        self.preprocessor = Preprocessor(InputSpec(*self.input_size, np.dtype(np.uint8)))

    @property
    def threads(self) -> int:
        return self.info.threads

    def prepare(self, image, fmt="BGR", frame_size=None) -> Prepared:
        self.formats.append(fmt)
        return self.preprocessor.prepare(image, fmt, frame_size)

    def infer(self, prepared):
        t0 = time.perf_counter()
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("stand-in failure")
        self.calls += 1
        if self.infer_s:
            time.sleep(self.infer_s)
        return _Raw(self.calls, (time.perf_counter() - t0) * 1000.0)

    def decode(self, raw, prepared: Prepared) -> Detections:
        return Detections(prepared.to_frame(MIDDLE), np.array([0.9], np.float32), np.array([0], np.int32))

    def replica(self, threads: int) -> StandinDetector:
        twin = type(self)(infer_s=self.infer_s, fail_at=self.fail_at, threads=threads)
        self.replicas.append(twin)
        return twin

    def detect(self, image):
        p = self.prepare(image)
        return self.decode(self.infer(p), p)
