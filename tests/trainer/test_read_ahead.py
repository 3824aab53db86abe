"""The input's read ahead: same items in the same order, the next read under way while the
current item is used, a read's error raised at its item, nothing read after the consumer stops."""

from __future__ import annotations

import threading
import time

import pytest

from trainer.read_ahead import read_ahead


def test_items_come_in_order_and_the_next_read_runs_while_one_is_used() -> None:
    started = [threading.Event() for _ in range(4)]

    def read(i: int) -> int:
        started[i].set()
        return i * 10

    out = []
    for value in read_ahead(read, range(4)):
        i = value // 10
        if i + 1 < 4:  # handed item i: item i + 1 is being read without anyone asking
            assert started[i + 1].wait(5)
        out.append(value)
    assert out == [0, 10, 20, 30]


def test_a_read_error_is_raised_where_its_item_would_come() -> None:
    def read(i: int) -> int:
        if i == 2:
            raise ValueError("bad rows")
        return i

    got = []
    with pytest.raises(ValueError, match="bad rows"):
        for value in read_ahead(read, range(5)):
            got.append(value)
    assert got == [0, 1]


def test_a_consumer_that_stops_leaves_no_read_running_beyond_the_next() -> None:
    reads: list[int] = []
    stream = read_ahead(lambda i: reads.append(i) or i, range(100))
    assert next(stream) == 0
    stream.close()
    time.sleep(0.2)  # time for any read still queued to (wrongly) run
    assert reads in ([0], [0, 1])  # item 1 was read ahead, or cancelled before it started
