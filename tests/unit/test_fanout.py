"""Bounded fan-out keeps input order, bounds concurrency and surfaces errors."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devicepipe.fanout import drain, fan_out, lanes_for


def test_results_come_back_in_input_order() -> None:
    with ThreadPoolExecutor(8) as pool:
        assert fan_out(pool, 5, lambda x: x * x, list(range(23))) == [x * x for x in range(23)]
        assert fan_out(pool, 5, lambda x: x, []) == []


class SlowCall:
    """A call that takes 5 ms and records how many ran at once (``peak``)."""

    def __init__(self) -> None:
        self.running = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, *_: object) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.005)
        with self.lock:
            self.running -= 1


def test_no_more_than_lanes_calls_run_at_once() -> None:
    call = SlowCall()
    with ThreadPoolExecutor(16) as pool:
        fan_out(pool, 4, call, list(range(20)))
    assert call.peak == 4


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


@pytest.mark.parametrize(("calls", "lanes"), [(0, 0), (1, 1), (32, 32), (33, 17), (100, 25), (140, 28)])
def test_lanes_for_keeps_the_rounds_of_max_lanes(calls: int, lanes: int) -> None:
    assert lanes_for(calls, 32) == lanes


def test_drain_runs_every_task_including_those_added_by_tasks() -> None:
    # Given 30 tasks, each of the first ten adding a follow-up task
    done: list[str] = []
    tasks: deque[Callable[[], None]] = deque()

    def task(name: str, then: str | None) -> Callable[[], None]:
        def run() -> None:
            time.sleep(0.001)
            done.append(name)
            if then:
                tasks.append(task(then, None))

        return run

    tasks.extend(task(f"t{i}", f"follow-{i}" if i < 10 else None) for i in range(30))
    # When drained on 4 lanes
    with ThreadPoolExecutor(8) as pool:
        drain(pool, 4, tasks)
    # Then all 40 ran exactly once, each follow-up after its parent
    assert sorted(done) == sorted([f"t{i}" for i in range(30)] + [f"follow-{i}" for i in range(10)])
    assert all(done.index(f"t{i}") < done.index(f"follow-{i}") for i in range(10))


def test_drain_bounds_concurrency_and_surfaces_errors() -> None:
    call = SlowCall()

    def boom() -> None:
        raise RuntimeError("boom")

    with ThreadPoolExecutor(16) as pool:
        drain(pool, 3, deque([call] * 12))
        with pytest.raises(RuntimeError, match="boom"):
            drain(pool, 3, deque([call, call, boom, call]))
    assert call.peak == 3
