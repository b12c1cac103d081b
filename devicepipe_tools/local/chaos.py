"""`devicepipe local chaos` (`make chaos`): the local stack under load while its processes are killed, then checked.

A fresh stack of its own (``.local/chaos``, one region) takes readings from the real producer at a steady rate
while faults come at random intervals (``--seed`` repeats a run's choices):

- ``kill -9`` of a worker: a function behind an event source mapping, or the region's read API;
- ``kill -9`` of the warehouse loader (DuckDB's one writer, in the middle of a cycle or not);
- Redis stopped (SIGTERM) and kept down a few seconds, then started again by the supervisor from its append-only
  file (as an ElastiCache failover keeps the cache): the cache updater waits the outage out.

No process is hit again within ``REST_S`` of its last fault, so that the supervisor restarts every one of them (it
gives up on a process that dies five times in a row, each soon after starting), nor before it has done some work
since (a batch, a load cycle): a worker killed before its first batch would only test a start, where one killed
between batches must resume from its checkpoint (the stager's 30 s batching window would otherwise hide that).
When production ends, so do the faults; then the pipeline drains and the demo's checks run: every reading
produced stored in the table exactly once (LATEST the newest), cached (each device's newest), staged exactly once,
loaded into the warehouse exactly once, nothing given up to the on-failure queue; and no process given up, every
one running.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devicepipe_tools.local import checks, files, stack
from devicepipe_tools.local.checks import Check, Result
from devicepipe_tools.local.files import read_json
from devicepipe_tools.local.resources import RegionResources
from devicepipe_tools.local.resources import clients as local_clients
from devicepipe_tools.local.supervisor import SETTLE_S, Proc, recorded
from devicepipe_tools.producer import FailureFile, Producer, entries_from_readings, simulate

CHAOS_DIR = stack.STATE_DIR / "chaos"
REGION = "us-east-1"
#: A process faulted is left alone this long: past the supervisor's settling time once it is back.
REST_S = SETTLE_S + 5
REDIS_OUTAGE_S = (3.0, 10.0)


@dataclass
class Fault:
    at_s: float  # since production started
    what: str


@dataclass
class ChaosResult(Result):
    faults: list[Fault] = field(default_factory=list)


class Injector(threading.Thread):
    """Faults at random intervals (``mean_s`` on average) until ``stop``."""

    def __init__(self, state_dir: Path, rng: random.Random, mean_s: float, say: Any) -> None:
        super().__init__(name="chaos", daemon=True)
        self.state_dir, self.rng, self.mean_s, self.say = state_dir, rng, mean_s, say
        self.faults: list[Fault] = []
        self.started = time.monotonic()
        self.last_hit: dict[str, tuple[float, int | None]] = {}  # when, and the work it had done then
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.rng.uniform(0.5, 1.5) * self.mean_s):
            try:
                self.inject()
            except Exception as exc:  # noted, and the run goes on: the checks tell whether it mattered
                self.note(f"fault not injected: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self.stopped.set()
        self.join()

    def inject(self) -> None:
        targets = [p for p in recorded(stack.read_state(self.state_dir)) if self._ready(p)]
        if not targets:
            return
        target = self.rng.choice(sorted(targets, key=lambda p: p.name))
        self.last_hit[target.name] = (time.monotonic(), _work_done(self.state_dir, target.name))
        if target.name == "redis-server":
            outage = round(self.rng.uniform(*REDIS_OUTAGE_S), 1)
            stack.hold(self.state_dir, target.name, outage)
            os.kill(target.pid, signal.SIGTERM)
            self.note(f"Redis stopped (pid {target.pid}) for {outage} s")
        else:
            os.kill(target.pid, signal.SIGKILL)
            self.note(f"kill -9 {target.name} (pid {target.pid})")

    def _ready(self, p: Proc) -> bool:
        """Whether ``p`` may be hit now: not the registry (no reading goes through it), running, rested, and busy
        since its last fault."""
        if p.name == "postgres" or not p.alive():
            return False
        if p.name not in self.last_hit:
            return True
        hit_at, work_then = self.last_hit[p.name]
        work_now = _work_done(self.state_dir, p.name)
        return time.monotonic() - hit_at >= REST_S and (work_now is None or work_now > (work_then or 0))

    def note(self, what: str) -> None:
        fault = Fault(round(time.monotonic() - self.started, 1), what)
        self.faults.append(fault)
        self.say(f"  {fault.at_s:6.1f} s  {what}")


def _work_done(state_dir: Path, name: str) -> int | None:
    """How much the process ``name`` has done, as its statistics say (they count on across restarts): invocations of
    a worker's function, cycles of the loader; None for a process without such statistics."""
    if name == "loader":
        return int(read_json(state_dir / files.LOADER).get("cycles", 0))
    if name.startswith("worker "):
        region, function = name.removeprefix("worker ").split("/")
        doc = read_json(state_dir / f"esm-{region}-{function}.json")
        return sum(int(m["invocations"]) for m in doc.get("mappings", {}).values())
    return None


def run_chaos(
    duration_s: float = 90,
    rate: float = 50,
    devices: int = 50,
    branches: int = 5,
    fault_every_s: float = 6,
    seed: int | None = None,
    timeout_s: float = 300,
    state_dir: Path = CHAOS_DIR,
    say: Any = print,
) -> ChaosResult:
    """Run it; ``say`` receives the progress lines (the faults as they are injected among them)."""
    seed = random.randrange(10_000) if seed is None else seed
    stack.down(state_dir)
    t0 = time.monotonic()
    say(f"starting the local stack ({REGION}) ...")
    state = stack.up((REGION,), state_dir)
    result = ChaosResult()
    result.figures.update(seed=seed, stack_start_s=round(time.monotonic() - t0, 1))
    try:
        clients = local_clients(state["endpoint"], REGION, "kinesis", "dynamodb", "s3", "sqs")
        res = stack.region_resources(state, REGION)
        say(
            f"producing {rate:g} readings/s from {devices} devices for {duration_s:g} s, a fault every "
            f"{fault_every_s:g} s on average (seed {seed}):"
        )
        injector = Injector(state_dir, random.Random(seed), fault_every_s, say)
        injector.start()
        try:
            simulated = simulate(devices, branches, duration_s=duration_s, rate=rate, seed=seed)
            docs = _produce(result, clients["kinesis"], res.names["ReadingsStream"], state_dir, simulated)
        finally:
            injector.stop()
        result.faults = injector.faults
        say("waiting for the pipeline to drain and the warehouse to load ...")
        t_drain = time.monotonic()
        checks.wait_drained(state_dir, {REGION: len(docs)}, timeout_s)
        _wait_loaded(state_dir, timeout_s)
        result.figures["drain_s"] = round(time.monotonic() - t_drain, 1)
        _check(result, state, state_dir, clients, res, docs)
        result.figures["total_s"] = round(time.monotonic() - t0, 1)
    finally:
        stack.down(state_dir)
    return result


def _wait_loaded(state_dir: Path, timeout_s: float) -> None:
    """Until two load cycles after now (so one began after now) left nothing staged unloaded. (The demo's wait
    counts the loader's totals, which a loader killed between its load and its statistics file undercounts.)"""
    cycles = read_json(state_dir / files.LOADER).get("cycles", 0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = read_json(state_dir / files.LOADER)
        if doc.get("cycles", 0) >= cycles + 2 and doc.get("last", {}).get("pending_objects") == 0:
            return
        time.sleep(0.5)
    raise stack.StackError(f"the warehouse loader did not load every staged object within {timeout_s:.0f}s")


def _produce(
    result: ChaosResult, kinesis: Any, stream: str, state_dir: Path, simulated: Iterator[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every simulated reading through the real producer, as the simulator paces them; the readings."""
    docs: list[dict[str, Any]] = []

    def readings() -> Iterator[dict[str, Any]]:
        for doc in simulated:
            docs.append(doc)
            yield doc

    failures = FailureFile(str(state_dir / "produce-failed.jsonl"))
    started = time.monotonic()
    progress = Producer(kinesis, stream, failures, max_in_flight=4).send(entries_from_readings(readings()))
    failures.close()
    produce_s = time.monotonic() - started
    result.figures.update(
        produced=progress.sent,
        produce_failed=progress.failed,
        produce_s=round(produce_s, 1),
        produce_rate=round(progress.sent / produce_s),
    )
    return docs


def _check(
    result: ChaosResult,
    state: dict[str, Any],
    state_dir: Path,
    clients: dict[str, Any],
    res: RegionResources,
    docs: list[dict[str, Any]],
) -> None:
    """The demo's checks of every store, and the stack's own: every process running, none given up."""
    failed = result.figures["produce_failed"]
    result.checks.append(Check("producer", failed == 0, f"{result.figures['produced']} sent, {failed} failed"))
    checks.verify_table(result, REGION, clients, res, docs, "")
    checks.verify_failure_queue(result, clients, res, "")
    checks.verify_cache(result, state["redis_urls"][REGION], docs, "")
    checks.verify_staging(result, {REGION: (clients["s3"], res)}, {REGION: docs})
    checks.verify_warehouse(result, state, state_dir, docs, timeout_s=10)  # loaded already (``_wait_loaded``)
    now = stack.read_state(state_dir)
    entries = now["processes"]
    given_up = [p["name"] for p in entries if p.get("gave_up")]
    running = sum(1 for p in recorded(now) if p.alive())
    restarts = sum(p["restarts"] for p in entries)
    result.figures.update(restarts=restarts)
    result.checks.append(
        Check(
            "processes: every one restarted and running, none given up",
            not given_up and running == len(entries),
            f"{running} of {len(entries)} running, {restarts} restarts, given up: {', '.join(given_up) or 'none'}",
        )
    )


def render(result: ChaosResult) -> str:
    f = result.figures
    lines = [
        "",
        f"faults injected ({len(result.faults)}, seed {f.get('seed')}):",
        *(f"  {fault.at_s:6.1f} s  {fault.what}" for fault in result.faults),
        "",
        f"produced        {f.get('produced', 0):6d}   readings in {f.get('produce_s')} s "
        f"({f.get('produce_rate')}/s), {f.get('produce_failed', 0)} failed",
        f"stored          {f.get('readings_stored', 0):6d}   of {f.get('readings_expected', 0)}; "
        f"{f.get('latest_items', 0)} LATEST items",
        f"cached          {f.get('cached_devices', 0):6d}   devices with their newest reading in Redis",
        f"staged          {f.get('staged_rows', 0):6d}   rows in {f.get('staged_objects', 0)} objects",
        f"warehouse       {f.get('warehouse_rows', 0):6d}   rows; {f.get('load_cycles')} load cycles",
        f"restarts        {f.get('restarts', 0):6d}",
        f"wall time       stack start {f.get('stack_start_s')} s, produce {f.get('produce_s')} s, "
        f"drain {f.get('drain_s')} s, total {f.get('total_s')} s",
        "",
        *(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in result.checks),
        f"\nverdict: {'CONSISTENT' if result.consistent else 'INCONSISTENT'}",
    ]
    return "\n".join(lines)
