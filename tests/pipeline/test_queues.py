"""Queues: capacity, the named policies, batching with a deadline, and the stop event."""
import threading
import time

import pytest

from pipeline.queues import EOS, BoundedQueue, Stopped
from train.errors import QueueOverflowError
from train.errors import InvalidInputError


def make(policy, capacity=3):
    return BoundedQueue("a->b", capacity, policy, threading.Event())


def test_block_waits_for_room_and_never_drops():
    q = make("block", 2)
    q.put(1)
    q.put(2)
    threading.Timer(0.1, q.get).start()
    t = time.perf_counter()
    q.put(3)                                    # waits until the consumer takes one
    assert time.perf_counter() - t >= 0.05
    assert [q.get(), q.get()] == [2, 3] and q.drops == 0


def test_drop_oldest_keeps_the_newest_and_counts():
    q = make("drop-oldest", 3)
    for i in range(10):
        q.put(i)
    assert q.drops == 7
    assert [q.get() for _ in range(3)] == [7, 8, 9]


def test_drop_newest_keeps_the_oldest_and_counts():
    q = make("drop-newest", 3)
    for i in range(5):
        q.put(i)
    assert q.drops == 2 and [q.get() for _ in range(3)] == [0, 1, 2]


def test_fault_raises_on_overflow():
    q = make("fault", 1)
    q.put(1)
    with pytest.raises(QueueOverflowError, match="capacity of 1"):
        q.put(2)


def test_end_of_stream_is_never_dropped():
    q = make("drop-oldest", 2)
    q.put(1)
    q.put(2)
    q.put(EOS)
    assert [q.get(), q.get(), q.get()] == [1, 2, EOS]


def test_unknown_policy_and_bad_capacity_say_how_to_fix():
    with pytest.raises(InvalidInputError, match="block, drop-oldest"):
        make("lossy")
    with pytest.raises(InvalidInputError, match="capacity"):
        make("block", 0)


def test_get_batch_fills_or_times_out():
    q = make("block", 8)
    for i in range(5):
        q.put(i)
    assert q.get_batch(4, 0.0) == [0, 1, 2, 3]
    t = time.perf_counter()
    assert q.get_batch(4, 0.05) == [4]              # a partial batch after the deadline
    assert 0.04 <= time.perf_counter() - t < 0.5


def test_get_batch_stops_at_end_of_stream_without_waiting():
    q = make("block", 8)
    q.put(1)
    q.put(EOS)
    t = time.perf_counter()
    assert q.get_batch(8, 5.0) == [1, EOS]
    assert time.perf_counter() - t < 0.5


def test_stop_event_releases_blocked_producer_and_consumer():
    stop = threading.Event()
    full, empty = BoundedQueue("f", 1, "block", stop), BoundedQueue("e", 1, "block", stop)
    full.put(0)
    errors = []

    def blocked(fn):
        try:
            fn()
        except Stopped:
            errors.append(fn)

    threads = [threading.Thread(target=blocked, args=(lambda: full.put(1),)),
               threading.Thread(target=blocked, args=(empty.get,))]
    for t in threads:
        t.start()
    time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(1.0)
        assert not t.is_alive()
    assert len(errors) == 2
