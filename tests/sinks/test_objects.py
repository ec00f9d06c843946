"""Object events (JSON Lines) and snapshots: whole lines, a JPEG per ended object, nothing lost on SIGTERM."""

from __future__ import annotations

import json
import signal
import time

import cv2
import numpy as np
import pytest

from edgedet.detections import Detections
from edgedet.errors import SinkError
from edgedet.sinks.objects import ObjectEventsSink
from edgedet.tracking import ObjectEvents


def lifecycle():
    """new (after one frame), update (score rose), end of one person, as ObjectEvents makes them."""
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[40:100, 20:40] = 200
    events = ObjectEvents(["person"])
    out = []
    for t, score in ((0.0, 0.6), (0.1, 0.9)):
        dets = Detections([[20, 40, 40, 100]], [score], [0], [7])
        out += events.update(dets, t, frame=frame)
    out += events.update(Detections(np.zeros((0, 4)), [], [], []), 5.2, ended=[7])
    return out


def test_each_event_is_one_json_line_and_the_end_names_its_snapshot(tmp_path):
    sink = ObjectEventsSink(str(tmp_path / "objects.jsonl"), str(tmp_path / "snaps"))
    sink.open()
    events = lifecycle()
    sink.on_objects(events[:1])
    assert (tmp_path / "objects.jsonl").read_text().count("\n") == 1  # on disk as soon as it happened
    sink.on_objects(events[1:])
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "objects.jsonl").read_text().splitlines()]
    assert [(r["type"], r["id"], r["label"]) for r in lines] == [("new", 7, "person"), ("update", 7, "person"),
                                                                  ("end", 7, "person")]
    end = lines[-1]
    assert end["first_seen"] == 0.0 and end["last_seen"] == 0.1 and end["top_score"] == pytest.approx(0.9)
    assert end["box"] == [20.0, 40.0, 40.0, 100.0]
    snaps = list((tmp_path / "snaps").iterdir())
    assert [str(p) for p in snaps] == [end["snapshot"]]
    picture = cv2.imread(end["snapshot"])
    assert picture is not None and picture.shape[0] > 60  # the crop around the person, with a margin


def test_snapshot_directory_that_is_a_file_is_a_sink_error(tmp_path):
    (tmp_path / "snaps").write_text("")
    with pytest.raises(SinkError, match="snaps"):
        ObjectEventsSink(None, str(tmp_path / "snaps")).open()


def test_sigterm_leaves_whole_lines_and_ends_every_object(tmp_path, cli_env, start_edgedet, pedestrians_video):
    out = tmp_path / "objects.jsonl"
    proc = start_edgedet(["--source", pedestrians_video, "--realtime", "--object-events", out,
                          "--snapshots", tmp_path / "snaps"], cli_env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count('"new"') < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    text = out.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    new = {r["id"] for r in records if r["type"] == "new"}
    ended = [r for r in records if r["type"] == "end"]
    assert len(new) >= 3 and {r["id"] for r in ended} == new  # every object that began also ended
    assert all(r["label"] and r["duration"] >= 0 for r in ended)
    assert len(list((tmp_path / "snaps").glob("*.jpg"))) == len(ended)
