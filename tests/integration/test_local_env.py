"""The local stack as a place to work in: fixed ports, `local env`, AWS_REGION, the warehouse's snapshot held by a
reader across load cycles, the loader in `local status`, `loads list` beside a writer, stage latencies."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from devicepipe_tools import cli
from devicepipe_tools.events import encode, reading
from devicepipe_tools.local import files, stack
from devicepipe_tools.local.net import in_use, port_plan
from devicepipe_tools.local.resources import clients as local_clients
from devicepipe_tools.local.stage_latency import STAGES, measure
from tests.integration.stack_helpers import wait_for

pytestmark = pytest.mark.integration
REGION = "us-east-1"


def free_base_port() -> int:
    """A base port whose whole plan is free, below Linux's ephemeral range (32768-60999), as docs advise."""
    for _ in range(100):
        base = random.randrange(20_000, 32_000)
        if not any(in_use(p) for p in port_plan(base, [REGION]).values()):
            return base
    raise AssertionError("no free run of ports")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("stack")
    base = free_base_port()
    state = stack.up((REGION,), state_dir, port=base)
    try:
        yield {"state_dir": state_dir, "state": state, "base": base}
    finally:
        stack.down(state_dir)


def devicepipe(
    local: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command as a person runs it, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "devicepipe_tools.cli", *args, "--state-dir", str(local["state_dir"])],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def client_env(local: dict[str, Any]) -> dict[str, str]:
    out = devicepipe(local, "local", "env", "--json")
    assert out.returncode == 0, out.stderr
    env: dict[str, str] = json.loads(out.stdout)
    return env


def loader_doc(local: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((local["state_dir"] / files.LOADER).read_text())
    return doc


def test_local_up_port_puts_every_server_on_its_fixed_port(local: dict[str, Any]) -> None:
    state, plan = local["state"], port_plan(local["base"], [REGION])
    assert state["endpoint"] == f"http://127.0.0.1:{plan['moto']}"
    assert state["api_urls"][REGION] == f"http://127.0.0.1:{plan[f'read API {REGION}']}"
    if state["redis_kind"] != "external":
        assert state["redis_url"] == f"redis://127.0.0.1:{plan['redis']}/0"
    if state["registry_kind"] != "external":
        assert f"@127.0.0.1:{plan['registry']}/" in state["registry_url"]


def test_a_taken_port_fails_in_one_line_before_anything_starts(local: dict[str, Any], tmp_path: Path) -> None:
    # The other stack's plan overlaps the running one's: its moto port is the running Redis's.
    out = devicepipe({"state_dir": tmp_path}, "local", "up", "--port", str(local["base"] + 1))
    assert out.returncode == cli.EXIT_USAGE
    assert out.stderr.strip().splitlines() == [
        f"devicepipe: port {local['base'] + 1} (moto) is in use: choose another --port, or stop what listens there"
    ]
    assert not list(tmp_path.iterdir())  # no log, no state: nothing was started


def test_local_env_prints_one_environment_for_the_shell_and_as_json(local: dict[str, Any]) -> None:
    env = client_env(local)
    state = local["state"]
    assert env["AWS_ENDPOINT_URL"] == state["endpoint"]
    assert env["AWS_DEFAULT_REGION"] == env["AWS_REGION"] == REGION
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    assert env["REDIS_URL"] == state["redis_urls"][REGION]
    assert env["DEVICEPIPE_API_URL"] == state["api_urls"][REGION]
    assert env["DEVICEPIPE_WAREHOUSE"] == str(local["state_dir"] / files.WAREHOUSE_SNAPSHOT)
    names = state["regions"][REGION]["names"]
    for logical_id in ("ReadingsStream", "ReadingsTable", "StagingBucket", "IngestFailureQueue", "AlarmTopic"):
        assert names[logical_id] in env.values()
    assert env["DEVICEPIPE_READINGS_STREAM"] == names["ReadingsStream"]
    # The shell form sets exactly the JSON form's variables.
    shell = devicepipe(local, "local", "env").stdout
    code = f"{shell}\n{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    evaluated = json.loads(
        subprocess.run(["bash", "-c", code], capture_output=True, text=True, env={}, check=True).stdout
    )
    assert {k: evaluated.get(k) for k in env} == env


def test_produce_takes_its_region_from_aws_region_alone(local: dict[str, Any], tmp_path: Path) -> None:
    # As a shell set up for another SDK has it: AWS_REGION only (boto3 alone would say "You must specify a region").
    env = {k: v for k, v in client_env(local).items() if k != "AWS_DEFAULT_REGION"}
    env["PATH"] = os.environ["PATH"]
    readings = tmp_path / "readings.jsonl"
    readings.write_text(json.dumps(reading("region-env", "b", int(time.time() * 1000), 0)) + "\n")
    out = devicepipe(
        {"state_dir": tmp_path},
        "produce",
        "--file",
        str(readings),
        "--stream",
        env["DEVICEPIPE_READINGS_STREAM"],
        "--failed-file",
        str(tmp_path / "failed.jsonl"),
        env=env,
    )
    assert out.returncode == cli.EXIT_OK, out.stderr
    assert out.stdout.startswith("sent 1, failed 0")


def test_a_reader_holding_the_warehouse_across_load_cycles_stops_no_load(local: dict[str, Any]) -> None:
    """A notebook's connection held while readings keep arriving: every cycle runs, none fails, the reader keeps
    answering from its copy, and its next connection sees the new rows."""
    snapshot = client_env(local)["DEVICEPIPE_WAREHOUSE"]
    res = stack.region_resources(local["state"], REGION)
    kinesis = local_clients(local["state"]["endpoint"], REGION, "kinesis")["kinesis"]
    wait_for(lambda: "cycles" in loader_doc(local))
    before = loader_doc(local)
    held = duckdb.connect(snapshot, read_only=True)
    seen = held.execute("SELECT count(*) FROM readings").fetchone()
    # Readings keep arriving while the reader holds its connection: one every 0.2 s until two cycles loaded some.
    stop, sent = threading.Event(), list[dict[str, Any]]()

    def produce() -> None:
        while not stop.wait(0.2):
            doc = reading(f"held-{len(sent) % 7}", "held", int(time.time() * 1000), len(sent))
            kinesis.put_record(StreamName=res.names["ReadingsStream"], Data=encode(doc), PartitionKey=doc["device_id"])
            sent.append(doc)

    producer = threading.Thread(target=produce)
    producer.start()
    loading_cycles: set[int] = set()

    def loaded_twice() -> bool:
        doc = loader_doc(local)
        if doc["last"].get("loaded_objects"):
            loading_cycles.add(doc["cycles"])
        return len(loading_cycles) >= 2

    try:
        wait_for(loaded_twice, timeout_s=90)
    finally:
        stop.set()
        producer.join()
    after = loader_doc(local)
    assert after["cycles"] >= before["cycles"] + 5
    assert (after["errors"], after["snapshot_errors"], after["failing"]) == (before["errors"], 0, False)
    assert held.execute("SELECT count(*) FROM readings").fetchone() == seen  # its copy, as it opened it
    held.close()

    def held_rows_now() -> int:
        with duckdb.connect(snapshot, read_only=True) as con:
            row = con.execute("SELECT count(*) FROM readings WHERE branch_id = 'held'").fetchone()
        return int(row[0]) if row else 0

    wait_for(lambda: held_rows_now() == len(sent))


def test_status_shows_the_loader_and_the_snapshot(local: dict[str, Any]) -> None:
    out = devicepipe(local, "local", "status")
    assert out.returncode == 0, out.stderr
    loader = [line for line in out.stdout.splitlines() if line.startswith("  loader: ")]
    assert loader and "(ok)" in loader[0] and "lag " in loader[0], out.stdout
    assert f"warehouse for readers: {local['state_dir'] / files.WAREHOUSE_SNAPSHOT} (read-only)" in out.stdout
    assert "  reports: " in out.stdout


def test_loads_list_answers_while_a_writer_holds_the_warehouse(local: dict[str, Any]) -> None:
    # Another writer (a `loads reload`, the demo's forced reload) has the loader's file open for 10 s.
    held = threading.Event()

    def hold() -> None:
        with duckdb.connect(str(local["state_dir"] / files.WAREHOUSE)):
            held.set()
            time.sleep(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    started = time.monotonic()
    out = devicepipe(local, "loads", "list", "--local")
    took = time.monotonic() - started
    holder.join()
    assert out.returncode == 0, out.stderr
    assert "loaded: " in out.stdout and took < 8


def test_one_reading_is_timed_to_each_store(local: dict[str, Any]) -> None:
    figures = measure(local["state"], local["state_dir"])
    seconds = figures["seconds"]
    assert list(seconds) == list(STAGES)
    assert all(s is not None for s in seconds.values()), figures
    # Ingest and the cache updater have no batching window; the stager has one, then the loader runs every 2 s.
    assert max(seconds["table"], seconds["cache"]) <= seconds["staging"] <= seconds["warehouse"]
