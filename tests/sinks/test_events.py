"""The events file: whole lines only, even when the disk fills up or a run is killed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edgedet.detections import Detections
from edgedet.errors import SinkError
from edgedet.frame import Frame, Result
from edgedet.sinks.events import EventsSink

pytestmark = pytest.mark.timeout(180)
LABELS = ["person", "bicycle", "car"]


def _result(index: int, boxes: int = 3) -> Result:
    frame = Frame(np.zeros((360, 480, 3), np.uint8), index, time.monotonic(), 1_700_000_000.0 + index)
    xyxy = np.tile(np.array([[10.5, 20.25, 200.125, 300.0]], np.float32), (boxes, 1))
    dets = Detections(xyxy, np.full(boxes, 0.75, np.float32), np.zeros(boxes, np.int32))
    return Result(frame, dets, {}, LABELS)


def _lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), data[-80:]
    return [json.loads(line) for line in data.decode().splitlines()]


def test_a_full_disk_leaves_whole_lines_and_names_the_file(small_fs):
    path = small_fs / "events.jsonl"
    sink = EventsSink(str(path))
    sink.open()
    written = 0
    with pytest.raises(SinkError) as info:
        for i in range(100_000):
            sink.write(_result(i, boxes=20))  # ~1.6 kB a line: a cut in the middle of one is certain
            written += 1
    sink.close()
    assert str(path) in str(info.value) and "No space left on device" in str(info.value)
    events = _lines(path)
    assert len(events) == written > 500 and [e["frame"] for e in events] == list(range(written))


def test_appending_after_a_cut_removes_the_partial_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"frame":1}\n{"frame":2}\n{"fra')  # a power cut mid-line (another writer)
    with EventsSink(str(path), append=True) as sink:
        sink.write(_result(3))
    assert [e["frame"] for e in _lines(path)] == [1, 2, 3]


def test_each_line_is_on_disk_when_write_returns(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = EventsSink(str(path))
    sink.open()
    for i in range(3):
        sink.write(_result(i))
        assert len(_lines(path)) == i + 1  # no user-space buffer: a SIGKILL loses nothing reported
    sink.close()
    sink.close()  # idempotent


def test_full_disk_from_the_command_line_is_one_line_and_exit_6(small_fs, cli_env, start_edgedet,
                                                                pedestrians_video):
    (small_fs / "other-data").write_bytes(bytes(1_700_000))  # a disk already nearly full
    ev = small_fs / "events.jsonl"
    proc = start_edgedet(["--source", pedestrians_video, "--loop", "--events", ev], cli_env)
    _, err = proc.communicate(timeout=170)
    assert proc.returncode == 6, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(ev) in errors[0] and "No space left on device" in errors[0], err
    assert "Traceback" not in err
    events = _lines(ev)
    assert len(events) > 100 and [e["frame"] for e in events] == list(range(len(events)))
