"""Batches of the requests waiting at one moment, formed in this process.

Triton's dynamic batcher would form them, but Triton can only fail a whole execution (see
models.py): the served models take one request each, and their graphs run here, on every
request that is ready within ``max_delay_s`` of the first, up to ``max_batch`` of them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = object()


class Batcher:
    """``submit(item)`` waits for ``run(items)`` (one result per item) over a batch holding ``item``.

    ``workers`` batches run at once (Triton's model instances); one worker gathers at a time,
    so the batches are as full as the waiting requests allow.
    """

    def __init__(
        self, run: Callable[[list[Any]], list[Any]], max_batch: int, max_delay_s: float, workers: int = 1
    ) -> None:
        self._run, self._max_batch, self._max_delay_s = run, max_batch, max_delay_s
        self._waiting: queue.Queue = queue.Queue()
        self._gathering = threading.Lock()
        self._workers = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for worker in self._workers:
            worker.start()

    def submit(self, item: Any) -> Any:
        """The result for ``item``; raises what ``run`` raised for its batch."""
        future: Future = Future()
        self._waiting.put((item, future))
        return future.result()

    def close(self) -> None:
        for _ in self._workers:
            self._waiting.put(_STOP)
        for worker in self._workers:
            worker.join()

    def _work(self) -> None:
        while batch := self._gather():
            items, futures = zip(*batch, strict=True)
            try:
                results = self._run(list(items))
            except Exception as err:  # noqa: BLE001 - the batch's requests fail with it; the worker goes on
                for future in futures:
                    future.set_exception(err)
                continue
            for future, result in zip(futures, results, strict=True):
                future.set_result(result)

    def _gather(self) -> list[tuple[Any, Future]]:
        """The next batch; empty when closed."""
        with self._gathering:
            first = self._waiting.get()
            if first is _STOP:
                return []
            batch, deadline = [first], time.monotonic() + self._max_delay_s
            while len(batch) < self._max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    item = self._waiting.get(timeout=left)
                except queue.Empty:
                    break
                if item is _STOP:
                    self._waiting.put(_STOP)  # for this worker's next gather
                    break
                batch.append(item)
            return batch
