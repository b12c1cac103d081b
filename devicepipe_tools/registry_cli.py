"""`devicepipe registry`: the registry's schema and rows (Aurora PostgreSQL; the local stack's PostgreSQL).

The target is one of --local (the running local stack), --url postgresql://... (a direct connection, e.g. through
a tunnel) or --cluster-arn with --secret-arn (the RDS Data API: the primary region's cluster, which has the writer;
a global database's secondary takes no Data API statement at all). Writes go to the primary.

Exit codes: 0 done; 1 the registry refused (invalid CSV rows, nothing imported; an unknown device or branch; a
database error); 2 usage (no target, bad arguments, no local stack).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from devicepipe.database import DataApiDatabase, Database, DatabaseError, PgDatabase
from devicepipe.registry import (
    Branch,
    Device,
    InvalidRegistry,
    MetricDefinition,
    MigrationError,
    Registry,
    UnknownDevice,
    as_json,
    import_registry,
    load_registry,
    migrate,
    retire_device,
)
from devicepipe_tools import wording
from devicepipe_tools.local import stack
from devicepipe_tools.registry_csv import CsvInvalid, read_registry

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
Run = Callable[[argparse.Namespace, Database], int]


class Usage(ValueError):
    """The command line names no usable target or input."""


def add_parser(sub: Any) -> None:
    """Add ``registry`` and its actions to the ``devicepipe`` command's subparsers."""
    target = argparse.ArgumentParser(add_help=False)
    where = target.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="the running local stack's PostgreSQL")
    where.add_argument("--url", help="postgresql://user[:password]@host:port/database: a direct connection")
    where.add_argument("--cluster-arn", help="Aurora cluster ARN: the RDS Data API (primary region; with --secret-arn)")
    target.add_argument("--secret-arn", help="Secrets Manager secret the Data API logs in with (the master secret)")
    target.add_argument("--database", default="devicepipe", help="database name for the Data API (devicepipe)")
    target.add_argument("--region", help="region of --cluster-arn (default: the ARN's)")
    target.add_argument("--state-dir", type=Path, default=stack.STATE_DIR, help=argparse.SUPPRESS)

    p = sub.add_parser(
        "registry",
        help="the registry (branches, devices, metric definitions): migrate | import | list | show | retire",
        description=__doc__.split("\n\n")[1],
    )
    actions = p.add_subparsers(required=True, metavar="ACTION")
    a = actions.add_parser("migrate", parents=[target], help="apply the schema migrations the database lacks")
    a.set_defaults(run=_guarded(_migrate))

    a = actions.add_parser(
        "import",
        parents=[target],
        help="insert or update rows from CSV files, all or nothing",
        description="Columns (* required): branches: branch_id*, name*, home_region*, time_zone* (IANA), recipients "
        "(;-separated e-mails); devices: device_id*, branch_id*, kind*, description, installed_on, retired_on "
        "(YYYY-MM-DD); metrics: kind*, metric*, unit, low, high. Every bad row is reported as file:line: column: "
        "reason and nothing is imported (exit 1).",
    )
    a.add_argument("--branches", type=Path, help="branches CSV")
    a.add_argument("--devices", type=Path, help="devices CSV")
    a.add_argument("--metrics", type=Path, help="metric definitions CSV")
    a.set_defaults(run=_guarded(_import))

    a = actions.add_parser(
        "list", parents=[target], help="list branches, devices or metrics (WHAT; default branches), id order"
    )
    a.add_argument("what", nargs="?", choices=["branches", "devices", "metrics"], default="branches", metavar="WHAT")
    a.add_argument("--branch", help="only this branch (its devices; for metrics, its devices' kinds)")
    a.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    a.set_defaults(run=_guarded(_list))

    a = actions.add_parser("show", parents=[target], help="one device or branch, with its context")
    a.add_argument("id", metavar="DEVICE_OR_BRANCH")
    a.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    a.set_defaults(run=_guarded(_show))

    a = actions.add_parser("retire", parents=[target], help="mark a device retired (no longer expected to report)")
    a.add_argument("device")
    a.add_argument("--on", type=_date, help="its last expected day, YYYY-MM-DD (default: today, UTC)")
    a.set_defaults(run=_guarded(_retire))


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a date, YYYY-MM-DD") from None


def _guarded(run: Run) -> Callable[[argparse.Namespace], int]:
    """Open the target, run the action, close it; each failure as one line and an exit code, never a traceback."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            db = open_target(args)
        except Usage as exc:
            return _fail(str(exc), EXIT_USAGE)
        try:
            return run(args, db)
        except CsvInvalid as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return _fail(f"nothing imported: {len(exc.problems)} problem(s)", EXIT_FAILED)
        except InvalidRegistry as exc:
            return _fail("; ".join(exc.problems), EXIT_FAILED)
        except DatabaseError as exc:
            hint = " (apply the schema first: `devicepipe registry migrate`)" if exc.sqlstate == "42P01" else ""
            return _fail(f"{exc}{hint}", EXIT_FAILED)
        except (MigrationError, UnknownDevice) as exc:
            return _fail(str(exc), EXIT_FAILED)
        finally:
            db.close()

    return guarded


def _fail(message: str, code: int) -> int:
    print(f"devicepipe registry: {message}", file=sys.stderr)
    return code


def open_target(args: argparse.Namespace) -> Database:
    """The database the arguments name (``stack.StackError`` when --local finds no stack)."""
    if args.local:
        state = stack.read_state(args.state_dir)
        if not state.get("registry_url"):
            raise stack.StackError("the running local stack has no registry: restart it (`local down`, then `up`)")
        return PgDatabase.from_url(state["registry_url"])
    if args.url:
        try:
            return PgDatabase.from_url(args.url)
        except ValueError as exc:
            raise Usage(str(exc)) from None
    if args.cluster_arn:
        if not args.secret_arn:
            raise Usage("--cluster-arn needs --secret-arn (the secret the Data API logs in with)")
        region = args.region or (args.cluster_arn.split(":") + [""] * 4)[3]
        client = boto3.client("rds-data", region_name=region or None, config=Config(retries={"mode": "standard"}))
        return DataApiDatabase(client, args.cluster_arn, args.secret_arn, args.database)
    raise Usage("name the registry: --local, --url postgresql://..., or --cluster-arn ARN --secret-arn ARN")


# ----------------------------------------------------------------------------------------------- actions
def _migrate(args: argparse.Namespace, db: Database) -> int:
    applied = migrate(db)
    print(f"applied {', '.join(applied)}" if applied else "the registry's schema is up to date")
    return EXIT_OK


def _import(args: argparse.Namespace, db: Database) -> int:
    if not (args.branches or args.devices or args.metrics):
        return _fail("give at least one of --branches, --devices, --metrics", EXIT_USAGE)
    known = [b.branch_id for b in load_registry(db).branches] if args.devices else []
    registry = read_registry(args.branches, args.devices, args.metrics, known)
    import_registry(db, registry)
    print(
        f"imported {wording.count(len(registry.branches), 'branch')}, "
        f"{wording.count(len(registry.devices), 'device')}, "
        f"{wording.count(len(registry.metrics), 'metric definition')}"
    )
    return EXIT_OK


def _list(args: argparse.Namespace, db: Database) -> int:
    registry = load_registry(db)
    rows: Sequence[Branch | Device | MetricDefinition]
    if args.what == "branches":
        rows = [b for b in registry.branches if args.branch in (None, b.branch_id)]
    elif args.what == "devices":
        rows = [d for d in registry.devices if args.branch in (None, d.branch_id)]
    else:
        rows = [m for m in registry.metrics if args.branch is None or m.kind in _kinds(registry, args.branch)]
    if args.json:
        print(json.dumps([as_json(r) for r in rows], indent=2))
    else:
        _print_table([_cells(r) for r in rows], _HEADERS[args.what])
    return EXIT_OK


def _kinds(registry: Registry, branch_id: str) -> set[str]:
    return {d.kind for d in registry.devices if d.branch_id == branch_id}


_HEADERS = {
    "branches": ["branch", "name", "region", "time zone", "recipients"],
    "devices": ["device", "branch", "kind", "installed", "retired", "description"],
    "metrics": ["kind", "metric", "unit", "low", "high"],
}


def _cells(row: Branch | Device | MetricDefinition) -> list[str]:
    values = as_json(row)
    if isinstance(row, Branch):
        values["recipients"] = "; ".join(row.recipients)
    if isinstance(row, Device):  # description last: it is the long one
        values["description"] = values.pop("description")
    return ["" if v is None else str(v) for v in values.values()]


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    print(f"({len(rows)})")


def _show(args: argparse.Namespace, db: Database) -> int:
    registry = load_registry(db)
    branches = {b.branch_id: b for b in registry.branches}
    device = next((d for d in registry.devices if d.device_id == args.id), None)
    if device is not None:
        doc: dict[str, Any] = {
            "device": as_json(device),
            "branch": as_json(branches[device.branch_id]),
            "metrics": [as_json(m) for m in registry.metrics if m.kind == device.kind],
        }
    elif args.id in branches:
        doc = {
            "branch": as_json(branches[args.id]),
            "devices": [as_json(d) for d in registry.devices if d.branch_id == args.id],
        }
    else:
        return _fail(f"no device or branch {args.id!r} in the registry", EXIT_FAILED)
    print(json.dumps(doc, indent=2) if args.json else _render(doc))
    return EXIT_OK


def _render(doc: dict[str, Any]) -> str:
    b = doc["branch"]
    branch = f"{b['branch_id']} ({b['name']}, {b['home_region']}, {b['time_zone']})"
    if device := doc.get("device"):
        lines = [
            f"device {device['device_id']}: {device['kind']}, branch {branch}",
            f"  installed {device['installed_on'] or '-'}, "
            + (f"retired {device['retired_on']}" if device["retired_on"] else "in service"),
        ]
        lines += [f"  {device['description']}"] if device["description"] else []
        lines += [f"  {m['metric']}: {m['unit'] or '-'}, range {_range(m)}" for m in doc["metrics"]]
        return "\n".join(lines)
    lines = [f"branch {branch}", f"  recipients: {', '.join(b['recipients']) or '-'}"]
    lines += [f"  {wording.count(len(doc['devices']), 'device')}:"]
    lines += [
        f"    {d['device_id']}  {d['kind']}" + (f"  retired {d['retired_on']}" if d["retired_on"] else "")
        for d in doc["devices"]
    ]
    return "\n".join(lines)


def _range(m: dict[str, Any]) -> str:
    if m["low"] is None and m["high"] is None:
        return "none"
    return f"{'' if m['low'] is None else m['low']}..{'' if m['high'] is None else m['high']}"


def _retire(args: argparse.Namespace, db: Database) -> int:
    on = args.on or datetime.now(UTC).date()
    retire_device(db, args.device, on)
    print(f"{args.device} retired on {on.isoformat()}")
    return EXIT_OK
