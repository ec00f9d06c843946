from __future__ import annotations

import threading
import time

import pytest

from edgedet.slot import BoundedQueue, Closed, LatestSlot, make_handoff


def test_latest_slot_keeps_newest_and_counts_overwrites():
    slot = LatestSlot("s")
    for i in range(5):
        assert slot.put(i)
    assert slot.get(timeout=1) == 4
    assert slot.dropped == 4
    assert slot.puts == 5 and slot.gets == 1
    assert len(slot) == 0
    slot.put(7)
    assert slot.get(timeout=1) == 7
    assert slot.dropped == 4  # a value that was read is not a drop


def test_latest_slot_close_delivers_last_value_then_closed():
    slot = LatestSlot("s")
    slot.put("a")
    slot.close()
    assert not slot.put("b")  # closed: refused, not counted as a drop
    assert slot.get(timeout=1) == "a"
    with pytest.raises(Closed):
        slot.get(timeout=1)


def test_latest_slot_get_times_out_and_abort_wakes_waiter():
    slot = LatestSlot("s")
    with pytest.raises(TimeoutError):
        slot.get(timeout=0.05)
    errors = []

    def consumer():
        try:
            slot.get()
        except Closed:
            errors.append("closed")

    t = threading.Thread(target=consumer)
    t.start()
    time.sleep(0.05)
    slot.abort()
    t.join(2)
    assert not t.is_alive() and errors == ["closed"]


def test_latest_slot_abort_discards_pending_value():
    slot = LatestSlot("s")
    slot.put(1)
    slot.abort()
    with pytest.raises(Closed):
        slot.get(timeout=1)


def test_bounded_queue_keeps_everything_in_order_and_blocks_producer():
    q = BoundedQueue("q", maxsize=2)
    assert q.put(1) and q.put(2)
    assert not q.put(3, timeout=0.05)  # full: the producer waits (here: times out)
    got = []

    def consumer():
        while True:
            try:
                got.append(q.get(timeout=2))
            except Closed:
                return

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(3, 50):
        assert q.put(i)
    q.close()
    t.join(5)
    assert got == list(range(1, 50))
    assert q.dropped == 0


def test_bounded_queue_abort_releases_blocked_producer():
    q = BoundedQueue("q", maxsize=1)
    q.put(0)
    result = []
    t = threading.Thread(target=lambda: result.append(q.put(1)))
    t.start()
    time.sleep(0.05)
    assert t.is_alive()
    q.abort()
    t.join(2)
    assert result == [False]
    with pytest.raises(Closed):
        q.get(timeout=1)


def test_make_handoff_picks_by_drop():
    assert isinstance(make_handoff("a", True), LatestSlot)
    q = make_handoff("b", False, 3)
    assert isinstance(q, BoundedQueue) and q.maxsize == 3


def test_latest_slot_concurrent_producer_counts_every_value():
    slot = LatestSlot("s")
    n = 5000
    received = []
    done = threading.Event()

    def producer():
        for i in range(n):
            slot.put(i)
        slot.close()
        done.set()

    def consumer():
        while True:
            try:
                received.append(slot.get(timeout=2))
            except Closed:
                return

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert received[-1] == n - 1
    assert received == sorted(received)  # never an older value after a newer one
    assert len(received) + slot.dropped == n
