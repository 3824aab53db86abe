"""One read ahead: the next chunk of an input is read on a thread while this one trains.

An index-addressable input's reads (the epoch order, Parquet decoding, the slab's gather) are
NumPy and pyarrow work that releases the GIL, so the next chunk's read overlaps the pipeline's
own work on the current one (tensor conversion, unbatching, the train step). The order of the
chunks, and of the rows in them, is unchanged; an error of a read is raised where that chunk
would have been handed out. Memory: one chunk more (``SPOTRAIN_READ_ROWS`` rows at most).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def read_ahead(read: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
    """``read(item)`` of each item in order, the next one read on a thread meanwhile."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="spotrain-read-ahead")
    pending: Future[Result] | None = None
    try:
        for item in items:
            following = pool.submit(read, item)
            if pending is not None:
                yield pending.result()
            pending = following
        if pending is not None:
            yield pending.result()
    finally:  # the consumer stopped early (end of fit, an error): drop what is not started
        pool.shutdown(wait=False, cancel_futures=True)
