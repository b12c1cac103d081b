"""Event source mappings, run locally: what Lambda does between a stream and a function.

For each ``AWS::Lambda::EventSourceMapping`` of the template this polls every shard of the source and invokes
the handler in-process, honouring BatchSize, MaximumBatchingWindowInSeconds, StartingPosition, FilterCriteria,
FunctionResponseTypes (ReportBatchItemFailures: checkpoint before the lowest reported failure),
BisectBatchOnFunctionError, MaximumRetryAttempts, MaximumRecordAgeInSeconds and the on-failure destination
(an SQS message in Lambda's format). Records of one shard are processed in order, one batch at a time.

As Lambda's pollers do, each GetRecords asks for as many records as the API returns (``max_records``: 10,000 for
Kinesis, 1,000 for DynamoDB Streams), whatever the batch size: what is read beyond a batch waits in the shard's
buffer for the next one, so a backlog costs one call per 10,000 records, not one per batch. A shard that polls
empty waits twice as long before each next poll, up to ``idle_poll_max_s``: an idle stack asks little of moto.
On the local stack the worker reads off the wire (``WireReads``) and that wait happens beside moto's server
instead (``stream_reads``: long polling), which answers as soon as records arrive.

Each shard's position is checkpointed (``Checkpoints``: a file per mapping in the stack's state directory) after
each batch, and before it with the batch's last record, so that a worker restarted after `kill -9` resumes where
its predecessor stopped and first delivers the batch that was in flight again, as it was: at least once, as
Lambda's retries are (the handlers are idempotent, and the stager writes the same object again). The mapping's
counters are kept with the positions, so that a restarted worker counts on from them: what it delivers again
is counted twice, nothing is left out.

Not reproduced: resharding after start-up, ParallelizationFactor > 1, tumbling windows, enhanced fan-out.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devicepipe_tools.events import kinesis_record
from devicepipe_tools.local.files import read_json, write_json
from devicepipe_tools.stats import summary_ms

Invoke = Callable[[dict[str, Any]], Any]
_MAX_SAMPLES = 50_000


@dataclass(frozen=True)
class MappingSpec:
    """One event source mapping's settings, with Lambda's defaults where the template says nothing."""

    logical_id: str
    function: str
    source_arn: str
    batch_size: int = 100
    window_s: float = 0.0
    starting_position: str = "TRIM_HORIZON"
    filters: tuple[dict[str, Any], ...] = ()
    report_failures: bool = False
    bisect: bool = False
    max_retries: int = -1  # -1: until the record expires (Lambda's default for streams)
    max_age_s: int = -1
    destination_arn: str = ""

    @property
    def kind(self) -> str:
        return self.source_arn.split(":")[2]  # kinesis | dynamodb

    @classmethod
    def from_properties(cls, logical_id: str, props: dict[str, Any]) -> MappingSpec:
        """From resolved ``AWS::Lambda::EventSourceMapping`` properties."""
        filters = tuple(json.loads(f["Pattern"]) for f in props.get("FilterCriteria", {}).get("Filters", []))
        return cls(
            logical_id=logical_id,
            function=props["FunctionName"],
            source_arn=props["EventSourceArn"],
            batch_size=int(props.get("BatchSize", 100)),
            window_s=float(props.get("MaximumBatchingWindowInSeconds", 0)),
            starting_position=props.get("StartingPosition", "TRIM_HORIZON"),
            filters=filters,
            report_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
            bisect=bool(props.get("BisectBatchOnFunctionError", False)),
            max_retries=int(props.get("MaximumRetryAttempts", -1)),
            max_age_s=int(props.get("MaximumRecordAgeInSeconds", -1)),
            destination_arn=props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination", ""),
        )


# ------------------------------------------------------------------------------------------- filtering
def matches(pattern: dict[str, Any], value: Any) -> bool:
    """Lambda event filtering: every key of the pattern must match (nested objects, lists of alternatives)."""
    if not isinstance(value, dict):
        return False
    for key, rule in pattern.items():
        present = key in value
        if isinstance(rule, dict):
            if not present or not matches(rule, value[key]):
                return False
        elif isinstance(rule, list):
            if not any(_matches_one(alt, present, value.get(key)) for alt in rule):
                return False
        else:
            raise ValueError(f"filter rule for {key!r} must be an object or a list")
    return True


def _matches_one(alt: Any, present: bool, value: Any) -> bool:
    if isinstance(alt, dict):
        ((op, arg),) = alt.items()
        if op == "exists":
            return present is bool(arg)
        if not present:
            return False
        if op == "prefix":
            return isinstance(value, str) and value.startswith(arg)
        if op == "anything-but":
            return value not in (arg if isinstance(arg, list) else [arg])
        if op == "numeric":
            return isinstance(value, int | float) and _numeric(value, arg)
        raise ValueError(f"unsupported filter operator {op!r}")
    values = value if isinstance(value, list) else [value]
    return present and alt in values


def _numeric(value: float, ops: list[Any]) -> bool:
    checks = {"=": value.__eq__, "<": value.__lt__, "<=": value.__le__, ">": value.__gt__, ">=": value.__ge__}
    return all(checks[ops[i]](ops[i + 1]) for i in range(0, len(ops), 2))


# ------------------------------------------------------------------------------------------- sources
class WireReads:
    """GetRecords as one JSON request to the local stack's endpoint, its answer read by ``json.loads``.

    botocore's parser walks every attribute of every record against the service model: 49 us a DynamoDB stream
    record, where ``json.loads`` takes 4.5 (and the stack's workers read every record of two streams). The
    answer is the wire format, which is what Lambda's events carry anyway (numbers as text, binaries as base64).
    Only for an endpoint that checks no signature (moto's server): the request names its region in a
    signature-shaped header, which is all the local stack reads of it. A read may wait for records there
    (``stream_reads``: long polling), so an idle poller's pause costs no request.
    """

    def __init__(self, endpoint: str, region: str) -> None:
        import urllib3

        self.url = endpoint.rstrip("/") + "/"
        self.region = region
        self.http = urllib3.PoolManager(maxsize=4, retries=False, timeout=urllib3.Timeout(connect=3, read=30))

    def call(
        self, signing_name: str, target: str, json_version: str, request: dict[str, Any], wait_s: float = 0.0
    ) -> dict[str, Any]:
        scope = f"testing/20260101/{self.region}/{signing_name}/aws4_request"
        response = self.http.request(
            "POST",
            self.url,
            body=json.dumps(request).encode(),
            headers={
                "X-Amz-Target": target,
                "Content-Type": f"application/x-amz-json-{json_version}",
                "Authorization": f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=0",
                "X-Devicepipe-Wait": f"{wait_s:.3f}",  # stream_reads.WAIT_HEADER
            },
        )
        if response.status != 200:
            raise RuntimeError(f"{target}: HTTP {response.status}: {response.data[:300].decode(errors='replace')}")
        out: dict[str, Any] = json.loads(response.data)
        return out


def _epoch_s(value: Any) -> float:
    """A record time as botocore gives it (datetime) or as the wire carries it (epoch seconds)."""
    return value.timestamp() if isinstance(value, datetime) else float(value)


@dataclass
class StreamRecord:
    """A polled record: the event record Lambda would deliver, and what the mapping needs to know of it."""

    event: dict[str, Any]
    sequence_number: str
    arrival_s: float
    filter_view: dict[str, Any]
    attempts: int = 0


class KinesisSource:
    """A Kinesis stream as an event source."""

    batch_info_key = "KinesisBatchInfo"
    max_records = 10_000  # GetRecords' limit

    def __init__(self, client: Any, arn: str, region: str, wire: WireReads | None = None) -> None:
        self.client = client
        self.arn = arn
        self.region = region
        self.stream = arn.split("/", 1)[1]
        self.wire = wire  # GetRecords without botocore (the local stack's endpoint)
        self.waits = wire is not None  # get() may wait for records (``wait_s``)

    def shards(self) -> list[str]:
        return [s["ShardId"] for s in self.client.list_shards(StreamName=self.stream)["Shards"]]

    def iterator(self, shard: str, position: str, after: str | None = None) -> str:
        where = {"ShardIteratorType": position}
        if after is not None:
            where = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": after}
        it: str = self.client.get_shard_iterator(StreamName=self.stream, ShardId=shard, **where)["ShardIterator"]
        return it

    def get(self, iterator: str, limit: int, shard: str, wait_s: float = 0.0) -> tuple[list[StreamRecord], str | None]:
        if self.wire is not None:
            request = {"ShardIterator": iterator, "Limit": limit, "StreamARN": self.arn}
            out = self.wire.call("kinesis", "Kinesis_20131202.GetRecords", "1.1", request, wait_s)
        else:
            out = self.client.get_records(ShardIterator=iterator, Limit=limit)
        records = []
        for r in out["Records"]:
            arrival = _epoch_s(r["ApproximateArrivalTimestamp"])
            data = r["Data"] if isinstance(r["Data"], bytes) else base64.b64decode(r["Data"])
            event = kinesis_record(
                data,
                partition_key=r["PartitionKey"],
                sequence_number=int(r["SequenceNumber"]),
                arrival_s=arrival,
                shard_id=shard,
                stream=self.stream,
                region=self.region,
            )
            records.append(StreamRecord(event, r["SequenceNumber"], arrival, _kinesis_filter_view(event, data)))
        return records, out.get("NextShardIterator")


class DynamoDBStreamSource:
    """A DynamoDB table's stream as an event source."""

    batch_info_key = "DDBStreamBatchInfo"
    max_records = 1000  # GetRecords' limit

    def __init__(self, client: Any, arn: str, region: str, wire: WireReads | None = None) -> None:
        self.client = client
        self.arn = arn
        self.region = region
        self.wire = wire  # GetRecords without botocore (the local stack's endpoint)
        self.waits = wire is not None  # get() may wait for records (``wait_s``)

    def shards(self) -> list[str]:
        desc = self.client.describe_stream(StreamArn=self.arn)["StreamDescription"]
        return [s["ShardId"] for s in desc["Shards"]]

    def iterator(self, shard: str, position: str, after: str | None = None) -> str:
        where = {"ShardIteratorType": position}
        if after is not None:
            where = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after}
        it: str = self.client.get_shard_iterator(StreamArn=self.arn, ShardId=shard, **where)["ShardIterator"]
        return it

    def get(self, iterator: str, limit: int, shard: str, wait_s: float = 0.0) -> tuple[list[StreamRecord], str | None]:
        request = {"ShardIterator": iterator, "Limit": min(limit, self.max_records)}
        if self.wire is not None:  # DynamoDB Streams is signed as dynamodb
            out = self.wire.call("dynamodb", "DynamoDBStreams_20120810.GetRecords", "1.0", request, wait_s)
        else:
            out = self.client.get_records(**request)
        records = []
        for r in out["Records"]:
            ddb = dict(r["dynamodb"])
            created = ddb.get("ApproximateCreationDateTime")
            created_s = _epoch_s(created) if created is not None else time.time()
            ddb["ApproximateCreationDateTime"] = int(created_s)  # Lambda delivers whole epoch seconds
            event = {**r, "dynamodb": ddb, "eventSourceARN": self.arn}
            records.append(StreamRecord(event, ddb["SequenceNumber"], created_s, event))
        return records, out.get("NextShardIterator")


def read_all(source: Any) -> list[StreamRecord]:
    """Every record a stream holds now, each shard from its oldest (to check a stream, not to consume it)."""
    records: list[StreamRecord] = []
    for shard in source.shards():
        iterator: str | None = source.iterator(shard, "TRIM_HORIZON")
        while iterator is not None:
            got, iterator = source.get(iterator, 1000, shard)
            if not got:
                break
            records += got
    return records


def _kinesis_filter_view(event: dict[str, Any], data: bytes) -> dict[str, Any]:
    """Kinesis filters see the record's fields with ``data`` parsed when it is JSON (as Lambda does)."""
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = base64.b64encode(data).decode()
    return {**event["kinesis"], "data": parsed}


# ------------------------------------------------------------------------------------------- the mapping
@dataclass
class MappingStats:
    invocations: int = 0
    records_delivered: int = 0
    records_done: int = 0
    records_filtered: int = 0
    partial_failures: int = 0
    function_errors: int = 0
    bisects: int = 0
    retried_records: int = 0
    sent_to_destination: int = 0
    latencies_s: list[float] = field(default_factory=list)
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_error: str = ""
    last_done_at: float = 0.0  # when the latest records were done (epoch s): the demo's throughput ends there

    def snapshot(self) -> dict[str, Any]:
        """Counters, and the record latency (arrival in the stream -> handler done) as percentiles."""
        out = {k: v for k, v in self.__dict__.items() if k != "latencies_s"}
        out["latency_ms"] = summary_ms(self.latencies_s)
        return out

    def counters(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type == "int"}

    @classmethod
    def counting_from(cls, counters: dict[str, int]) -> MappingStats:
        """Statistics that count on from ``counters`` (a restarted worker's predecessor's, as checkpointed)."""
        stats = cls()
        for name in stats.counters():
            setattr(stats, name, int(counters.get(name, 0)))
        return stats


@dataclass(frozen=True)
class Position:
    """Where a shard stands: every record through ``after`` is handled (done, filtered out or given up), and
    ``through`` is the last record of the batch in flight, if any."""

    after: str | None = None
    through: str | None = None


class Checkpoints:
    """Each shard's ``Position`` and the mapping's counters as of then, kept in the JSON file ``path`` if given
    (else in memory only)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        saved = read_json(path) if path else {}
        self._positions = {shard: Position(**p) for shard, p in saved.get("shards", {}).items()}
        self.counters: dict[str, int] = saved.get("counters", {})

    def get(self, shard: str) -> Position:
        with self._lock:
            return self._positions.get(shard, Position())

    def save(self, shard: str, position: Position, counters: dict[str, int]) -> None:
        with self._lock:
            if self._positions.get(shard) == position:
                return  # a retry of the batch in flight: nothing new to keep
            self._positions[shard], self.counters = position, counters
            if self.path:
                shards = {s: asdict(p) for s, p in self._positions.items()}
                write_json(self.path, {"shards": shards, "counters": counters})


@dataclass
class _Batch:
    records: list[StreamRecord]  # what the function gets (filtered)
    through: str  # the sequence number of the last record polled for it, filtered out or not


@dataclass
class _ShardState:
    """What a shard's poller holds between turns."""

    after: str | None  # the checkpoint to open the shard after
    replay: str | None  # the last record of the batch to deliver first, as it was
    idle_wait: float  # the pause after the next empty poll
    iterator: str | None = None
    opened: bool = False
    pending: deque[_Batch] = field(default_factory=deque)  # batches to (re)deliver, in order
    buffer: list[StreamRecord] = field(default_factory=list)  # polled, not yet in a batch
    first_buffered: float = 0.0


class EventSourceMapping:
    """Polls a source's shards and invokes a function with Lambda's batching and failure rules.

    Parameters
    ----------
    spec
        The mapping's settings.
    source
        The stream (``KinesisSource`` or a DynamoDB stream source with the same methods).
    invoke
        Calls the function with an event and returns its response (raises on a function error).
    send_to_destination
        Delivers the on-failure record (a dict in Lambda's format) to the destination ARN.
    poll_interval_s
        Pause after an empty poll; doubled after each further empty poll, up to ``idle_poll_max_s``.
    idle_poll_max_s
        The longest pause between polls of an idle shard (Lambda polls an idle Kinesis shard once a second; half
        that keeps the 2 s freshness goal, which crosses two mappings).
    retry_base_s
        Base of the jittered exponential pause before a retry (capped at 2 s).
    paused
        True while the mapping's region is down (``local outage``): nothing is polled or invoked meanwhile.
    checkpoints
        Where each shard stands, to resume from, and the counters to count on from (a file of the stack's state
        directory for the local stack's workers).
    """

    def __init__(
        self,
        spec: MappingSpec,
        source: Any,
        invoke: Invoke,
        send_to_destination: Callable[[str, dict[str, Any]], None],
        poll_interval_s: float = 0.2,
        idle_poll_max_s: float = 0.5,
        retry_base_s: float = 0.05,
        clock: Callable[[], float] = time.time,
        paused: Callable[[], bool] = lambda: False,
        checkpoints: Checkpoints | None = None,
    ) -> None:
        self.spec = spec
        self.paused = paused
        self.source = source
        self.invoke = invoke
        self.send_to_destination = send_to_destination
        self.poll_interval_s = poll_interval_s
        self.idle_poll_max_s = max(idle_poll_max_s, poll_interval_s)
        self.read_limit = max(spec.batch_size, getattr(source, "max_records", spec.batch_size))
        self.retry_base_s = retry_base_s
        self.clock = clock
        self.checkpoints = checkpoints or Checkpoints()
        self.stats = MappingStats.counting_from(self.checkpoints.counters)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle
    def start(self) -> None:
        for shard in self.source.shards():
            self.stats.shards[shard] = {"idle": False, "pending": 0}
            t = threading.Thread(target=self._run_shard, args=(shard,), name=f"esm-{shard}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def drained(self) -> bool:
        """Every shard polled empty with nothing buffered or waiting for a retry."""
        with self._lock:
            return all(s["idle"] and not s["pending"] for s in self.stats.shards.values())

    # -- one shard
    def _run_shard(self, shard: str) -> None:
        at = self.checkpoints.get(shard)
        # ``replay``: the batch in flight when the previous worker stopped: it goes out first, as it was
        state = _ShardState(after=at.after, replay=at.through, idle_wait=self.poll_interval_s)
        while not self._stop.is_set():
            if self.paused():
                self._stop.wait(self.poll_interval_s)
                continue
            try:
                self._step(shard, state)
            except Exception as exc:  # keep polling: a mapping never dies, like Lambda's
                with self._lock:
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(1.0)

    def _step(self, shard: str, st: _ShardState) -> None:
        """One turn of a shard's loop: deliver a pending batch, or poll and cut the next batch, or wait."""
        if not st.opened:
            st.iterator, st.opened = self._open(shard, st.after), True
        if st.pending:
            self._deliver(shard, st.pending)
            return
        got: list[StreamRecord] = []
        full = len(st.buffer) >= self.spec.batch_size  # a batch is buffered already: no read until it is out
        waited = False  # the source waited for records (long polling): no pause here after an empty read
        if st.iterator is not None and not full:
            if getattr(self.source, "waits", False):
                got, st.iterator = self.source.get(st.iterator, self.read_limit, shard, self._pause(st))
                waited = True
            else:
                got, st.iterator = self.source.get(st.iterator, self.read_limit, shard)
        if got:
            st.idle_wait = self.poll_interval_s  # records again: quick polls again
            if not st.buffer:
                st.first_buffered = self.clock()
        st.buffer += got
        if size := self._next_batch(st.buffer, st.first_buffered, st.replay, polled=bool(got) or full):
            raw, st.buffer = st.buffer[: min(size, self.spec.batch_size)], st.buffer[min(size, self.spec.batch_size) :]
            st.replay, st.first_buffered = None, self.clock()
            self._queue(shard, st.pending, _Batch(self._filter(raw), raw[-1].sequence_number))
            return
        with self._lock:
            self.stats.shards[shard] = {"idle": not got and not st.buffer, "pending": len(st.buffer)}
        if got:
            return
        if not waited:
            self._stop.wait(self._pause(st))
        st.idle_wait = min(st.idle_wait * 2, self.idle_poll_max_s)

    def _pause(self, st: _ShardState) -> float:
        """How long to wait for records now: the idle pause, but not past the end of a batching window."""
        if st.buffer:
            return min(st.idle_wait, max(0.0, st.first_buffered + self.spec.window_s - self.clock()))
        return st.idle_wait

    def _checkpoint(self, shard: str, position: Position) -> None:
        with self._lock:
            counters = self.stats.counters()
        self.checkpoints.save(shard, position, counters)

    def _open(self, shard: str, after: str | None) -> str:
        """The shard's iterator: after its checkpoint if any, else at the mapping's starting position."""
        it: str = self.source.iterator(shard, self.spec.starting_position, *(() if after is None else (after,)))
        return it

    def _next_batch(self, buffer: list[StreamRecord], since: float, replay: str | None, polled: bool) -> int:
        """How many buffered records go out as the next batch now (0: none yet). ``replay``: the last record of the
        batch a restarted worker delivers first, as it was (up to it, once polled, whatever the window)."""
        if replay is not None:
            through = sum(1 for r in buffer if int(r.sequence_number) <= int(replay))
            if through < len(buffer) or not polled:  # polled past it, or nothing more to poll
                return through or len(buffer)
            return through if buffer and buffer[-1].sequence_number == replay else 0
        full = len(buffer) >= self.spec.batch_size
        # Without a batching window a batch goes out after each poll that found records.
        window_over = bool(buffer) and self.clock() - since >= self.spec.window_s
        return len(buffer) if full or window_over else 0

    def _queue(self, shard: str, pending: deque[_Batch], batch: _Batch) -> None:
        if batch.records:
            pending.append(batch)
        else:  # every record filtered out: handled
            self._checkpoint(shard, Position(batch.through))

    def _filter(self, records: list[StreamRecord]) -> list[StreamRecord]:
        if not self.spec.filters:
            return records
        kept = [r for r in records if any(matches(p, r.filter_view) for p in self.spec.filters)]
        with self._lock:
            self.stats.records_filtered += len(records) - len(kept)
        return kept

    def _deliver(self, shard: str, pending: deque[_Batch]) -> None:
        item = pending.popleft()
        batch = item.records
        with self._lock:
            self.stats.shards[shard] = {"idle": False, "pending": sum(len(b.records) for b in pending) + len(batch)}
        self._checkpoint(shard, Position(self.checkpoints.get(shard).after, item.through))  # in flight
        if self.spec.max_age_s >= 0:
            now = self.clock()
            expired = [r for r in batch if now - r.arrival_s > self.spec.max_age_s]
            if expired:
                self._give_up(shard, expired, "RecordAgeExceeded")
                batch = [r for r in batch if now - r.arrival_s <= self.spec.max_age_s]
                if not batch:
                    self._checkpoint(shard, Position(item.through))
                    return
        failed_from, function_error = self._invoke(batch)
        if failed_from is None:
            self._done(batch)
            self._checkpoint(shard, Position(item.through))
            return
        done, rest = batch[:failed_from], batch[failed_from:]
        self._done(done)
        if done:  # Lambda checkpoints before the lowest reported failure
            self._checkpoint(shard, Position(done[-1].sequence_number, item.through))
        for r in rest:
            r.attempts += 1
        with self._lock:
            self.stats.retried_records += len(rest)
        if self.spec.max_retries >= 0 and max(r.attempts for r in rest) > self.spec.max_retries:
            self._give_up(shard, rest, "RetryAttemptsExhausted")
            self._checkpoint(shard, Position(item.through))
            return
        if function_error and self.spec.bisect and len(rest) > 1:
            half = len(rest) // 2
            pending.appendleft(_Batch(rest[half:], item.through))
            pending.appendleft(_Batch(rest[:half], rest[half - 1].sequence_number))
            with self._lock:
                self.stats.bisects += 1
        else:
            pending.appendleft(_Batch(rest, item.through))
        self._stop.wait(min(2.0, self.retry_base_s * 2 ** min(rest[0].attempts, 6)) * random.random())

    def _invoke(self, batch: list[StreamRecord]) -> tuple[int | None, bool]:
        """Invoke once: (index to retry from, or None when all succeeded; whether the function failed)."""
        with self._lock:
            self.stats.invocations += 1
            self.stats.records_delivered += len(batch)
        try:
            response = self.invoke({"Records": [r.event for r in batch]})
        except Exception as exc:
            with self._lock:
                self.stats.function_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
            return 0, True
        if not self.spec.report_failures or not response:
            return None, False
        failures = response.get("batchItemFailures") if isinstance(response, dict) else None
        if not failures:
            return None, False
        with self._lock:
            self.stats.partial_failures += 1
        index = {r.sequence_number: i for i, r in enumerate(batch)}
        ids = [f.get("itemIdentifier") if isinstance(f, dict) else None for f in failures]
        if any(i not in index for i in ids):
            return 0, False  # an unknown or empty identifier fails the whole batch, as in Lambda
        return min(index[i] for i in ids if i is not None), False

    def _done(self, records: list[StreamRecord]) -> None:
        now = self.clock()
        with self._lock:
            self.stats.records_done += len(records)
            if records:
                self.stats.last_done_at = now
            lat = self.stats.latencies_s
            for r in records:
                if len(lat) < _MAX_SAMPLES:
                    lat.append(now - r.arrival_s)
                else:  # a uniform sample of everything seen, in bounded memory
                    slot = random.randrange(self.stats.records_done)
                    if slot < _MAX_SAMPLES:
                        lat[slot] = now - r.arrival_s

    def _give_up(self, shard: str, records: list[StreamRecord], condition: str) -> None:
        """Send the batch's location to the on-failure destination (Lambda's invocation record format)."""
        info = {
            "shardId": shard,
            "startSequenceNumber": records[0].sequence_number,
            "endSequenceNumber": records[-1].sequence_number,
            "approximateArrivalOfFirstRecord": _iso(records[0].arrival_s),
            "approximateArrivalOfLastRecord": _iso(records[-1].arrival_s),
            "batchSize": len(records),
            "streamArn": self.spec.source_arn,
        }
        message = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": self.spec.function,
                "condition": condition,
                "approximateInvokeCount": max(r.attempts for r in records),
            },
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0",
            "timestamp": _iso(self.clock()),
            self.source.batch_info_key: info,
        }
        if self.spec.destination_arn:
            self.send_to_destination(self.spec.destination_arn, message)
        with self._lock:
            self.stats.sent_to_destination += len(records)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
