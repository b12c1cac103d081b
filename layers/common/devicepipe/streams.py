"""DynamoDB stream records (as Lambda delivers them), decoded in one place for every consumer.

``decode`` turns a batch into ``Change``s and ``Rejected`` records. The cache updater, its LATEST repair and the
stager all read the table's stream through it, so a record one of them cannot use is refused by all of them for the
same reason, and quarantined (``devicepipe.quarantine``) rather than crash the batch: a deterministic failure would
only fail again on every retry.

Images of reading and LATEST items are checked against the item contract (docs/architecture.md, "Storage
contracts"): what the consumers read (``device_id``, ``branch_id``, ``ts``, ``seq``, ``metrics``, ``origin_region``,
``ingested_at``) is present and well formed, so nothing null reaches the cache or the warehouse. Values must be what
a JSON reading can become: binary (``B``, ``BS``) and set (``SS``, ``NS``) attributes are refused. Numbers keep
every digit DynamoDB stored: ``int`` when they fit 64 bits (what JSON encoders take as is), else ``Decimal``."""

from __future__ import annotations

import re
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from devicepipe.batch_failures import BatchItemFailures
from devicepipe.models import LATEST_SK, MAX_SEQ, is_valid_id

READING_SK_PREFIX = "R#"
_EVENT_NAMES = frozenset({"INSERT", "MODIFY", "REMOVE"})
_INTEGER_RE = re.compile(r"-?\d+\Z", re.ASCII)
_INT64 = 2**63
_NOT_JSON = {"B": "binary", "BS": "binary set", "SS": "string set", "NS": "number set"}
#: How the table stores times (``models.canonical_time``'s form): fixed-width UTC to the microsecond.
_STORED_TIME_RE = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}):[0-5]\d\.\d{6}Z\Z", re.ASCII)
_MAX_MINUTES = 100_000


@dataclass(frozen=True, slots=True)
class Change:
    """One stream record: what happened to which item, with its images as plain dicts.

    Only the images a consumer reads are decoded (and required): ``new`` of reading and LATEST inserts and
    modifications, and ``old`` of LATEST modifications (the repair's). Otherwise they are None: REMOVEs are TTL
    deletions (mirrored in Redis by ``EXPIREAT``), and nothing reads a reading's former image.
    """

    event_name: str  # INSERT | MODIFY | REMOVE
    sequence_number: str
    created_s: float  # ApproximateCreationDateTime, epoch seconds
    keys: dict[str, Any]
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    record: dict[str, Any]  # as delivered: the repair writes an old image back attribute for attribute

    @property
    def is_reading(self) -> bool:
        return str(self.keys["sk"]).startswith(READING_SK_PREFIX)

    @property
    def is_latest(self) -> bool:
        return str(self.keys["sk"]) == LATEST_SK

    @property
    def version(self) -> str:
        """``(ts, seq)`` of a reading item, from its sort key (``R#<version>``)."""
        return str(self.keys["sk"])[len(READING_SK_PREFIX) :]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record no consumer can use, as delivered, and why."""

    record: Any
    sequence_number: str  # "" when the record has none
    reason: str


@dataclass
class Batch:
    changes: list[Change] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    sequence_numbers: list[str] = field(default_factory=list)  # every record's, in stream order ("": none)

    def failures(self, failed: Container[str]) -> BatchItemFailures:
        """The ``failed`` records, in stream order (one without a sequence number, "", fails the whole batch)."""
        return BatchItemFailures.of(self.sequence_numbers, failed)

    def response(self, failed: Container[str]) -> dict[str, list[dict[str, str]]]:
        """The partial batch response naming the ``failed`` records (``failures``)."""
        return self.failures(failed).to_response()


class BadRecord(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(records: Sequence[Any]) -> Batch:
    """Every record of a batch as a ``Change``, or as ``Rejected`` with the reason it cannot be used."""
    batch = Batch()
    for record in records:
        sequence_number = _sequence_number(record)
        batch.sequence_numbers.append(sequence_number)
        try:
            batch.changes.append(_change(record, sequence_number))
        except BadRecord as exc:
            batch.rejected.append(Rejected(record, sequence_number, exc.reason))
    return batch


def changes(records: Sequence[Any]) -> list[Change]:
    """The changes of records known to be good (tests, tools); raises ``BadRecord`` for the first that is not."""
    batch = decode(records)
    if batch.rejected:
        raise BadRecord(batch.rejected[0].reason)
    return batch.changes


def exact_number(value: Any) -> orjson.Fragment:
    """orjson's ``default`` for the numbers ``decode`` gives as ``Decimal``: the JSON number with every digit."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def plain_number(value: Any) -> int | float:
    """``json.dumps``' ``default`` for the same numbers where a JSON reader takes them as doubles anyway."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _sequence_number(record: Any) -> str:
    ddb = record.get("dynamodb") if isinstance(record, dict) else None
    number = ddb.get("SequenceNumber") if isinstance(ddb, dict) else None
    return number if isinstance(number, str) else ""


def _change(record: Any, sequence_number: str) -> Change:
    if not isinstance(record, dict):
        raise BadRecord("not a JSON object")
    ddb = record.get("dynamodb")
    if not isinstance(ddb, dict):
        raise BadRecord("dynamodb: missing (not a DynamoDB stream record)")
    event = record.get("eventName")
    if event not in _EVENT_NAMES:
        raise BadRecord(f"eventName: {event!r} is not INSERT, MODIFY or REMOVE")
    if not sequence_number:
        raise BadRecord("dynamodb.SequenceNumber: missing")
    keys = _item(ddb.get("Keys"), "Keys")
    if not isinstance(keys.get("pk"), str) or not isinstance(keys.get("sk"), str):
        raise BadRecord("Keys: pk and sk must be strings")
    created_s = _epoch(ddb.get("ApproximateCreationDateTime", 0))
    sk = keys["sk"]
    if event == "REMOVE" or not (sk.startswith(READING_SK_PREFIX) or sk == LATEST_SK):
        return Change(event, sequence_number, created_s, keys, None, None, record)
    latest = sk == LATEST_SK
    new = _image(ddb, "NewImage", latest)
    old = _image(ddb, "OldImage", latest) if latest and event == "MODIFY" else None
    return Change(event, sequence_number, created_s, keys, new, old, record)


def _image(ddb: dict[str, Any], name: str, latest: bool) -> dict[str, Any]:
    """A reading or LATEST item's image, checked against the item contract."""
    item = _item(ddb.get(name), name)
    _check_id(item, "device_id", name)
    _check_id(item, "branch_id", name)
    for time_field in ("ts", "ingested_at"):
        _check_time(item, time_field, name)
    seq = item.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise BadRecord(f"{name}.seq: must be an integer from 0 to 2^63-1")
    if not isinstance(item.get("metrics"), dict):
        raise BadRecord(f"{name}.metrics: must be a map")
    if not isinstance(item.get("origin_region"), str) or not item["origin_region"]:
        raise BadRecord(f"{name}.origin_region: required")
    if "expires_at" in item and type(item["expires_at"]) is not int:
        raise BadRecord(f"{name}.expires_at: must be an integer")
    if latest and not isinstance(item.get("latest_at"), str):
        raise BadRecord(f"{name}.latest_at: required on a LATEST item")
    return item


def _check_id(item: dict[str, Any], name: str, image: str) -> None:
    value = item.get(name)
    if not isinstance(value, str) or not is_valid_id(value):
        raise BadRecord(f"{image}.{name}: " + ("required" if value is None else "not a valid identifier"))


def _check_time(item: dict[str, Any], name: str, image: str) -> None:
    value = item.get(name)
    if not _is_stored_time(value):
        raise BadRecord(f"{image}.{name}: " + ("required" if value is None else f"not a stored time: {value!r}"))


# Minutes ("YYYY-MM-DDTHH:MM") of stored times already found to be real dates: a batch spans a few minutes.
_valid_minutes: set[str] = set()


def _is_stored_time(value: Any) -> bool:
    match = _STORED_TIME_RE.match(value) if type(value) is str else None
    if match is None:
        return False
    minute = match[1]
    if minute not in _valid_minutes:
        try:
            datetime.fromisoformat(minute)  # a real date and time: no February 30th, no hour 24
        except ValueError:
            return False
        if len(_valid_minutes) >= _MAX_MINUTES:
            _valid_minutes.clear()
        _valid_minutes.add(minute)
    return True


class _Unreadable(Exception):
    """An attribute value JSON cannot hold (``_locate`` finds where, once an image is refused)."""


def _item(image: Any, name: str) -> dict[str, Any]:
    if type(image) is not dict:
        raise BadRecord(f"{name}: missing")
    try:
        return {k: _value(v) for k, v in image.items()}
    except _Unreadable:
        path, what = _locate([(f".{k}", v) for k, v in image.items()])
        raise BadRecord(f"{name}{path}: {what}") from None


def _value(value: Any) -> Any:
    """One attribute value in DynamoDB's wire format as plain Python; ``_Unreadable`` for what JSON cannot hold.
    (Every attribute of every record passes here: no path is built on the way, see ``_locate``.)"""
    if type(value) is not dict or len(value) != 1:
        raise _Unreadable("not an attribute value")
    ((tag, inner),) = value.items()
    if tag == "S" and type(inner) is str:
        return inner
    if tag == "N" and type(inner) is str:
        return _number(inner)
    if tag == "M" and type(inner) is dict:
        return {k: _value(v) for k, v in inner.items()}
    if tag == "L" and type(inner) is list:
        return [_value(v) for v in inner]
    if tag == "BOOL" and type(inner) is bool:
        return inner
    if tag == "NULL" and inner is True:
        return None
    if tag in _NOT_JSON:
        raise _Unreadable(f"a {_NOT_JSON[tag]} attribute ({tag}), which no JSON reading becomes")
    raise _Unreadable(f"not an attribute value of a known type ({tag})")


def _locate(values: list[tuple[str, Any]]) -> tuple[str, str]:
    """The path to the first value ``_value`` refuses among ``values`` (``(path, value)`` pairs), and why."""
    for path, value in values:
        try:
            _value(value)
        except _Unreadable as exc:
            ((tag, inner),) = value.items() if type(value) is dict and len(value) == 1 else (("", None),)
            if tag == "M" and type(inner) is dict:
                return _locate([(f"{path}.{k}", v) for k, v in inner.items()])
            if tag == "L" and type(inner) is list:
                return _locate([(f"{path}[{i}]", v) for i, v in enumerate(inner)])
            return path, str(exc)
    return "", "unreadable"


def _number(text: str) -> int | Decimal:
    if _INTEGER_RE.match(text):
        value = int(text)
        if -_INT64 <= value < _INT64:
            return value
    try:
        exact = Decimal(text)
    except InvalidOperation:
        raise _Unreadable(f"not a number: {text[:40]!r}") from None
    if not exact.is_finite():
        raise _Unreadable(f"not a finite number: {text[:40]!r}")
    return exact


def _epoch(value: Any) -> float:
    """Lambda sends epoch seconds; the streams API via boto3 gives a datetime."""
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise BadRecord(f"dynamodb.ApproximateCreationDateTime: not a time: {value!r}")
