"""The local stack under process faults (issue 16): workers killed and restarted from their checkpoints, the
supervisor killed, a second `local up` over what is left, `local down` after a crash, stacks that cannot start."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devicepipe_tools import cli
from devicepipe_tools.events import encode, reading
from devicepipe_tools.local import files, stack
from devicepipe_tools.local.net import free_port
from devicepipe_tools.local.resources import clients as local_clients
from tests.integration.stack_helpers import stored_readings, wait_for

pytestmark = pytest.mark.integration
REGION = "us-east-1"


# ------------------------------------------------------------------------------------------- helpers
def session_members(sid: int) -> list[str]:
    """The live processes of session ``sid`` (a stack's supervisor starts one: all it starts stays in it)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, NotADirectoryError):
            continue
        fields = stat.rsplit(") ", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(f"{entry.name} {stat.split(' (', 1)[1].split(') ', 1)[0]}")
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][0] != "Z"


def start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])


def worker_pid(state_dir: Path, function: str) -> int:
    """The live worker process of ``function`` in the stack of ``state_dir``, by its command line; 0 if none."""
    wanted = [
        "devicepipe_tools.local.worker",
        "--state-dir",
        str(state_dir),
        "--region",
        REGION,
        "--function",
        function,
    ]
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, NotADirectoryError):
            continue
        if command[2:-1] == wanted and alive(int(entry.name)):
            return int(entry.name)
    return 0


def put(kinesis: Any, stream: str, prefix: str, n: int) -> None:
    for start in range(0, n, 250):
        docs = [reading(f"{prefix}-{i % 10}", "b", 1_793_610_000_000 + i, i) for i in range(start, min(n, start + 250))]
        records = [{"Data": encode(d), "PartitionKey": d["device_id"]} for d in docs]
        assert not kinesis.put_records(StreamName=stream, Records=records)["FailedRecordCount"]


def ingest(state_dir: Path) -> dict[str, Any]:
    stats: dict[str, Any] = stack.mapping_stats(state_dir)[f"{REGION}/IngestEventSourceMapping"]
    return stats


@pytest.fixture
def local(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A stack of the test's own: the tests below kill its processes."""
    state_dir = tmp_path
    state = stack.up((REGION,), state_dir)
    res = stack.region_resources(state, REGION)
    try:
        yield {
            "state_dir": state_dir,
            "state": state,
            "res": res,
            **local_clients(state["endpoint"], REGION, "kinesis", "dynamodb"),
        }
    finally:
        stack.down(state_dir)


# ------------------------------------------------------------------------------------------- a killed worker
def test_a_killed_worker_is_restarted_and_resumes_from_its_checkpoint(local: dict[str, Any]) -> None:
    state_dir, stream = local["state_dir"], local["res"].names["ReadingsStream"]
    table = local["res"].names["ReadingsTable"]
    put(local["kinesis"], stream, "ck", 300)
    wait_for(lambda: len(stored_readings(local["dynamodb"], table, "ck-")) == 300)
    wait_for(lambda: ingest(state_dir)["drained"])
    done_before = ingest(state_dir)["records_done"]
    worker = worker_pid(state_dir, "IngestFunction")
    # When the ingest worker is killed while idle, and readings arrive while it is down
    os.kill(worker, signal.SIGKILL)
    put(local["kinesis"], stream, "ck2", 200)
    # Then the supervisor starts it again, the stack stays up, and the new worker handles what arrived, and only
    # that: it resumed after its predecessor's last batch instead of the stream's start
    wait_for(lambda: worker_pid(state_dir, "IngestFunction") not in (0, worker), 30)
    wait_for(lambda: len(stored_readings(local["dynamodb"], table, "ck2-")) == 200)
    wait_for(lambda: ingest(state_dir)["records_done"] >= done_before + 200)
    time.sleep(1.5)  # a worker replaying the stream from its start would go on counting
    assert ingest(state_dir)["records_done"] == done_before + 200
    assert stack.read_state(state_dir)["ready"]
    # And killed in the middle of a burst, it loses nothing of it (at least once: the handler is idempotent)
    put(local["kinesis"], stream, "ck3", 1_000)
    os.kill(worker_pid(state_dir, "IngestFunction"), signal.SIGKILL)
    wait_for(lambda: len(stored_readings(local["dynamodb"], table, "ck3-")) == 1_000, 60)
    restarts = {p["name"]: p["restarts"] for p in stack.read_state(state_dir)["processes"]}
    assert restarts[f"worker {REGION}/IngestFunction"] == 2
    assert "(worker us-east-1/IngestFunction 2)" in stack.process_lines(stack.read_state(state_dir))[0]
    killed = r"worker us-east-1/IngestFunction: pid \d+ killed by SIGKILL after [\d.]+ s; restarting it in [\d.]+ s"
    assert len(re.findall(killed, (state_dir / files.STACK_LOG).read_text())) == 2


# ------------------------------------------------------------------------------------------- a killed supervisor
def test_a_killed_supervisor_takes_every_process_of_the_stack_with_it(local: dict[str, Any]) -> None:
    state_dir = local["state_dir"]
    state = stack.read_state(state_dir)
    supervisor = state["pid"]
    # (PostgreSQL's own processes make sessions of their own: they end when their server does.)
    started = sorted(member.split()[1] for member in session_members(supervisor))
    assert started == ["postgres", *["python"] * 6, "redis-server"]  # with 3 workers, the loader, the read API
    # When the supervisor is killed
    os.kill(supervisor, signal.SIGKILL)
    # Then every process it started ends with it: workers, loader, API, redis-server, postgres and its processes
    wait_for(lambda: not session_members(supervisor), 10)
    # And `local status` says the stack is gone rather than reading what orphans would have left
    with pytest.raises(stack.StackError, match=r"is gone: see .*stack.log, then `local up`"):
        stack.read_state(state_dir)
    # And a new `local up` in the same directory starts a fresh stack over the dead one's leftovers
    again = stack.up((REGION,), state_dir)
    try:
        assert again["pid"] != supervisor
        assert not Path(state["registry_dir"]).exists()  # the dead stack's registry was removed
    finally:
        assert stack.down(state_dir)
    assert not session_members(again["pid"])


# ------------------------------------------------------------------------------------------- half-dead stacks
@pytest.fixture
def half_dead(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A state directory whose supervisor is dead while one of its recorded processes still runs."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    entry = {"name": f"worker {REGION}/IngestFunction", "pid": orphan.pid, "start": start_ticks(orphan.pid)}
    state = {"pid": dead.pid, "pid_start": 1, "ready": True, "regions": {}, "processes": [{**entry, "restarts": 0}]}
    (tmp_path / files.STATE).write_text(json.dumps(state))
    try:
        yield {"state_dir": tmp_path, "orphan": orphan, "supervisor": dead.pid}
    finally:
        orphan.kill()
        orphan.wait()


def test_up_refuses_a_half_dead_stack_and_says_how_to_end_it(half_dead: dict[str, Any], capsys: Any) -> None:
    state_dir, orphan = half_dead["state_dir"], half_dead["orphan"]
    before = (state_dir / files.STATE).read_text()
    code = cli.main(["local", "up", "--state-dir", str(state_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_USAGE
    assert err == [
        f"devicepipe: the local stack's supervisor (pid {half_dead['supervisor']}) is gone, but 1 of its processes "
        f"still run (pids {orphan.pid}): `devicepipe local down --state-dir {state_dir}` ends them"
    ]
    assert (state_dir / files.STATE).read_text() == before  # nothing started, nothing overwritten
    assert not (state_dir / files.STACK_LOG).exists()
    # `local status` says the same, rather than showing the orphans' statistics
    assert cli.main(["local", "status", "--state-dir", str(state_dir)]) == cli.EXIT_USAGE
    assert "`devicepipe local down --state-dir" in capsys.readouterr().err


def test_down_ends_what_a_killed_supervisor_left_by_its_recorded_ids(half_dead: dict[str, Any]) -> None:
    state_dir, orphan = half_dead["state_dir"], half_dead["orphan"]
    assert stack.down(state_dir)
    assert orphan.wait(timeout=10) == -signal.SIGTERM
    assert not (state_dir / files.STATE).exists()
    assert not stack.down(state_dir)


def test_down_never_signals_a_process_that_merely_got_a_recorded_pid(tmp_path: Path) -> None:
    # A recorded pid now used by another process (its start time differs) is not ours: it is left alone.
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        entry = {"name": "loader", "pid": stranger.pid, "start": start_ticks(stranger.pid) - 1, "restarts": 0}
        state = {"pid": stranger.pid, "pid_start": start_ticks(stranger.pid) - 1, "processes": [entry]}
        (tmp_path / files.STATE).write_text(json.dumps(state))
        assert stack.down(tmp_path, timeout_s=1)
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


# ------------------------------------------------------------------------------------------- stacks that cannot start
def test_an_unknown_region_fails_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    command = ["local", "up", "--regions", "us-east-1,mars-1", "--state-dir", str(tmp_path / "stack")]
    out = subprocess.run(
        [sys.executable, "-m", "devicepipe_tools.cli", *command],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == cli.EXIT_USAGE
    assert out.stderr.strip().splitlines() == ["devicepipe: not an AWS region: mars-1 (e.g. us-east-1, eu-west-1)"]
    assert not (tmp_path / "stack").exists()


def test_no_postgresql_fails_in_one_line_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from devicepipe_tools.local.postgres import PostgresUnavailable

    def missing() -> None:
        raise PostgresUnavailable("no PostgreSQL found: install Debian's postgresql (apt-get install postgresql)")

    monkeypatch.delenv("REGISTRY_URL", raising=False)
    monkeypatch.setattr(stack, "find_binaries", missing)
    assert cli.main(["local", "up", "--state-dir", str(tmp_path / "stack")]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip().splitlines() == [
        "devicepipe: no PostgreSQL found: install Debian's postgresql (apt-get install postgresql)"
    ]
    assert not (tmp_path / "stack").exists()


def test_a_stack_that_fails_after_starting_some_of_it_says_why_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis starts, then the registry (an external one, here unreachable) fails the start.
    monkeypatch.setenv("REGISTRY_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/devicepipe")
    started: list[int] = []

    class Recorded(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self.pid)

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    with pytest.raises(stack.StackError) as failed:
        stack.up((REGION,), tmp_path, timeout_s=60)
    message = str(failed.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("the local stack failed to start: ") and "127.0.0.1" in message, message
    (supervisor,) = started
    assert not session_members(supervisor)  # redis-server was stopped with the rest
    assert not (tmp_path / files.STATE).exists()


# ------------------------------------------------------------------------------------------- giving up
def test_a_process_that_keeps_dying_is_restarted_with_backoff_then_given_up_loudly(tmp_path: Path) -> None:
    from devicepipe.retry import Backoff
    from devicepipe_tools.local.supervisor import ChildSpec, Supervisor

    said: list[str] = []
    supervisor = Supervisor(said.append, Backoff(base_s=0.05, cap_s=1.0, max_attempts=4), settle_s=5)
    supervisor.start(ChildSpec("worker x/Broken", [sys.executable, "-c", "import sys; sys.exit(3)"]))
    starts = [time.monotonic()]
    while not supervisor.gave_up() and time.monotonic() - starts[0] < 30:
        if supervisor.poll() and supervisor.children["worker x/Broken"].proc:
            starts.append(time.monotonic())
        time.sleep(0.01)
    pauses = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 4 and supervisor.children["worker x/Broken"].restarts == 3
    assert pauses[0] < pauses[1] < pauses[2]  # 0.1, 0.2, 0.4 s after each start's exit
    reason = "ended 4 times in a row within 5 s of starting (last: pid "
    assert said[-1].startswith(f"GAVE UP on worker x/Broken: it {reason}")
    assert said[-1].endswith("the stack runs on without it")
    assert supervisor.processes()[0]["gave_up"].startswith(reason)
    # `local status` shows it, and waiting for the stack to settle fails at once instead of timing out
    state = {
        "pid": os.getpid(),
        "pid_start": start_ticks(os.getpid()),
        "ready": True,
        "regions": {REGION: {}},
        "processes": supervisor.processes(),
    }
    (tmp_path / files.STATE).write_text(json.dumps(state))
    assert stack.process_lines(state)[1].startswith(f"  GAVE UP on worker x/Broken: it {reason}")
    with pytest.raises(stack.StackError, match="gave up on worker x/Broken"):
        stack.settled(tmp_path)


def test_a_process_that_can_no_longer_be_started_is_given_up_and_the_supervisor_goes_on(tmp_path: Path) -> None:
    from devicepipe.retry import Backoff
    from devicepipe_tools.local.supervisor import ChildSpec, Supervisor

    program = tmp_path / "worker.sh"
    program.write_text("#!/bin/sh\nexit 1\n")
    program.chmod(0o755)
    said: list[str] = []
    supervisor = Supervisor(said.append, Backoff(base_s=0.01, cap_s=0.1, max_attempts=3), settle_s=5)
    supervisor.start(ChildSpec("worker x/Gone", [str(program)]))
    program.unlink()  # e.g. a virtualenv rebuilt under the running stack
    deadline = time.monotonic() + 10
    while not supervisor.gave_up() and time.monotonic() < deadline:
        supervisor.poll()
        time.sleep(0.01)
    assert supervisor.gave_up()["worker x/Gone"].startswith("ended 3 times in a row")
    assert "could not start: [Errno 2] No such file or directory" in said[-1]


# ------------------------------------------------------------------------------------------- checkpoints
def test_a_restarted_mapping_resumes_after_its_checkpoint_and_first_redelivers_the_batch_in_flight(
    tmp_path: Path,
) -> None:
    from devicepipe_tools.local.esm import Checkpoints, EventSourceMapping, KinesisSource, MappingSpec

    with mock_aws():
        kinesis = boto3.client("kinesis", region_name=REGION)
        kinesis.create_stream(StreamName="s", ShardCount=1)
        arn = kinesis.describe_stream(StreamName="s")["StreamDescription"]["StreamARN"]

        def put_docs(ns: range) -> None:
            for n in ns:
                kinesis.put_record(StreamName="s", Data=json.dumps({"n": n}).encode(), PartitionKey="k")

        batches: list[list[int]] = []

        def handler(fail_from: int | None) -> Any:
            def invoke(event: dict[str, Any]) -> dict[str, Any]:
                ns = [json.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in event["Records"]]
                batches.append(ns)
                if fail_from is not None and ns[-1] >= fail_from:
                    raise RuntimeError("the function fails")
                return {"batchItemFailures": []}

            return invoke

        def worker(fail_from: int | None, until: int) -> EventSourceMapping:
            mapping = EventSourceMapping(
                MappingSpec("M", "fn", arn, batch_size=100),
                KinesisSource(kinesis, arn, REGION),
                handler(fail_from),
                lambda *_: None,
                poll_interval_s=0.01,
                retry_base_s=0.001,
                checkpoints=Checkpoints(tmp_path / "M.json"),
            )
            mapping.start()
            wait_for(lambda: len(batches) >= until, 10)
            mapping.stop()  # as a kill would: nothing more is written once it is gone
            return mapping

        # A first worker handles 10 records, then fails on the next 5 until it is stopped (killed)
        put_docs(range(10))
        worker(fail_from=None, until=1)
        put_docs(range(10, 15))
        worker(fail_from=10, until=3)
        assert batches[0] == list(range(10)) and batches[1:3] == [list(range(10, 15))] * 2
        # Meanwhile 5 more records arrive; the restarted worker first delivers the batch in flight as it was (the
        # stager keys its object by the batch), then the rest, and never the 10 handled before
        put_docs(range(15, 20))
        batches.clear()
        restarted = worker(fail_from=None, until=2)
        assert batches == [list(range(10, 15)), list(range(15, 20))]
        # And it counts on from its predecessors' counters, as checkpointed with the positions
        assert restarted.stats.records_done == 20
