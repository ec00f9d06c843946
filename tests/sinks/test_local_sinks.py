"""Overlay, recorder, events and window sinks, and the ``build_sinks`` factory."""

from __future__ import annotations

import json
import logging
import time

import cv2
import numpy as np
import pytest

from edgedet.config import config_from_dict
from edgedet.detections import Detections
from edgedet.errors import SinkError
from edgedet.frame import Frame, Result
from edgedet.sinks import SinkContext, build_sinks
from edgedet.sinks.events import EventsSink
from edgedet.sinks.overlay import Overlay, Style, class_palette
from edgedet.sinks.recorder import RecorderSink
from edgedet.sinks.window import WindowSink, display_problem

LABELS = ["person", "bicycle", "car"]


def _result(w=480, h=360, index=0, ts=None, dets=None):
    img = np.full((h, w, 3), 90, np.uint8)
    frame = Frame(img, index, time.monotonic() if ts is None else ts, 1_700_000_000.5 + index)
    if dets is None:
        dets = Detections(np.array([[10, 20, 200, 300], [250, 40, 400, 200]], np.float32),
                          np.array([0.91, 0.55], np.float32), np.array([0, 2], np.int32))
    return Result(frame, dets, {"invoke": 12.5}, LABELS)


def test_overlay_draws_boxes_in_class_colours_on_a_copy():
    r = _result()
    ov = Overlay()
    out = ov.draw(r.frame.image, r.detections, LABELS, fps=9.5, infer_ms=12.5)
    assert out is not r.frame.image and (r.frame.image == 90).all()
    # box edges carry the class colour
    assert tuple(out[150, 10]) == ov.color(0) or tuple(out[150, 11]) == ov.color(0)
    assert tuple(out[120, 400]) == ov.color(2) or tuple(out[120, 399]) == ov.color(2)
    assert ov.color(0) != ov.color(2)
    # nothing drawn far from boxes and status line
    assert (out[340:, 420:] == 90).all()


def test_overlay_text_scales_with_frame_size():
    small, big = Style.for_size(426, 240), Style.for_size(1920, 1080)
    assert big.font_scale > small.font_scale and big.thickness > small.thickness
    # text height ~2-6% of the frame height on both: readable, not overwhelming
    for st, h in ((small, 240), (big, 1080)):
        assert 0.03 <= st.text_height / h <= 0.08


def test_overlay_handles_empty_and_out_of_frame_boxes():
    ov = Overlay()
    img = np.zeros((240, 320, 3), np.uint8)
    assert (ov.draw(img, Detections.empty(), LABELS) == 0).all()
    d = Detections(np.array([[-50, -50, 1000, 1000]], np.float32), np.array([0.5], np.float32),
                   np.array([99], np.int32))
    out = ov.draw(img, d, LABELS)  # unknown class id: label is the number
    assert out.any()


def test_palette_colours_are_distinct():
    p = class_palette(90)
    assert len({tuple(c) for c in p}) == 90


def _count_frames(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return n, fps


@pytest.mark.parametrize("name", ["out.mp4", "out.avi", "out.mkv"])
def test_recorder_writes_a_playable_file(tmp_path, name):
    path = tmp_path / name
    rec = RecorderSink(str(path), context=SinkContext(source_fps=12.0))
    rec.open()
    for i in range(7):
        r = _result(index=i)
        r.annotated = r.frame.image
        rec.write(r)
    rec.close()
    rec.close()  # idempotent
    n, fps = _count_frames(path)
    assert n == 7 and fps == pytest.approx(12.0)


def test_recorder_resizes_frames_of_another_size(tmp_path):
    path = tmp_path / "mixed.mp4"
    with RecorderSink(str(path), fps=5) as rec:
        rec.write(_result(320, 240))
        rec.write(_result(640, 480))
    cap = cv2.VideoCapture(str(path))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (320, 240)
    assert _count_frames(path)[0] == 2


def test_recorder_timed_mode_keeps_real_time_for_dropped_frames(tmp_path):
    path = tmp_path / "live.mp4"
    with RecorderSink(str(path), fps=10, timed=True) as rec:
        for k, t in enumerate([100.0, 100.05, 100.3, 100.5]):  # 0.5 s of a live source
            rec.write(_result(index=k, ts=t))
    assert _count_frames(path)[0] == 6  # 0.0-0.5 s at 10 fps: frames 0..5


def test_recorder_errors(tmp_path):
    with pytest.raises(SinkError, match="does not exist"):
        RecorderSink(str(tmp_path / "no" / "dir" / "x.mp4")).open()
    with pytest.raises(SinkError, match=r"\.mp4, \.mkv"):
        RecorderSink(str(tmp_path / "x.gif")).open()
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(SinkError, match="directory"):
        RecorderSink(str(tmp_path / "d.mp4")).open()


def test_events_one_complete_line_per_result_flushed_immediately(tmp_path):
    path = tmp_path / "e.jsonl"
    sink = EventsSink(str(path))
    sink.open()
    sink.write(_result(index=3))
    # readable before close: flushed per line
    rec = json.loads(path.read_text().splitlines()[0])
    assert rec["frame"] == 3 and rec["epoch"] == pytest.approx(1_700_000_003.5)
    assert rec["time"].startswith("2023-11-14T22:13:23.5") and rec["time"].endswith("+00:00")
    assert rec["detections"][0] == {"label": "person", "class_id": 0, "score": 0.91, "box": [10.0, 20.0, 200.0, 300.0]}
    assert rec["detections"][1]["label"] == "car"
    sink.write(_result(index=4, dets=Detections.empty()))
    sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["detections"] == []


def test_events_unwritable_path_is_a_sink_error(tmp_path):
    with pytest.raises(SinkError, match="cannot write events file"):
        EventsSink(str(tmp_path / "missing" / "e.jsonl")).open()
    with pytest.raises(SinkError, match="directory"):
        EventsSink(str(tmp_path)).open()


def test_window_needs_a_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert "no display" in display_problem()
    with pytest.raises(SinkError, match="cannot open a window"):
        WindowSink().open()


def test_build_sinks_headless_and_no_display_notice(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("DISPLAY", ":0")
    cfg = config_from_dict({"output": {"record": str(tmp_path / "a.mp4"), "events": str(tmp_path / "e.jsonl")}})
    with caplog.at_level(logging.INFO, logger="edgedet.sinks"):
        sinks = build_sinks(cfg, SinkContext())
    kinds = [type(s).__name__ for s in sinks]
    if display_problem() is None:  # an OpenCV with a GUI
        assert kinds[0] == "WindowSink"
    else:
        assert kinds == ["RecorderSink", "EventsSink"]
        assert len(caplog.records) == 1 and "running headless" in caplog.text
    caplog.clear()
    cfg = config_from_dict({"output": {"headless": True}})
    with caplog.at_level(logging.INFO, logger="edgedet.sinks"):
        assert build_sinks(cfg, SinkContext()) == []
    assert not caplog.records


def test_build_sinks_live_source_records_in_real_time(tmp_path, pedestrians_video):
    from edgedet.sources import resolve_source

    out = {"headless": True, "record": str(tmp_path / "a.avi")}
    for source, live in (({"camera": "0"}, True), ({"uri": str(pedestrians_video)}, False),
                         ({"uri": str(pedestrians_video), "realtime": True}, True)):
        cfg = config_from_dict({"source": source, "output": out})
        (rec,) = build_sinks(cfg, SinkContext(live=resolve_source(cfg).live))
        assert rec.timed is live, source


def test_a_new_sink_is_one_table_entry(monkeypatch, tmp_path):
    from edgedet import sinks
    from edgedet.sinks.base import BaseSink

    class Counter(BaseSink):
        pass

    entry = sinks.SinkEntry("counter", lambda cfg: cfg.output.stats > 0, lambda cfg, ctx: Counter())
    monkeypatch.setattr(sinks, "SINKS", sinks.SINKS + (entry,))
    cfg = config_from_dict({"output": {"headless": True, "events": str(tmp_path / "e.jsonl"), "stats": 5}})
    assert [type(s).__name__ for s in build_sinks(cfg, SinkContext())] == ["EventsSink", "Counter"]
    cfg = config_from_dict({"output": {"headless": True}})
    assert build_sinks(cfg, SinkContext()) == []


def test_sinks_of_one_run_share_metrics_through_the_context_only():
    a, b = SinkContext(), SinkContext()

    def provider():
        return {"edgedet_x": ("gauge", "x", 1.0)}

    a.metrics.add(provider)
    assert a.metrics() == [provider] and b.metrics() == []
    a.metrics.remove(provider)
    a.metrics.remove(provider)  # twice: no error
    assert a.metrics() == []
