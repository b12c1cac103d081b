"""Lambda events in the exact shape Lambda delivers them, and the sample events under ``events/``.

``python -m devicepipe_tools.events`` rewrites ``events/`` from the builders below (deterministic output).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devicepipe.kpl import SubRecord, aggregate
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


def reading(device: str, branch: str, ts: str | int, seq: int | None = None, **metrics: Any) -> dict[str, Any]:
    """A reading as a device sends it (``metrics`` default to a small realistic set)."""
    doc: dict[str, Any] = {"device_id": device, "branch_id": branch, "ts": ts}
    if seq is not None:
        doc["seq"] = seq
    doc["metrics"] = metrics or {"temp_c": 21.5, "humidity": 0.41, "door": "closed"}
    return doc


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


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
    return {
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
    written = []
    for rel, event in sample_events().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(event, indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_sample_events():
        print(p.relative_to(ROOT))
