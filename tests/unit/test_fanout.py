"""Bounded fan-out keeps input order, bounds concurrency and surfaces errors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devicepipe.fanout import fan_out


def test_results_come_back_in_input_order() -> None:
    with ThreadPoolExecutor(8) as pool:
        assert fan_out(pool, 5, lambda x: x * x, list(range(23))) == [x * x for x in range(23)]
        assert fan_out(pool, 5, lambda x: x, []) == []


def test_no_more_than_lanes_calls_run_at_once() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def call(_: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1

    with ThreadPoolExecutor(16) as pool:
        fan_out(pool, 4, call, list(range(20)))
    assert peak == 4


def test_errors_propagate() -> None:
    def call(x: int) -> int:
        if x == 7:
            raise RuntimeError("boom")
        return x

    with ThreadPoolExecutor(4) as pool, pytest.raises(RuntimeError, match="boom"):
        fan_out(pool, 4, call, list(range(10)))


def test_the_fewest_lanes_that_keep_the_number_of_rounds() -> None:
    # 100 calls on at most 32 lanes take 4 rounds; 25 lanes take 4 rounds too, with 7 hand-offs fewer
    class Counting(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            self.submitted += 1
            return super().submit(*args, **kwargs)

    with Counting(32) as pool:
        assert fan_out(pool, 32, lambda x: x, list(range(100))) == list(range(100))
        assert pool.submitted == 25 - 1  # the caller works one lane itself
        pool.submitted = 0
        fan_out(pool, 32, lambda x: x, list(range(40)))  # 2 rounds: 20 lanes
        assert pool.submitted == 20 - 1
