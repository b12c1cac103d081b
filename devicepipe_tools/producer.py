"""Device producer: readings -> Kinesis PutRecords, batched, concurrent, retried, never silently dropped.

- Batches of up to 500 records / 5 MiB (PutRecords' limits), flushed early after ``linger_s`` so a slow
  source does not hold readings back; at most ``max_in_flight`` PutRecords calls at once.
- A partial failure (``FailedRecordCount``) retries only the failed entries, with full-jitter backoff, until
  the batch's deadline; throttling and 5xx on the whole call are retried the same way. What still fails goes
  to the ``on_failure`` sink with its reason.
- Optional KPL aggregation: user records bound for the same shard (by the MD5 of their partition key, as
  Kinesis routes them) are packed into aggregated records of up to ``AGGREGATE_MAX_BYTES``.
"""

from __future__ import annotations

import hashlib
import json
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from devicepipe.kpl import SubRecord, aggregate
from devicepipe.models import InvalidReading, parse_reading
from devicepipe.retry import Backoff, error_code, is_transient

MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024  # data + partition key
AGGREGATE_MAX_BYTES = 51_200  # the KPL's default AggregationMaxSize


class ProducerError(RuntimeError):
    """A problem that stops the run before sending (no such stream, no credentials, bad arguments)."""


class InvalidInput(ValueError):
    """An input line that is not a valid reading (raised in strict mode)."""


@dataclass
class Entry:
    """One Kinesis record to put; ``refs`` names the user records it carries (line numbers, simulator ids)."""

    data: bytes
    partition_key: str
    refs: list[str]
    users: list[Entry] = field(default_factory=list)  # the user records inside an aggregated entry

    @property
    def size(self) -> int:
        return len(self.data) + len(self.partition_key.encode())

    @property
    def count(self) -> int:
        return len(self.users) or 1


@dataclass
class Progress:
    """Counts shared with the progress display (user records, not aggregated Kinesis records)."""

    accepted: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    failed_over: int = 0
    calls: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    @property
    def rate(self) -> float:
        return self.sent / max(1e-9, time.monotonic() - self.started)


class Producer:
    """Puts entries into one stream.

    Parameters
    ----------
    client
        A boto3 Kinesis client.
    stream
        Stream name.
    on_failure
        Called with ``(entry, reason)`` for every user record that could not be put.
    max_in_flight
        Concurrent PutRecords calls.
    deadline_s
        How long one batch may keep retrying before its remaining entries are given up.
    aggregate
        Pack user records into KPL-aggregated records.
    fallbacks
        Other regions' ``(client, stream)``, in order of preference. A batch that a region keeps failing for
        ``failover_after_s`` moves on to the next healthy region, and the failing region is skipped for
        ``cooldown_s``. A reading sent twice (accepted by a region whose answer was lost) is harmless: its
        table key is deterministic, and the warehouse merges on it.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        on_failure: Callable[[Entry, str], None],
        max_in_flight: int = 8,
        deadline_s: float = 60.0,
        backoff: Backoff | None = None,
        aggregate: bool = False,
        linger_s: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        fallbacks: Sequence[tuple[Any, str]] = (),
        failover_after_s: float = 10.0,
        cooldown_s: float = 30.0,
    ) -> None:
        self.client = client
        self.stream = stream
        self.targets: list[tuple[Any, str]] = [(client, stream), *fallbacks]
        self.failover_after_s = failover_after_s
        self.cooldown_s = cooldown_s
        self._down_until = [0.0] * len(self.targets)
        self.on_failure = on_failure
        self.max_in_flight = max_in_flight
        self.deadline_s = deadline_s
        self.backoff = backoff or Backoff(base_s=0.1, cap_s=5.0, max_attempts=1_000)
        self.aggregate = aggregate
        self.linger_s = linger_s
        self.sleep = sleep
        self.progress = Progress()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._shard_ranges: list[tuple[int, int, str]] = []
        self._source_error: Exception | None = None

    def check_stream(self) -> list[str]:
        """Fail early, with a clear message, when no region's stream can be used.

        Returns why the others cannot (those regions are skipped for ``cooldown_s``, as after a failover).
        """
        problems, usable = [], None
        for i, (client, stream) in enumerate(self.targets):
            try:
                summary = client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
            except Exception as exc:
                problems.append(f"cannot use stream {stream!r}: {error_code(exc) or type(exc).__name__}: {exc}")
            else:
                if summary["StreamStatus"] in ("ACTIVE", "UPDATING"):
                    usable = usable or (client, stream)
                    continue
                problems.append(f"stream {stream!r} is {summary['StreamStatus']}")
            self._down_until[i] = time.monotonic() + self.cooldown_s
        if usable is None:
            raise ProducerError("; ".join(problems))
        if self.aggregate:
            client, stream = usable
            shards = client.list_shards(StreamName=stream)["Shards"]
            self._shard_ranges = sorted(
                (int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"]), s["ShardId"])
                for s in shards
                if "EndingSequenceNumber" not in s.get("SequenceNumberRange", {})
            )
        return problems

    def send(self, entries: Iterable[Entry]) -> Progress:
        """Put every entry; returns the final counts (failures already passed to ``on_failure``).

        An exception from ``entries`` (such as ``InvalidInput``) is raised after what came before it was sent.
        """
        inbox: queue.Queue[Entry | None] = queue.Queue(maxsize=10_000)
        feeder = threading.Thread(target=self._feed, args=(entries, inbox), daemon=True)
        feeder.start()
        with ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="put") as pool:
            batches = _Batches(lambda batch: self._submit(pool, batch))
            self._batch(inbox, batches)
            for f in batches.futures:
                f.result()
        if self._source_error is not None:
            raise self._source_error
        return self.progress

    def _batch(self, inbox: queue.Queue[Entry | None], batches: _Batches) -> None:
        """Batch what the feeder puts in ``inbox`` until it ends: a batch is sent when full, when it has been open
        ``linger_s``, or when the source keeps it waiting that long."""
        aggregates: dict[str, list[Entry]] = {}
        while True:
            try:
                item = inbox.get(timeout=self.linger_s)
            except queue.Empty:
                self._flush_all(aggregates, batches)
                continue
            if item is None:
                break
            batches.add_all(self._aggregate(aggregates, item) if self.aggregate else [item])
            if batches.age_s() >= self.linger_s:
                batches.flush()
        self._flush_all(aggregates, batches)

    def _flush_all(self, aggregates: dict[str, list[Entry]], batches: _Batches) -> None:
        batches.add_all(self._drain_aggregates(aggregates))
        batches.flush()

    def _submit(self, pool: ThreadPoolExecutor, batch: list[Entry]) -> Future[None]:
        self._slots.acquire()  # backpressure: at most max_in_flight batches queued or running
        return pool.submit(self._put_batch, batch)

    def _feed(self, entries: Iterable[Entry], inbox: queue.Queue[Entry | None]) -> None:
        """Pulls the source in its own thread, so a slow source never delays flushing what is buffered."""
        try:
            for entry in entries:
                self.progress.add(accepted=1)
                inbox.put(entry)
        except Exception as exc:  # e.g. InvalidInput in strict mode: re-raised by send() once sent
            self._source_error = exc
        finally:
            inbox.put(None)

    # -- aggregation
    def _shard_of(self, partition_key: str) -> str:
        hashed = int(hashlib.md5(partition_key.encode()).hexdigest(), 16)  # noqa: S324 - Kinesis' routing hash
        for start, end, shard in self._shard_ranges:
            if start <= hashed <= end:
                return shard
        return "unknown"

    def _aggregate(self, open_aggregates: dict[str, list[Entry]], entry: Entry) -> list[Entry]:
        """Add a user record to its shard's aggregate; returns aggregates that became full."""
        if entry.size > AGGREGATE_MAX_BYTES // 2:
            return [entry]  # large records travel alone
        shard = self._shard_of(entry.partition_key)
        members = open_aggregates.setdefault(shard, [])
        out = []
        if sum(e.size for e in members) + entry.size > AGGREGATE_MAX_BYTES:
            out.append(self._pack(members))
            members = open_aggregates[shard] = []
        members.append(entry)
        return out

    def _drain_aggregates(self, open_aggregates: dict[str, list[Entry]]) -> list[Entry]:
        packed = [self._pack(members) for members in open_aggregates.values() if members]
        open_aggregates.clear()
        return packed

    @staticmethod
    def _pack(members: list[Entry]) -> Entry:
        if len(members) == 1:
            return members[0]
        data = aggregate([SubRecord(m.partition_key, m.data) for m in members])
        return Entry(data, members[0].partition_key, [r for m in members for r in m.refs], users=list(members))

    # -- putting
    def _put_batch(self, batch: list[Entry]) -> None:
        try:
            self._put_with_retries(batch)
        finally:
            self._slots.release()

    def _put_with_retries(self, batch: list[Entry]) -> None:
        """Put a batch in the first healthy region; what it keeps failing moves on to the next one."""
        pending, errors = batch, []
        order = sorted(range(len(self.targets)), key=lambda i: (self._down_until[i] > time.monotonic(), i))
        for position, i in enumerate(order):
            last = position == len(order) - 1
            budget = self.deadline_s if len(order) == 1 else min(self.deadline_s, self.failover_after_s)
            pending, error = self._put_to(*self.targets[i], pending, budget)
            if not pending:
                return
            errors.append(error if len(order) == 1 else f"{self.targets[i][1]}: {error}")
            self._down_until[i] = time.monotonic() + self.cooldown_s
            if not last:
                self.progress.add(failed_over=sum(e.count for e in pending))
        self._fail(pending, "; ".join(errors))

    def _put_to(self, client: Any, stream: str, batch: list[Entry], budget_s: float) -> tuple[list[Entry], str]:
        """Put with retries of only the failed entries until ``budget_s``; returns what is left and why."""
        deadline = time.monotonic() + budget_s
        pending, retry, last_error = batch, 0, ""
        while pending:
            try:
                self.progress.add(calls=1)
                response = client.put_records(
                    StreamName=stream,
                    Records=[{"Data": e.data, "PartitionKey": e.partition_key} for e in pending],
                )
            except Exception as exc:
                last_error = f"{error_code(exc) or type(exc).__name__}: {exc}"
                if not is_transient(exc):
                    return pending, last_error
            else:
                failed = [
                    (e, f"{r['ErrorCode']}: {r.get('ErrorMessage', '')}")
                    for e, r in zip(pending, response["Records"], strict=True)
                    if "ErrorCode" in r
                ]
                self.progress.add(sent=sum(e.count for e in pending) - sum(e.count for e, _ in failed))
                if not failed:
                    return [], ""
                pending, last_error = [e for e, _ in failed], failed[0][1]
            wait = self.backoff.delay(retry, random.random)
            if time.monotonic() + wait > deadline:
                return pending, f"gave up after {retry + 1} attempts in {budget_s:.0f}s: {last_error}"
            self.progress.add(retried=sum(e.count for e in pending))
            self.sleep(wait)
            retry += 1
        return [], ""

    def _fail(self, entries: list[Entry], reason: str) -> None:
        for entry in entries:
            for user in entry.users or [entry]:
                self.on_failure(user, reason)
                self.progress.add(failed=1)


class _Batches:
    """The open PutRecords batch: closed when the next entry would pass the call's record or byte limit, or on
    ``flush``, and handed to ``submit``."""

    def __init__(self, submit: Callable[[list[Entry]], Future[None]]) -> None:
        self.submit = submit
        self.futures: list[Future[None]] = []
        self.batch: list[Entry] = []
        self.batch_bytes = 0
        self.opened = time.monotonic()

    def add_all(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if len(self.batch) >= MAX_BATCH_RECORDS or self.batch_bytes + entry.size > MAX_BATCH_BYTES:
                self.flush()
            if not self.batch:
                self.opened = time.monotonic()
            self.batch.append(entry)
            self.batch_bytes += entry.size

    def flush(self) -> None:
        if self.batch:
            self.futures.append(self.submit(self.batch))
            self.batch, self.batch_bytes = [], 0

    def age_s(self) -> float:
        """Seconds since the open batch (or the last one) took its first entry."""
        return time.monotonic() - self.opened


# ----------------------------------------------------------------------------------------------- inputs
def read_readings(
    lines: Iterable[str], on_invalid: Callable[[int, str], None], strict: bool = False, validate: bool = True
) -> Iterator[Entry]:
    """Entries from JSON lines (blank lines skipped). Invalid lines go to ``on_invalid(line_no, reason)``
    and are skipped, or stop the input with ``InvalidInput`` when ``strict``."""
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        data = text.encode()
        key = f"line-{number}"
        if validate:
            try:
                doc = json.loads(text)
                reading = parse_reading(doc)
            except (ValueError, InvalidReading) as exc:
                reason = exc.reason if isinstance(exc, InvalidReading) else f"invalid JSON: {exc}"
                on_invalid(number, reason)
                if strict:
                    raise InvalidInput(f"line {number}: {reason}") from None
                continue
            key = reading.device_id
        if len(data) + len(key) > MAX_RECORD_BYTES:
            on_invalid(number, f"record is {len(data)} bytes, over Kinesis' 1 MiB limit")
            if strict:
                raise InvalidInput(f"line {number}: too large")
            continue
        yield Entry(data, key, [f"line {number}"])


def simulate(
    devices: int,
    branches: int,
    count: int | None = None,
    duration_s: float | None = None,
    rate: float | None = None,
    seed: int | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[dict[str, Any]]:
    """Readings from ``devices`` devices spread over ``branches`` branches, at most ``rate`` per second,
    until ``count`` readings or ``duration_s`` seconds (whichever comes first)."""
    rng = random.Random(seed)
    seq = [0] * devices
    started = time.monotonic()
    n = 0
    while (count is None or n < count) and (duration_s is None or time.monotonic() - started < duration_s):
        if rate:
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        d = n % devices
        seq[d] += 1
        now_ms = int(clock() * 1000)
        yield {
            "device_id": f"dev-{d:05d}",
            "branch_id": f"branch-{d % branches:03d}",
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms // 1000)) + f".{now_ms % 1000:03d}Z",
            "seq": seq[d],
            "metrics": {
                "temp_c": round(rng.gauss(21, 2), 2),
                "humidity": round(rng.uniform(0.3, 0.6), 3),
                "battery": round(rng.uniform(0.2, 1.0), 3),
                "door": rng.choice(["open", "closed"]),
            },
        }
        n += 1


def entries_from_readings(readings: Iterable[dict[str, Any]]) -> Iterator[Entry]:
    for i, doc in enumerate(readings):
        yield Entry(json.dumps(doc, separators=(",", ":")).encode(), doc["device_id"], [f"sim {i}"])


class FailureFile:
    """Writes records that could not be put, one JSON object per line, opened on first use."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def __call__(self, entry: Entry, reason: str) -> None:
        try:
            data: Any = entry.data.decode()
        except UnicodeDecodeError:
            data = {"base64": __import__("base64").b64encode(entry.data).decode()}
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
            self._file.write(
                json.dumps({"ref": entry.refs[0], "partition_key": entry.partition_key, "reason": reason, "data": data})
                + "\n"
            )
            self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class ProgressLine:
    """A live progress line on a terminal (rate, errors), refreshed from a background thread."""

    def __init__(self, progress: Progress, total: int | None, out: IO[str] = sys.stderr) -> None:
        self.progress = progress
        self.total = total
        self.out = out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProgressLine:
        if self.out.isatty():
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.out.write("\n")

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.out.write("\r" + self.render() + "\x1b[K")
            self.out.flush()
        self.out.write("\r" + self.render() + "\x1b[K")

    def render(self) -> str:
        p = self.progress
        done = p.sent + p.failed
        if self.total:
            width = 30
            filled = int(width * done / self.total)
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
        else:
            bar = f"{done} records"
        return f"{bar}  {p.rate:8.0f}/s  errors {p.failed}  retried {p.retried}"
