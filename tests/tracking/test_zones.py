"""Zones and lines: who is inside (by the feet), who crossed which way, in pixels or fractions."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgedet.detections import Detections
from edgedet.errors import ConfigError
from edgedet.tracking import Line, Zone, ZoneCounter, anchor_points, points_in_polygon

FRAME = (640, 480)


def tracked(boxes, ids, classes=None) -> Detections:
    n = len(ids)
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.full(n, 0.9, np.float32),
                      np.zeros(n, np.int32) if classes is None else np.array(classes, np.int32), ids)


def feet_at(x: float, y: float, w: float = 40, h: float = 100) -> list[float]:
    """A box whose bottom centre is (x, y)."""
    return [x - w / 2, y - h, x + w / 2, y]


def test_occupancy_counts_objects_by_where_they_stand():
    floor = Zone("floor", ((0, 300), (640, 300), (640, 480), (0, 480)))
    counter = ZoneCounter([floor], frame_size=FRAME)
    # id 1 stands in the zone with its head above it; id 2 stands above the zone; id 3 (a car) stands in it
    where = counter.update(tracked([feet_at(100, 350), feet_at(300, 250), feet_at(500, 400, 120, 60)],
                                   [1, 2, 3], [0, 0, 2]))
    assert where.occupancy()["floor"].tolist() == [1, 3]
    assert where.counts(["person", "bicycle", "car"]) == {"floor": {"person": 1, "car": 1}}
    assert where.inside.tolist() == [[True], [False], [True]]


def test_untracked_boxes_are_not_counted():
    counter = ZoneCounter([Zone("all", ((0, 0), (640, 0), (640, 480), (0, 480)))], frame_size=FRAME)
    where = counter.update(tracked([feet_at(100, 350), feet_at(200, 350)], [-1, 5]))
    assert where.occupancy()["all"].tolist() == [5]
    plain = Detections(np.array([feet_at(100, 350)], np.float32), [0.9], [0])
    assert counter.update(plain).occupancy()["all"].tolist() == []


def test_line_counts_in_and_out_with_direction():
    gate = Line("gate", (100, 240), (540, 240))  # drawn left to right: moving down the picture is "in"
    counter = ZoneCounter(lines=[gate], frame_size=FRAME)
    crossings = []
    path = [200, 220, 235, 250, 270, 260, 230, 210, 215]  # down across, then back up across
    for y in path:
        crossings += counter.update(tracked([feet_at(300, y)], [7])).crossings
    assert [(c.line, c.track_id, c.direction) for c in crossings] == [("gate", 7, "in"), ("gate", 7, "out")]
    assert counter.line_counts() == {"gate": {"in": 1, "out": 1}}


def test_moves_beside_or_along_a_line_do_not_count():
    counter = ZoneCounter(lines=[Line("gate", (100, 240), (300, 240))], frame_size=FRAME)
    for y in (200, 280, 200, 280):  # crossing the line's extension, right of its end
        counter.update(tracked([feet_at(500, y)], [1]))
    for x in (120, 160, 200, 260):  # walking along it
        counter.update(tracked([feet_at(x, 240)], [2]))
    assert counter.line_counts() == {"gate": {"in": 0, "out": 0}}


def test_a_crossing_during_missed_frames_still_counts():
    counter = ZoneCounter(lines=[Line("gate", (0, 240), (640, 240))], frame_size=FRAME)
    counter.update(tracked([feet_at(300, 200)], [1]))
    counter.update(tracked([], []))  # not detected for a frame
    counter.update(tracked([feet_at(300, 300)], [1]))
    assert counter.line_counts()["gate"]["in"] == 1


def test_ended_tracks_are_forgotten():
    counter = ZoneCounter(lines=[Line("gate", (0, 240), (640, 240))], frame_size=FRAME)
    counter.update(tracked([feet_at(300, 200)], [1]))
    counter.update(tracked([], []), ended=[1])
    counter.update(tracked([feet_at(300, 300)], [1]))  # no previous point any more: nothing crossed
    assert counter.line_counts()["gate"] == {"in": 0, "out": 0}


def test_normalized_coordinates_give_the_same_answers_as_pixels():
    pixel = ZoneCounter([Zone("z", ((64, 240), (320, 240), (320, 480), (64, 480)))],
                        [Line("l", (0, 360), (640, 360))], frame_size=FRAME)
    normalized = ZoneCounter([Zone("z", ((0.1, 0.5), (0.5, 0.5), (0.5, 1.0), (0.1, 1.0)), normalized=True)],
                             [Line("l", (0.0, 0.75), (1.0, 0.75), normalized=True)], frame_size=FRAME)
    assert np.allclose(normalized.polygons[0], pixel.polygons[0])
    assert np.allclose(normalized.segments, pixel.segments)
    for y in (300, 400):
        a = pixel.update(tracked([feet_at(200, y)], [1]))
        b = normalized.update(tracked([feet_at(200, y)], [1]))
        assert a.inside.tolist() == b.inside.tolist() == [[True]]
    assert pixel.line_counts() == normalized.line_counts() == {"l": {"in": 1, "out": 0}}
    assert Zone("z", ((0.1, 0.5), (0.5, 0.5), (0.5, 1.0)), normalized=True).in_pixels(1280, 720).tolist() == [
        [128.0, 360.0], [640.0, 360.0], [640.0, 720.0]]


def test_points_in_a_concave_polygon_match_opencv():
    polygon = np.array([[50, 50], [400, 60], [420, 400], [250, 200], [60, 420]], np.float64)  # concave
    pts = np.random.default_rng(3).uniform(0, 480, (2000, 2))
    ours = points_in_polygon(pts, polygon)
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    cv = np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in pts])
    clear = np.abs(cv) > 1e-6  # points on an edge may go either way
    assert np.array_equal(ours[clear], cv[clear] > 0)


def test_anchor_points():
    boxes = np.array([[10, 20, 30, 60]], np.float32)
    assert anchor_points(boxes).tolist() == [[20.0, 60.0]]
    assert anchor_points(boxes, "center").tolist() == [[20.0, 40.0]]


@pytest.mark.parametrize("make", [
    lambda: Zone("z", ((0, 0), (1, 1))),
    lambda: Zone("z", ((0, 0), (1.5, 0), (1, 1)), normalized=True),
    lambda: Line("l", (0, 0), (0, 0)),
    lambda: Line("l", (0, 0), (2, 0.5), normalized=True),
    lambda: ZoneCounter([Zone("a", ((0, 0), (1, 0), (1, 1)))], [Line("a", (0, 0), (1, 1))], frame_size=FRAME),
    lambda: ZoneCounter([Zone("a", ((0, 0), (1, 0), (1, 1)), normalized=True)]),
    lambda: ZoneCounter(anchor="head"),
])
def test_bad_geometry_is_a_config_error(make):
    with pytest.raises(ConfigError):
        make()
