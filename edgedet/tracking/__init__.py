"""Tracking: ids that follow objects across frames, object events, zones and lines.

    tracker = ByteTracker(TrackerSettings(max_unseen_s=2.0))
    counter = ZoneCounter([Zone("door", ((0.1, 0.5), (0.4, 0.5), (0.4, 1.0), (0.1, 1.0)), normalized=True)],
                          [Line("gate", (0, 300), (640, 300))], frame_size=(640, 480))
    events = ObjectEvents(labels)
    for t, frame, detections in ...:
        tracked = tracker.update(detections, t, frame=frame)          # detections with track_ids
        where = counter.update(tracker.boxes(), ended=tracker.ended_ids)
        for event in events.update(tracked, t, ended=tracker.ended_ids, frame=frame, zones=where,
                                   first_seen=tracker.first_seen(tracked.track_ids)):
            ...                                                        # new / update / end
"""

from __future__ import annotations

from .appearance import colour_histograms, hellinger
from .bytetrack import ByteTracker, TrackerSettings, group_boxes, part_boxes
from .events import EventSettings, ObjectEvent, ObjectEvents, Snapshot
from .kalman import MotionNoise
from .matching import greedy_match, hungarian_match
from .zones import Crossing, Line, Zone, ZoneCounter, ZoneUpdate, anchor_points, points_in_polygon

__all__ = [
    "ByteTracker",
    "Crossing",
    "EventSettings",
    "Line",
    "MotionNoise",
    "ObjectEvent",
    "ObjectEvents",
    "Snapshot",
    "TrackerSettings",
    "Zone",
    "ZoneCounter",
    "ZoneUpdate",
    "anchor_points",
    "colour_histograms",
    "greedy_match",
    "group_boxes",
    "hellinger",
    "hungarian_match",
    "part_boxes",
    "points_in_polygon",
]
