"""The local event source mapping follows Lambda's rules (in-memory source, recorded invocations)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from devicepipe_tools.events import kinesis_record
from devicepipe_tools.local.esm import EventSourceMapping, MappingSpec, StreamRecord, matches


class FakeSource:
    """One shard of JSON records; ``put`` appends while the mapping polls."""

    batch_info_key = "KinesisBatchInfo"

    def __init__(self, docs: list[dict[str, Any]] | None = None, arrival_s: float | None = None) -> None:
        self.records: list[StreamRecord] = []
        self.lock = threading.Lock()
        self.gets: list[tuple[float, int, int]] = []  # (when, limit asked, records answered) of each GetRecords
        for doc in docs or []:
            self.put(doc, arrival_s)

    def put(self, doc: dict[str, Any], arrival_s: float | None = None) -> None:
        with self.lock:
            n = len(self.records) + 1
            data = json.dumps(doc).encode()
            arrival = time.time() if arrival_s is None else arrival_s
            event = kinesis_record(data, partition_key="k", sequence_number=n, arrival_s=arrival)
            self.records.append(StreamRecord(event, str(n), arrival, {**event["kinesis"], "data": doc}))

    def shards(self) -> list[str]:
        return ["shard-0"]

    def iterator(self, shard: str, position: str) -> str:
        return str(len(self.records)) if position == "LATEST" else "0"

    def get(self, iterator: str, limit: int, shard: str) -> tuple[list[StreamRecord], str]:
        with self.lock:
            start = int(iterator)
            got = self.records[start : start + limit]
            self.gets.append((time.monotonic(), limit, len(got)))
        return [StreamRecord(r.event, r.sequence_number, r.arrival_s, r.filter_view) for r in got], str(
            start + len(got)
        )


class Recorder:
    """A function: records each batch's ``n`` values; ``behaviour`` decides its answer."""

    def __init__(self, behaviour: Callable[[list[int], int], Any] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.behaviour = behaviour

    def __call__(self, event: dict[str, Any]) -> Any:
        import base64

        ns = [json.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in event["Records"]]
        self.batches.append(ns)
        if self.behaviour is None:
            return {"batchItemFailures": []}
        return self.behaviour(ns, len(self.batches))

    @property
    def delivered(self) -> list[int]:
        return [n for b in self.batches for n in b]


def run(spec: MappingSpec, source: FakeSource, fn: Recorder, until: Callable[[], bool] | None = None) -> list[Any]:
    sent: list[Any] = []
    mapping = EventSourceMapping(
        spec, source, fn, lambda arn, msg: sent.append((arn, msg)), poll_interval_s=0.01, retry_base_s=0.001
    )
    mapping.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (until() if until else mapping.drained()):
        time.sleep(0.02)
    time.sleep(0.05)
    mapping.stop()
    run.stats = mapping.stats  # type: ignore[attr-defined]
    return sent


def wait_until(done: Callable[[], bool], timeout_s: float = 5) -> None:
    """Poll ``done`` until it holds or ``timeout_s`` passed (the test's assertions then say which)."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def spec(**kw: Any) -> MappingSpec:
    base: dict[str, Any] = {
        "logical_id": "M",
        "function": "fn",
        "source_arn": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
        "report_failures": True,
        "destination_arn": "arn:aws:sqs:us-east-1:123456789012:dlq",
    }
    return MappingSpec(**{**base, **kw})


def docs(n: int) -> list[dict[str, Any]]:
    return [{"n": i} for i in range(n)]


def test_batch_size_bounds_each_invocation_and_order_is_kept() -> None:
    fn = Recorder()
    run(spec(batch_size=10), FakeSource(docs(35)), fn, until=lambda: len(fn.delivered) >= 35)
    assert fn.delivered == list(range(35))
    assert max(len(b) for b in fn.batches) <= 10


def test_batching_window_collects_records_that_arrive_within_it() -> None:
    source = FakeSource()
    fn = Recorder()

    def trickle() -> None:
        for i in range(6):
            source.put({"n": i})
            time.sleep(0.05)

    threading.Thread(target=trickle).start()
    run(spec(batch_size=100, window_s=1.0), source, fn, until=lambda: len(fn.delivered) >= 6)
    assert fn.batches == [[0, 1, 2, 3, 4, 5]]


def test_starting_position_latest_skips_existing_records() -> None:
    source = FakeSource(docs(5))
    fn = Recorder()
    mapping = EventSourceMapping(spec(starting_position="LATEST"), source, fn, lambda *_: None, poll_interval_s=0.01)
    mapping.start()
    time.sleep(0.1)
    source.put({"n": 99})
    wait_until(lambda: bool(fn.delivered))
    mapping.stop()
    assert fn.delivered == [99]


def test_filter_criteria_drop_records_that_match_no_pattern() -> None:
    fn = Recorder()
    source = FakeSource([{"n": i, "kind": "keep" if i % 2 else "drop"} for i in range(10)])
    run(spec(filters=({"data": {"kind": ["keep"]}},)), source, fn, until=lambda: len(fn.delivered) >= 5)
    assert fn.delivered == [1, 3, 5, 7, 9]
    assert run.stats.records_filtered == 5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ({"a": ["x", "y"]}, {"a": "y"}, True),
        ({"a": ["x"]}, {"a": "z"}, False),
        ({"a": {"b": [1]}}, {"a": {"b": 1}}, True),
        ({"a": [{"prefix": "ab"}]}, {"a": "abc"}, True),
        ({"a": [{"anything-but": ["x"]}]}, {"a": "x"}, False),
        ({"a": [{"exists": False}]}, {}, True),
        ({"a": [{"exists": True}]}, {}, False),
        ({"a": [{"numeric": [">", 1, "<=", 5]}]}, {"a": 5}, True),
        ({"a": [{"numeric": [">", 1]}]}, {"a": 1}, False),
        ({"eventName": ["INSERT", "MODIFY"]}, {"eventName": "REMOVE"}, False),
    ],
)
def test_filter_pattern_semantics(pattern: dict[str, Any], value: dict[str, Any], expected: bool) -> None:
    assert matches(pattern, value) is expected


def test_partial_failure_checkpoints_before_the_lowest_failed_record() -> None:
    # Given a function that reports record 3 (and 6) failed the first time
    def behaviour(ns: list[int], call: int) -> Any:
        if call == 1:
            return {"batchItemFailures": [{"itemIdentifier": str(n + 1)} for n in ns if n in (3, 6)]}
        return {"batchItemFailures": []}

    fn = Recorder(behaviour)
    run(spec(batch_size=10), FakeSource(docs(8)), fn, until=lambda: len(fn.batches) >= 2)
    # Then the retry starts at the lowest failure; records before it are not redelivered
    assert fn.batches[0] == list(range(8))
    assert fn.batches[1] == [3, 4, 5, 6, 7]


def test_function_error_bisects_the_batch_until_the_poison_record_is_isolated() -> None:
    def behaviour(ns: list[int], call: int) -> Any:
        if 5 in ns:
            raise RuntimeError("poison")
        return None

    fn = Recorder(behaviour)
    sent = run(spec(batch_size=8, bisect=True, max_retries=10), FakeSource(docs(8)), fn)
    # Then everything but the poison record got through, and only the poison record went to the destination
    assert sorted(set(fn.delivered) - {5}) == [0, 1, 2, 3, 4, 6, 7]
    assert run.stats.bisects >= 2  # type: ignore[attr-defined]
    ((arn, message),) = sent
    assert arn.endswith(":dlq")
    info = message["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == ("6", "6", 1)
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"


def test_retries_are_bounded_then_the_batch_goes_to_the_destination() -> None:
    fn = Recorder(lambda ns, call: (_ for _ in ()).throw(RuntimeError("down")))
    sent = run(spec(batch_size=10, max_retries=3), FakeSource(docs(4)), fn)
    assert len(fn.batches) == 4  # first attempt + 3 retries
    ((_, message),) = sent
    assert message["KinesisBatchInfo"]["batchSize"] == 4
    assert message["requestContext"]["approximateInvokeCount"] == 4


def test_records_older_than_the_maximum_age_are_not_delivered() -> None:
    source = FakeSource(docs(3), arrival_s=time.time() - 3_600)
    source.put({"n": 3})
    fn = Recorder()
    sent = run(spec(max_age_s=60), source, fn)
    assert fn.delivered == [3]
    ((_, message),) = sent
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert message["KinesisBatchInfo"]["batchSize"] == 3


def test_unknown_item_identifier_fails_the_whole_batch() -> None:
    calls = []

    def behaviour(ns: list[int], call: int) -> Any:
        calls.append(call)
        return {"batchItemFailures": [{"itemIdentifier": "no-such-record"}]} if call == 1 else None

    fn = Recorder(behaviour)
    run(spec(), FakeSource(docs(3)), fn, until=lambda: len(fn.batches) >= 2)
    assert fn.batches[:2] == [[0, 1, 2], [0, 1, 2]]


def test_a_paused_mapping_invokes_nothing_and_resumes_where_it_was() -> None:
    # Given a region that is down (local outage): its mapping neither polls nor invokes
    down = threading.Event()
    down.set()
    source, fn = FakeSource(docs(5)), Recorder()
    mapping = EventSourceMapping(spec(), source, fn, lambda *_: None, poll_interval_s=0.01, paused=down.is_set)
    mapping.start()
    time.sleep(0.2)
    assert fn.delivered == []
    # When the region is back, every record is delivered once, in order
    down.clear()
    wait_until(lambda: len(fn.delivered) >= 5)
    mapping.stop()
    assert fn.delivered == list(range(5))


class BigReadsSource(FakeSource):
    max_records = 1000  # what one GetRecords may return, as the real sources say

    def iterator(self, shard: str, position: str, after: str | None = None) -> str:
        return after if after is not None else super().iterator(shard, position)  # sequence n is index n - 1


def test_records_are_read_in_the_largest_batches_the_source_gives_and_delivered_in_batch_size() -> None:
    # Given a backlog of 35 records and a mapping whose batches are 10
    source, fn = BigReadsSource(docs(35)), Recorder()
    run(spec(batch_size=10), source, fn, until=lambda: len(fn.delivered) >= 35)
    # Then one GetRecords asked for the source's maximum and fetched them all; the function still got batches of
    # at most 10, in order, each once
    first_limit, first_got = source.gets[0][1:]
    assert (first_limit, first_got) == (1000, 35)
    assert sum(1 for _, _, got in source.gets if got) == 1
    assert fn.batches == [list(range(i, min(i + 10, 35))) for i in range(0, 35, 10)]


def test_a_restart_redelivers_what_was_read_ahead_but_not_yet_delivered(tmp_path: Any) -> None:
    from devicepipe_tools.local.esm import Checkpoints

    # Given a worker that read 30 records in one call, delivered the first batch of 10, then died in the second
    source = BigReadsSource(docs(30))
    first = Recorder(lambda ns, call: (_ for _ in ()).throw(RuntimeError("killed")) if call > 1 else None)
    mapping = EventSourceMapping(
        spec(batch_size=10),
        source,
        first,
        lambda *_: None,
        poll_interval_s=0.01,
        retry_base_s=0.001,
        checkpoints=Checkpoints(tmp_path / "M.json"),
    )
    mapping.start()
    wait_until(lambda: len(first.batches) >= 2)
    mapping.stop()
    # When a new worker starts from the checkpoints
    second = Recorder()
    restarted = EventSourceMapping(
        spec(batch_size=10),
        source,
        second,
        lambda *_: None,
        poll_interval_s=0.01,
        checkpoints=Checkpoints(tmp_path / "M.json"),
    )
    restarted.start()
    wait_until(lambda: len(second.delivered) >= 20)
    restarted.stop()
    # Then it delivers the batch in flight again as it was, then the rest: nothing read ahead is lost
    assert first.batches[0] == list(range(10))
    assert second.batches == [list(range(10, 20)), list(range(20, 30))]


def test_an_idle_shard_polls_less_and_less_yet_picks_up_new_records() -> None:
    source, fn = FakeSource(), Recorder()
    mapping = EventSourceMapping(
        spec(), source, fn, lambda *_: None, poll_interval_s=0.01, idle_poll_max_s=0.16, retry_base_s=0.001
    )
    mapping.start()
    time.sleep(1.0)
    idle_polls = len(source.gets)
    # Then the pause after each empty poll doubled up to its maximum: 0.01, 0.02, 0.04, 0.08, 0.16, 0.16, ...
    # (about 10 polls in a second, where a steady 0.01 s would make about 100)
    assert 6 <= idle_polls <= 14
    gaps = [b[0] - a[0] for a, b in zip(source.gets, source.gets[1:], strict=False)]
    assert max(gaps) < 0.16 + 0.1 and gaps[-1] > 0.12
    # And a record put now is still delivered within the longest pause
    source.put({"n": 1})
    put_at = time.monotonic()
    deadline = put_at + 5
    while not fn.delivered and time.monotonic() < deadline:
        time.sleep(0.005)
    assert fn.delivered == [1] and time.monotonic() - put_at < 0.16 + 0.15
    # And a poll that found records starts the pauses over: the next empty polls come quickly again
    polls_before = len(source.gets)
    time.sleep(0.1)
    mapping.stop()
    assert len(source.gets) - polls_before >= 3


class WaitingSource(FakeSource):
    """Answers an empty read only when ``wait_s`` is over (long polling), as the local stack's wire reads do."""

    waits = True

    def get(self, iterator: str, limit: int, shard: str, wait_s: float = 0.0) -> tuple[list[StreamRecord], str]:
        got, it = super().get(iterator, limit, shard)
        if not got:
            time.sleep(wait_s)
        self.gets[-1] = (*self.gets[-1], wait_s)  # type: ignore[assignment]
        return got, it


def test_a_source_that_waits_for_records_is_asked_to_wait_the_idle_pause_instead_of_a_pause_here() -> None:
    source, fn = WaitingSource(), Recorder()
    mapping = EventSourceMapping(
        spec(), source, fn, lambda *_: None, poll_interval_s=0.01, idle_poll_max_s=0.16, retry_base_s=0.001
    )
    mapping.start()
    time.sleep(1.0)
    mapping.stop()
    waits = [g[3] for g in source.gets]  # type: ignore[misc]
    # Each read was asked to wait the pause that would have followed it, doubling up to the maximum; no pause
    # between reads besides (about one second of waiting in all, in about as many reads as with pauses)
    assert waits[:5] == [0.01, 0.02, 0.04, 0.08, 0.16] and set(waits[5:]) == {0.16}
    gaps = [b[0] - a[0] for a, b in zip(source.gets, source.gets[1:], strict=False)]
    assert all(gap < wait + 0.05 for gap, wait in zip(gaps, waits, strict=False))
