"""The reading contract (docs/architecture.md, "The reading"): validation, canonical form and storage keys.

A reading is validated and marshalled to DynamoDB's wire format in one pass, because the ingest hot path
must stay within a small multiple of ``json.loads`` (see ``make bench``).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: Fields the pipeline itself stores on items; a reading may not carry them as extra fields.
RESERVED_FIELDS = frozenset({"pk", "sk", "origin_region", "ingested_at", "expires_at", "latest_branch", "latest_at"})
#: Earliest accepted event time (epoch ms): rejects epoch-seconds sent where milliseconds are expected.
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
#: DynamoDB limits a value nesting to 32 levels; the item itself and ``metrics`` use two of them.
MAX_DEPTH = 30
#: Widest ``seq`` (int64) once zero-padded into the sort key.
SEQ_WIDTH = 19
MAX_SEQ = 2**63 - 1

_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
_RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII)
#: What follows ``YYYY-MM-DDTHH:MM`` in a UTC time: seconds and an optional fraction.
_TS_TAIL_RE = re.compile(r":([0-5]\d)(?:\.(\d{1,9}))?Z\Z", re.ASCII)
#: Length of such a time -> what replaces its "Z" to give six fraction digits (lookups: cheaper than int()).
_FRACTION_PADDING = {20: ".000000Z", 22: "00000Z", 23: "0000Z", 24: "000Z", 25: "00Z", 26: "0Z", 27: "Z"}
_SECONDS = {f"{s:02d}": s for s in range(60)}
_DDB_MAX_N = 9.9999999999999999999999999999999999999e125
_DDB_MIN_N = 1e-130
_MAX_INT_DIGITS = 38
_MAX_INT = 10**_MAX_INT_DIGITS
_CORE_FIELDS = frozenset(("device_id", "branch_id", "ts", "seq", "metrics"))
#: orjson reads an integer literal beyond 64 bits as a float, silently rounded: a float this large from it may
#: be such an integer (see ``parse_reading(exact_floats=False)``).
_ROUNDING_RISK = 2.0**63

AttributeValue = dict[str, Any]


class InvalidReading(ValueError):
    """A record that breaks the reading contract; ``reason`` says which rule, for the quarantine."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InexactNumber(InvalidReading):
    """A float that may be a rounded integer (``exact_floats=False``): decode the record exactly and retry."""


@dataclass(slots=True)
class Reading:
    """A validated reading in canonical form.

    ``ts`` is the event time as fixed-width UTC (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), so it sorts as text, and
    ``version`` is ``(ts, seq)`` as one sortable string: a newer reading has a greater version.
    ``attributes`` is the reading item's key (``pk``, ``sk``) and fields (core and extra) already marshalled
    to DynamoDB attribute values, the form every writer needs. Not frozen: a frozen dataclass costs about a
    microsecond more per construction, on the ingest hot path.
    """

    device_id: str
    branch_id: str
    ts: str
    seq: int
    epoch_s: int
    version: str
    attributes: dict[str, AttributeValue]

    @property
    def pk(self) -> str:
        return device_pk(self.device_id)

    @property
    def sk(self) -> str:
        return "R#" + self.version


def device_pk(device_id: str) -> str:
    """Partition key shared by a device's readings and its LATEST item."""
    return "DEVICE#" + device_id


LATEST_SK = "LATEST"


def is_valid_id(value: str) -> bool:
    """Whether ``value`` is a valid device or branch id (1-128 characters of ``[A-Za-z0-9._:-]``)."""
    return bool(_ID_RE.match(value))


def canonical_time(value: str | int) -> str:
    """An event time (RFC 3339 text with a zone, or epoch milliseconds) as the canonical fixed-width UTC text
    the table's sort keys use; raises ``InvalidReading`` naming the rule it breaks."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return _parse_ts(value)[0]


def parse_reading(
    obj: Any, *, now_s: float | None = None, max_skew_s: int = 86_400, exact_floats: bool = True
) -> Reading:
    """Validate a decoded JSON value against the reading contract.

    Parameters
    ----------
    obj
        The value ``json.loads`` produced for one record.
    now_s
        Current time (epoch seconds); readings later than ``now_s + max_skew_s`` are rejected so that one
        device with a wrong clock cannot pin its LATEST item in the future. Defaults to the clock.
    max_skew_s
        Allowed clock skew of devices, in seconds (checked to the whole second).
    exact_floats
        False when ``obj`` comes from orjson, which turns integers beyond 64 bits into rounded floats: a float
        of magnitude 2^63 or more then raises ``InexactNumber`` rather than be stored with lost digits.

    Returns
    -------
    Reading

    Raises
    ------
    InvalidReading
        With a reason naming the broken rule.
    """
    return Reading(*reading_fields(obj, time.time() if now_s is None else now_s, max_skew_s, exact_floats))


#: ``Reading``'s fields in order, as ``reading_fields`` returns them.
ReadingFields = tuple[str, str, str, int, int, str, dict[str, AttributeValue]]


def reading_fields(obj: Any, now_s: float, max_skew_s: int, exact_floats: bool) -> ReadingFields:
    """``parse_reading`` for the ingest's hot loop: the same rules, with ``Reading``'s fields as a tuple.

    Building the dataclass and passing keywords cost 0.25 us per reading, 1.5% of the ingest's CPU.
    """
    # This is the ingest's hot loop (`make bench` holds it to a small multiple of json.loads): the common case
    # is written out flat, with cache hits tried first and every rarer case sent to a helper.
    if type(obj) is not dict:
        raise InvalidReading(f"not a JSON object: got {_json_type(obj)}")
    get = obj.get
    device_id: Any = get("device_id")
    branch_id: Any = get("branch_id")
    try:
        device = _ids[device_id]
        branch = _ids[branch_id]
    except (KeyError, TypeError):  # not seen yet (or not a string at all): validate
        device = _id_attributes("device_id", device_id)
        branch = _id_attributes("branch_id", branch_id)
    ts_value: Any = get("ts")
    try:  # a UTC time in a minute already validated: only the seconds and fraction are left to check
        minute = _utc_minutes[ts_value[:16]]
        tail = _TS_TAIL_RE.match(ts_value, 16)
    except (KeyError, TypeError):
        tail = None
    if tail is None:
        if ts_value is None and "ts" not in obj:
            raise InvalidReading("ts: required")
        ts, epoch_s = _parse_ts(ts_value)
    else:
        ts = _utc_text(ts_value)
        epoch_s = minute + _SECONDS[tail[1]]
    if epoch_s > now_s + max_skew_s:
        raise InvalidReading(f"ts: more than {max_skew_s}s in the future")
    seq = get("seq", 0)
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise InvalidReading("seq: must be an integer from 0 to 2^63-1")
    metrics = get("metrics")
    if type(metrics) is not dict:
        got = "required" if metrics is None else f"must be an object, got {_json_type(metrics)}"
        raise InvalidReading(f"metrics: {got}")
    version = ts + "#" + str(seq).zfill(SEQ_WIDTH)
    attributes: dict[str, AttributeValue] = {
        "pk": device[1],
        "sk": {"S": "R#" + version},
        "device_id": device[0],
        "branch_id": branch[0],
        "ts": {"S": ts},
        "seq": {"N": str(seq)},
        "metrics": _marshal_map(metrics, "metrics", 1, exact_floats),
    }
    if len(obj) > (5 if "seq" in obj else 4):  # only readings with extra fields pay for this loop
        for name, value in obj.items():
            if name in _CORE_FIELDS:
                continue
            if name in RESERVED_FIELDS:
                raise InvalidReading(f"{name}: reserved field name")
            if not name:
                raise InvalidReading("empty field name")
            attributes[name] = {"S": value} if type(value) is str else _marshal(value, name, 1, exact_floats)
    return device_id, branch_id, ts, seq, epoch_s, version, attributes


# Identifiers (device and branch ids alike) already validated, with their attribute values: a fleet repeats
# the same few thousand ids all day. The values are shared between items, so nothing may modify them in place.
_ids: dict[str, tuple[AttributeValue, AttributeValue]] = {}  # id -> ({"S": id}, {"S": "DEVICE#" + id})
_MAX_CACHED = 100_000


def _id_attributes(field: str, value: Any) -> tuple[AttributeValue, AttributeValue]:
    if type(value) is not str or not _ID_RE.match(value):
        raise InvalidReading(_id_reason(field, value))
    if len(_ids) >= _MAX_CACHED:
        _ids.clear()
    found = _ids[value] = ({"S": value}, {"S": device_pk(value)})
    return found


def _parse_ts(value: Any) -> tuple[str, int]:
    """Event time as (canonical text, whole epoch seconds), from RFC 3339 text with a zone or from epoch ms."""
    if type(value) is int:
        if value < MIN_TS_MS:
            raise InvalidReading("ts: epoch milliseconds before 2000-01-01 (seconds sent as milliseconds?)")
        return _format_us(value * 1000), value // 1000
    if type(value) is str:  # (UTC times of a minute already seen took the fast path in parse_reading)
        if not _RFC3339_RE.match(value):
            raise InvalidReading("ts: not RFC 3339 with a zone (e.g. 2026-01-31T12:00:00.123Z) nor epoch ms")
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError:
            raise InvalidReading("ts: not a valid date and time") from None
        epoch_s = int(parsed.timestamp())
        if epoch_s < MIN_TS_MS // 1000:
            raise InvalidReading("ts: before 2000-01-01")
        if value[-1] == "Z" and value[10] == "T":
            if len(_utc_minutes) >= _MAX_CACHED:
                _utc_minutes.clear()
            _utc_minutes[value[:16]] = epoch_s - parsed.second
            return _utc_text(value), epoch_s
        return _format_us((parsed - _EPOCH) // _ONE_US), epoch_s
    raise InvalidReading(f"ts: must be RFC 3339 text or epoch milliseconds, got {_json_type(value)}")


# Minutes ("YYYY-MM-DDTHH:MM" -> epoch seconds) of UTC "...Z" timestamps already validated. Devices send
# UTC and a batch spans a few minutes, so most timestamps skip the full regex and the datetime parse.
_utc_minutes: dict[str, int] = {}


def _utc_text(value: str) -> str:
    """A valid ``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` in canonical form: the fraction padded or cut to microseconds."""
    length = len(value)
    return value[:-1] + _FRACTION_PADDING[length] if length <= 27 else value[:26] + "Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = datetime.resolution
_last_second: tuple[int, str] = (-1, "")


def _format_us(epoch_us: int) -> str:
    global _last_second  # noqa: PLW0603 - a one-entry cache; a tuple so readers see a consistent pair
    secs, micros = divmod(epoch_us, 1_000_000)
    cached = _last_second
    if cached[0] != secs:
        # Readings of a batch cluster within a few seconds: format the date and time once per second.
        t = time.gmtime(secs)
        cached = _last_second = (secs, f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:{t[4]:02d}:{t[5]:02d}.")
    return cached[1] + str(micros).zfill(6) + "Z"  # (zfill: twice as fast as a format spec)


def format_epoch_s(epoch_s: float) -> str:
    """Epoch seconds as the canonical fixed-width UTC text used for every timestamp the pipeline stores."""
    return _format_us(round(epoch_s * 1_000_000))


def _marshal(value: Any, path: str, depth: int, exact_floats: bool) -> AttributeValue:
    """One JSON value as a DynamoDB attribute value, refusing what DynamoDB would reject for the whole batch."""
    t = type(value)
    if t is str:
        return {"S": value}
    if t is bool:
        return {"BOOL": value}
    if t is int:
        if value and len(str(abs(value))) > _MAX_INT_DIGITS:
            raise InvalidReading(f"{path}: integer has more than {_MAX_INT_DIGITS} digits")
        return {"N": str(value)}
    if t is float:
        if not math.isfinite(value) or (value and not _DDB_MIN_N <= abs(value) <= _DDB_MAX_N):
            raise InvalidReading(f"{path}: number outside DynamoDB's range")
        if not exact_floats and abs(value) >= _ROUNDING_RISK:
            raise InexactNumber(f"{path}: number may have been rounded by the JSON parser")
        return {"N": repr(value)}
    if t is dict:
        return _marshal_map(value, path, depth, exact_floats)
    if t is list:
        if depth >= MAX_DEPTH:
            raise InvalidReading(f"{path}: nested deeper than {MAX_DEPTH} levels")
        return {"L": [_marshal(v, path, depth + 1, exact_floats) for v in value]}
    if value is None:
        return {"NULL": True}
    raise InvalidReading(f"{path}: unsupported value type {t.__name__}")


def _marshal_map(
    value: dict[str, Any],
    path: str,
    depth: int,
    exact_floats: bool,
    _lo: float = _DDB_MIN_N,
    _hi: float = _ROUNDING_RISK,
    _max_int: int = _MAX_INT,
) -> AttributeValue:
    # Constants bound as defaults (locals, not globals): this loop is the hot path of the whole ingest.
    if depth >= MAX_DEPTH:
        raise InvalidReading(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if "" in value:
        raise InvalidReading(f"{path}: empty key")
    out: dict[str, AttributeValue] = {}
    for k, v in value.items():
        tv = type(v)
        # Common leaves inline; NaN, infinities and big floats take the slow path, which refuses or checks them.
        if tv is float and (not v or _lo <= abs(v) < _hi):
            out[k] = {"N": repr(v)}
        elif tv is str:
            out[k] = {"S": v}
        elif tv is int and -_max_int < v < _max_int:
            out[k] = {"N": str(v)}
        else:
            out[k] = _marshal(v, f"{path}.{k}", depth + 1, exact_floats)
    return {"M": out}


def unmarshal(value: AttributeValue) -> Any:
    """A DynamoDB attribute value back to plain JSON-compatible Python (numbers as int or float)."""
    ((tag, inner),) = value.items()
    if tag == "S":
        return inner
    if tag == "N":
        return int(inner) if inner.lstrip("-").isdigit() else float(inner)
    if tag == "M":
        return {k: unmarshal(v) for k, v in inner.items()}
    if tag == "L":
        return [unmarshal(v) for v in inner]
    if tag == "BOOL":
        return inner
    if tag == "NULL":
        return None
    raise ValueError(f"unsupported attribute type {tag}")


def unmarshal_item(item: dict[str, AttributeValue]) -> dict[str, Any]:
    """A whole DynamoDB item (or stream image) as a plain dict."""
    return {k: unmarshal(v) for k, v in item.items()}


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _id_reason(field: str, value: Any) -> str:
    if value is None:
        return f"{field}: required"
    if type(value) is not str:
        return f"{field}: must be a string, got {_json_type(value)}"
    return f"{field}: must be 1-128 characters of [A-Za-z0-9._:-]"
