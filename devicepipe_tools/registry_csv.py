"""Registry CSV files (``devicepipe registry import``): read, checked row by row, all or nothing.

UTF-8 (an Excel BOM is fine), a header line naming the columns in any order; ``*`` marks the required ones:

- branches: ``branch_id*, name*, home_region*, time_zone*, recipients`` (e-mail addresses separated by ``;``)
- devices: ``device_id*, branch_id*, kind*, description, installed_on, retired_on`` (dates as YYYY-MM-DD)
- metrics: ``kind*, metric*, unit, low, high`` (numbers; empty for no bound)

Every problem is reported as ``file:line: column: reason``, all of them, and none of the files is imported when
there is one. A device's branch must be in the branches file or already in the registry.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TypeVar

from devicepipe.registry import (
    Branch,
    Device,
    MetricDefinition,
    Problem,
    Registry,
    branch_problems,
    device_problems,
    metric_problems,
)

COLUMNS = {
    "branches": (("branch_id", "name", "home_region", "time_zone"), ("recipients",)),
    "devices": (("device_id", "branch_id", "kind"), ("description", "installed_on", "retired_on")),
    "metrics": (("kind", "metric"), ("unit", "low", "high")),
}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
T = TypeVar("T")


class CsvInvalid(ValueError):
    """Some rows are wrong: ``problems`` lists them all (``file:line: column: reason``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the registry files")
        self.problems = problems


@dataclass
class _Row:
    """One data line: its values, and where to file a problem with one of them."""

    values: dict[str, str]
    where: str  # file:line
    problems: list[str] = field(default_factory=list)

    def bad(self, column: str, reason: str) -> None:
        self.problems.append(f"{self.where}: {column}: {reason}")

    def text(self, column: str) -> str:
        return self.values.get(column, "")

    def date(self, column: str) -> date | None:
        raw = self.text(column)
        if not raw:
            return None
        try:
            if _DATE.fullmatch(raw):
                return date.fromisoformat(raw)
        except ValueError:
            pass
        self.bad(column, f"{raw!r} is not a date (YYYY-MM-DD)")
        return None

    def number(self, column: str) -> float | None:
        raw = self.text(column)
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            self.bad(column, f"{raw!r} is not a number")
            return None
        return value


def read_registry(
    branches: Path | None = None,
    devices: Path | None = None,
    metrics: Path | None = None,
    known_branches: Iterable[str] = (),
) -> Registry:
    """The registry in the given files; ``CsvInvalid`` listing every problem when any row is wrong.

    ``known_branches``: branch ids already in the registry (devices may belong to them).
    """
    problems: list[str] = []
    found_branches = _read(branches, "branches", _branch, branch_problems, lambda b: b.branch_id, problems)
    found_metrics = _read(metrics, "metrics", _metric, metric_problems, lambda m: f"{m.kind}.{m.metric}", problems)
    found_devices = _read(devices, "devices", _device, device_problems, lambda d: d.device_id, problems)
    branch_ids = {b.branch_id for b, _ in found_branches} | set(known_branches)
    problems += [
        f"{where}: branch_id: unknown branch {d.branch_id!r} (not in the branches file nor in the registry)"
        for d, where in found_devices
        if d.branch_id not in branch_ids
    ]
    if problems:
        raise CsvInvalid(problems)
    return Registry(
        tuple(b for b, _ in found_branches), tuple(d for d, _ in found_devices), tuple(m for m, _ in found_metrics)
    )


def _branch(row: _Row) -> Branch:
    recipients = tuple(r for r in re.split(r"[;\s]+", row.text("recipients")) if r)
    return Branch(row.text("branch_id"), row.text("name"), row.text("home_region"), row.text("time_zone"), recipients)


def _device(row: _Row) -> Device:
    return Device(
        row.text("device_id"),
        row.text("branch_id"),
        row.text("kind"),
        row.text("description"),
        row.date("installed_on"),
        row.date("retired_on"),
    )


def _metric(row: _Row) -> MetricDefinition:
    return MetricDefinition(
        row.text("kind"), row.text("metric"), row.text("unit"), row.number("low"), row.number("high")
    )


def _read(
    path: Path | None,
    what: str,
    parse: Callable[[_Row], T],
    check: Callable[[T], list[Problem]],
    key: Callable[[T], str],
    problems: list[str],
) -> list[tuple[T, str]]:
    """The file's rows as objects with their ``file:line``, problems appended to ``problems``."""
    if path is None:
        return []
    found: list[tuple[T, str]] = []
    first_seen: dict[str, str] = {}
    for row in _rows(path, what, problems):
        item = parse(row)
        for column, reason in check(item):
            row.bad(column, reason)
        if (k := key(item)) in first_seen:
            row.bad(COLUMNS[what][0][0], f"{k!r} is listed twice (first at {first_seen[k]})")
        first_seen.setdefault(k, row.where)
        problems += row.problems
        found.append((item, row.where))
    return found


def _rows(path: Path, what: str, problems: list[str]) -> Iterator[_Row]:
    """The data lines of a CSV file, after checking its header."""
    required, optional = COLUMNS[what]
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in required if c not in header]
            unknown = [c for c in header if c not in required + optional]
            problems += [f"{path}:1: {c}: missing column ({what} need {', '.join(required)})" for c in missing]
            problems += [f"{path}:1: {c}: unknown column (known: {', '.join(required + optional)})" for c in unknown]
            if missing or unknown:
                return
            for values in reader:
                if not any(v.strip() for v in values):
                    continue  # blank line
                where = f"{path}:{reader.line_num}"
                if len(values) != len(header):
                    problems.append(f"{where}: row: {len(values)} values for {len(header)} columns")
                    continue
                yield _Row({h: v.strip() for h, v in zip(header, values, strict=True)}, where)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{path}: cannot read it: {exc}")
