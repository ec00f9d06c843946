"""Giving freed memory back to the system during long runs.

Each frame of a run allocates and frees a few large buffers (the decoded picture, the model input,
a copy to draw on) in several threads. glibc keeps freed memory in its heaps for reuse; with
buffers of different lifetimes the heaps fragment and the resident size creeps up for minutes
before it levels off. ``HeapTrimmer`` calls glibc's ``malloc_trim(0)`` every ``interval`` seconds
from a daemon thread: it hands the free pages of every heap back to the system. It costs well under
a millisecond per call and no per-frame work (a fixed ``M_MMAP_THRESHOLD`` would also keep the
size flat, but pays page faults on every large buffer). Without glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from typing import Callable, Optional

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0


def _malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """``with HeapTrimmer(): run()`` — trims the C heap every ``interval`` seconds while inside."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = float(interval)
        self.trims = 0
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def _loop(self) -> None:
        assert self._trim is not None
        while not self._stop.wait(self.interval):
            self._trim(0)
            self.trims += 1

    def __enter__(self) -> HeapTrimmer:
        if self._trim is not None and self.interval > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="edgedet-heap-trim", daemon=True)
            self._thread.start()
        else:
            log.debug("malloc_trim is not available: the heap is left to the C library")
        return self

    def __exit__(self, *exc) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
