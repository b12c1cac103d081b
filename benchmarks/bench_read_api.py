"""Read API: ReadApiFunction's handler with a real DynamoDB client (network cut at the HTTP layer,
``aws_stub``) and the machine's redis-server (else fakeredis).

- CPU per request on a cache hit and on a miss (``GET /devices/{id}/latest``), each against a floor measured
  in the same run: the least any implementation does for that answer (the Redis lookup, on a miss also the
  GetItem through the same client, and the JSON of the answer).
- Redis round trips per request, counted where redis-py sends bytes (target 1 for a hit on ``/latest``).
- Cache hit ratio of a skewed workload (a few hot branches): with the cache filled as the cache updater fills
  it (target 0.85), and from a cold cache.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from benchmarks.aws_stub import stubbed_client
from benchmarks.bench_consumers import local_redis
from benchmarks.bench_ingest import interleaved, quiet_stdout
from devicepipe.cache import CacheWriter, update_from_item
from devicepipe.dynamo import latest_item
from devicepipe.models import parse_reading, unmarshal_item
from devicepipe.reads import Reads
from devicepipe_tools.events import http_api_event, reading
from functions.read_api import app as read_app
from tests.conftest import FakeLambdaContext

DEVICES = 2_000
BRANCHES = 40
REQUESTS = 3_000
TABLE = "readings"
PREFIX = "bench-read"
LATEST_ROUTE = "/devices/{device_id}/latest"
HOT_DEVICE = "dev-00007"
ANSWER = {"device_id": HOT_DEVICE, "region": "us-east-1", "source": "cache"}  # the floors' answer, reading aside

Row = tuple[str, float, float, bool]  # name, figure, target (0: none), met


def fleet() -> dict[str, dict[str, Any]]:
    """LATEST items (wire format) by partition key: DEVICES devices spread over BRANCHES branches."""
    items = {}
    for i in range(DEVICES):
        doc = reading(f"dev-{i:05d}", f"branch-{i % BRANCHES:03d}", 1_793_610_000_000 + i * 1000, i)
        item = latest_item(parse_reading(doc, now_s=1_793_700_000))
        item["expires_at"] = {"N": str(2**31)}
        items[item["pk"]["S"]] = item
    return items


def table_answer(items: dict[str, dict[str, Any]]) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """DynamoDB's answers for the calls the read API makes, from ``items``."""
    by_branch: dict[str, list[dict[str, Any]]] = {}
    for item in items.values():
        by_branch.setdefault(item["latest_branch"]["S"], []).append(item)

    def answer(operation: str, body: dict[str, Any]) -> dict[str, Any]:
        if operation == "GetItem":
            found = items.get(body["Key"]["pk"]["S"])
            return {"Item": found} if found else {}
        if operation == "BatchGetItem":
            keys = body["RequestItems"][TABLE]["Keys"]
            return {"Responses": {TABLE: [items[k["pk"]["S"]] for k in keys if k["pk"]["S"] in items]}}
        if operation == "Query":
            listed = by_branch.get(body["ExpressionAttributeValues"][":b"]["S"], [])
            return {"Items": listed, "Count": len(listed), "ScannedCount": len(listed)}
        if operation == "Scan":
            keep = ("latest_branch", "device_id", "ts")
            scanned = [{k: i[k] for k in keep} for i in items.values()]
            return {"Items": scanned, "Count": len(scanned), "ScannedCount": len(scanned)}
        raise NotImplementedError(operation)

    return answer


class RoundTrips:
    """Counts the requests redis-py writes to the socket (a pipeline is one)."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        connection_class = client.connection_pool.connection_class
        original = connection_class.send_packed_command

        def counted(conn: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(conn, *args, **kwargs)

        connection_class.send_packed_command = counted


def request(route: str, **params: str) -> dict[str, Any]:
    return http_api_event("GET", route.format(**params), route_key=f"GET {route}", path_parameters=params or None)


def clear(client: Any) -> None:
    keys = list(client.scan_iter(f"{PREFIX}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def workload(seed: int) -> list[dict[str, Any]]:
    """Branch staff polling dashboards: branch popularity falls off as 1/rank (a few hot branches); 70%
    latest-reading lookups, 25% branch listings, 5% the branch list."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(BRANCHES)]
    events = []
    for _ in range(REQUESTS):
        branch = rng.choices(range(BRANCHES), weights)[0]
        kind = rng.random()
        if kind < 0.70:
            device = branch + BRANCHES * rng.randrange(DEVICES // BRANCHES)
            events.append(request(LATEST_ROUTE, device_id=f"dev-{device:05d}"))
        elif kind < 0.95:
            events.append(request("/branches/{branch_id}/devices", branch_id=f"branch-{branch:03d}"))
        else:
            events.append(request("/branches"))
    return events


def serve(event: dict[str, Any], context: Any) -> None:
    """One request through the handler; a figure built on failing requests would mean nothing."""
    status = read_app.lambda_handler(event, context)["statusCode"]
    if status != 200:
        raise RuntimeError(f"{event['routeKey']} {event['rawPath']} answered {status}")


def hit_ratio(events: list[dict[str, Any]], lookups: list[str], context: Any) -> float:
    del lookups[:]
    with quiet_stdout():
        for event in events:
            serve(event, context)
    counted = [o for o in lookups if o in ("hit", "miss")]
    return counted.count("hit") / len(counted)


def cpu_ratio(name: str, floor_is: str, floor: Callable[[], None], handler: Callable[[], None], runs: int = 15) -> Row:
    """CPU of 100 requests through the handler against the floor's, best of ``runs`` alternating runs."""
    floor_s, handler_s = interleaved(runs, floor, handler)
    ratio = handler_s / floor_s
    print(
        f"  {name}: handler {handler_s / 100 * 1e6:6.0f} us per request, floor ({floor_is}) "
        f"{floor_s / 100 * 1e6:5.0f} us, ratio {ratio:4.2f}x"
    )
    return (f"read: {name} CPU ratio to floor", ratio, 0.0, True)


@dataclass(frozen=True)
class Rig:
    """The read handler wired to a stubbed table and to Redis, and what the measurements look at."""

    client: Any  # Redis
    dynamodb: Any  # the stubbed client: its ``calls`` by operation
    items: dict[str, dict[str, Any]]  # the table's LATEST items
    writer: CacheWriter
    lookups: list[str]  # each cache lookup's outcome, as the read layer reports it
    trips: RoundTrips
    context: Any


def wire() -> tuple[Rig, str]:
    """The rig, and which Redis it uses."""
    os.environ.setdefault("TABLE_NAME", TABLE)  # the handler's settings; its clients are replaced below
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    client, where = local_redis()
    items = fleet()
    dynamodb = stubbed_client("dynamodb", table_answer(items), parameter_validation=True)
    lookups: list[str] = []
    writer = CacheWriter(client, prefix=PREFIX)
    reads = Reads(writer, dynamodb, TABLE, on_lookup=lambda kind, outcome: lookups.append(outcome))
    read_app._reads = lambda: reads  # type: ignore[assignment]
    return Rig(client, dynamodb, items, writer, lookups, RoundTrips(client), FakeLambdaContext()), where


def trips_on_a_hit(rig: Rig, event: dict[str, Any]) -> int:
    """Redis round trips of a request the cache answers: the first of two fills it (and loads the CAS script)."""
    with quiet_stdout():
        serve(event, rig.context)
    before = rig.trips.count
    with quiet_stdout():
        serve(event, rig.context)
    return rig.trips.count - before


def round_trip_rows(rig: Rig) -> list[Row]:
    clear(rig.client)
    hit_trips = trips_on_a_hit(rig, request(LATEST_ROUTE, device_id=HOT_DEVICE))
    per_route = {
        name: trips_on_a_hit(rig, event)
        for name, event in (
            ("branch listing", request("/branches/{branch_id}/devices", branch_id="branch-007")),
            ("branch list", request("/branches")),
        )
    }
    print(
        f"  Redis round trips per request on a hit: /latest {hit_trips} (target 1), "
        + ", ".join(f"{k} {v}" for k, v in per_route.items())
    )
    return [("read: Redis round trips per /latest hit", float(hit_trips), 1.0, hit_trips == 1)]


def hit_cpu_row(rig: Rig) -> Row:
    """A cached device's ``/latest``: HOT_DEVICE, left in the cache by round_trip_rows."""
    hot = request(LATEST_ROUTE, device_id=HOT_DEVICE)
    key = f"{PREFIX}:device:{HOT_DEVICE}"

    def hit_floor() -> None:
        for _ in range(100):
            fields = rig.client.hgetall(key)
            json.dumps({**ANSWER, "reading": json.loads(fields[b"reading"])})

    def hit_handler() -> None:
        with quiet_stdout():
            for _ in range(100):
                serve(hot, rig.context)

    return cpu_ratio("cache hit", "HGETALL + JSON", hit_floor, hit_handler)


def miss_cpu_row(rig: Rig) -> Row:
    # Every miss is a device not cached yet: each run takes the next 100 (the floor reads the same ones).
    clear(rig.client)
    batches = iter(range(0, DEVICES, 100))
    runs: list[list[dict[str, Any]]] = []

    def miss_floor() -> None:
        runs.append([request(LATEST_ROUTE, device_id=f"dev-{i:05d}") for i in range(next(batches), DEVICES)][:100])
        for event in runs[-1]:
            rig.client.hgetall(f"{PREFIX}:device:{event['pathParameters']['device_id']}")
            pk = "DEVICE#" + event["pathParameters"]["device_id"]
            item = rig.dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": pk}, "sk": {"S": "LATEST"}})["Item"]
            json.dumps({**ANSWER, "reading": unmarshal_item(item)})

    def miss_handler() -> None:
        with quiet_stdout():
            for event in runs[-1]:
                serve(event, rig.context)

    return cpu_ratio("cache miss", "HGETALL + GetItem + JSON", miss_floor, miss_handler, runs=DEVICES // 100)


def hit_ratio_rows(rig: Rig) -> list[Row]:
    """The skewed workload from a cold cache, then from the cache the cache updater leaves in Redis."""
    events = workload(seed=11)
    clear(rig.client)
    cold = hit_ratio(events, rig.lookups, rig.context)
    clear(rig.client)
    updates = [update_from_item(p, str(p["latest_at"])) for p in (unmarshal_item(i) for i in rig.items.values())]
    rig.writer.apply(updates)
    warm = hit_ratio(events, rig.lookups, rig.context)
    print(
        f"  hit ratio, {REQUESTS} requests over hot branches: {warm:.3f} with the cache updater's cache "
        f"(target 0.85), {cold:.3f} from a cold cache; DynamoDB calls {rig.dynamodb.calls}"
    )
    return [
        ("read: hit ratio, cache updater running", warm, 0.85, warm >= 0.85),
        ("read: hit ratio, cold cache", cold, 0.0, True),
    ]


def main() -> list[Row]:
    rig, where = wire()
    print(f"read API: {DEVICES} devices in {BRANCHES} branches; DynamoDB: boto3 client stubbed at HTTP; {where}")
    rows = [*round_trip_rows(rig), hit_cpu_row(rig), miss_cpu_row(rig), *hit_ratio_rows(rig)]
    clear(rig.client)
    if isinstance(rig.client, redis.Redis):
        rig.client.close()
    return rows
