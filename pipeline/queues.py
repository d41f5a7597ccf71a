"""Bounded queues between stages, each with a capacity and a named overflow policy.

Policies (Holoscan's IOSpec queue policies, named for what they do):

- ``block``:       a full queue makes the producer wait. Files use it: no frame is ever dropped.
- ``drop-oldest``: a full queue discards its oldest frame to take the new one (counted in ``drops``).
                   Live sources use it, so the output stays close to real time.
- ``drop-newest``: a full queue discards the new frame instead (counted in ``drops``).
- ``fault``:       a full queue is an error (QueueOverflowError).

Every wait is a short timed wait that checks the pipeline's stop event, so a stage blocked on a queue
notices a shutdown within ``POLL_S``; a put into a stopped pipeline raises ``Stopped`` too, so a source
that never waits (drop-oldest) stops at its next frame. End of stream (``EOS``) is never dropped.
"""
from __future__ import annotations

import threading
import time
from collections import deque

from train.errors import QueueOverflowError

POLICIES = ("block", "drop-oldest", "drop-newest", "fault")
POLL_S = 0.05


class _EndOfStream:
    __slots__ = ()

    def __repr__(self) -> str:
        return "EOS"


EOS = _EndOfStream()  # the last item a stage emits


class Stopped(Exception):
    """Raised inside a stage when the pipeline's stop event is set; the stage then winds down."""


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        from train.errors import InvalidInputError
        raise InvalidInputError(f"unknown queue policy {policy!r}: choose one of {', '.join(POLICIES)}")
    return policy


class BoundedQueue:
    """A FIFO of at most ``capacity`` items between two stages (one producer, one consumer)."""

    def __init__(self, name: str, capacity: int, policy: str, stop: threading.Event):
        if capacity < 1:
            from train.errors import InvalidInputError
            raise InvalidInputError(f"queue capacity must be >= 1, not {capacity}: fix queues.capacity")
        self.name, self.capacity, self.policy = name, int(capacity), check_policy(policy)
        self.stop = stop
        self.drops = 0
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"BoundedQueue({self.name!r}, capacity={self.capacity}, policy={self.policy!r}, drops={self.drops})"

    def put(self, item) -> None:
        with self._lock:
            if self.stop.is_set():               # a stopped pipeline does no more work: a source whose
                raise Stopped                    # queue never fills (drop-oldest) stops here too
            if len(self._items) >= self.capacity and item is not EOS:
                if self.policy == "block":
                    while len(self._items) >= self.capacity:
                        if self.stop.is_set():
                            raise Stopped
                        self._not_full.wait(POLL_S)
                elif self.policy == "drop-oldest":
                    self._items.popleft()
                    self.drops += 1
                elif self.policy == "drop-newest":
                    self.drops += 1
                    return
                else:
                    raise QueueOverflowError(f"queue {self.name} overflowed its capacity of {self.capacity} "
                                             f"(policy 'fault'): raise queues.capacity or use 'block'")
            self._items.append(item)
            self._not_empty.notify()

    def get(self):
        """The next item; waits (checking the stop event) until there is one."""
        with self._lock:
            while True:
                if self.stop.is_set():           # checked first: a stopped pipeline does no more work
                    raise Stopped
                if self._items:
                    break
                self._not_empty.wait(POLL_S)
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def get_batch(self, max_items: int, max_wait_s: float) -> list:
        """Up to ``max_items`` items: waits for the first, then at most ``max_wait_s`` for the rest.

        A batch ends early at EOS (which is then its last item), so the end of a file never waits.
        """
        first = self.get()
        batch = [first]
        if first is EOS or max_items <= 1:
            return batch
        deadline = time.perf_counter() + max_wait_s
        with self._lock:
            while len(batch) < max_items:
                if self._items:
                    item = self._items.popleft()
                    self._not_full.notify()
                    batch.append(item)
                    if item is EOS:
                        break
                    continue
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                if self.stop.is_set():
                    raise Stopped
                self._not_empty.wait(min(left, POLL_S))
        return batch
