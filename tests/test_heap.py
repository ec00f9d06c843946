"""HeapTrimmer: freed memory goes back to the system while a run goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from edgedet.heap import HeapTrimmer


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_fragmented_free_memory_is_returned_while_running():
    trimmer = HeapTrimmer(interval=0.05)
    if not trimmer.available:
        pytest.skip("not glibc: malloc_trim is not available")
    blocks = [bytearray(64 * 1024) for _ in range(1600)]  # 100 MiB from the heap (below the mmap threshold)
    for i in range(0, len(blocks), 2):
        blocks[i] = None  # every other block: 50 MiB free in holes the heap cannot give back by itself
    time.sleep(0.1)
    before = _rss_mib()
    with trimmer:
        time.sleep(0.5)
    assert trimmer.trims >= 2
    assert before - _rss_mib() > 30, (before, _rss_mib())
    del blocks



PICTURES = """
import numpy as np
from edgedet.heap import fix_mmap_threshold
def rss():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))
if not fix_mmap_threshold():
    raise SystemExit(3)
first = np.full(600 * 1024, 1, np.uint8)  # a 480x360 BGR picture is 506 KiB
del first
pictures = [np.full(600 * 1024, 1, np.uint8) for _ in range(100)]
before = rss()
for i in range(0, len(pictures), 2):
    pictures[i] = None
print(before - rss())
"""


def test_picture_sized_buffers_go_back_to_the_system_when_freed():
    """With the threshold fixed (at the start of a run), a freed picture is unmapped at once, even after
    glibc saw a large free (by default every later picture then comes from the heaps, where freeing
    gives nothing back). A fresh process: the heaps of this one hold free space from earlier tests."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    p = subprocess.run([sys.executable, "-c", PICTURES], capture_output=True, text=True, timeout=60, env=env)
    if p.returncode == 3:
        pytest.skip("not glibc: mallopt is not available")
    assert p.returncode == 0, p.stderr
    assert float(p.stdout) > 25, p.stdout
