"""The motion gate: still scenes (with camera noise) are skipped, movement runs the model, keep-alive."""

from __future__ import annotations

import time

import numpy as np
import pytest

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
