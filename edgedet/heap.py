"""Giving freed memory back to the system during long runs.

Each frame of a run allocates and frees a few large buffers (the decoded picture, the model input,
a copy to draw on) in several threads. glibc keeps freed memory in its heaps for reuse; with
buffers of different lifetimes the heaps fragment and the resident size creeps up for minutes
before it levels off. ``HeapTrimmer`` calls glibc's ``malloc_trim(0)`` every ``interval`` seconds
from a daemon thread: it hands the free pages of every heap back to the system. It costs well under
a millisecond per call and no per-frame work.

Trimming cannot return a page that still holds one live byte, and glibc's default raises its mmap
threshold to the size of the first large block freed: from then on every picture comes from the
per-thread heaps, and small long-lived objects settle between them. Over 30 minutes at full speed
those heaps grew by 5-10 MiB in steps (the memory in use stayed flat). So ``HeapTrimmer`` also
fixes the threshold (``mallopt(M_MMAP_THRESHOLD)``, 128 KiB, glibc's own starting value) at the
start of a run: a large buffer the heaps cannot serve from the free space they already have (a
picture, a model input) is mapped for its lifetime and unmapped when freed, so the heaps stop
growing around pictures. The price is page faults on each new large buffer (about 200 per frame of a
480x360 run: 0.4 ms of kernel time, the whole CPU of a frame unchanged within noise). A
``MALLOC_MMAP_THRESHOLD_`` set in the environment is left as it is. Without glibc neither applies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from typing import Callable, Optional

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0
M_MMAP_THRESHOLD = -3  # mallopt(3)
MMAP_THRESHOLD = 128 * 1024
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"


def _glibc(symbol: str, argtypes: list) -> Optional[Callable[..., int]]:
    """A function of glibc (``malloc_trim``, ``mallopt``), or None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        func = getattr(libc, symbol)
    except (OSError, AttributeError):
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    return func


def _malloc_trim() -> Optional[Callable[[int], int]]:
    return _glibc("malloc_trim", [ctypes.c_size_t])


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Blocks of ``size`` bytes or more are mapped for their lifetime from now on (for the whole
    process); False when not glibc or when ``MALLOC_MMAP_THRESHOLD_`` already chose."""
    mallopt = None if MMAP_THRESHOLD_ENV in os.environ else _glibc("mallopt", [ctypes.c_int, ctypes.c_int])
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, int(size)) == 1


class HeapTrimmer:
    """``with HeapTrimmer(): run()`` — fixes the mmap threshold, then trims the C heap every ``interval``
    seconds while inside."""

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
        fix_mmap_threshold()
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
