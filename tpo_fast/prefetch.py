"""The one background prefetcher: ``fn(item)`` for items in order, computed ahead on threads.

Used by the trainer (packed micro-batches: decode + tokenize + pack) and by ``VideoLoader``
(decoded and preprocessed videos for curation and eval).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_END = object()


class Prefetcher:
    """Iterate ``(item, future)`` in the order of ``items``, where ``future`` holds ``fn(item)``
    (its value or its exception: call ``future.result()``).

    With ``workers`` >= 1 the calls run on that many background threads and at most ``ahead``
    of them are submitted beyond what the consumer has taken: before each item is handed out,
    the queue is topped up to ``ahead``, so ``ahead - 1`` calls run while the consumer works on
    one item. With ``workers=0`` each call runs in the caller's thread when its item is taken.
    ``close()`` (also at exhaustion) cancels the calls not yet started; ``wait_on_close`` says
    whether it also waits for the running ones.
    """

    def __init__(self, fn: Callable[[Any], Any], items: Iterable, *, workers: int = 1,
                 ahead: int = 2, name: str = "tpo-prefetch", wait_on_close: bool = True):
        if workers < 0 or ahead < 1:
            raise ValueError(f"need workers >= 0 and ahead >= 1, got {workers}, {ahead}")
        self.fn, self.items = fn, iter(items)
        self.ahead, self.wait_on_close = ahead, wait_on_close
        self.pending: deque[tuple[Any, Future]] = deque()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=name) if workers else None
        self._fill()

    def _fill(self) -> None:
        if self.pool is None:
            return
        while len(self.pending) < self.ahead:
            item = next(self.items, _END)
            if item is _END:
                return
            self.pending.append((item, self.pool.submit(self.fn, item)))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> tuple[Any, Future]:
        if self.pool is None:
            item = next(self.items)
            future: Future = Future()
            try:
                future.set_result(self.fn(item))
            except Exception as exc:
                future.set_exception(exc)
            return item, future
        self._fill()
        if not self.pending:
            self.close()
            raise StopIteration
        return self.pending.popleft()

    def close(self) -> None:
        self.items = iter(())  # a closed prefetcher is exhausted
        for _, future in self.pending:
            future.cancel()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=self.wait_on_close, cancel_futures=True)
