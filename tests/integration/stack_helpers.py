"""Helpers for tests that run against the local stack."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from devicepipe_tools.local import stack
from devicepipe_tools.local.resources import clients as local_clients


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60) -> None:
    """Poll until ``predicate()`` holds; fail the test when it does not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError("condition not reached in time")


def stored_readings(dynamodb: Any, table: str, device_prefix: str) -> set[str]:
    """Reading items (not LATEST) of devices whose id starts with ``device_prefix``, as ``device_id + sk``."""
    items = dynamodb.get_paginator("scan").paginate(TableName=table).build_full_result()["Items"]
    return {
        i["device_id"]["S"] + i["sk"]["S"]
        for i in items
        if i["sk"]["S"].startswith("R#") and i["device_id"]["S"].startswith(device_prefix)
    }


@contextmanager
def regions_stack(
    state_dir: Path, regions: tuple[str, ...], services: tuple[str, ...], **up: Any
) -> Iterator[dict[str, Any]]:
    """A local stack of ``regions``, stopped afterwards: ``state_dir``, ``state`` and, per region, its resources
    (``res``), a Redis client on its database (``redis``) and a client per service."""
    state = stack.up(regions, state_dir, **up)
    try:
        yield {
            "state_dir": state_dir,
            "state": state,
            **{
                r: {
                    "res": stack.region_resources(state, r),
                    "redis": redis.Redis.from_url(state["redis_urls"][r], decode_responses=True),
                    **local_clients(state["endpoint"], r, *services),
                }
                for r in regions
            },
        }
    finally:
        stack.down(state_dir)
