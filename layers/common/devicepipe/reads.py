"""What branches read: latest readings, history and branch listings, cache-aside (Redis first, then the table).

The rules (docs/read-api.md):

- a miss is answered from the table and written back to Redis through the cache updater's compare-and-set, so
  a read never replaces a newer cached reading;
- Redis failing degrades to table reads (counted through ``on_lookup``); the table failing raises
  ``Unavailable``;
- branch views are trusted only while Redis holds them whole (``CacheReader.branch``); otherwise the branch is
  read whole from the ``ByBranchLatest`` index and written back;
- a branch report is read from the reports bucket (``report.json``, which the report function writes last) and
  kept in Redis for ``REPORT_CACHE_S`` as the stored text; S3 failing raises ``Unavailable``.

Nothing here knows HTTP: ``devicepipe.api`` turns these answers into responses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis as redis_lib

from devicepipe.cache import CacheReader, CacheUnavailable, CacheWriter, epoch_ms, update_from_item
from devicepipe.delivery import report_key
from devicepipe.models import LATEST_SK, device_pk, unmarshal_item
from devicepipe.retry import Backoff, Retrier, error_code, is_transient

#: Item attributes that are storage details, not part of the reading a client sees.
_INTERNAL = frozenset({"pk", "sk", "latest_branch", "latest_at", "expires_at", "version"})
_FIRST = ("device_id", "branch_id", "ts", "seq", "metrics")
#: Index of LATEST items by branch (sparse: one entry per device), sorted by ``latest_at``.
BRANCH_INDEX = "ByBranchLatest"
_BATCH_GET_MAX = 100
#: After Redis fails, reads skip it for this long: a dead cache costs one timeout, not one per request.
REDIS_BACKOFF_S = 5.0
#: A reader waits for throttled keys a little, not the ingest's two seconds: the client can retry.
_READ_RETRIES = Retrier(Backoff(base_s=0.02, cap_s=0.2, max_attempts=4))
#: How long Redis keeps a report (``<prefix>:report:<branch>:<period>``): a rewritten report (late readings)
#: shows within this time; repeated reads meanwhile cost one Redis GET.
REPORT_CACHE_S = 300

_Entry = TypeVar("_Entry", bound=tuple[Any, ...])
#: ``on_lookup(kind, outcome)``: kind is ``latest``, ``branch``, ``branches``, ``devices`` (a branch page's
#: readings) or ``report``; outcome ``hit``, ``miss`` or ``error`` (Redis failed: answered from the table or the
#: reports bucket). Kind ``fill`` with ``error``: writing a table answer back to Redis failed.
OnLookup = Callable[[str, str], None]


class NotFound(LookupError):
    """The device or branch has no reading."""

    code = "not_found"


class ReportNotFound(NotFound):
    """No report is stored for the branch and period (yet)."""

    code = "report_not_found"


class Unavailable(RuntimeError):
    """The table (and so the route) cannot answer now; the client should retry."""


@dataclass(frozen=True)
class DeviceEntry:
    """A device in a branch listing: its newest reading and when it was seen (event time, epoch ms)."""

    device_id: str
    last_seen_ms: int
    reading: dict[str, Any]


@dataclass(frozen=True)
class Page:
    """A page of a listing, and the position after its last entry (None on the last page)."""

    items: list[Any]
    after: Any
    source: str = "table"


def public_reading(item: dict[str, Any]) -> dict[str, Any]:
    """A stored item or cached reading as clients see it: the reading's fields (the contract's first, then
    extra fields by name), ``origin_region`` and ``ingested_at``; no storage keys or bookkeeping. The same
    reading reads the same from the cache and the table."""
    first = {k: item[k] for k in _FIRST if k in item}
    return first | {k: item[k] for k in sorted(item) if k not in _INTERNAL and k not in first}


class Reads:
    """Cache-aside reads over a Redis cache and the readings table.

    Parameters
    ----------
    writer
        The cache's writer (its compare-and-set fills the cache on a miss); its Redis client is read too.
    dynamodb
        A boto3 DynamoDB client.
    table_name
        The readings table (this region's replica).
    on_lookup
        Called for every cache lookup, e.g. to emit hit/miss metrics.
    s3, reports_bucket
        A boto3 S3 client and the bucket the report function writes (for ``report``).
    """

    def __init__(
        self,
        writer: CacheWriter,
        dynamodb: Any,
        table_name: str,
        on_lookup: OnLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
        s3: Any = None,
        reports_bucket: str = "",
    ):
        self.writer = writer
        self.s3 = s3
        self.reports_bucket = reports_bucket
        self.cache = CacheReader(writer)
        self.dynamodb = dynamodb
        self.table_name = table_name
        self.on_lookup: OnLookup = on_lookup or (lambda kind, outcome: None)
        self.clock = clock
        self._redis_skipped_until = 0.0

    def _cached(self, kind: str, call: Callable[[], Any]) -> Any:
        """A Redis read, counted as a hit or a miss; None when Redis fails or failed within the last
        ``REDIS_BACKOFF_S`` (then requests go straight to the table instead of each waiting on Redis)."""
        if self.clock() < self._redis_skipped_until:
            self.on_lookup(kind, "error")
            return None
        try:
            found = call()
        except CacheUnavailable:
            self._redis_skipped_until = self.clock() + REDIS_BACKOFF_S
            self.on_lookup(kind, "error")
            return None
        self.on_lookup(kind, "miss" if found is None else "hit")
        return found

    # ------------------------------------------------------------------ one device
    def latest(self, device_id: str) -> tuple[dict[str, Any], str]:
        """The device's newest reading and where it came from (``cache`` or ``table``)."""
        cached = self._cached("latest", lambda: self.cache.latest(device_id))
        if cached:
            return public_reading(cached), "cache"
        item = self._call("get_item", Key=_latest_key(device_id))
        if "Item" not in item:
            raise NotFound(f"device {device_id} has no reading")
        plain = unmarshal_item(item["Item"])
        self._fill([plain])
        return public_reading(plain), "table"

    def history(self, device_id: str, lo: str, hi: str, limit: int, after_sk: str | None = None) -> Page:
        """Readings with ``lo <= sk <= hi`` (sort keys ``R#<ts>#<seq>``), newest first, ``limit`` at most.
        With ``hi = "R#" + <time>`` that is every reading before that time (a reading's key is longer).

        ``Page.after`` is the last reading's sort key when more remain. One item beyond ``limit`` is read so
        that the last page says so and a client never fetches an empty one.
        """
        args: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {":pk": {"S": device_pk(device_id)}, ":lo": {"S": lo}, ":hi": {"S": hi}},
            "ScanIndexForward": False,
        }
        if after_sk is not None:
            args["ExclusiveStartKey"] = {"pk": {"S": device_pk(device_id)}, "sk": {"S": after_sk}}
        items: list[dict[str, Any]] = []
        while len(items) <= limit:  # a page stops at 1 MB: go on until one more than asked, or the end
            answer = self._call("query", **args, Limit=limit + 1 - len(items))
            items += answer.get("Items", [])
            if "LastEvaluatedKey" not in answer:
                break
            args["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        page, more = items[:limit], len(items) > limit
        return Page([public_reading(unmarshal_item(i)) for i in page], page[-1]["sk"]["S"] if more else None)

    def known(self, device_id: str) -> bool:
        """Whether the device has a LATEST item (for a 404 on an empty history)."""
        return "Item" in self._call("get_item", Key=_latest_key(device_id), ProjectionExpression="pk")

    # ------------------------------------------------------------------ branches
    def branch_devices(self, branch_id: str, limit: int, after: tuple[int, str] | None = None) -> Page:
        """A page of a branch's devices (``DeviceEntry``), most recently seen first, then by device id
        (descending, as Redis orders ties); ``after`` is the ``(last_seen_ms, device_id)`` of the previous
        page's last entry."""
        members, source = self._branch_members(branch_id)
        if not members:
            raise NotFound(f"branch {branch_id} has no devices")
        rest = [m for m in members if after is None or (m[1], m[0]) < after]
        page = rest[:limit]
        readings = self._readings_of([device for device, _ in page])
        entries = [DeviceEntry(d, ms, readings[d]) for d, ms in page if d in readings]
        more = len(rest) > limit
        return Page(entries, (page[-1][1], page[-1][0]) if more else None, source)

    def branches(self) -> tuple[list[tuple[str, int, int]], str]:
        """``(branch_id, last seen epoch ms, devices)`` of every branch with devices, most recently seen first."""
        cached = self._cached("branches", self.cache.branches)
        if cached is not None:
            return cached, "cache"
        # The index is sparse (one entry per device): scanning it reads each device once, keys and time only.
        projection = {"ProjectionExpression": "latest_branch, device_id, ts"}
        members = [
            (i["latest_branch"]["S"], i["device_id"]["S"], epoch_ms(i["ts"]["S"]))
            for page in self._pages("scan", IndexName=BRANCH_INDEX, **projection)
            for i in page.get("Items", [])
        ]
        self._write_back(lambda: self.writer.load_views(members))
        seen: dict[str, tuple[int, int]] = {}
        for branch, _, ms in members:
            newest, count = seen.get(branch, (0, 0))
            seen[branch] = (max(newest, ms), count + 1)
        return _newest_first([(b, ms, n) for b, (ms, n) in seen.items()]), "table"

    # ------------------------------------------------------------------ reports
    def report(self, branch_id: str, period: str) -> tuple[dict[str, Any], str]:
        """The branch's stored report for a period (a ``YYYY-MM-DD`` date) and where it came from (``cache``
        or ``store``); ``ReportNotFound`` when none is stored."""
        key = f"{self.writer.prefix}:report:{branch_id}:{period}"
        cached = self._cached("report", lambda: _redis(lambda: self.cache.redis.get(key)))
        if cached is not None:
            return json.loads(cached), "cache"
        text = self._stored_report(branch_id, period)
        self._write_back(lambda: _redis(lambda: self.cache.redis.set(key, text, ex=REPORT_CACHE_S)))
        return json.loads(text), "store"

    def _stored_report(self, branch_id: str, period: str) -> str:
        if self.s3 is None or not self.reports_bucket:
            raise RuntimeError("REPORTS_BUCKET is not set: this read API serves no reports")
        try:
            answer = self.s3.get_object(Bucket=self.reports_bucket, Key=report_key(branch_id, period, "json"))
            text: str = answer["Body"].read().decode()
            return text
        except Exception as exc:
            # A missing key is a 404 only with s3:ListBucket on the bucket (else 403, a bug here):
            # https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html
            if error_code(exc) in ("NoSuchKey", "404"):
                raise ReportNotFound(
                    f"no report for branch {branch_id} and period {period} yet: a day's report is written after "
                    "the day ends in the branch's time zone; try an earlier period"
                ) from None
            if is_transient(exc):
                raise Unavailable(f"S3 GetObject failed: {type(exc).__name__}: {exc}") from exc
            raise

    # ------------------------------------------------------------------ helpers
    def _branch_members(self, branch_id: str) -> tuple[list[tuple[str, int]], str]:
        cached = self._cached("branch", lambda: self.cache.branch(branch_id))
        if cached is not None:
            return cached, "cache"
        pages = self._pages(
            "query",
            IndexName=BRANCH_INDEX,
            KeyConditionExpression="latest_branch = :b",
            ExpressionAttributeValues={":b": {"S": branch_id}},
        )
        items = [unmarshal_item(i) for page in pages for i in page.get("Items", [])]
        self._fill(items)
        self._write_back(lambda: self.cache.mark_loaded(branch_id))
        return _newest_first([(str(i["device_id"]), epoch_ms(str(i["ts"]))) for i in items]), "table"

    def _readings_of(self, device_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Newest readings of devices listed in a branch view: Redis, then the table for the ones Redis lost
        (evicted, expired) or all of them when Redis fails."""
        cached = self._cached("devices", lambda: self.cache.latest_many(device_ids)) or [None] * len(device_ids)
        found = {d: public_reading(c) for d, c in zip(device_ids, cached, strict=True) if c}
        missing = [d for d in device_ids if d not in found]
        for start in range(0, len(missing), _BATCH_GET_MAX):
            items = self._batch_get_latest(missing[start : start + _BATCH_GET_MAX])
            self._fill(items)
            found.update((str(i["device_id"]), public_reading(i)) for i in items)
        return found

    def _batch_get_latest(self, device_ids: Sequence[str]) -> list[dict[str, Any]]:
        """LATEST items of up to 100 devices; unprocessed keys (throttling) retried with a short backoff."""
        out: list[dict[str, Any]] = []
        keys = [_latest_key(d) for d in device_ids]

        def attempt() -> bool:
            nonlocal keys
            answer = self._call("batch_get_item", RequestItems={self.table_name: {"Keys": keys}}, named=False)
            out.extend(unmarshal_item(i) for i in answer.get("Responses", {}).get(self.table_name, []))
            keys = answer.get("UnprocessedKeys", {}).get(self.table_name, {}).get("Keys", [])
            return not keys

        if not _READ_RETRIES.run(attempt).done:
            raise Unavailable(f"DynamoDB BatchGetItem left {len(keys)} keys unprocessed")
        return out

    def _fill(self, items: Sequence[dict[str, Any]]) -> None:
        """Write LATEST items back to Redis (compare-and-set)."""
        self._write_back(lambda: self.writer.apply([update_from_item(i, str(i["latest_at"])) for i in items]))

    def _write_back(self, call: Callable[[], Any]) -> None:
        """A write of a table answer to Redis: a failing Redis only loses the write (counted)."""
        if self.clock() < self._redis_skipped_until:
            return
        try:
            call()
        except CacheUnavailable:
            self._redis_skipped_until = self.clock() + REDIS_BACKOFF_S
            self.on_lookup("fill", "error")

    def _call(self, operation: str, named: bool = True, **kwargs: Any) -> Any:
        """One DynamoDB call on the table (botocore retries throttling itself); what is still transient after
        its retries becomes ``Unavailable``, anything else (a request the table refuses: a bug) propagates."""
        try:
            if named:
                kwargs["TableName"] = self.table_name
            return getattr(self.dynamodb, operation)(**kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable(f"DynamoDB {operation} failed: {type(exc).__name__}: {exc}") from exc
            raise

    def _pages(self, operation: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every page of a query or scan on the table."""
        pages: list[dict[str, Any]] = []
        while True:
            page = self._call(operation, **kwargs)
            pages.append(page)
            if "LastEvaluatedKey" not in page:
                return pages
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _redis(call: Callable[[], Any]) -> Any:
    """A plain Redis command; its failure becomes ``CacheUnavailable`` (skipped like any Redis failure)."""
    try:
        return call()
    except redis_lib.exceptions.RedisError as exc:
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc


def _newest_first(entries: list[_Entry]) -> list[_Entry]:
    """``(id, last seen ms, ...)`` entries in Redis's ``ZREVRANGE`` order: newest first, ties by id descending,
    so a listing read from the table pages exactly like one read from the cache."""
    return sorted(entries, key=lambda e: (e[1], e[0]), reverse=True)


def _latest_key(device_id: str) -> dict[str, Any]:
    return {"pk": {"S": device_pk(device_id)}, "sk": {"S": LATEST_SK}}
