"""HeapTrimmer: freed memory goes back to the system while a run goes on."""

from __future__ import annotations

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
