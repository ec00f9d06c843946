from __future__ import annotations

import json
import time

import pytest

from edgedet.slot import LatestSlot
from edgedet.stats import PipelineStats, Series, format_text, write_json


def test_series_percentiles_over_window():
    s = Series(window=100)
    assert s.summary()["p50"] is None
    for v in range(1, 101):
        s.add(float(v))
    summ = s.summary()
    assert 50 <= summ["p50"] <= 51 and 95 <= summ["p95"] <= 96
    for _ in range(100):  # the window forgets old samples
        s.add(1000.0)
    assert s.summary()["p50"] == 1000.0 and s.summary()["n"] == 200


def test_snapshot_counts_rates_and_drops(tmp_path):
    st = PipelineStats()
    slot_a, slot_b = LatestSlot("to_infer"), LatestSlot("to_output")
    for i in range(4):
        slot_a.put(i)
    st.attach([slot_a, slot_b], source_stats=lambda: {"reconnects_total": 2})
    st.captured, st.processed, st.output = 10, 7, 7
    st.add("invoke", 20.0)
    st.frame_age.add(30.0)
    snap = st.snapshot()
    assert snap["frames"] == {"captured": 10, "processed": 7, "output": 7}
    assert snap["dropped"] == {"to_infer": 3, "to_output": 0, "total": 3}
    assert snap["stages_ms"]["invoke"]["p50"] == 20.0
    assert snap["frame_age_ms"]["p95"] == 30.0
    assert snap["fps"]["in"] > 0 and snap["source"]["reconnects_total"] == 2
    text = format_text(snap)
    assert "dropped 3 (to_infer 3, to_output 0)" in text
    assert "invoke 20.0/20.0" in text and "reconnects_total 2" in text
    assert len(text.splitlines()) <= 5
    out = tmp_path / "s.json"
    write_json(snap, out)
    assert json.loads(out.read_text())["dropped"]["total"] == 3


def test_snapshot_survives_a_failing_source_counter():
    st = PipelineStats()

    def broken():
        raise RuntimeError("gone")

    st.attach([], source_stats=broken)
    assert st.snapshot()["source"] == {"error": "gone"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_frames(st: PipelineStats, clock: FakeClock, fps: float, seconds: float) -> None:
    for _ in range(int(fps * seconds)):
        clock.now += 1.0 / fps
        st.captured += 1
        st.processed += 1
        st.output += 1


def test_recent_rate_recovers_after_a_stall_while_the_average_does_not():
    clock = FakeClock()
    st = PipelineStats(clock=clock)
    st.start()
    run_frames(st, clock, 10.0, 20.0)
    snap = st.snapshot()
    assert snap["fps_recent"]["in"] == pytest.approx(10.0, abs=0.3) and snap["rate_window_s"] == 5.0
    clock.now += 9.0  # the camera is gone for 9 s
    snap = st.snapshot()
    assert snap["fps_recent"] == {"in": 0.0, "processed": 0.0, "out": 0.0}
    run_frames(st, clock, 10.0, 2.0)  # back, 2 s in: the window still holds 3 s of the outage
    assert 3.0 <= st.snapshot()["fps_recent"]["processed"] <= 5.0
    run_frames(st, clock, 10.0, 60.0)  # a minute later
    snap = st.snapshot()
    assert snap["fps_recent"]["processed"] == pytest.approx(10.0, abs=0.3)
    assert snap["fps"]["processed"] == pytest.approx(820 / 91, abs=0.1)  # the average keeps the outage
    text = format_text(snap)
    assert "processed 10.0 | out 10.0 (last 5s), average 9.0/9.0/9.0" in text


def test_recent_rate_of_a_real_run_in_real_time():
    st = PipelineStats(rate_window=1.0)
    st.start()
    t_end = time.monotonic() + 1.5
    while time.monotonic() < t_end:
        st.captured += 1
        time.sleep(0.02)
    assert 35 <= st.snapshot()["fps_recent"]["in"] <= 55
    time.sleep(1.2)
    snap = st.snapshot()
    assert snap["fps_recent"]["in"] == 0.0 and snap["fps"]["in"] > 10
