"""`devicepipe probe replication`: how long the global table takes to carry a write from one region to another.

For each ordered pair of regions, marker items are written to the source region's replica at a steady pace
while the target region's replica is polled (one strongly consistent BatchGetItem per tick for every marker
still missing). A marker's lag runs from the source's PutItem acknowledgement to the middle of the first
BatchGetItem that returns it, so the resolution is the poll interval plus half a read round trip (printed).
Markers live under their own partition key (``PROBE#<run>``), expire by TTL within the hour, and are deleted
at the end (the deletes replicate too); no stream consumer acts on them (their filters match readings and
LATEST items only).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devicepipe.retry import error_code
from devicepipe_tools import wording
from devicepipe_tools.stats import summary_ms

PROBE_PK_PREFIX = "PROBE#"
BATCH_GET_LIMIT = 100


@dataclass
class ProbeResult:
    source: str
    target: str
    sent: int = 0
    lags_s: list[float] = field(default_factory=list)
    read_rtts_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    read_errors: int = 0
    last_read_error: str = ""

    @property
    def seen(self) -> int:
        return len(self.lags_s)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "sent": self.sent,
            "seen": self.seen,
            "lag_ms": summary_ms(self.lags_s),
            "read_rtt_ms": summary_ms(self.read_rtts_s),
            "failures": self.failures,
        }

    def line(self) -> str:
        lag, rtt = summary_ms(self.lags_s), summary_ms(self.read_rtts_s)
        return (
            f"{self.source} -> {self.target}: {wording.fraction(self.seen, self.sent, 'marker')} replicated; "
            f"{wording.percentiles('lag', lag, ('p50', 'p95', 'p99', 'max'))} (target read round trip p50 "
            f"{wording.ms(rtt['p50'])}); {wording.count(len(self.failures), 'failure')}"
        )


def probe_replication(
    source_client: Any,
    target_client: Any,
    table: str,
    source: str,
    target: str,
    count: int = 20,
    interval_s: float = 0.1,
    poll_s: float = 0.02,
    timeout_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ProbeResult:
    """Write ``count`` markers in ``source`` every ``interval_s`` and time their arrival in ``target``."""
    result = ProbeResult(source, target)
    pk = f"{PROBE_PK_PREFIX}{uuid.uuid4().hex[:12]}"
    pending: dict[str, float] = {}  # marker sort key -> when the source acknowledged it
    written: list[str] = []
    next_write = clock()
    while len(written) < count or pending:
        if len(written) < count and clock() >= next_write:
            sk = f"{source}>{target}#{len(written):05d}"
            next_write = clock() + interval_s
            written.append(sk)
            try:
                source_client.put_item(
                    TableName=table,
                    Item={
                        "pk": {"S": pk},
                        "sk": {"S": sk},
                        "expires_at": {"N": str(int(time.time()) + 3600)},
                    },
                )
            except Exception as exc:
                result.failures.append(f"write {sk} in {source}: {error_code(exc) or type(exc).__name__}: {exc}")
            else:
                pending[sk] = clock()
                result.sent += 1
        if pending:
            _poll(target_client, table, pk, pending, result, clock)
            now = clock()
            for sk, acked in list(pending.items()):
                if now - acked > timeout_s:
                    del pending[sk]
                    result.failures.append(f"{sk} not in {target} after {timeout_s:.0f}s")
        sleep(poll_s)
    if result.read_errors:
        result.failures.append(f"{result.read_errors} reads in {target} failed, the last with {result.last_read_error}")
    _delete(source_client, table, pk, written, result)
    return result


def _poll(
    client: Any, table: str, pk: str, pending: dict[str, float], result: ProbeResult, clock: Callable[[], float]
) -> None:
    keys = [{"pk": {"S": pk}, "sk": {"S": sk}} for sk in list(pending)[:BATCH_GET_LIMIT]]
    sent = clock()
    try:
        response = client.batch_get_item(
            RequestItems={
                table: {
                    "Keys": keys,
                    "ConsistentRead": True,
                    "ProjectionExpression": "#sk",
                    "ExpressionAttributeNames": {"#sk": "sk"},
                }
            }
        )
    except Exception as exc:  # the target may be failing right now: that is what a probe is for
        result.read_errors += 1
        result.last_read_error = f"{error_code(exc) or type(exc).__name__}: {exc}"
        return
    received = clock()
    result.read_rtts_s.append(received - sent)
    for item in response.get("Responses", {}).get(table, []):
        acked = pending.pop(item["sk"]["S"], None)
        if acked is not None:
            result.lags_s.append(max(0.0, (sent + received) / 2 - acked))
    # UnprocessedKeys are simply asked for again on the next tick.


def _delete(client: Any, table: str, pk: str, sort_keys: list[str], result: ProbeResult) -> None:
    for start in range(0, len(sort_keys), 25):
        requests = [
            {"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"S": sk}}}} for sk in sort_keys[start : start + 25]
        ]
        try:
            left = client.batch_write_item(RequestItems={table: requests}).get("UnprocessedItems", {})
        except Exception as exc:
            left, reason = {table: requests}, f"{error_code(exc) or type(exc).__name__}: {exc}"
        else:
            reason = "unprocessed"
        if left:
            result.failures.append(f"cleanup in {result.source} left markers of {pk} ({reason}); they expire by TTL")
