"""The Redis cache: latest reading per device and devices by last seen per branch.

Layout (prefix ``dp`` by default):

- ``dp:device:<device_id>``: hash with ``version`` (``<ts>#<seq>``, sortable), ``device_id``, ``branch_id``,
  ``ts``, ``seq``, ``origin_region``, ``ingested_at`` and ``reading`` (the whole reading as JSON); it expires
  when the reading's DynamoDB TTL does (``EXPIREAT expires_at``), so TTL deletions need no REMOVE handling.
- ``dp:branch:<branch_id>:devices``: sorted set of device ids scored by last-seen event time (epoch ms);
  members older than the retention are pruned on each update.
- ``dp:branches``: sorted set of branch ids scored by their newest reading's event time (epoch ms).
- ``...:loaded`` markers (``dp:branch:<id>:devices:loaded``, ``dp:branches:loaded``): the set was read whole
  from the table. A sorted set alone cannot tell a complete view from one that only holds what changed since
  Redis was emptied (failover, eviction), so reads trust a view only while its marker lives.

Every update goes through one Lua compare-and-set, so a late, replayed or replicated event never replaces a
newer reading, whatever the arrival order or region; a device that moves branch leaves its old branch's set.
The script reads the old branch's key from the hash, so it needs Redis with cluster mode disabled (the
template's replication group).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry

from devicepipe.config import CacheSettings
from devicepipe.streams import Change, plain_number

# KEYS: device hash, branch set, branches set. ARGV: version, branch, score, expire_at, prune_before, device_id,
# branch key prefix, then the hash's field/value pairs.
CAS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and current >= ARGV[1] then
  return 0
end
local previous_branch = redis.call('HGET', KEYS[1], 'branch_id')
if previous_branch and previous_branch ~= ARGV[2] then
  redis.call('ZREM', ARGV[7] .. previous_branch .. ':devices', ARGV[6])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('EXPIREAT', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5])
redis.call('ZADD', KEYS[3], 'GT', ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[5])
return 1
"""
_NOT_CACHED = frozenset({"pk", "sk", "latest_branch", "latest_at"})
#: How long a branch read whole from the table is trusted as complete in Redis (stream updates keep it current).
BRANCH_LOADED_S = 3600


def connect(settings: CacheSettings, secrets: Any = None, timeout_s: float = 2.0, retries: int | None = None) -> Any:
    """A Redis client from the settings: ``REDIS_URL`` as given, else TLS to host:port with the AUTH token
    read from Secrets Manager (a JSON secret with a ``token`` key, or the token itself).

    By default redis-py retries connection errors and timeouts itself (redis-py 8: 10 times, jittered backoff of
    at most 1 s). A caller that bounds its own time passes ``retries``, none of them delayed: the read API (someone
    waits on it; a shorter timeout too) and the cache updater (its handler waits out a failover with backoff
    against the function's deadline, so a single attempt must stay short).
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 30,  # a connection idle through a frozen container is checked before use
    }
    if retries is not None:
        options["retry"] = Retry(NoBackoff(), retries)
    if settings.redis_url:
        return redis_lib.Redis.from_url(settings.redis_url, **options)
    password = None
    if settings.redis_auth_secret_arn:
        secret = secrets.get_secret_value(SecretId=settings.redis_auth_secret_arn)["SecretString"]
        password = json.loads(secret)["token"] if secret.lstrip().startswith("{") else secret
    return redis_lib.Redis(
        host=settings.redis_host, port=settings.redis_port, ssl=settings.redis_tls, password=password, **options
    )


class CacheUnavailable(RuntimeError):
    """Redis could not be reached or failed the batch: the whole batch must be retried."""


@dataclass(frozen=True)
class Update:
    """One device's newest reading, ready for the compare-and-set."""

    device_id: str
    branch_id: str
    version: str
    event_ms: int
    expires_at: int
    fields: dict[str, str]


def update_from_item(item: dict[str, Any], version: str) -> Update:
    """A cache update from a reading or LATEST item (plain dict)."""
    reading = {k: v for k, v in item.items() if k not in _NOT_CACHED}
    ts = str(item["ts"])
    return Update(
        device_id=str(item["device_id"]),
        branch_id=str(item["branch_id"]),
        version=version,
        event_ms=epoch_ms(ts),
        expires_at=int(item.get("expires_at", 0)),
        fields={
            "version": version,
            "device_id": str(item["device_id"]),
            "branch_id": str(item["branch_id"]),
            "ts": ts,
            "seq": str(item.get("seq", 0)),
            "origin_region": str(item.get("origin_region", "")),
            "ingested_at": str(item.get("ingested_at", "")),
            # Stream images carry exact numbers (Decimal beyond float or int64); readers parse doubles anyway.
            "reading": json.dumps(reading, separators=(",", ":"), sort_keys=True, default=plain_number),
        },
    )


def is_cached(change: Change) -> bool:
    """Whether the cache applies this change: an insert or modification of a reading item (LATEST items repeat
    readings, and REMOVEs by TTL are mirrored by ``EXPIREAT``)."""
    return change.event_name != "REMOVE" and change.is_reading and change.new is not None


def newest_per_device(batch: Sequence[Change]) -> list[Update]:
    """The newest reading of each device among a batch's inserts and modifications of reading items."""
    best: dict[str, Change] = {}
    for change in batch:
        if not is_cached(change) or change.new is None:
            continue
        device = str(change.new["device_id"])
        held = best.get(device)
        if held is None or change.version > held.version:
            best[device] = change
    return [update_from_item(c.new, c.version) for c in best.values() if c.new is not None]


class CacheWriter:
    """Applies updates to Redis, one pipeline (one round trip) per call.

    Parameters
    ----------
    redis
        A ``redis.Redis`` client (its connection pool reconnects after a frozen container resumes).
    prefix
        Key prefix.
    retention_s
        How long a device stays in its branch's last-seen set without news (matches the readings' TTL).
    """

    def __init__(self, redis: Any, prefix: str = "dp", retention_s: int = 90 * 86_400) -> None:
        self.redis = redis
        self.prefix = prefix
        self.retention_s = retention_s
        self.round_trips = 0
        self._sha = ""

    def device_key(self, device_id: str) -> str:
        return f"{self.prefix}:device:{device_id}"

    def branch_key(self, branch_id: str) -> str:
        return f"{self.prefix}:branch:{branch_id}:devices"

    @property
    def branches_key(self) -> str:
        return f"{self.prefix}:branches"

    def apply(self, updates: Sequence[Update]) -> int:
        """Compare-and-set every update; returns how many replaced an older (or no) cached reading.

        Raises ``CacheUnavailable`` when Redis fails, so the caller can fail the batch for a retry.
        """
        if not updates:
            return 0
        try:
            if not self._sha:
                self._sha = self._load_script()
            results = self._run(updates)
            if any(isinstance(r, redis_lib.exceptions.NoScriptError) for r in results):
                self._sha = self._load_script()  # Redis restarted or failed over: scripts are gone
                results = self._run(updates)
        except redis_lib.exceptions.RedisError as exc:
            self._drop_connections_to_a_replica(exc)
            raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            self._drop_connections_to_a_replica(errors[0])
            raise CacheUnavailable(f"{len(errors)} cache updates failed: {errors[0]}")
        return sum(int(r) for r in results)

    def _drop_connections_to_a_replica(self, error: BaseException) -> None:
        """After a Multi-AZ failover the pooled connections still reach the old primary, now a replica that
        refuses writes (READONLY); closing them makes the next attempt connect again, resolving the primary
        endpoint's DNS name, which ElastiCache has moved to the promoted replica."""
        if isinstance(error, redis_lib.exceptions.ReadOnlyError):
            self.redis.connection_pool.disconnect()

    def load_views(self, members: Sequence[tuple[str, str, int]]) -> None:
        """Write branch views read whole from the table (``(branch_id, device_id, last seen ms)`` of every
        device) and mark every branch and the branch list loaded, in one round trip. Scores only move forward
        (``ZADD GT``), so a view the cache updater has just advanced keeps its newer time."""
        pipe = self.redis.pipeline(transaction=False)
        newest: dict[str, int] = {}
        for branch, device, ms in members:
            pipe.zadd(self.branch_key(branch), {device: ms}, gt=True)
            newest[branch] = max(ms, newest.get(branch, 0))
        for branch, ms in newest.items():
            pipe.zadd(self.branches_key, {branch: ms}, gt=True)
            pipe.set(self.branch_key(branch) + ":loaded", 1, ex=BRANCH_LOADED_S)
        pipe.set(self.branches_key + ":loaded", 1, ex=BRANCH_LOADED_S)
        self.round_trips += 1
        _execute(pipe)

    def _load_script(self) -> str:
        self.round_trips += 1
        sha: str = self.redis.script_load(CAS_SCRIPT)
        return sha

    def _run(self, updates: Sequence[Update]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        branch_prefix = f"{self.prefix}:branch:"
        for u in updates:
            pairs = [x for kv in u.fields.items() for x in kv]
            prune_before = u.event_ms - self.retention_s * 1000
            pipe.evalsha(
                self._sha,
                3,
                self.device_key(u.device_id),
                self.branch_key(u.branch_id),
                self.branches_key,
                u.version,
                u.branch_id,
                u.event_ms,
                u.expires_at or 2**31,
                prune_before,
                u.device_id,
                branch_prefix,
                *pairs,
            )
        self.round_trips += 1
        results: list[Any] = pipe.execute(raise_on_error=False)
        return results


class CacheReader:
    """Reads of the cache's layout, in one round trip each (the branch list: two); ``CacheUnavailable`` when
    Redis fails.

    Cache-aside (what to do on a miss) is the caller's business: see ``devicepipe.reads``.
    """

    def __init__(self, writer: CacheWriter) -> None:
        self.writer = writer
        self.redis = writer.redis

    def latest(self, device_id: str) -> dict[str, Any] | None:
        """The device's cached reading (with its ``version``), or None when it is not cached."""
        found = self.latest_many([device_id])
        return found[0]

    def latest_many(self, device_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Cached readings of several devices in one pipeline, None for each one not cached."""
        if not device_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for device_id in device_ids:
            pipe.hgetall(self.writer.device_key(device_id))
        return [_decode(fields) if fields else None for fields in _execute(pipe)]

    def branch(self, branch_id: str) -> list[tuple[str, int]] | None:
        """``(device_id, last seen epoch ms)`` of every device of a branch, most recently seen first (ties by
        device id, descending), or None when the branch is not held whole (see the module's docstring)."""
        members = self._loaded_set(self.writer.branch_key(branch_id))
        return None if members is None else [(d, int(score)) for d, score in members]

    def branches(self) -> list[tuple[str, int, int]] | None:
        """``(branch_id, last seen epoch ms, devices)`` of every branch, most recently seen first, or None when
        the branch list is not held whole."""
        members = self._loaded_set(self.writer.branches_key)
        if members is None:
            return None
        pipe = self.redis.pipeline(transaction=False)
        for branch, _ in members:
            pipe.zcard(self.writer.branch_key(branch))
        counts = _execute(pipe) if members else []
        return [(b, int(score), int(n)) for (b, score), n in zip(members, counts, strict=True)]

    def mark_loaded(self, branch_id: str) -> None:
        """Record that a branch was just read whole from the table."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.writer.branch_key(branch_id) + ":loaded", 1, ex=BRANCH_LOADED_S)
        _execute(pipe)

    def _loaded_set(self, key: str) -> list[tuple[str, float]] | None:
        """A sorted set's members with their scores, highest first, or None while its ``:loaded`` marker is
        missing (the set may hold only what changed since Redis was emptied)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(key + ":loaded")
        pipe.zrevrange(key, 0, -1, withscores=True)
        loaded, members = _execute(pipe)
        return [(_text(m), score) for m, score in members] if loaded else None


def _execute(pipe: Any) -> list[Any]:
    """Send a pipeline; a Redis failure becomes ``CacheUnavailable``."""
    try:
        results: list[Any] = pipe.execute()
    except redis_lib.exceptions.RedisError as exc:
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc
    return results


def _decode(fields: dict[Any, Any]) -> dict[str, Any]:
    plain = {_text(k): _text(v) for k, v in fields.items()}
    reading: dict[str, Any] = json.loads(plain.pop("reading"))
    return {**reading, "version": plain["version"]}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def epoch_ms(ts: str) -> int:
    """Canonical ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` to epoch milliseconds."""
    return int(datetime.fromisoformat(ts).timestamp() * 1000)
