"""Object events: one new -> update... -> end story per confirmed object, with its best snapshot."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgedet.detections import Detections
from edgedet.errors import ConfigError
from edgedet.tracking import (
    ByteTracker,
    EventSettings,
    Line,
    ObjectEvents,
    TrackerSettings,
    Zone,
    ZoneCounter,
)

LABELS = ["person", "bicycle", "car"]
FPS = 10


def person(x: float, y: float = 100, score: float = 0.8) -> Detections:
    return Detections(np.array([[x, y, x + 40, y + 100]], np.float32), [score], [0])


def frame_with_marker(score: float) -> np.ndarray:
    """A 480x640 picture whose brightness tells which frame (score) it was."""
    return np.full((480, 640, 3), int(score * 255), np.uint8)


def run(frames, *, settings=EventSettings(), tracker_settings=TrackerSettings(max_unseen_s=1.0), zones=None,
        frame_fn=None, finish_at=None):
    tracker = ByteTracker(tracker_settings)
    events = ObjectEvents(LABELS, settings)
    out = []
    t = 0.0
    for i, d in enumerate(frames):
        t = i / FPS
        tracked = tracker.update(d, t)
        where = zones.update(tracker.boxes(), ended=tracker.ended_ids) if zones is not None else None
        frame = frame_fn(d) if frame_fn is not None else None
        out += events.update(tracked, t, ended=tracker.ended_ids, first_seen=tracker.first_seen(tracked.track_ids),
                             frame=frame, zones=where)
    if finish_at is not None:
        out += events.finish(finish_at)
    return out, events


def test_new_update_end_with_duration_and_top_score():
    scores = [0.6, 0.62, 0.7, 0.72, 0.9, 0.75, 0.7, 0.65, 0.7, 0.7]
    frames = [person(10 + 5 * i, score=s) for i, s in enumerate(scores)] + [Detections.empty()] * 15
    events, live = run(frames)
    kinds = [e.kind for e in events]
    assert kinds[0] == "new" and kinds[-1] == "end"
    assert kinds.count("new") == 1 and kinds.count("end") == 1
    new, end = events[0], events[-1]
    assert new.t == pytest.approx(0.2)  # confirmed at the third detection...
    assert new.first_seen == pytest.approx(0.0)  # ...but first seen at the first
    assert {e.track_id for e in events} == {1} and new.label == "person"
    assert end.first_seen == pytest.approx(0.0)
    assert end.last_seen == pytest.approx(0.9)
    assert end.duration == pytest.approx(0.9)
    assert end.top_score == pytest.approx(0.9)
    assert end.score == pytest.approx(0.7)
    assert end.t > end.last_seen + 1.0  # ended after max_unseen_s
    updates = [e for e in events if e.kind == "update"]
    assert [round(e.top_score, 2) for e in updates] == [0.9]  # the rises of >= score_gain since the last event
    assert len(live) == 0


def test_flicker_produces_no_events():
    frames = [person(100) if i % 3 == 0 else Detections.empty() for i in range(30)]
    events, _ = run(frames)
    assert events == []


def test_periodic_updates_while_seen():
    frames = [person(10 + 5 * i) for i in range(23)]
    events, _ = run(frames, settings=EventSettings(update_interval_s=1.0))
    assert [round(e.t, 1) for e in events if e.kind == "update"] == [1.2, 2.2]


def test_best_snapshot_is_the_crop_at_the_top_score():
    scores = [0.6, 0.65, 0.95, 0.7, 0.7]
    frames = [person(100 + 4 * i, score=s) for i, s in enumerate(scores)]
    events, live = run(frames, frame_fn=lambda d: frame_with_marker(float(d.scores[0])), finish_at=1.0)
    end = events[-1]
    assert end.kind == "end"
    snap = end.snapshot
    assert snap is not None and snap.score == pytest.approx(0.95) and snap.t == pytest.approx(0.2)
    assert int(snap.image[0, 0, 0]) == int(0.95 * 255)  # taken from that frame
    h, w = snap.image.shape[:2]
    assert (w, h) == (60, 150)  # the 40x100 box with a 25% margin on each side
    assert snap.box == pytest.approx((10.0, 25.0, 50.0, 125.0))
    decoded = cv2.imdecode(np.frombuffer(snap.jpeg(), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (150, 60, 3)
    assert snap.jpeg() is snap.jpeg()  # encoded once


@pytest.mark.parametrize("mode,shape", [("frame", (480, 640, 3)), ("none", None)])
def test_snapshot_modes(mode, shape):
    frames = [person(100 + 4 * i) for i in range(5)]
    events, _ = run(frames, settings=EventSettings(snapshot=mode), frame_fn=lambda d: frame_with_marker(0.5),
                    finish_at=1.0)
    snap = events[-1].snapshot
    assert (snap.image.shape if snap is not None else None) == shape


def test_zones_entered_are_reported_in_order():
    left = Zone("left", ((0, 0), (200, 0), (200, 480), (0, 480)))
    right = Zone("right", ((400, 0), (640, 0), (640, 480), (400, 480)))
    counter = ZoneCounter([left, right], [Line("middle", (300, 0), (300, 480))], frame_size=(640, 480))
    frames = [person(20 + 20 * i) for i in range(30)]  # walks left to right
    events, _ = run(frames, zones=counter, finish_at=3.0)
    new = events[0]
    assert new.kind == "new" and new.zones == ("left",) and new.current_zones == ("left",)
    entered = [e for e in events if e.kind == "update"]
    assert [e.current_zones for e in entered] == [("right",)]
    end = events[-1]
    assert end.zones == ("left", "right")
    assert counter.line_counts() == {"middle": {"in": 0, "out": 1}}


def test_finish_ends_every_live_object_and_records_are_json():
    frames = [Detections(np.array([[10 + 5 * i, 10, 50 + 5 * i, 110], [300, 200, 380, 260]], np.float32),
                         [0.8, 0.7], [0, 2]) for i in range(5)]
    events, live = run(frames, finish_at=0.5)
    ends = [e for e in events if e.kind == "end"]
    assert sorted(e.label for e in ends) == ["car", "person"]
    assert len(live) == 0
    record = json.loads(json.dumps(ends[0].to_record()))
    assert set(record) >= {"type", "id", "label", "first_seen", "last_seen", "duration", "top_score", "box", "zones"}


def test_untracked_detections_are_refused():
    with pytest.raises(ValueError):
        ObjectEvents(LABELS).update(person(10), 0.0)


@pytest.mark.parametrize("bad", [{"snapshot": "gif"}, {"crop_margin": -1}, {"score_gain": -0.1},
                                 {"update_interval_s": -1}])
def test_bad_event_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match="events."):
        EventSettings(**bad)
