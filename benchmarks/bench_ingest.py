"""Ingest benchmark: a 1,000-record batch of ~200-byte readings, each figure against a baseline run here.

- CPU per record of the whole handler (powertools decorators included) with an in-memory DynamoDB,
  against the floor: base64 decode + JSON parse of the same records. Target <= 3x.
- DynamoDB calls per batch against ``ceil(unique readings / 25) + distinct devices``. Target: equal.
- Wall time with a DynamoDB that takes 8 ms per call, against a naive handler (one PutItem per record,
  sequential) on the same fake. Target: under 100 ms.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from devicepipe.config import IngestSettings
from devicepipe.ingest import Ingestor, build_ingestor
from devicepipe.models import parse_reading
from devicepipe.retry import Deadline, Retrier
from devicepipe_tools.events import encode, kinesis_event
from devicepipe_tools.fakes import FakeDynamo, FakeS3
from functions.ingest import app
from tests.conftest import FakeLambdaContext

RECORDS = 1_000
DEVICES = 100
LATENCY_S = 0.008
# The CPU ratio is the best of alternating runs of floor and handler over this long. The handler keeps ~3 MB
# of items alive, so busy spells of this shared host's neighbours (10-20 s each) slow it by up to 30% while
# the floor hardly moves: a 2 s sample can fall wholly inside one. The spread per window is printed too.
CPU_SECONDS = 20.0
CPU_WINDOW_S = 2.0
SETTINGS = IngestSettings(table_name="readings", quarantine_bucket="quarantine", region="us-east-1")


def make_event() -> dict[str, Any]:
    docs: list[dict[str, Any]] = []
    for i in range(RECORDS):
        docs.append(
            {
                "device_id": f"device-{i % DEVICES:05d}",
                "branch_id": f"branch-{i % 17:03d}",
                "ts": f"2026-11-02T09:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z",
                "seq": i,
                "metrics": {"temp_c": 21.5 + i % 7, "humidity": 0.41, "co2_ppm": 412 + i % 50, "door": "closed"},
                "fw": "4.2.1",
            }
        )
    return kinesis_event([(d["device_id"], encode(d)) for d in docs])


def best_of(runs: int, fn: Callable[[], object], clock: Callable[[], float]) -> float:
    best = math.inf
    for _ in range(runs):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def interleaved(runs: int, baseline: Callable[[], object], subject: Callable[[], object]) -> tuple[float, float]:
    """Best CPU time of each, alternating runs so both see the same machine load (it is shared and noisy)."""
    best = [math.inf, math.inf]
    for _ in range(runs):
        for i, fn in enumerate((baseline, subject)):
            start = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - start)
    return best[0], best[1]


def windowed(
    seconds: float, window_s: float, baseline: Callable[[], object], subject: Callable[[], object]
) -> tuple[float, float, list[float]]:
    """``interleaved`` for ``seconds``: the best CPU time of each, and the ratio of the bests in each window."""
    best: list[tuple[float, float]] = []
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        window = int(elapsed // window_s)
        if window == len(best):
            best.append((math.inf, math.inf))
        pair = interleaved(1, baseline, subject)
        best[window] = (min(best[window][0], pair[0]), min(best[window][1], pair[1]))
    return min(b for b, _ in best), min(s for _, s in best), [s / b for b, s in best]


def floor(event: dict[str, Any]) -> None:
    for r in event["Records"]:
        json.loads(base64.b64decode(r["kinesis"]["data"]))


def handler_with(ingestor: Ingestor, event: dict[str, Any]) -> Callable[[], object]:
    """The real handler (decorators and metrics included) running on the given ingestor."""
    context = FakeLambdaContext()

    def run() -> object:
        ingestor.writer.client = FakeDynamo(ingestor.writer.client.latency_s)  # type: ignore[attr-defined]
        with quiet_stdout():  # the handler's JSON log line and EMF metrics blob
            return app.lambda_handler(event, context)

    app._ingestor = lambda: (ingestor, Deadline.unlimited())  # type: ignore[assignment]
    return run


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null (powertools' logger holds its own reference to stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def naive(event: dict[str, Any], client: FakeDynamo) -> None:
    """What the ingest replaces: one PutItem per record, in order."""
    for r in event["Records"]:
        reading = parse_reading(json.loads(base64.b64decode(r["kinesis"]["data"])))
        client.put_item(TableName="readings", Item={"pk": {"S": reading.pk}, "sk": {"S": reading.sk}})


def main() -> list[tuple[str, float, float, bool]]:
    event = make_event()
    sizes = [len(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]
    print(f"ingest: {RECORDS} records, {DEVICES} devices, {sum(sizes) / len(sizes):.0f} bytes per reading on average")
    rows = []
    with ThreadPoolExecutor(SETTINGS.max_concurrency) as pool:
        retrier = Retrier()
        fast = build_ingestor(SETTINGS, FakeDynamo(), FakeS3(), pool, retrier)
        run = handler_with(fast, event)
        run()  # warm-up: imports, thread start-up
        floor_s, cpu_s, windows = windowed(CPU_SECONDS, CPU_WINDOW_S, lambda: floor(event), run)
        ratio = cpu_s / floor_s
        print(
            f"  cpu per record: {cpu_s / RECORDS * 1e6:7.2f} us   floor (b64 + json) {floor_s / RECORDS * 1e6:5.2f} us"
            f"   ratio {ratio:4.2f}x  (target <= 3x)"
        )
        print(
            f"    best of each over {CPU_SECONDS:.0f} s; per {CPU_WINDOW_S:.0f} s window: median"
            f" {statistics.median(windows):4.2f}x, worst {max(windows):4.2f}x (busy spells of the host)"
        )
        rows.append(("ingest cpu/record vs decode floor", ratio, 3.0, ratio <= 3.0))

        counted = FakeDynamo()
        fast.writer.client = counted
        report = fast.ingest(event["Records"])
        calls = sum(counted.calls.values())
        call_floor = math.ceil(report.readings / 25) + DEVICES
        print(f"  DynamoDB calls per batch: {calls}   floor ceil({report.readings}/25) + {DEVICES} = {call_floor}")
        rows.append(("ingest DynamoDB calls vs floor", calls / call_floor, 1.0, calls == call_floor))

        slow = build_ingestor(SETTINGS, FakeDynamo(LATENCY_S), FakeS3(), pool, retrier)
        wall_s = best_of(5, handler_with(slow, event), time.perf_counter)
        naive_s = best_of(1, lambda: naive(event, FakeDynamo(LATENCY_S)), time.perf_counter)
        print(
            f"  wall with {LATENCY_S * 1000:.0f} ms/call: {wall_s * 1000:6.1f} ms   naive sequential PutItem "
            f"{naive_s * 1000:7.1f} ms   speed-up {naive_s / wall_s:5.1f}x  (target < 100 ms)"
        )
        rows.append(("ingest wall ms with 8 ms/call", wall_s * 1000, 100.0, wall_s < 0.1))
    return rows
