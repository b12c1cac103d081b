"""Helpers for tests that run against the local stack."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


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
