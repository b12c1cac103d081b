"""Bounded fan-out keeps input order, bounds concurrency and surfaces errors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

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
