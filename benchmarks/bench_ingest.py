"""Ingest benchmark: a 1,000-record batch of ~200-byte readings, each figure against a baseline run here.

- CPU per record of the whole handler (powertools decorators included) against the floor: base64 decode +
  JSON parse of the same records. Target <= 3x. Measured twice in the same alternating runs: with a real boto3
  DynamoDB client built with the function's own ``Config``, the network cut at the HTTP layer (``aws_stub``:
  validation, serialisation, signing and parsing all run, as in Lambda), and with the in-memory fake that
  skips botocore (what the ingest's own code costs).
- DynamoDB calls per batch against ``ceil(unique readings / 25) + distinct devices``. Target: equal.
- Wall time with DynamoDB answering each call in 8 ms, through the real client and through the fake, against
  a naive handler (one PutItem per record, sequential) on the fake. Target: under 100 ms.
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

from benchmarks.aws_stub import dynamodb_writes, stub
from devicepipe.config import IngestSettings
from devicepipe.dynamo import write_client
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
    floor_s, ((best_s, ratios),) = windowed_many(seconds, window_s, baseline, subject)
    return floor_s, best_s, ratios


def windowed_many(
    seconds: float, window_s: float, baseline: Callable[[], object], *subjects: Callable[[], object]
) -> tuple[float, list[tuple[float, list[float]]]]:
    """Baseline and subjects in turn for ``seconds``: the baseline's best CPU time, and for each subject its best
    and the ratio of its best to the baseline's in each window."""
    fns = (baseline, *subjects)
    best: list[list[float]] = []
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        window = int(elapsed // window_s)
        if window == len(best):
            best.append([math.inf] * len(fns))
        for i, fn in enumerate(fns):
            began = time.process_time()
            fn()
            best[window][i] = min(best[window][i], time.process_time() - began)
    return min(w[0] for w in best), [(min(w[i] for w in best), [w[i] / w[0] for w in best]) for i in range(1, len(fns))]


def floor(event: dict[str, Any]) -> None:
    for r in event["Records"]:
        json.loads(base64.b64decode(r["kinesis"]["data"]))


def client_floor(event: dict[str, Any], client: Any, calls: int) -> Callable[[], object]:
    """The decode floor plus the least the SDK costs: the batch's number of calls, each a PutItem of one key,
    sequential, through ``client`` (built as the function builds it)."""

    def run() -> None:
        floor(event)
        for i in range(calls):
            client.put_item(TableName="readings", Item={"pk": {"S": f"DEVICE#{i}"}, "sk": {"S": "LATEST"}})

    return run


def handler_with(ingestor: Ingestor, event: dict[str, Any]) -> Callable[[], object]:
    """The real handler (decorators and metrics included) running on the given ingestor; a fake DynamoDB is
    emptied before each run (so every LATEST write succeeds, as through the stubbed real client)."""
    context = FakeLambdaContext()

    def run() -> object:
        client = ingestor.writer.client
        if isinstance(client, FakeDynamo):
            ingestor.writer.client = FakeDynamo(client.latency_s)
        app._ingestor = lambda: (ingestor, Deadline.unlimited())  # type: ignore[assignment]
        with quiet_stdout():  # the handler's JSON log line and EMF metrics blob
            return app.lambda_handler(event, context)

    return run


def real_dynamodb(latency_s: float = 0.0) -> Any:
    """The ingest function's DynamoDB client, built as it builds it, answered at the HTTP layer."""
    return stub(write_client(**app.client_options(SETTINGS)), dynamodb_writes, parse_body=False, latency_s=latency_s)


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
        real = build_ingestor(SETTINGS, real_dynamodb(), FakeS3(), pool, retrier)
        run_fake, run_real = handler_with(fast, event), handler_with(real, event)
        call_floor = math.ceil(RECORDS / 25) + DEVICES
        sdk_floor = client_floor(event, real_dynamodb(), call_floor)
        run_fake(), run_real(), sdk_floor()  # warm-up: imports, thread start-up, botocore's models and caches
        floor_s, measured = windowed_many(
            CPU_SECONDS, CPU_WINDOW_S, lambda: floor(event), run_real, run_fake, sdk_floor
        )
        print(f"  cpu per record, floor (b64 + json) {floor_s / RECORDS * 1e6:5.2f} us; target <= 3x the floor:")
        for (cpu_s, windows), name, row in zip(
            measured[:2],
            ("real boto3 client", "in-memory DynamoDB"),
            ("ingest cpu/record vs floor, real client", "ingest cpu/record vs floor, fake client"),
            strict=True,
        ):
            ratio = cpu_s / floor_s
            print(
                f"    {name:18s} {cpu_s / RECORDS * 1e6:7.2f} us   ratio {ratio:4.2f}x   per {CPU_WINDOW_S:.0f} s"
                f" window: median {statistics.median(windows):4.2f}x, worst {max(windows):4.2f}x"
            )
            rows.append((row, ratio, 3.0, ratio <= 3.0))
        real_s, sdk_s = measured[0][0], measured[2][0]
        print(
            f"    SDK floor (decode + {call_floor} one-key PutItems through the same client)"
            f" {sdk_s / RECORDS * 1e6:6.2f} us: the real client's ingest is {real_s / sdk_s:4.2f}x it"
        )
        print(f"    (best of each over {CPU_SECONDS:.0f} s of alternating runs; the worst window: busy host spells)")
        rows.append(("ingest cpu/record vs SDK floor", real_s / sdk_s, 0.0, True))

        counted = FakeDynamo()
        fast.writer.client = counted
        report = fast.ingest(event["Records"])
        calls = sum(counted.calls.values())
        print(f"  DynamoDB calls per batch: {calls}   floor ceil({report.readings}/25) + {DEVICES} = {call_floor}")
        rows.append(("ingest DynamoDB calls vs floor", calls / call_floor, 1.0, calls == call_floor))

        slow_real = build_ingestor(SETTINGS, real_dynamodb(LATENCY_S), FakeS3(), pool, retrier)
        real_wall_s = best_of(5, handler_with(slow_real, event), time.perf_counter)
        slow = build_ingestor(SETTINGS, FakeDynamo(LATENCY_S), FakeS3(), pool, retrier)
        wall_s = best_of(5, handler_with(slow, event), time.perf_counter)
        naive_s = best_of(1, lambda: naive(event, FakeDynamo(LATENCY_S)), time.perf_counter)
        print(
            f"  wall with {LATENCY_S * 1000:.0f} ms/call: real client {real_wall_s * 1000:6.1f} ms, in-memory"
            f" {wall_s * 1000:6.1f} ms   naive sequential PutItem {naive_s * 1000:7.1f} ms (target < 100 ms)"
        )
        rows.append(("ingest wall ms with 8 ms/call, real client", real_wall_s * 1000, 100.0, real_wall_s < 0.1))
        rows.append(("ingest wall ms with 8 ms/call, fake client", wall_s * 1000, 100.0, wall_s < 0.1))
    return rows
