"""The in-process batcher behind the served models: batches across waiting requests, failures per batch."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from psp_deploy.serving.batcher import Batcher


def test_waiting_requests_run_as_one_batch_up_to_the_limit():
    sizes = []

    def run(items):
        sizes.append(len(items))
        return [2 * i for i in items]

    batcher = Batcher(run, max_batch=4, max_delay_s=0.5)
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(batcher.submit, range(6)))
    finally:
        batcher.close()
    assert results == [0, 2, 4, 6, 8, 10]
    assert sizes == [4, 2]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    def run(items):
        if -1 in items:
            raise ValueError("bad batch")
        return items

    batcher = Batcher(run, max_batch=8, max_delay_s=0.01)
    try:
        with pytest.raises(ValueError, match="bad batch"):
            batcher.submit(-1)
        assert batcher.submit(3) == 3
    finally:
        batcher.close()


def test_close_stops_every_worker():
    batcher = Batcher(lambda items: items, max_batch=2, max_delay_s=0.01, workers=3)
    assert batcher.submit("x") == "x"
    before = threading.active_count()
    started = time.monotonic()
    batcher.close()
    assert time.monotonic() - started < 5 and threading.active_count() == before - 3
