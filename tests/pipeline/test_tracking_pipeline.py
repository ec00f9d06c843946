"""The tracking stage in the pipeline: ids on results, object events, the tracker's low band, zones,
the end of every object at the end of a run, and the motion gate (stand-in detectors, real threads)."""

from __future__ import annotations

import time

import numpy as np
from collect import Collect
from standin import StandinDetector

from edgedet.config import config_from_dict
from edgedet.detections import Detections
from edgedet.frame import Frame
from edgedet.motion import MotionGate, MotionSettings
from edgedet.pipeline import Pipeline, TrackingStage, build_tracking, detector_limits
from edgedet.sinks.overlay import LINE_COLOR, ZONE_COLOR, Overlay
from edgedet.sources.base import BaseSource
from edgedet.tracking import Line, TrackerSettings, Zone

ZONE_LINE = np.array(LINE_COLOR, np.uint8)
ZONE_AMBER = np.array(ZONE_COLOR, np.uint8)

FPS = 10.0


class ScriptSource(BaseSource):
    """A file-like source at ``FPS``: ``picture(i)`` draws frame ``i`` (160 x 120)."""

    def __init__(self, n, picture):
        self.n, self.picture, self.fps, self.name = n, picture, FPS, "script"
        self.i = 0

    def read(self):
        if self.i >= self.n:
            return None
        f = Frame(self.picture(self.i), self.i, time.monotonic(), time.time())
        self.i += 1
        return f


def uniform(i):
    return np.full((120, 160, 3), i % 256, np.uint8)


class ByIndex(StandinDetector):
    """Detections scripted per frame: ``script(i) -> [(x1, y1, x2, y2, score), ...]`` in frame pixels;
    the frame index is read back from the (uniform) model input."""

    def __init__(self, script, **kw):
        super().__init__(**kw)
        self.script = script

    def infer(self, prepared):
        raw = super().infer(prepared)
        raw.index = int(prepared.tensor.reshape(-1)[0])  # the input array is reused once invoked
        return raw

    def decode(self, raw, prepared):
        rows = np.array(self.script(raw.index), np.float32).reshape(-1, 5)
        return Detections(rows[:, :4], rows[:, 4], np.zeros(len(rows), np.int32))


class BrightBox(StandinDetector):
    """A person wherever the model input is bright (> 200): a detector that only sees what moves."""

    def infer(self, prepared):
        raw = super().infer(prepared)
        raw.mask = prepared.tensor[0].max(axis=2) > 200  # the input array is reused once invoked
        return raw

    def decode(self, raw, prepared):
        mask = raw.mask
        if not mask.any():
            return Detections.empty()
        ys, xs = np.nonzero(mask)
        yxyx = np.array([[ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]], np.float32) / 32.0
        return Detections(prepared.to_frame(yxyx), np.array([0.9], np.float32), np.array([0], np.int32))


def walker(start, stop, score=0.9):
    """One person walking right from frame ``start`` to ``stop`` (exclusive)."""
    def script(i):
        if not start <= i < stop:
            return []
        x = 10 + 2 * (i - start)
        return [(x, 40, x + 20, 100, score(i) if callable(score) else score)]
    return script


def run(source, detector, stage, sink=None, motion=None):
    sink = sink or Collect()
    with Pipeline(source, detector, [sink], drop=False, tracking=stage, motion=motion) as p:
        snap = p.run()
    return sink, snap


def stage(**kw):
    return TrackingStage(TrackerSettings(**kw), ["person"])


def test_a_walker_gets_one_id_and_one_object_from_new_to_end():
    sink, snap = run(ScriptSource(120, uniform), ByIndex(walker(5, 35)), stage())
    ids = [r.detections.track_ids.tolist() for r in sink.results if len(r.detections)]
    assert ids[:2] == [[-1], [-1]]  # tentative until confirmed (3 hits)
    assert {i for row in ids[2:] for i in row} == {1}
    kinds = [(e.kind, e.track_id) for e in sink.objects]
    assert kinds == [("new", 1), ("end", 1)]
    new, end = sink.objects
    assert new.first_seen == 0.5 and end.last_seen == 3.4  # seconds of video (frame / fps)
    assert 8.4 < end.t < 8.6  # ended once unseen for 5 s of video, not of processing time
    assert end.snapshot is not None and end.top_score == np.float32(0.9)
    assert snap["tracking"]["objects"] == 1 and "track" in snap["stages_ms"]


def test_weak_detections_keep_the_track_but_are_not_reported():
    # once confirmed, every third frame the person's score dips below the threshold (0.5) but stays
    # in the low band (>= 0.45)
    script = walker(0, 60, score=lambda i: 0.47 if i > 3 and i % 3 == 2 else 0.9)
    sink, _ = run(ScriptSource(60, uniform), ByIndex(script), stage())
    reported = [r.detections for r in sink.results]
    assert all((d.scores >= 0.5).all() for d in reported)
    assert [len(d) for d in reported[:9]] == [1, 1, 1, 1, 1, 0, 1, 1, 0]
    assert [e.kind for e in sink.objects] == ["new", "end"]  # one person, never split


def test_objects_alive_at_the_end_of_the_input_end_with_it():
    sink, _ = run(ScriptSource(20, uniform), ByIndex(walker(0, 20)), stage())
    assert [e.kind for e in sink.objects] == ["new", "end"]
    assert sink.objects[-1].t == 1.9


class Annotated(Collect):
    needs_annotated = True


def test_zones_and_lines_place_tracks_count_crossings_and_are_drawn():
    left = Zone("left", ((0, 0), (0.25, 0), (0.25, 1), (0, 1)), normalized=True)  # x < 40 of 160
    gate = Line("gate", (60, 0), (60, 120))  # crossed left to right by the walker
    tracking = TrackingStage(TrackerSettings(), ["person"], zones=[left], lines=[gate])
    sink, snap = run(ScriptSource(40, uniform), ByIndex(walker(0, 40)), tracking, sink=Annotated())
    occupied = [int(r.zones.inside.sum()) for r in sink.results]
    assert occupied[3] == 1 and occupied[-1] == 0  # the walker's feet leave x < 40 on the way right
    assert sink.objects[-1].zones == ("left",) and sink.objects[-1].current_zones == ()
    # a line drawn downwards counts a move to the screen's right as "out" (edgedet.tracking.zones)
    assert sink.results[-1].line_counts == {"gate": {"in": 0, "out": 1}}
    assert snap["tracking"]["lines"] == sink.results[-1].line_counts and snap["tracking"]["zones"] == {"left": {}}
    drawn = sink.results[-1].annotated
    near_line = np.abs(drawn[:, 59:62].astype(int) - ZONE_LINE).sum(axis=2).min(axis=1) < 90
    assert near_line.sum() > 50  # the counting line, top to bottom (anti-aliased)
    near_zone = np.abs(drawn[:, 38:42].astype(int) - ZONE_AMBER).sum(axis=2).min(axis=1) < 90
    assert near_zone.sum() > 50  # the zone's right edge at x = 40


def test_overlay_names_tracked_boxes_by_id():
    image = np.zeros((120, 160, 3), np.uint8)
    boxes = Detections([[20, 40, 60, 100]], [0.9], [0])
    plain = Overlay().draw(image, boxes, ["person"])
    tracked = Overlay().draw(image, Detections(boxes.xyxy, boxes.scores, boxes.class_ids, [12]), ["person"])
    assert not np.array_equal(plain, tracked)  # "person #12 0.90" instead of "person 0.90"


def test_build_tracking_runs_the_detector_in_the_low_band_and_reports_at_the_threshold():
    cfg = config_from_dict({"model": {"score_threshold": 0.6}})
    assert detector_limits(cfg) == (0.45, 50)
    tracking = build_tracking(cfg, ["person"])
    assert tracking.threshold == 0.6 and tracking.tracker.settings.low_score == 0.45
    assert tracking.tracker.settings.new_track_score == 0.7
    off = config_from_dict({"model": {"score_threshold": 0.6}, "tracking": {"enabled": False}})
    assert detector_limits(off) == (0.6, None) and build_tracking(off) is None
    op = config_from_dict({"model": {"decoder": "op"}})
    assert detector_limits(op) == (0.45, None)  # the op's own count


def person_at(start, stop):
    """A still grey scene; a bright person crossing it from frame ``start`` to ``stop``."""
    def picture(i):
        img = np.full((120, 160, 3), 60, np.uint8)
        if start <= i < stop:
            x = 10 + 3 * (i - start)
            img[40:100, x:x + 20] = 255
        return img
    return picture


def test_motion_gate_skips_still_frames_and_tracks_still_end_on_time():
    n, keepalive = 400, 5.0
    gate = MotionGate(MotionSettings(keepalive_s=keepalive))
    detector = BrightBox()
    sink, snap = run(ScriptSource(n, person_at(200, 240)), detector, stage(), motion=gate)
    assert len(sink.results) == n  # every frame reaches the sinks
    inferred = [r.frame.index for r in sink.results if r.inferred]
    assert detector.calls == len(inferred) == snap["motion"]["inferred"]
    assert set(range(200, 240)) <= set(inferred)  # the person moving: every frame
    assert len(inferred) < 0.3 * n
    assert [e.kind for e in sink.objects] == ["new", "end"]
    end = sink.objects[-1]
    assert 28.5 < end.t < 29.5  # last seen at 23.9 s, ended 5 s later although frames were skipped
    assert all(len(r.detections) == 0 for r in sink.results if not r.inferred)


def test_without_motion_the_model_still_runs_every_keepalive_interval():
    gate = MotionGate(MotionSettings(keepalive_s=2.0))
    detector = BrightBox()
    sink, _ = run(ScriptSource(100, person_at(1000, 1000)), detector, stage(), motion=gate)
    inferred = [r.frame.index for r in sink.results if r.inferred]
    assert inferred == list(range(0, 100, 20))


def test_an_object_standing_still_from_the_start_is_confirmed_and_then_only_looked_at():
    def parked(i):
        img = np.full((120, 160, 3), 60, np.uint8)
        img[40:100, 100:140] = 255
        return img

    gate = MotionGate(MotionSettings(keepalive_s=2.0, burst=4))
    sink, _ = run(ScriptSource(300, parked), BrightBox(), stage(), motion=gate)
    assert [e.kind for e in sink.objects] == ["new", "end"]  # one object, kept for the whole video
    assert sink.objects[0].t < 1.0 and sink.objects[-1].t == 29.9
    # once it has stood still for stationary_s (3 s), it is looked at every keep-alive interval only
    later = [r.frame.index for r in sink.results if r.inferred and r.frame.index >= 50]
    assert len(later) <= 250 / 20 + 1
