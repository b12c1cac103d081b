"""The local stack's files in its state directory (``.local`` by default), named once: the supervisor, its
workers, the CLI, the demo and docs/local-stack.md all refer to them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE = "state.json"  # endpoints, ports, pids, resource names: what `local env` prints
STACK_LOG = "stack.log"
LOCK = "up.lock"  # held by `local up` while it checks for a stack and starts one
LOADER = "loader.json"  # the loader's totals, last cycle, lag, last error and snapshot
REPORTS = "reports.json"  # the branch reports' schedule
#: The warehouse the loader (and the report run, in the same process) writes: the one writer's file.
WAREHOUSE = "warehouse.duckdb"
#: What readers open, read-only: a copy the loader publishes after each cycle that changed the warehouse.
WAREHOUSE_SNAPSHOT = "warehouse-read.duckdb"
#: Each event source mapping's shard positions (``<region>-<mapping>.json``): a restarted worker resumes there.
CHECKPOINTS = "checkpoints"
REDIS_DATA = "redis"  # redis-server's append-only file: the cache outlives a restart of Redis
HOLDS = "holds.json"  # processes the supervisor must not restart before a time (`stack.hold`)
OUTAGES = "outages.json"  # regions taken down by `local outage`
REPLICATION = "replication.json"  # the global-table replicator's figures (two regions)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write, so readers never see half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object written by ``write_json``; empty when there is none (yet)."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc
