"""Lambda events in the exact shape Lambda delivers them, and the sample events under ``events/``.

``python -m devicepipe_tools.events`` rewrites ``events/`` from the builders below (deterministic output).
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from boto3.dynamodb.types import TypeSerializer

from devicepipe.dynamo import latest_item, reading_item
from devicepipe.kpl import SubRecord, aggregate
from devicepipe.models import format_epoch_s, parse_reading, unmarshal_item
from devicepipe_tools.template import ROOT

ACCOUNT = "123456789012"
#: Sequence numbers as Kinesis writes them: 56 digits, growing within a shard.
_SEQ_BASE = 49_650 * 10**51


def kinesis_record(
    data: bytes,
    *,
    partition_key: str,
    sequence_number: int,
    arrival_s: float,
    shard_id: str = "shardId-000000000000",
    stream: str = "devicepipe-ReadingsStream",
    region: str = "us-east-1",
) -> dict[str, Any]:
    """One record of a Kinesis event source mapping's event."""
    seq = str(sequence_number)
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": seq,
            "data": base64.b64encode(data).decode(),
            "approximateArrivalTimestamp": arrival_s,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{seq}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": f"arn:aws:iam::{ACCOUNT}:role/devicepipe-IngestRole",
        "awsRegion": region,
        "eventSourceARN": f"arn:aws:kinesis:{region}:{ACCOUNT}:stream/{stream}",
    }


def kinesis_event(
    payloads: Sequence[tuple[str, bytes]], *, arrival_s: float = 1_795_000_000.0, first_seq: int = 1, **kw: Any
) -> dict[str, Any]:
    """An event from ``(partition_key, data)`` pairs, sequence numbers and arrival times increasing."""
    return {
        "Records": [
            kinesis_record(
                data, partition_key=key, sequence_number=_SEQ_BASE + first_seq + i, arrival_s=arrival_s + i / 1000, **kw
            )
            for i, (key, data) in enumerate(payloads)
        ]
    }


def table_item(
    doc: dict[str, Any], origin_region: str = "us-east-1", arrival_s: float = 1_795_000_000.0, latest: bool = False
) -> dict[str, Any]:
    """The plain item IngestFunction writes for a reading (its LATEST item with ``latest``)."""
    r = parse_reading(doc, now_s=arrival_s)
    item = reading_item(r.attributes, r.epoch_s, {"S": origin_region}, {"S": format_epoch_s(arrival_s)}, 90 * 86_400)
    return unmarshal_item(latest_item(r) if latest else item)


def dynamodb_record(
    event_name: str,
    item: dict[str, Any],
    *,
    old: dict[str, Any] | None = None,
    sequence_number: int,
    created_s: float = 1_795_000_000.0,
    region: str = "us-east-1",
    table: str = "devicepipe-readings",
) -> dict[str, Any]:
    """One DynamoDB stream record as Lambda delivers it, images marshalled by boto3's TypeSerializer."""
    keys = {"pk": item["pk"], "sk": item["sk"]}
    ddb: dict[str, Any] = {
        "ApproximateCreationDateTime": int(created_s),
        "Keys": _marshal(keys),
        "SequenceNumber": str(sequence_number),
        "SizeBytes": len(json.dumps(item, default=str)),
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if event_name != "REMOVE":
        ddb["NewImage"] = _marshal(item)
    if old is not None or event_name == "REMOVE":
        ddb["OldImage"] = _marshal(old if old is not None else item)
    return {
        "eventID": f"{sequence_number:032x}"[-32:],
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": ddb,
        "eventSourceARN": f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{table}/stream/2026-11-01T00:00:00.000",
    }


def insert_batch(
    batch: int, size: int, *, devices: int = 9, branches: int = 4, first_seq: int = 0, origin_region: str = "us-east-1"
) -> list[dict[str, Any]]:
    """Stream batch number ``batch``: ``size`` reading inserts, distinct across batches (for staging tests)."""
    return [
        dynamodb_record(
            "INSERT",
            table_item(
                reading(f"d{i % devices}", f"br{i % branches}", 1_793_610_000_000 + batch * 100_000 + i, i),
                origin_region,
            ),
            sequence_number=first_seq + batch * 100_000 + i,
            created_s=1_793_610_000 + batch,
        )
        for i in range(size)
    ]


def altered(record: dict[str, Any], **attributes: dict[str, Any] | None) -> dict[str, Any]:
    """``record`` with attributes of its new image replaced by wire values (``None`` removes one): what a writer
    other than the ingest (or a damaged event) could put on the stream, and TypeSerializer would not make of a
    reading."""
    out = copy.deepcopy(record)
    image = out["dynamodb"]["NewImage"]
    for name, value in attributes.items():
        if value is None:
            image.pop(name, None)
        else:
            image[name] = value
    return out


def undecodable_records(first_seq: int = 1) -> dict[str, dict[str, Any]]:
    """Stream records the consumers cannot use, by what is wrong with them (sequence numbers from ``first_seq``)."""

    def insert(i: int) -> dict[str, Any]:
        doc = reading("dev-odd", "branch-nyc", f"2026-11-02T09:00:0{i}.000Z", i)
        return dynamodb_record("INSERT", table_item(doc), sequence_number=first_seq + i, created_s=1_793_610_100 + i)

    return {
        "no dynamodb section": {k: v for k, v in insert(0).items() if k != "dynamodb"},
        "binary attribute": altered(insert(1), firmware={"B": base64.b64encode(b"\x00\xff").decode()}),
        "string set attribute": altered(insert(2), tags={"SS": ["roof", "north"]}),
        "number set in metrics": altered(insert(3), metrics={"M": {"samples": {"NS": ["1", "2"]}}}),
        "missing device_id": altered(insert(4), device_id=None),
        "unparsable ts": altered(insert(5), ts={"S": "yesterday"}),
    }


def _marshal(plain: dict[str, Any]) -> dict[str, Any]:
    """TypeSerializer needs Decimal for numbers; a JSON round trip gives exactly that."""
    exact = json.loads(json.dumps(plain), parse_float=Decimal)
    return {k: _serializer.serialize(v) for k, v in exact.items()}


_serializer = TypeSerializer()
_DDB_SEQ_BASE = 4_100_000_000_000_000_000_000


def reading(device: str, branch: str, ts: str | int, seq: int | None = None, **metrics: Any) -> dict[str, Any]:
    """A reading as a device sends it (``metrics`` default to a small realistic set)."""
    doc: dict[str, Any] = {"device_id": device, "branch_id": branch, "ts": ts}
    if seq is not None:
        doc["seq"] = seq
    doc["metrics"] = metrics or {"temp_c": 21.5, "humidity": 0.41, "door": "closed"}
    return doc


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def http_api_event(
    method: str,
    path: str,
    *,
    route_key: str | None = None,
    path_parameters: dict[str, str] | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
    region: str = "us-east-1",
    time_epoch_ms: int = 1_793_610_000_000,
    request_id: str = "JKJaXmPLvHcESHA=",
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event, as ``sam local generate-event apigateway
    http-api-proxy`` shapes it. ``query`` is the raw query string; repeated keys are joined with commas, as
    API Gateway does. ``route_key`` is the matched route (``GET /devices/{device_id}/latest``)."""
    route = route_key or f"{method} {path}"
    params: dict[str, str] = {}
    for part in query.split("&") if query else []:
        key, _, value = part.partition("=")
        key, value = unquote_plus(key), unquote_plus(value)
        params[key] = f"{params[key]},{value}" if key in params else value
    when = datetime.fromtimestamp(time_epoch_ms / 1000, UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route,
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"accept": "application/json", "host": f"api-id.execute-api.{region}.amazonaws.com"}
        | (headers or {}),
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "api-id",
            "domainName": f"api-id.execute-api.{region}.amazonaws.com",
            "domainPrefix": "api-id",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "devicepipe",
            },
            "requestId": request_id,
            "routeKey": route,
            "stage": "$default",
            "time": when.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": time_epoch_ms,
        },
        "isBase64Encoded": False,
    }
    if params:
        event["queryStringParameters"] = params
    if path_parameters:
        event["pathParameters"] = path_parameters
    return event


def read_api_events() -> dict[str, dict[str, Any]]:
    """One HTTP API event per read route and error case (devices and branches of the ingest samples)."""
    latest, readings = "/devices/{device_id}/latest", "/devices/{device_id}/readings"
    devices, report = "/branches/{branch_id}/devices", "/branches/{branch_id}/report"

    def get(route: str, query: str = "", **params: str) -> dict[str, Any]:
        path = route.format(**params)
        return http_api_event("GET", path, route_key=f"GET {route}", path_parameters=params or None, query=query)

    return {
        "read_api/latest.json": get(latest, device_id="dev-001"),
        "read_api/readings.json": get(readings, "from=2026-11-02T00:00:00Z&limit=2", device_id="dev-001"),
        "read_api/branches.json": get("/branches"),
        "read_api/branch-devices.json": get(devices, "limit=50&stale_after=3600", branch_id="branch-nyc"),
        "read_api/health.json": get("/health"),
        "read_api/dashboard.json": get("/"),
        "read_api/unknown-device.json": get(latest, device_id="dev-never-seen"),
        "read_api/bad-device-id.json": get(latest, device_id="dev%20bad"),
        "read_api/bad-limit.json": get(readings, "limit=5000", device_id="dev-001"),
        "read_api/bad-time.json": get(readings, "from=yesterday", device_id="dev-001"),
        "read_api/bad-cursor.json": get(readings, "cursor=not-a-cursor", device_id="dev-001"),
        "read_api/report.json": get(report, "period=2026-11-02", branch_id="branch-nyc"),
        "read_api/report-not-found.json": get(report, "period=2026-10-01", branch_id="branch-nyc"),
        "read_api/report-bad-period.json": get(report, "period=2026-02-30", branch_id="branch-nyc"),
    }


def report_events() -> dict[str, dict[str, Any]]:
    """ReportFunction's events: its schedule's, and on-demand requests (one branch; every branch)."""
    return {
        "reports/scheduled.json": {
            "version": "0",
            "id": "7c1d2e3f-0000-4000-8000-000000000000",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT,
            "time": "2026-11-03T06:05:00Z",
            "region": "us-east-1",
            "resources": [f"arn:aws:events:us-east-1:{ACCOUNT}:rule/devicepipe-ReportFunctionSchedule"],
            "detail": {},
        },
        "reports/on-demand.json": {"period": "2026-11-02", "branches": ["branch-nyc"]},
        "reports/backfill-every-branch.json": {"period": "2026-11-01"},
    }


def consumer_fault_events() -> dict[str, dict[str, Any]]:
    """The stream consumers' events for records they must not crash on: every kind of ``undecodable_records``
    between two good readings (each function quarantines them and goes on), and a reading whose numbers a float
    cannot carry (the stager stages them digit for digit)."""
    bad = list(undecodable_records(_DDB_SEQ_BASE + 1).values())
    first = reading("dev-001", "branch-nyc", "2026-11-02T09:00:00.000Z", 1)
    last = reading("dev-002", "branch-nyc", "2026-11-02T09:10:00.000Z", 9)
    around = {
        "Records": [
            dynamodb_record("INSERT", table_item(first), sequence_number=_DDB_SEQ_BASE, created_s=1_793_610_100),
            *bad,
            dynamodb_record(
                "INSERT", table_item(last), sequence_number=_DDB_SEQ_BASE + len(bad) + 1, created_s=1_793_610_107
            ),
        ]
    }
    exact = {"energy_kwh": "1234567890.1234567890123456789", "ratio": "0.1", "tiny": "1E-130"}
    precise = altered(
        dynamodb_record("INSERT", table_item(first), sequence_number=_DDB_SEQ_BASE, created_s=1_793_610_100),
        metrics={"M": {k: {"N": v} for k, v in exact.items()}},
    )
    return {
        "cache_updater/undecodable-records.json": around,
        "stager/undecodable-records.json": around,
        "stager/exact-numbers.json": {"Records": [precise]},
    }


def sample_events() -> dict[str, dict[str, Any]]:
    """The sample events shipped in ``events/``, by relative path."""
    valid = [
        reading("dev-001", "branch-nyc", "2026-11-02T09:00:00.000Z", 1),
        reading("dev-001", "branch-nyc", "2026-11-02T09:00:05.000Z", 2),
        reading("dev-002", "branch-nyc", 1_793_610_000_000, 7, temp_c=19.0, fw="1.4.2"),
        {**reading("dev-003", "branch-ldn", "2026-11-02T10:00:00+01:00"), "firmware": {"v": "2.0", "beta": True}},
    ]
    poison: list[tuple[str, bytes]] = [
        ("dev-001", encode(reading("dev-001", "branch-nyc", "2026-11-02T09:01:00Z", 3))),
        ("dev-x", b"{not json"),
        ("dev-x", encode(["an", "array"])),
        ("dev-y", encode({"device_id": "dev-y", "branch_id": "branch-nyc", "metrics": {}})),  # no ts
        ("dev bad", encode(reading("dev bad", "branch-nyc", "2026-11-02T09:01:00Z"))),
        ("dev-002", encode(reading("dev-002", "branch-nyc", "2026-11-02T09:01:00Z", 8))),
        ("dev-z", b"\xff\xfe\x00binary"),
    ]
    kpl_subs = [
        SubRecord(f"dev-1{i:02d}", encode(reading(f"dev-1{i:02d}", "branch-par", 1_793_610_000_000 + i * 1000, i)))
        for i in range(5)
    ]
    kpl_subs.insert(2, SubRecord("dev-bad", b'{"device_id": "dev-bad"}'))
    us, eu = "us-east-1", "eu-west-1"
    newer = reading("dev-001", "branch-nyc", "2026-11-02T09:00:05.000Z", 2)
    older = reading("dev-001", "branch-nyc", "2026-11-02T09:00:00.000Z", 1)
    moved = reading("dev-002", "branch-bos", "2026-11-02T09:10:00.000Z", 9)  # changed branch
    replicated = reading("dev-003", "branch-ldn", "2026-11-02T10:00:00.000Z", 4)

    def stream(*records: tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
        return {
            "Records": [
                dynamodb_record(
                    r[0],
                    r[1],
                    old=r[2] if len(r) > 2 else None,
                    sequence_number=_DDB_SEQ_BASE + i,
                    created_s=1_793_610_100 + i,
                )
                for i, r in enumerate(records)
            ]
        }

    return {
        "cache_updater/out-of-order.json": stream(("INSERT", table_item(newer)), ("INSERT", table_item(older))),
        "cache_updater/mixed.json": stream(
            ("INSERT", table_item(moved)),
            ("INSERT", table_item(replicated, origin_region=eu)),
            ("INSERT", table_item(replicated, origin_region=eu, latest=True)),
            ("REMOVE", table_item(older)),
        ),
        "stager/own-and-replicated.json": stream(
            ("INSERT", table_item(newer, origin_region=us)),
            ("INSERT", table_item(older, origin_region=us)),
            ("INSERT", table_item(replicated, origin_region=eu)),
            # The same reading ingested in both regions: us-east-1's write replaced eu-west-1's (a MODIFY carries
            # its old image: the table's stream is NEW_AND_OLD_IMAGES).
            (
                "MODIFY",
                table_item(moved, origin_region=us),
                table_item(moved, origin_region=eu, arrival_s=1_794_999_998.5),
            ),
            ("INSERT", table_item(newer, origin_region=us, latest=True)),
            ("REMOVE", table_item(moved, origin_region=us)),
        ),
        # Both purposes of the function: readings for the cache, and LATEST changes for the repair. dev-001:
        # eu-west-1's older LATEST won by last writer wins (a regression to repair); dev-003: moved forward.
        "cache_updater/readings-and-latest-regression.json": stream(
            ("INSERT", table_item(newer, origin_region=us)),
            ("MODIFY", table_item(older, origin_region=eu, latest=True), table_item(newer, latest=True)),
            ("INSERT", table_item(replicated, origin_region=eu)),
            ("MODIFY", table_item(replicated, origin_region=eu, latest=True), table_item(valid[3], latest=True)),
        ),
        "loader/scheduled.json": {
            "version": "0",
            "id": "5f0e4e1a-0000-4000-8000-000000000000",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT,
            "time": "2026-11-02T09:15:00Z",
            "region": us,
            "resources": [f"arn:aws:events:{us}:{ACCOUNT}:rule/devicepipe-LoaderFunctionLoadSchedule"],
            "detail": {},
        },
        "loader/backfill-one-day.json": {"prefix": "readings/origin=us-east-1/dt=2026-11-02/"},
        **read_api_events(),
        **report_events(),
        **consumer_fault_events(),
        "ingest/valid-batch.json": kinesis_event([(r["device_id"], encode(r)) for r in valid]),
        "ingest/poison-pills.json": kinesis_event(poison, first_seq=100),
        "ingest/kpl-aggregated.json": kinesis_event(
            [
                ("dev-100", aggregate(kpl_subs)),
                ("dev-200", encode(reading("dev-200", "branch-par", 1_793_610_009_000))),
            ],
            first_seq=200,
        ),
    }


def write_sample_events(root: Path = ROOT / "events") -> list[Path]:
    """Write every sample event under ``root`` (``events/env.json`` is the local stack's: ``local.env``)."""
    written = []
    for rel, doc in sample_events().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_sample_events():
        print(p.relative_to(ROOT))
