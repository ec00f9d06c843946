"""The pipeline with the real detector and model on the real videos."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from collect import Collect

from edgedet.detector import Detector
from edgedet.frame import Frame
from edgedet.pipeline import Pipeline
from edgedet.sources.base import BaseSource
from edgedet.sources.file import VideoFileSource


@pytest.fixture(scope="module")
def detector(request):
    from assets import require_asset

    model = require_asset("models/ssd_mobilenet_v1_coco_quant_postprocess.tflite")
    labels = require_asset("labels/coco_labels.txt")
    return Detector.from_path(model, threads=2, labels=str(labels))


def test_every_frame_of_a_file_finds_people(detector, pedestrians_video):
    sink = Collect()
    with Pipeline(VideoFileSource(pedestrians_video), detector, [sink], drop=False, max_frames=40) as p:
        snap = p.run()
    assert [r.frame.index for r in sink.results] == list(range(40))
    with_person = sum("person" in {r.labels[c] for c in r.detections.class_ids} for r in sink.results)
    assert with_person >= 36
    assert snap["stages_ms"]["invoke"]["n"] == 40 and snap["dropped"]["total"] == 0
    # frames are preprocessed ahead in the capture thread (files): same result as detecting each
    # frame directly, for every frame (no input buffer reused while still in flight)
    cap = cv2.VideoCapture(str(pedestrians_video))
    for r in sink.results:
        direct = detector.detect(cap.read()[1])
        np.testing.assert_allclose(r.detections.xyxy, direct.xyxy, atol=0.01)
        np.testing.assert_array_equal(r.detections.class_ids, direct.class_ids)
    cap.release()


class SlowDetector:
    """The real detector, taking at least ``delay`` seconds per inference (a slower board)."""

    def __init__(self, detector, delay):
        self.detector, self.delay = detector, delay

    def __getattr__(self, name):
        return getattr(self.detector, name)

    def infer(self, prepared):
        time.sleep(self.delay)
        return self.detector.infer(prepared)


def test_realtime_file_is_live_and_counts_drops(detector, pedestrians_video):
    # 200 fps pacing is faster than a 50 ms detector: frames must be dropped, and all of them counted
    src = VideoFileSource(pedestrians_video, realtime=True, fps=200)
    sink = Collect()
    with Pipeline(src, SlowDetector(detector, 0.05), [sink], drop=src.live, max_frames=30) as p:
        snap = p.run()
    assert len(sink.results) == 30
    assert snap["dropped"]["to_infer"] > 0
    idx = [r.frame.index for r in sink.results]
    assert idx == sorted(idx) and idx[-1] - idx[0] > 30  # frames were skipped
    # every frame is accounted for once per stage: dropped before decoding, or decoded; a decoded
    # frame is then written, or dropped on its way to the outputs
    dropped, frames = snap["dropped"], snap["frames"]
    assert dropped["to_infer"] + dropped["to_decode"] + frames["processed"] <= frames["captured"]
    assert dropped["to_output"] + frames["output"] <= frames["processed"]


class LoresSource(BaseSource):
    """Two-stream frames like the Pi camera's: a 2x main image and the original as lores."""

    live, fps, name = False, 10.0, "lores"

    def __init__(self, video):
        self.cap = cv2.VideoCapture(str(video))
        self.i = 0

    def close(self):
        self.cap.release()

    def read(self):
        if self.i >= 3:
            return None
        ok, lores = self.cap.read()
        main = cv2.resize(lores, None, fx=2, fy=2)
        f = Frame(main, self.i, time.monotonic(), time.time(), lores=lores, lores_format="BGR")
        self.i += 1
        return f


def test_lores_stream_is_detected_and_boxes_mapped_to_main(detector, pedestrians_video):
    sink = Collect()
    with Pipeline(LoresSource(pedestrians_video), detector, [sink], drop=False) as p:
        p.run()
    r = sink.results[0]
    on_lores = detector.detect(r.frame.lores)
    assert len(r.detections) == len(on_lores) > 0
    np.testing.assert_allclose(r.detections.xyxy, on_lores.xyxy * 2, atol=0.05)


def test_a_run_with_two_workers_builds_the_model_once_and_infers_with_it(monkeypatch, v1_model, pedestrians_video,
                                                                          tmp_path):
    import io
    import json

    from edgedet.config import config_from_dict
    from edgedet.pipeline import run_from_config

    built, replicas, inferring = [], [], set()
    from_path, replica, infer = Detector.from_path.__func__, Detector.replica, Detector.infer

    def counted_from_path(cls, *args, **kwargs):
        built.append(kwargs.get("threads"))
        return from_path(cls, *args, **kwargs)

    def counted_replica(self, threads):
        twin = replica(self, threads)
        replicas.append(twin)
        return twin

    def counted_infer(self, prepared):
        inferring.add(id(self))
        return infer(self, prepared)

    monkeypatch.setattr(Detector, "from_path", classmethod(counted_from_path))
    monkeypatch.setattr(Detector, "replica", counted_replica)
    monkeypatch.setattr(Detector, "infer", counted_infer)
    events = tmp_path / "e.jsonl"
    cfg = config_from_dict({"model": {"path": str(v1_model), "threads": 2, "workers": 2},
                            "source": {"uri": str(pedestrians_video), "max_frames": 30},
                            "output": {"headless": True, "events": str(events)}})
    snap = run_from_config(cfg, stats_stream=io.StringIO())
    assert snap["frames"]["output"] == 30
    assert built == [1] and len(replicas) == 1 and replicas[0].threads == 1  # one model, 2 workers x 1 thread
    assert len(inferring) == 2 and id(replicas[0]) in inferring  # the first detector is worker 0
    assert [json.loads(line)["frame"] for line in events.read_text().splitlines()] == list(range(30))
