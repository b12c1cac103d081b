"""Global-table replication between the local stack's regions, the way DynamoDB global tables behave.

moto keeps one independent table per region. The supervisor (which runs moto in-process) installs a
``Replicator`` that, for the global tables' names:

- observes every item change in every region (hooked where moto appends to the table's stream, so exactly
  the writes that produce a stream record), stamps it with its write time and queues it for every other region;
- applies it there after ``delay_s`` (asynchronous, per-item order kept) unless the receiving replica already
  holds a later write of that item: last writer wins by write time, ties broken by region name, deletes
  included (their time is kept as a tombstone);
- applies it through moto's own write path, so the replicated write appears on the receiving region's stream,
  as on AWS, without being queued back (a thread-local flag marks the replicator's own writes).

Each region's writes are serialised by a lock, so a local write and a replicated one cannot interleave between
the last-writer check and the write. A region marked down (``set_down``) keeps its queued writes, in both
directions, until it is back: an outage delays replication, it loses nothing.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from devicepipe_tools.local import moto_fixes
from devicepipe_tools.stats import summary_ms

_MARK = "__devicepipe_replicator_wraps__"  # on our wrappers: the function they wrap
_WRITES = moto_fixes.DYNAMODB_WRITES


def _original(method: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(method, _MARK, method)


@dataclass(order=True, frozen=True)
class _Pending:
    due: float
    order: int
    source: str = field(compare=False)
    target: str = field(compare=False)
    table: str = field(compare=False)
    key: tuple[Any, Any] = field(compare=False)
    item: dict[str, Any] | None = field(compare=False)  # wire-format attributes; None: a delete
    written_at: float = field(compare=False)


@dataclass
class ReplicationStats:
    replicated: int = 0
    superseded: int = 0  # arrived after a later write of the same item: last writer wins
    lags_s: list[float] = field(default_factory=list)  # write in the source -> applied in the target

    def snapshot(self, pending: int, held: int, delay_s: float) -> dict[str, Any]:
        return {
            "delay_ms": round(delay_s * 1000),
            "replicated": self.replicated,
            "superseded": self.superseded,
            "pending": pending,
            "held_for_down_regions": held,
            "lag_ms": summary_ms(self.lags_s),
        }


class Replicator:
    """Replicates ``tables`` between ``regions`` of moto's in-process DynamoDB backends."""

    def __init__(
        self,
        regions: Iterable[str],
        tables: Iterable[str],
        delay_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.regions = list(regions)
        self.tables = set(tables)
        self.delay_s = delay_s
        self.clock = clock
        self.stats = ReplicationStats()
        self._locks = {r: threading.RLock() for r in self.regions}
        # (region, table, key) -> (write time, writing region) of the item's last write there.
        self._versions: dict[tuple[str, str, tuple[Any, Any]], tuple[float, str]] = {}
        self._queue: list[_Pending] = []
        self._held: list[_Pending] = []
        self._down: set[str] = set()
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._applying = threading.local()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replicator", daemon=True)

    # -- lifecycle
    def install(self) -> None:
        """Hook moto's DynamoDB write path (in this process) and start applying."""
        DynamoDBBackend, StreamShard = moto_fixes.dynamodb_classes()

        for name in _WRITES:
            setattr(DynamoDBBackend, name, self._locked(_original(getattr(DynamoDBBackend, name))))
        StreamShard.add = self._observing(_original(StreamShard.add))  # type: ignore[method-assign]
        self._thread.start()

    def uninstall(self) -> None:
        """Stop applying and restore moto's write path."""
        DynamoDBBackend, StreamShard = moto_fixes.dynamodb_classes()

        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for name in _WRITES:
            setattr(DynamoDBBackend, name, _original(getattr(DynamoDBBackend, name)))
        StreamShard.add = _original(StreamShard.add)  # type: ignore[method-assign]

    def set_down(self, regions: Iterable[str]) -> None:
        """Mark regions as down (replication to and from them waits) and the others as up again."""
        with self._wake:
            self._down = set(regions) & set(self.regions)
            held, self._held = self._held, []
            for p in held:
                if p.source in self._down or p.target in self._down:
                    self._held.append(p)
                else:
                    heapq.heappush(self._queue, p)
            self._wake.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self._wake:
            return self.stats.snapshot(len(self._queue), len(self._held), self.delay_s)

    # -- hooks
    def _locked(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(backend: Any, *args: Any, **kwargs: Any) -> Any:
            lock = self._locks.get(backend.region_name)
            if lock is None:
                return method(backend, *args, **kwargs)
            with lock:
                return method(backend, *args, **kwargs)

        setattr(wrapper, _MARK, method)
        return wrapper

    def _observing(self, add: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(add)
        def observed(shard: Any, old: Any, new: Any) -> None:
            add(shard, old, new)
            table = shard.table
            if table.name not in self.tables or table.region_name not in self._locks:
                return
            if old is not None and new is not None and old.to_json() == new.to_json():
                return  # nothing changed: no stream record, nothing to replicate
            if getattr(self._applying, "active", False):
                return  # the replicator's own write: recorded by _apply
            self._written(table, old if new is None else new, new)

        setattr(observed, _MARK, add)
        return observed

    def _written(self, table: Any, any_image: Any, new: Any) -> None:
        region = table.region_name
        key = (any_image.hash_key, any_image.range_key)
        previous = self._versions.get((region, table.name, key), (0.0, ""))[0]
        written_at = max(self.clock(), previous + 1e-6)  # strictly later than the write it replaces
        self._versions[(region, table.name, key)] = (written_at, region)
        item = new.to_json()["Attributes"] if new is not None else None
        with self._wake:
            for target in self.regions:
                if target != region:
                    heapq.heappush(
                        self._queue,
                        _Pending(
                            written_at + self.delay_s,
                            next(self._order),
                            region,
                            target,
                            table.name,
                            key,
                            item,
                            written_at,
                        ),
                    )
            self._wake.notify_all()

    # -- applying
    def _run(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                if not self._queue:
                    self._wake.wait(0.5)
                    continue
                head = self._queue[0]
                wait = head.due - self.clock()
                if wait > 0:
                    self._wake.wait(min(wait, 0.5))
                    continue
                heapq.heappop(self._queue)
                if head.source in self._down or head.target in self._down:
                    self._held.append(head)
                    continue
            self._apply(head)

    def _apply(self, p: _Pending) -> None:
        backend = moto_fixes.dynamodb_backend(p.target)
        with self._locks[p.target]:
            current = self._versions.get((p.target, p.table, p.key))
            if current is not None and current > (p.written_at, p.source):
                with self._wake:
                    self.stats.superseded += 1
                return
            table = backend.get_table(p.table)
            self._applying.active = True
            try:
                if p.item is None:
                    hash_key, range_key = p.key
                    key = {table.hash_key_attr: hash_key.to_json()}
                    if table.range_key_attr is not None:
                        key[table.range_key_attr] = range_key.to_json()
                    backend.delete_item(p.table, key)
                else:
                    backend.put_item(p.table, p.item)
            finally:
                self._applying.active = False
            self._versions[(p.target, p.table, p.key)] = (p.written_at, p.source)
        with self._wake:
            self.stats.replicated += 1
            self.stats.lags_s.append(self.clock() - p.written_at)
            if len(self.stats.lags_s) > 20_000:
                del self.stats.lags_s[:10_000]  # the recent ones tell how replication is doing now
