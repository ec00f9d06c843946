"""Feeding an encoder process: a frame is written whole, or the reason it was not is named."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from edgedet.sinks.pipe import PipeCancelled, PipeClosed, PipeStalled, end_process, feed, write_all

FRAME = bytes(1 << 20)  # larger than a pipe's buffer


def child(*cmd):
    proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    feed(proc, pipe_size=1 << 16)
    return proc


def test_a_reading_child_gets_every_byte():
    proc = subprocess.Popen(["wc", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    feed(proc)
    write_all(proc, (b"head", memoryview(FRAME)), timeout=10)
    proc.stdin.close()
    assert int(proc.stdout.read()) == len(FRAME) + 4
    proc.wait()


def test_a_child_that_never_reads_is_reported_stalled_at_the_deadline():
    proc = child("sleep", "30")
    try:
        t0 = time.monotonic()
        with pytest.raises(PipeStalled):
            write_all(proc, (FRAME,), timeout=0.5)
        assert time.monotonic() - t0 < 5.0
    finally:
        end_process(proc, 0.5)


def test_a_child_that_exited_is_reported_closed():
    proc = child("true")
    proc.wait()
    with pytest.raises(PipeClosed):
        write_all(proc, (FRAME,), timeout=5)
    end_process(proc, 0.5)


def test_a_stop_cancels_a_blocked_write_at_once():
    proc = child("sleep", "30")
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(PipeCancelled):
            write_all(proc, (FRAME,), timeout=10, cancel=cancel)
        assert time.monotonic() - t0 < 5.0  # long before the 10 s timeout
    finally:
        end_process(proc, 0.5)


def test_end_process_ends_a_child_that_ignores_the_end_of_its_input():
    proc = child("sleep", "30")
    t0 = time.monotonic()
    end_process(proc, 0.3)
    assert proc.poll() is not None and time.monotonic() - t0 < 5.0  # not sleep's 30 s
