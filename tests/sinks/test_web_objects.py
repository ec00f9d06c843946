"""What the web view and ``/metrics`` keep of tracked objects, zones and lines (no sockets here;
tests/network/test_http.py serves them over real ones)."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.config import HttpConfig
from edgedet.detections import Detections
from edgedet.sinks.http import RECENT_OBJECTS, HttpSink
from edgedet.tracking import ObjectEvents


def people(n: int):
    """``n`` people, one after the other, each seen twice then gone: their new / update / end events."""
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[40:100, 20:40] = 200
    events = ObjectEvents(["person"])
    out = []
    for i in range(1, n + 1):
        for t, score in ((i, 0.6), (i + 0.1, 0.9)):
            out += events.update(Detections([[20, 40, 40, 100]], [score], [0], [i]), t, frame=frame)
        out += events.update(Detections(np.zeros((0, 4)), [], [], []), i + 0.5, ended=[i])
    return out


def test_the_web_view_keeps_the_latest_objects_newest_first_with_their_best_snapshot():
    sink = HttpSink(HttpConfig(listen="127.0.0.1:8080"))  # never opened
    events = people(RECENT_OBJECTS + 5)
    sink.on_objects(events[:-1])  # the last person is still there
    records = sink.objects.records()
    assert len(records) == RECENT_OBJECTS
    assert [r["id"] for r in records] == list(range(RECENT_OBJECTS + 5, 5, -1))
    assert records[0]["state"] == "live" and {r["state"] for r in records[1:]} == {"ended"}
    first = records[-1]
    assert first["duration"] == pytest.approx(0.1) and first["top_score"] == pytest.approx(0.9)
    assert first["snapshot"] == "objects/6.jpg" and sink.objects.jpeg(6)[:2] == b"\xff\xd8"
    assert sink.objects.jpeg(5) is None  # forgotten with the oldest


def test_metrics_count_objects_per_label_and_show_zones_and_lines():
    from prometheus_client.parser import text_string_to_metric_families

    from edgedet.sinks.metrics import Metrics

    tracking = {"objects": 3, "alive": 1, "moving": 1, "zones": {"door": {"person": 1}, "yard": {}},
                "lines": {"gate": {"in": 4, "out": 2}}}
    metrics = Metrics(lambda: {"tracking": tracking})
    metrics.observe_objects(people(3))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}
    assert samples[("edgedet_objects_total", (("label", "person"),))] == 3  # new events only
    assert samples[("edgedet_objects_alive", ())] == 1
    assert samples[("edgedet_zone_occupancy", (("zone", "door"),))] == 1
    assert samples[("edgedet_zone_occupancy", (("zone", "yard"),))] == 0  # an empty zone reads 0
    assert samples[("edgedet_zone_objects", (("label", "person"), ("zone", "door")))] == 1
    assert samples[("edgedet_line_crossings_total", (("direction", "in"), ("line", "gate")))] == 4
    assert samples[("edgedet_line_crossings_total", (("direction", "out"), ("line", "gate")))] == 2
    untracked = Metrics(dict).render().decode()  # tracking off: none of these
    assert "edgedet_zone" not in untracked and "edgedet_objects" not in untracked
