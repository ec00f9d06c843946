"""The motion gate: still scenes (with camera noise) are skipped, movement runs the model, keep-alive."""

from __future__ import annotations

import time

import numpy as np
import pytest
from collect import Collect

from edgedet.config import config_from_dict
from edgedet.errors import ConfigError
from edgedet.motion import MotionDetector, MotionGate, MotionSettings
from edgedet.pipeline import build_motion


def scene(rng, person_x=None, size=(360, 480)):
    h, w = size
    img = np.full((h, w, 3), 90, np.uint8)
    img[200:, :] = 140  # a floor
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)  # sensor noise
    if person_x is not None:
        img[150:260, person_x:person_x + 30] = (40, 40, 200)
    return img


def test_noise_is_not_motion_and_a_small_walker_is():
    rng = np.random.default_rng(1)
    det = MotionDetector()
    assert det.update(scene(rng)) == 1.0  # the first frame: nothing to compare with
    still = [det.update(scene(rng)) for _ in range(30)]
    assert max(still) < MotionSettings().threshold
    walking = [det.update(scene(rng, 100 + 6 * i)) for i in range(10)]
    assert min(walking) >= MotionSettings().threshold


def test_gate_runs_on_motion_while_busy_and_every_keepalive():
    rng = np.random.default_rng(2)
    gate = MotionGate(MotionSettings(keepalive_s=2.0))
    t = np.arange(100) / 10.0
    runs = [gate.wants(scene(rng), ti) for ti in t[:50]]
    assert [i for i, r in enumerate(runs) if r] == [0, 20, 40]  # first frame, then every 2 s
    assert all(gate.wants(scene(rng), ti, busy=True) for ti in t[50:55])  # tracked objects moving
    moving = [gate.wants(scene(rng, 100 + 6 * i), ti) for i, ti in enumerate(t[55:65])]
    assert all(moving)
    assert gate.stats()["frames"] == 65 and gate.stats()["skipped"] == 65 - gate.stats()["inferred"]


def test_gate_costs_far_less_than_a_model():
    rng = np.random.default_rng(3)
    frames = [scene(rng, size=(720, 1280)) for _ in range(5)]
    gate = MotionGate()
    gate.wants(frames[0], 0.0)
    times = []
    for i in range(50):
        t0 = time.perf_counter()
        gate.wants(frames[i % 5], 0.1 * i)
        times.append(time.perf_counter() - t0)
    assert np.median(times) * 1000 < 5.0  # a 720p frame; the detector takes tens of ms


def test_motion_settings_are_checked_in_the_config():
    with pytest.raises(ConfigError, match="motion.keepalive_s"):
        config_from_dict({"motion": {"keepalive_s": 0}})
    with pytest.raises(ConfigError, match="motion.threshold"):
        config_from_dict({"motion": {"threshold": 2}})
    assert build_motion(config_from_dict({})) is None
    gate = build_motion(config_from_dict({"motion": {"enabled": True, "keepalive_s": 3}}))
    assert gate.settings.keepalive_s == 3.0


def test_a_pending_object_gets_a_burst_once_per_keepalive_look():
    rng = np.random.default_rng(4)
    gate = MotionGate(MotionSettings(keepalive_s=2.0, burst=3))
    assert gate.wants(scene(rng), 0.0)  # first frame
    runs = [gate.wants(scene(rng), 0.1 * i, pending=True) for i in range(1, 30)]
    # a burst, then a look 2 s after the last run (2.3 s) and a burst again
    assert [i + 1 for i, r in enumerate(runs) if r] == [1, 2, 3, 23, 24, 25, 26]


@pytest.mark.parametrize("width, height", [(16, 40), (40, 100)])
def test_a_far_walker_in_a_1080p_frame_moves_pixels(width, height):
    rng = np.random.default_rng(5)
    det = MotionDetector()
    for _ in range(6):
        det.update(scene(rng, size=(1080, 1920)))

    def walker(x):  # a dark person on the floor, a few pixels of the small picture
        img = scene(rng, size=(1080, 1920))
        img[500:500 + height, x:x + width] = 40
        return img

    moved = [det.update(walker(800 + 8 * i)) for i in range(5)]
    assert min(moved) > 0  # never lost between the sampled pixels
    assert (min(moved) >= MotionSettings().threshold) == (width >= 40)  # the larger one is motion


@pytest.mark.parametrize("fps", [5, 10, 30])
def test_a_pending_object_gets_a_burst_of_the_same_time_at_any_frame_rate(fps):
    rng = np.random.default_rng(6)
    gate = MotionGate(MotionSettings(keepalive_s=4.0, burst=2, burst_s=1.0))
    img = scene(rng)
    gate.wants(img, 0.0)
    runs = [gate.wants(img, i / fps, pending=(i == 1)) for i in range(1, 3 * fps)]
    ran_at = [(i + 1) / fps for i, r in enumerate(runs) if r]
    assert ran_at[0] == pytest.approx(1 / fps) and max(ran_at) == pytest.approx(max(2, fps) / fps)


def test_a_small_still_object_with_a_jittery_box_does_not_keep_the_model_running():
    from edgedet.detections import Detections
    from edgedet.frame import Frame, Result
    from edgedet.pipeline import TrackingStage
    from edgedet.tracking import TrackerSettings

    stage = TrackingStage(TrackerSettings(), ["person"])
    stage.fps = 10.0
    image = np.zeros((360, 480, 3), np.uint8)
    rng = np.random.default_rng(7)
    moving = []
    for i in range(100):  # a 12 x 8 box (litter on a lawn) whose edges jump by up to 3 pixels
        box = np.array([[204, 282, 216, 290]], np.float32) + rng.integers(-3, 4, (1, 4))
        stage.apply(Result(Frame(image, i, 0.0, 0.0), Detections(box, np.array([0.7], np.float32),
                                                                   np.zeros(1, np.int32))))
        moving.append(stage.moving)
    assert stage.alive == 1 and max(moving[10:]) == 0
    for i in range(100, 130):  # then it walks away
        box = np.array([[204 + 4 * (i - 100), 282, 216 + 4 * (i - 100), 290]], np.float32)
        stage.apply(Result(Frame(image, i, 0.0, 0.0), Detections(box, np.array([0.7], np.float32),
                                                                   np.zeros(1, np.int32))))
        moving.append(stage.moving)
    assert moving[-1] == 1


def test_skipped_frames_pass_the_inference_workers_by_and_stay_in_order(v1_model):
    """A still scene: the model runs on the first frame and every keep-alive; every frame reaches the
    sinks in order (recording, events), and the skipped ones do not go through the inference workers."""
    from edgedet.detector import Detector
    from edgedet.frame import Frame
    from edgedet.pipeline import Pipeline
    from edgedet.sources.base import BaseSource

    rng = np.random.default_rng(8)
    pictures = [scene(rng) for _ in range(8)]

    class Still(BaseSource):  # 10 fps of video time: frame i is taken at i / 10 s
        fps, name = 10.0, "still"

        def __init__(self, n):
            self.n, self.i = n, 0

        def read(self):
            if self.i >= self.n:
                return None
            frame = Frame(pictures[self.i % 8], self.i, self.i / 10.0, time.time())
            self.i += 1
            return frame

    detector, sink = Detector.from_path(v1_model, threads=1), Collect()
    gate = MotionGate(MotionSettings(keepalive_s=2.0))
    with Pipeline(Still(120), detector, [sink], drop=False, workers=2, threads=2, motion=gate) as p:
        snap = p.run()
    assert [r.frame.index for r in sink.results] == list(range(120))
    assert [r.frame.index for r in sink.results if r.inferred] == [0, 20, 40, 60, 80, 100]
    assert snap["frames"]["processed"] == 6 and gate.stats()["skipped"] == 114
    assert p.to_infer.puts == 6  # the skipped frames went past the workers

    sink = Collect()  # newest frame only (live): skipped frames pass by while no frame is inferred
    with Pipeline(Still(120), detector, [sink], drop=True, motion=MotionGate(MotionSettings(keepalive_s=2.0))) as p:
        p.run()
    order = [r.frame.index for r in sink.results]
    assert order == sorted(set(order)) and p.to_infer.puts < 120
