"""Progress of the quantization phases: plain lines when stderr is not a terminal."""

from __future__ import annotations

from edgedet.tools.quantize.progress import phase


def test_plain_lines_name_the_phase_its_size_and_its_time():
    lines: list = []
    with phase("activation ranges", 3, lines.append) as step:
        for _ in range(3):
            step()
    assert lines[0] == "activation ranges (3 images)"
    assert lines[1].startswith("activation ranges: ") and lines[1].endswith(" s")


def test_silent_without_a_log():
    with phase("head ranges", 2) as step:
        step()
