"""The replication probe against an in-memory pair of replicas with a known lag."""

from __future__ import annotations

import time
from typing import Any

from devicepipe_tools.fakes import client_error
from devicepipe_tools.probe import probe_replication


class Replicas:
    """Two replicas of one table: what the source stores shows in the target after ``lag_s``."""

    def __init__(self, lag_s: float | None) -> None:
        self.lag_s = lag_s
        self.visible_at: dict[tuple[str, str], float] = {}
        self.deleted: list[tuple[str, str]] = []
        self.source, self.target = _Source(self), _Target(self)


class _Source:
    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas

    def put_item(self, **kw: Any) -> dict[str, Any]:
        key = (kw["Item"]["pk"]["S"], kw["Item"]["sk"]["S"])
        lag = self.replicas.lag_s
        self.replicas.visible_at[key] = float("inf") if lag is None else time.monotonic() + lag
        return {}

    def batch_write_item(self, **kw: Any) -> dict[str, Any]:
        ((_, requests),) = kw["RequestItems"].items()
        self.replicas.deleted += [
            (r["DeleteRequest"]["Key"]["pk"]["S"], r["DeleteRequest"]["Key"]["sk"]["S"]) for r in requests
        ]
        return {"UnprocessedItems": {}}


class _Target:
    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.fail_reads = 0

    def batch_get_item(self, **kw: Any) -> dict[str, Any]:
        if self.fail_reads:
            self.fail_reads -= 1
            raise client_error("ServiceUnavailable", "BatchGetItem", 503)
        ((table, request),) = kw["RequestItems"].items()
        assert request["ConsistentRead"] is True and len(request["Keys"]) <= 100
        now = time.monotonic()
        keys = [(k["pk"]["S"], k["sk"]["S"]) for k in request["Keys"]]
        found = [{"sk": {"S": sk}} for pk, sk in keys if self.replicas.visible_at.get((pk, sk), float("inf")) <= now]
        return {"Responses": {table: found}}


def test_lag_is_measured_from_the_acknowledged_write_to_the_first_read_that_sees_it() -> None:
    replicas = Replicas(lag_s=0.05)
    result = probe_replication(replicas.source, replicas.target, "t", "a", "b", count=5, interval_s=0.01, poll_s=0.005)
    assert (result.sent, result.seen, result.failures) == (5, 5, [])
    # resolution = poll interval + half a read: the measured lags sit just above the true one
    assert all(0.045 <= lag <= 0.1 for lag in result.lags_s), result.lags_s
    summary = result.summary()
    assert summary["lag_ms"]["count"] == 5 and 45 <= summary["lag_ms"]["p50"] <= 100
    assert len(replicas.deleted) == 5  # markers cleaned up


def test_markers_never_seen_are_failures_and_failing_reads_are_counted() -> None:
    replicas = Replicas(lag_s=None)
    replicas.target.fail_reads = 3
    result = probe_replication(
        replicas.source, replicas.target, "t", "a", "b", count=2, interval_s=0.01, poll_s=0.005, timeout_s=0.1
    )
    assert (result.sent, result.seen) == (2, 0)
    assert [f for f in result.failures if "not in b after" in f] and len(result.failures) == 3
    assert result.failures[-1].startswith("3 reads in b failed")
    assert "0/2 markers replicated" in result.line()
