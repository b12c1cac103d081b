"""DynamoDB writes for readings: batched, concurrent, retried, and safe to replay.

Items are already in DynamoDB's wire format (see ``models``), so the low-level client is used directly:
boto3's resource layer and ``TypeSerializer`` would cost more CPU than the rest of the ingest together. For the
same reason ``send_items_as_is`` lets a hot client send the writes' JSON as it is (see there).
"""

from __future__ import annotations

import os
import platform
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import boto3
import botocore
import orjson
from botocore.config import Config

from devicepipe.fanout import drain, fan_out, lanes_for
from devicepipe.models import LATEST_SK, AttributeValue, Reading
from devicepipe.observability import logger
from devicepipe.retry import Retrier, error_code

Item = dict[str, AttributeValue]
BATCH_WRITE_LIMIT = 25
#: An older or equal ``(ts, seq)`` never replaces a newer one: equal versions make a replay a no-op.
LATEST_CONDITION = "attribute_not_exists(pk) OR latest_at < :version"


class DynamoClient(Protocol):
    """The part of boto3's DynamoDB client the writer uses (fakes in unit tests implement the same)."""

    @property
    def batch_write_item(self) -> Callable[..., Any]: ...

    @property
    def put_item(self) -> Callable[..., Any]: ...


def write_client(**options: Any) -> Any:
    """A DynamoDB client for the hot writers (ingest, LATEST repair), with ``options`` (``botocore.config.Config``).

    With a default client botocore's work is most of the ingest's CPU, several times its own (``make bench``), so
    this client does without what these writes do not need:

    - parameter validation: our code alone builds these requests, from items checked against the reading
      contract, and DynamoDB validates them anyway; an item it refuses then comes back as ValidationException,
      which the writer quarantines, where botocore's own ParamValidationError would be retried as transient;
    - a User-Agent rebuilt twice per request from a dozen sanitised parts (a fifth of a PutItem's CPU): a fixed
      one names the SDK, its version and the runtime;
    - botocore's serialisation of the items (``send_items_as_is``).
    """
    runtime = os.environ.get("AWS_EXECUTION_ENV", f"python/{platform.python_version()}")
    user_agent = f"Boto3/{boto3.__version__} Botocore/{botocore.__version__} exec-env/{runtime} devicepipe"
    config = Config(parameter_validation=False, user_agent=user_agent).merge(Config(**options))
    return send_items_as_is(boto3.client("dynamodb", config=config))


#: Errors by which DynamoDB refuses an item itself (a malformed attribute value comes back as SerializationException,
#: not ValidationException): the same item fails every retry, so it is quarantined, not retried.
REFUSED_ITEM = ("ValidationException", "SerializationException")


#: The writes whose items ``send_items_as_is`` sets aside (``RequestItems``' lists, ``Item``); the table names stay,
#: since the endpoint rules read them from BatchWriteItem's ``RequestItems``.
_ITEM_WRITES = ("BatchWriteItem", "PutItem")
_BODY = "devicepipe_body"


def send_items_as_is(client: Any) -> Any:
    """Make ``client``'s BatchWriteItem and PutItem send their parameters as one ``orjson.dumps``.

    botocore's JSON serialiser walks every attribute value of every item against the service model (about 40%
    of a real client's CPU for a 1,000-reading batch once parameter validation is off) to produce the JSON that
    ``orjson`` writes from the items as they are: they are already DynamoDB's wire format. botocore still builds
    the request (target, headers, endpoint), signs, sends, retries and parses it; only the body is written here.
    Parameters orjson cannot write as botocore would (bytes of a ``B`` attribute, ``Decimal``) take botocore's
    path. botocore's parameter validation, if on, sees only a stand-in for the items (DynamoDB validates them).
    """
    for operation in _ITEM_WRITES:
        client.meta.events.register(f"before-parameter-build.dynamodb.{operation}", _set_items_aside)
        client.meta.events.register(f"before-call.dynamodb.{operation}", _put_items_back)
    return client


def _set_items_aside(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
    try:
        context[_BODY] = orjson.dumps(params)
    except TypeError:
        return
    # ``params`` is this call's own dict (botocore's keyword arguments): the caller's items are not touched.
    # The stand-ins pass botocore's validation, should it be on: one empty item per table.
    if model.name == "BatchWriteItem":
        params["RequestItems"] = {table: [{"PutRequest": {"Item": {}}}] for table in params["RequestItems"]}
    else:
        params["Item"] = {}


def _put_items_back(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    body = context.pop(_BODY, None)
    if body is not None:
        params["body"] = body


def reading_item(
    attributes: Item, epoch_s: int, origin_region: AttributeValue, ingested_at: AttributeValue, ttl_s: int
) -> Item:
    """The reading item from a reading's ``attributes`` and event time: deterministic for a given record, so
    writing it again changes nothing.

    Completes ``attributes`` in place (the ingest hot path saves a copy per reading); the region and arrival
    time come as attribute values so that a batch can share one of each between its items.
    """
    attributes["origin_region"] = origin_region
    attributes["ingested_at"] = ingested_at
    attributes["expires_at"] = {"N": str(epoch_s + ttl_s)}
    return attributes


def latest_item(reading: Reading) -> Item:
    """The device's LATEST item from its reading item; ``latest_branch`` makes the branch GSI sparse."""
    return {
        **reading.attributes,
        "sk": {"S": LATEST_SK},
        "latest_branch": {"S": reading.branch_id},
        "latest_at": {"S": reading.version},
    }


@dataclass
class WriteResult:
    """What happened to a list of items, by index into that list."""

    failed: dict[int, str] = field(default_factory=dict)  # transient: retry later (batchItemFailures)
    rejected: dict[int, str] = field(default_factory=dict)  # DynamoDB refuses the item itself: quarantine
    stale: set[int] = field(default_factory=set)  # LATEST already newer or equal: nothing to do
    retries: int = 0
    calls: int = 0

    def record(self, index: int, outcome: tuple[str, str, int, int]) -> None:
        """Adds one PutItem outcome, ``(status, detail, retries, calls)`` from ``DynamoWriter._put``."""
        status, detail, retries, calls = outcome
        self.retries += retries
        self.calls += calls
        if status == "stale":
            self.stale.add(index)
        elif status == "failed":
            self.failed[index] = detail
        elif status == "rejected":
            self.rejected[index] = detail


class DynamoWriter:
    """Writes reading and LATEST items to one table.

    Parameters
    ----------
    client
        A boto3 DynamoDB client (thread-safe; its connection pool should be at least the executor's size).
    table_name
        The table (same name in every region of the global table).
    executor
        Runs calls concurrently (needs at least ``max_in_flight`` workers to reach that concurrency).
    retrier
        Backoff, attempt limit and deadline for throttling, 5xx and ``UnprocessedItems``.
    max_in_flight
        Most calls in flight at once.
    """

    def __init__(
        self, client: DynamoClient, table_name: str, executor: Executor, retrier: Retrier, max_in_flight: int = 32
    ) -> None:
        self.client = client
        self.table_name = table_name
        self.executor = executor
        self.retrier = retrier
        self.max_in_flight = max_in_flight

    def write_with_latest(
        self,
        items: Sequence[Item],
        groups: Sequence[Sequence[int]],
        latest_for: Callable[[int, list[int]], Item | None],
    ) -> tuple[WriteResult, WriteResult]:
        """Reading items with BatchWriteItem (25 per call), and each group's LATEST item with a conditional PutItem.

        ``groups`` splits the indices of ``items`` into non-empty groups (one per device); items must have
        distinct keys (BatchWriteItem refuses duplicates within one call). A group's items are written in
        adjacent chunks, and as soon as the last of them is done, the lane that finished it asks
        ``latest_for(group, stored)`` for the LATEST item built from the group's items that were stored (None:
        put nothing) and puts it. One set of lanes (at most ``max_in_flight``) serves both kinds of call with
        no barrier between them: 40 chunks and 100 LATEST puts take 5 rounds of calls on 28 threads, where
        all chunks and then all LATEST items took 2 + 4 rounds and 20 + 25 thread hand-offs.

        Returns the readings' result (by item index) and the LATEST result (by group index).
        """
        order = [i for group in groups for i in group]
        chunks = [order[i : i + BATCH_WRITE_LIMIT] for i in range(0, len(order), BATCH_WRITE_LIMIT)]
        chunk_groups: list[list[int]] = [[] for _ in chunks]
        pending = [0] * len(groups)  # chunks still to finish before the group's LATEST can be put
        start = 0
        for g, group in enumerate(groups):
            for c in range(start // BATCH_WRITE_LIMIT, (start + len(group) - 1) // BATCH_WRITE_LIMIT + 1):
                chunk_groups[c].append(g)
                pending[g] += 1
            start += len(group)
        readings, latest = WriteResult(), WriteResult()
        lock = threading.Lock()
        tasks: deque[Callable[[], None]] = deque()

        def write_chunk(c: int) -> None:
            part = self._write_chunk(items, chunks[c])
            ready = []
            with lock:
                readings.failed.update(part.failed)
                readings.rejected.update(part.rejected)
                readings.retries += part.retries
                readings.calls += part.calls
                for g in chunk_groups[c]:
                    pending[g] -= 1
                    if not pending[g]:
                        ready.append(g)
            tasks.extend(partial(put_latest, g) for g in ready)

        def put_latest(g: int) -> None:
            with lock:
                stored = [i for i in groups[g] if i not in readings.failed and i not in readings.rejected]
            item = latest_for(g, stored) if stored else None
            if item is not None:
                outcome = self._put_latest(item)
                with lock:
                    latest.record(g, outcome)

        tasks.extend(partial(write_chunk, c) for c in range(len(chunks)))
        drain(self.executor, lanes_for(len(chunks) + len(groups), self.max_in_flight), tasks)
        return readings, latest

    def put_latest(self, items: Sequence[Item]) -> WriteResult:
        """One conditional PutItem per LATEST item, concurrently."""
        result = WriteResult()
        for i, outcome in enumerate(fan_out(self.executor, self.max_in_flight, self._put_latest, items)):
            result.record(i, outcome)
        return result

    def _write_chunk(self, items: Sequence[Item], indices: Sequence[int]) -> WriteResult:
        result = WriteResult()
        pending = list(indices)

        def attempt() -> bool:
            nonlocal pending
            result.calls += 1
            response = self.client.batch_write_item(
                RequestItems={self.table_name: [{"PutRequest": {"Item": items[i]}} for i in pending]}
            )
            unprocessed = response.get("UnprocessedItems", {}).get(self.table_name)
            if not unprocessed:
                pending = []
                return True
            # Only now map keys back to indices: the common, fully processed call never pays for it.
            by_key = {(items[i]["pk"]["S"], items[i]["sk"]["S"]): i for i in pending}
            pending = [
                by_key[(r["PutRequest"]["Item"]["pk"]["S"], r["PutRequest"]["Item"]["sk"]["S"])] for r in unprocessed
            ]
            return False

        try:
            outcome = self.retrier.run(attempt)
        except Exception as exc:
            if error_code(exc) in REFUSED_ITEM:
                # One item DynamoDB refuses fails the whole call: find it by writing the chunk one by one.
                return self._write_singly(items, pending, result)
            logger.exception("BatchWriteItem failed with a non-retryable error", extra={"code": error_code(exc)})
            result.failed.update((i, f"{error_code(exc) or type(exc).__name__}: {exc}") for i in pending)
            return result
        result.retries += outcome.retries
        if not outcome.done:
            result.failed.update((i, outcome.error) for i in pending)
        return result

    def _write_singly(self, items: Sequence[Item], indices: list[int], result: WriteResult) -> WriteResult:
        for i in indices:
            result.record(i, self._put(items[i]))
        return result

    def _put_latest(self, item: Item) -> tuple[str, str, int, int]:
        return self._put(
            item, ConditionExpression=LATEST_CONDITION, ExpressionAttributeValues={":version": item["latest_at"]}
        )

    def _put(self, item: Item, **condition: Any) -> tuple[str, str, int, int]:
        """PutItem with retries: ``(status, detail, retries, calls)``, status ok/stale/failed/rejected."""
        calls = 0

        def attempt() -> bool:
            nonlocal calls
            calls += 1
            self.client.put_item(TableName=self.table_name, Item=item, **condition)
            return True

        try:
            outcome = self.retrier.run(attempt)
        except Exception as exc:
            code = error_code(exc)
            if code == "ConditionalCheckFailedException":
                return "stale", "", 0, calls
            if code in REFUSED_ITEM:
                return "rejected", f"rejected by DynamoDB: {exc}", 0, calls
            logger.exception("PutItem failed with a non-retryable error", extra={"code": code})
            return "failed", f"{code or type(exc).__name__}: {exc}", 0, calls
        return ("ok", "", outcome.retries, calls) if outcome.done else ("failed", outcome.error, outcome.retries, calls)
