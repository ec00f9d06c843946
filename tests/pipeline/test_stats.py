from __future__ import annotations

import json

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
