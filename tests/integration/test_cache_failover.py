"""The cache updater through a Redis outage the length of an ElastiCache Multi-AZ failover (issue 15).

A redis-server of the test's own is stopped in the middle of a batch and started again N seconds later, while
the real handler is driven the way the DynamoDB stream's event source mapping drives it: a batch whose records
are reported in ``batchItemFailures`` is retried from the lowest reported record, at once (the Lambda docs give
no pause between stream retries, so none is assumed), until ``MaximumRetryAttempts`` of the template's mapping
are spent; then the records go to the on-failure destination and the cache never sees them.

Time is the machine's own plus every sleep the handler asks for, which is skipped rather than slept (so a
90-second outage runs in a few seconds); Lambda's remaining time follows that clock and the template's
Timeout. Redis comes back when the clock passes the outage's end. Everything else (connections refused,
reconnecting, the Lua script reloaded after the restart) is real.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from devicepipe_tools.events import dynamodb_record, reading, table_item
from devicepipe_tools.template import resource
from functions.cache_updater import app as cache_app
from tests.conftest import FakeLambdaContext, PrivateRedis

pytestmark = pytest.mark.integration


@dataclass
class Clock:
    """The machine's monotonic time plus every sleep skipped; ``tick`` runs after each skipped sleep."""

    skipped: float = 0.0
    ticks: list[Any] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() + self.skipped

    def sleep(self, seconds: float) -> None:
        self.skipped += max(0.0, seconds)
        self.tick()

    def tick(self) -> None:
        for hook in self.ticks:
            hook()


@dataclass
class Outage:
    """Redis stopped from ``begin()`` for ``seconds`` of the clock."""

    server: PrivateRedis
    clock: Clock
    seconds: float
    ends: float = 0.0
    down: bool = False

    def begin(self) -> None:
        self.server.stop()
        self.down, self.ends = True, self.clock.now() + self.seconds

    def tick(self) -> None:
        if self.down and self.clock.now() >= self.ends:
            self.server.start()
            self.down = False


@dataclass
class ClockContext(FakeLambdaContext):
    """A Lambda context whose remaining time runs on the test's clock from the invocation's start."""

    clock: Clock = field(default_factory=Clock)
    timeout_s: float = 30.0
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = self.clock.now()

    def get_remaining_time_in_millis(self) -> int:
        return int((self.started + self.timeout_s - self.clock.now()) * 1000)


@dataclass
class Run:
    """How the mapping's delivery of one batch ended."""

    invocations: int = 0
    elapsed_s: float = 0.0
    longest_invocation_s: float = 0.0
    sent_to_destination: list[str] = field(default_factory=list)


def deliver(records: list[dict[str, Any]], clock: Clock, timeout_s: float, max_retries: int) -> Run:
    """What the event source mapping does with one batch: invoke, and on reported failures retry from the lowest
    reported record until it succeeds or ``max_retries`` retries are spent (then: the on-failure destination)."""
    run, pending, retries, began = Run(), list(records), 0, clock.now()
    while pending:
        context = ClockContext(clock=clock, timeout_s=timeout_s)
        response = cache_app.lambda_handler({"Records": pending}, context)
        took = clock.now() - context.started
        run.invocations += 1
        run.longest_invocation_s = max(run.longest_invocation_s, took)
        assert took <= timeout_s, f"an invocation ran {took:.1f} s, past the function's {timeout_s} s timeout"
        clock.tick()
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        if not failed:
            break
        sequence = [r["dynamodb"]["SequenceNumber"] for r in pending]
        pending = pending[min(sequence.index(s) for s in failed) :]
        retries += 1
        if retries > max_retries:
            run.sent_to_destination = [r["dynamodb"]["SequenceNumber"] for r in pending]
            break
    run.elapsed_s = clock.now() - began
    return run


def batch(number: int, devices: int = 20) -> list[dict[str, Any]]:
    """Batch ``number``: one newer reading per device."""
    return [
        dynamodb_record(
            "INSERT",
            table_item(reading(f"dev-{d:03d}", "branch-001", 1_793_610_000_000 + number * 60_000 + d, number)),
            sequence_number=number * 1_000 + d,
        )
        for d in range(devices)
    ]


@dataclass
class Failover:
    """The handler on a private Redis, the template's Timeout and MaximumRetryAttempts, a clock and an outage."""

    server: PrivateRedis
    clock: Clock
    timeout_s: float
    max_retries: int

    def through_outage(self, seconds: float, monkeypatch: pytest.MonkeyPatch) -> tuple[Run, Run]:
        """Batch 1 applied; Redis stopped in the middle of batch 2 (after the handler took the batch, before
        its write), for ``seconds``; then batch 3. The runs of batches 2 and 3."""
        assert deliver(batch(1), self.clock, self.timeout_s, self.max_retries).invocations == 1
        outage = Outage(self.server, self.clock, seconds)
        self.clock.ticks.append(outage.tick)
        writer = cache_app._writer()
        original = writer._run
        calls: list[int] = []

        def stop_then_run(updates: Any) -> Any:
            if not calls:
                outage.begin()
            calls.append(1)
            return original(updates)

        monkeypatch.setattr(writer, "_run", stop_then_run)
        second = deliver(batch(2), self.clock, self.timeout_s, self.max_retries)
        while outage.down:  # the outage outlasted the retries: its end, before the next batch
            self.clock.sleep(1.0)
        third = deliver(batch(3), self.clock, self.timeout_s, self.max_retries)
        return second, third

    def cached_batch(self) -> list[int]:
        """Per device, the batch number of its cached reading."""
        client = redis.Redis(port=self.server.port, decode_responses=True)
        return [int(client.hget(f"dp:device:dev-{d:03d}", "seq") or -1) for d in range(20)]


@pytest.fixture
def failover(
    template: dict[str, Any], private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Failover]:
    monkeypatch.setenv("REDIS_URL", private_redis.url)
    monkeypatch.setenv("TABLE_NAME", "t")
    clock = Clock()
    monkeypatch.setattr(cache_app, "_sleep", clock.sleep, raising=False)
    cache_app._writer.cache_clear()
    function = resource(template, "CacheUpdaterFunction")["Properties"]
    mapping = resource(template, "CacheUpdaterEventSourceMapping")["Properties"]
    yield Failover(private_redis, clock, float(function["Timeout"]), int(mapping["MaximumRetryAttempts"]))
    cache_app._writer.cache_clear()


#: What AWS documents about the outage to outlast: promotion "typically just a few seconds", then the primary
#: endpoint's DNS name moves (https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/AutoFailover.html), and
#: clients must resolve it again (https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/ClientConfig.DNS.html).
#: Detection comes on top and is not given, so the target is a generous 90 s.
FAILOVER_TARGET_S = 90.0


def test_without_waits_the_mappings_retries_are_spent_in_well_under_a_second(
    failover: Failover, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before (no waits in the handler): Lambda may retry a stream batch at once, until MaximumRetryAttempts: https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-params.html"""
    monkeypatch.setattr(cache_app, "CACHE_RESERVE_MS", 10**9)  # no wait ever fits: report at once, as before
    second, third = failover.through_outage(1.0, monkeypatch)
    assert second.invocations == failover.max_retries + 1 == 11
    assert second.elapsed_s < 1.0  # refused connections fail in milliseconds
    assert len(second.sent_to_destination) == 20  # a one-second outage lost the whole batch
    assert third.invocations == 1 and not third.sent_to_destination


@pytest.mark.parametrize("outage_s", [5.0, 60.0, FAILOVER_TARGET_S])
def test_an_outage_the_length_of_a_failover_loses_nothing(
    failover: Failover, monkeypatch: pytest.MonkeyPatch, outage_s: float
) -> None:
    """Multi-AZ failover: promotion "typically just a few seconds", then DNS moves to the new primary: https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/AutoFailover.html"""
    second, third = failover.through_outage(outage_s, monkeypatch)
    assert not second.sent_to_destination
    assert outage_s <= second.elapsed_s < outage_s + failover.timeout_s
    assert second.invocations <= 1 + outage_s // (failover.timeout_s - cache_app.CACHE_RESERVE_MS / 1000) + 1
    assert third.invocations == 1 and not third.sent_to_destination
    assert failover.cached_batch() == [3] * 20


def test_an_outage_past_the_retry_budget_still_ends_in_the_on_failure_destination(
    failover: Failover, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries end after MaximumRetryAttempts, then the on-failure destination: https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html"""
    second, third = failover.through_outage(600.0, monkeypatch)
    assert second.invocations == failover.max_retries + 1
    assert len(second.sent_to_destination) == 20
    waiting_s = failover.timeout_s - cache_app.CACHE_RESERVE_MS / 1000
    # the budget: every invocation waits up to its deadline, none past its timeout (checked by deliver)
    assert 2 * FAILOVER_TARGET_S < second.elapsed_s <= second.invocations * failover.timeout_s
    assert second.elapsed_s >= second.invocations * (waiting_s - CACHE_BACKOFF_CAP_S)
    assert third.invocations == 1 and failover.cached_batch() == [3] * 20


CACHE_BACKOFF_CAP_S = cache_app.CACHE_BACKOFF.cap_s


def test_writes_refused_by_a_replica_drop_the_pooled_connections(private_redis: PrivateRedis) -> None:
    """After a failover the old primary is a replica; clients must resolve the endpoint again: https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/ClientConfig.DNS.html"""
    from devicepipe.cache import CacheUnavailable, CacheWriter, newest_per_device
    from devicepipe.streams import changes

    client = redis.Redis.from_url(private_redis.url)
    writer = CacheWriter(client)
    updates = newest_per_device(list(changes(batch(1))))
    assert writer.apply(updates) == 20
    admin = redis.Redis(port=private_redis.port)
    admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # read-only from now on, like a demoted primary
    try:
        before = {c["id"] for c in admin.client_list()}
        with pytest.raises(CacheUnavailable, match=r"READONLY|read only"):
            writer.apply(newest_per_device(list(changes(batch(2)))))
        time.sleep(0.1)
        assert len({c["id"] for c in admin.client_list()} & before) == 1  # only the admin's own connection left
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")
    assert writer.apply(newest_per_device(list(changes(batch(2))))) == 20
