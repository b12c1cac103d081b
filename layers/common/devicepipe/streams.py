"""DynamoDB stream records (as Lambda delivers them) as plain changes to reading items."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from devicepipe.models import unmarshal_item

READING_SK_PREFIX = "R#"


@dataclass(frozen=True, slots=True)
class Change:
    """One stream record: what happened to which item, with its images as plain dicts."""

    event_name: str  # INSERT | MODIFY | REMOVE
    sequence_number: str
    created_s: float  # ApproximateCreationDateTime, epoch seconds
    keys: dict[str, Any]
    new: dict[str, Any] | None
    old: dict[str, Any] | None

    @property
    def is_reading(self) -> bool:
        return str(self.keys.get("sk", "")).startswith(READING_SK_PREFIX)

    @property
    def version(self) -> str:
        """``(ts, seq)`` of a reading item, from its sort key (``R#<version>``)."""
        return str(self.keys["sk"])[len(READING_SK_PREFIX) :]


def changes(records: Sequence[dict[str, Any]]) -> Iterator[Change]:
    """Changes in stream order; images are unmarshalled only when present."""
    for record in records:
        ddb = record["dynamodb"]
        new, old = ddb.get("NewImage"), ddb.get("OldImage")
        yield Change(
            record["eventName"],
            ddb["SequenceNumber"],
            _epoch(ddb.get("ApproximateCreationDateTime", 0)),
            unmarshal_item(ddb["Keys"]),
            unmarshal_item(new) if new else None,
            unmarshal_item(old) if old else None,
        )


def _epoch(value: Any) -> float:
    """Lambda sends epoch seconds; the streams API via boto3 gives a datetime."""
    return value.timestamp() if hasattr(value, "timestamp") else float(value)
