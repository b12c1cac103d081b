"""The demo's read side: what the pipeline stored, read back through each region's HTTP API as a branch would.

- every device's latest reading is the newest it produced, branch listings hold exactly their devices, and
  each device's history holds every reading it produced once;
- freshness: from a reading's PutRecords to the API answering it as the device's latest, against the 2 s goal;
- the cache hit ratio of a skewed read workload (a few hot branches), against the 85 % goal.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from devicepipe.models import Reading, parse_reading
from devicepipe_tools.read_client import ReadClient, RequestFailed
from devicepipe_tools.stats import summary_ms

FRESHNESS_GOAL_S = 2.0
HIT_RATIO_GOAL = 0.85
_WORKERS = 8


@dataclass(frozen=True)
class Expected:
    """What the API should answer, from the readings produced."""

    newest: dict[str, tuple[str, int]]  # device -> (ts, seq) of its newest reading
    branches: dict[str, set[str]]  # branch -> devices (by their newest reading's branch)
    counts: dict[str, int]  # device -> distinct readings

    @classmethod
    def of(cls, docs: Iterable[dict[str, Any]]) -> Expected:
        newest: dict[str, Reading] = {}
        seen: dict[str, set[str]] = defaultdict(set)
        for doc in docs:
            r = parse_reading(doc, now_s=time.time())
            seen[r.device_id].add(r.version)
            if r.device_id not in newest or r.version > newest[r.device_id].version:
                newest[r.device_id] = r
        branches: dict[str, set[str]] = defaultdict(set)
        for r in newest.values():
            branches[r.branch_id].add(r.device_id)
        return cls(
            {d: (r.ts, r.seq) for d, r in newest.items()},
            dict(branches),
            {d: len(v) for d, v in seen.items()},
        )


def check_reads(client: ReadClient, expected: Expected) -> list[tuple[str, bool, str]]:
    """``(check, ok, detail)`` for latest readings, branch listings and history counts."""
    with ThreadPoolExecutor(_WORKERS) as pool:
        latest = list(pool.map(lambda d: _latest_version(client, d), sorted(expected.newest)))
        history = list(pool.map(lambda d: _history_count(client, d), sorted(expected.counts)))
        listed = dict(zip(expected.branches, pool.map(lambda b: _branch(client, b), expected.branches), strict=True))
    wrong_latest = [d for d, got in zip(sorted(expected.newest), latest, strict=True) if got != expected.newest[d]]
    wrong_history = [d for d, got in zip(sorted(expected.counts), history, strict=True) if got != expected.counts[d]]
    branch_list = {b["branch_id"] for b in client.get("/branches")["branches"]}
    wrong_branches = [b for b, devices in expected.branches.items() if listed[b] != devices]
    return [
        (
            "API latest",
            not wrong_latest,
            f"{len(expected.newest) - len(wrong_latest)} of {len(expected.newest)} devices answer their newest "
            "reading" + (f"; wrong: {', '.join(wrong_latest[:5])}" if wrong_latest else ""),
        ),
        (
            "API branches",
            not wrong_branches and branch_list >= set(expected.branches),
            f"{len(expected.branches) - len(wrong_branches)} of {len(expected.branches)} branch listings complete"
            + (f"; wrong: {', '.join(wrong_branches[:5])}" if wrong_branches else "")
            + f"; /branches lists {len(branch_list)}",
        ),
        (
            "API history",
            not wrong_history,
            f"{sum(history)} readings over {len(history)} devices' histories (expected {sum(expected.counts.values())})"
            + (f"; wrong: {', '.join(wrong_history[:5])}" if wrong_history else ""),
        ),
    ]


def freshness(
    put: Callable[[dict[str, Any]], None], client: ReadClient, devices: list[tuple[str, str]], timeout_s: float = 30
) -> dict[str, Any]:
    """Send one new reading per ``(device, branch)``, one after another, each timed from just before its
    PutRecords call to the first ``/latest`` answer that holds it (polled every 20 ms)."""
    lags: list[float] = []
    missed = 0
    for device, branch in devices:
        seq = 10**9 + len(lags) + missed
        doc = {"device_id": device, "branch_id": branch, "ts": int(time.time() * 1000), "seq": seq}
        doc["metrics"] = {"probe": 1}
        started = time.perf_counter()
        put(doc)
        while time.perf_counter() - started < timeout_s:
            try:
                if client.get(f"/devices/{device}/latest")["reading"]["seq"] == seq:
                    lags.append(time.perf_counter() - started)
                    break
            except RequestFailed:
                pass
            time.sleep(0.02)
        else:
            missed += 1
    return {"readings": len(devices), "missed": missed, **summary_ms(lags)}


def hit_ratio(client: ReadClient, expected: Expected, requests: int = 600, seed: int = 5) -> dict[str, Any]:
    """A branch-staff read workload: branch popularity falls off as 1/rank, 70 % latest lookups and 30 % branch
    listings; the ratio of answers the API says came from the cache."""
    rng = random.Random(seed)
    branches = sorted(expected.branches)
    weights = [1 / (rank + 1) for rank in range(len(branches))]
    paths = []
    for _ in range(requests):
        branch = rng.choices(branches, weights)[0]
        if rng.random() < 0.7:
            paths.append(f"/devices/{rng.choice(sorted(expected.branches[branch]))}/latest")
        else:
            paths.append(f"/branches/{branch}/devices")
    with ThreadPoolExecutor(_WORKERS) as pool:
        sources = list(pool.map(lambda p: client.get(p)["source"], paths))
    return {"requests": requests, "ratio": round(sources.count("cache") / len(sources), 3)}


def _latest_version(client: ReadClient, device: str) -> tuple[str, int] | None:
    try:
        reading = client.get(f"/devices/{device}/latest")["reading"]
    except RequestFailed:
        return None
    return reading["ts"], reading["seq"]


def _history_count(client: ReadClient, device: str) -> int:
    doc = client.get_all(f"/devices/{device}/readings", {"limit": 1000}, "readings", lambda pages, n: None)
    return len(doc["readings"])


def _branch(client: ReadClient, branch: str) -> set[str]:
    doc = client.get_all(f"/branches/{branch}/devices", {"limit": 1000}, "devices", lambda pages, n: None)
    return {d["device_id"] for d in doc["devices"]}
