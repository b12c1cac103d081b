"""The producer, `devicepipe invoke` and the event source mapping against a running local stack."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devicepipe_tools import cli
from devicepipe_tools.events import encode, reading, sample_events
from devicepipe_tools.fakes import FaultyKinesis
from devicepipe_tools.local import stack
from devicepipe_tools.local.resources import clients as local_clients
from devicepipe_tools.producer import Entry, FailureFile, Producer
from devicepipe_tools.template import ROOT, load_template
from tests.integration.stack_helpers import stored_readings, wait_for

pytestmark = pytest.mark.integration
REGION = "us-east-1"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("stack")
    state = stack.up((REGION,), state_dir)
    res = stack.region_resources(state, REGION)
    clients = local_clients(state["endpoint"], REGION, "kinesis", "dynamodb", "s3")
    try:
        yield {"state_dir": state_dir, "res": res, **clients}
    finally:
        stack.down(state_dir)


def stream_records(local: dict[str, Any]) -> list[bytes]:
    """Every record in the stream, read straight from Kinesis."""
    kinesis, name = local["kinesis"], local["res"].names["ReadingsStream"]
    out = []
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        it = kinesis.get_shard_iterator(StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
        iterator = it["ShardIterator"]
        while True:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            out += [r["Data"] for r in page["Records"]]
            if not page["Records"]:
                break
            iterator = page["NextShardIterator"]
    return out


def stored_devices(local: dict[str, Any], prefix: str) -> set[str]:
    return stored_readings(local["dynamodb"], local["res"].names["ReadingsTable"], prefix)


def test_simulated_readings_flow_from_the_cli_to_the_table(local: dict[str, Any], tmp_path: Path) -> None:
    # Given the running stack, When the CLI simulates 300 readings
    code = cli.main(
        [
            "produce",
            "--local",
            "--simulate",
            "--count",
            "300",
            "--devices",
            "30",
            "--branches",
            "3",
            "--state-dir",
            str(local["state_dir"]),
            "--failed-file",
            str(tmp_path / "failed.jsonl"),
        ]
    )
    # Then the run succeeds and the ingest mapping stores every reading
    assert code == cli.EXIT_OK
    wait_for(lambda: len(stored_devices(local, "dev-")) >= 300)
    assert len(stored_devices(local, "dev-")) == 300
    assert not (tmp_path / "failed.jsonl").exists()


def test_partial_failures_retry_only_the_failed_entries(local: dict[str, Any], tmp_path: Path) -> None:
    # Given Kinesis rejecting every other record of the first three PutRecords calls
    faulty = FaultyKinesis(local["kinesis"], partial_calls=3)
    failures = FailureFile(str(tmp_path / "failed.jsonl"))
    producer = Producer(faulty, local["res"].names["ReadingsStream"], failures, max_in_flight=4)
    docs = [reading(f"pf-{i % 17:03d}", "pf-branch", 1_793_610_000_000 + i, i) for i in range(1_200)]
    # When the producer sends them
    progress = producer.send(Entry(encode(d), d["device_id"], [str(i)]) for i, d in enumerate(docs))
    # Then faults were injected and retried, and the stream holds every record exactly once
    assert faulty.failed_entries > 0 and progress.retried == faulty.failed_entries
    assert (progress.sent, progress.failed) == (1_200, 0)
    ours = [json.loads(r) for r in stream_records(local) if r.startswith(b'{"device_id":"pf-')]
    assert sorted(doc["seq"] for doc in ours) == list(range(1_200))
    wait_for(lambda: len(stored_devices(local, "pf-")) >= 1_200)


def test_records_that_cannot_be_sent_are_written_with_their_reason(local: dict[str, Any], tmp_path: Path) -> None:
    faulty = FaultyKinesis(local["kinesis"], always_fail=True)
    failures = FailureFile(str(tmp_path / "failed.jsonl"))
    producer = Producer(faulty, local["res"].names["ReadingsStream"], failures, deadline_s=0.5)
    progress = producer.send(
        Entry(encode(reading("gone", "b", 1_793_610_000_000, i)), "gone", [f"r{i}"]) for i in range(5)
    )
    failures.close()
    assert (progress.sent, progress.failed) == (0, 5)
    lines = [json.loads(line) for line in (tmp_path / "failed.jsonl").read_text().splitlines()]
    assert sorted(line["ref"] for line in lines) == ["r0", "r1", "r2", "r3", "r4"]
    assert all(
        line["reason"].startswith("gave up after") and "ProvisionedThroughputExceeded" in line["reason"]
        for line in lines
    )


def test_invalid_input_lines_are_reported_and_skipped(local: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    src = tmp_path / "readings.jsonl"
    good = [json.dumps(reading(f"in-{i}", "b", 1_793_610_000_000, i)) for i in range(3)]
    src.write_text("\n".join([good[0], "{broken", good[1], '{"device_id": "x"}', "", good[2]]) + "\n")
    args = ["produce", "--local", "--file", str(src), "--state-dir", str(local["state_dir"])]
    assert cli.main(args) == cli.EXIT_INPUT
    err = capsys.readouterr().err
    assert "line 2: invalid JSON" in err and "line 4: branch_id: required" in err
    wait_for(lambda: len(stored_devices(local, "in-")) >= 3)
    # And with --strict the run stops at the first invalid line
    assert cli.main([*args, "--strict"]) == cli.EXIT_INPUT
    assert "stopped at the first invalid line" in capsys.readouterr().out


def test_usage_errors_exit_2(local: dict[str, Any], tmp_path: Path) -> None:
    assert (
        cli.main(
            ["produce", "--file", str(tmp_path / "missing.jsonl"), "--local", "--state-dir", str(local["state_dir"])]
        )
        == cli.EXIT_USAGE
    )
    assert (
        cli.main(["produce", "--simulate", "--count", "1", "--local", "--state-dir", str(tmp_path)]) == cli.EXIT_USAGE
    )
    assert cli.main(["produce", "--simulate", "--count", "1"]) == cli.EXIT_USAGE  # no --stream


def function_of(event_path: str) -> str:
    """The function whose code folder names the event's folder (events/<folder>/ -> functions/<folder>/)."""
    folder = event_path.split("/", maxsplit=1)[0]
    (logical_id,) = (
        k
        for k, v in load_template()["Resources"].items()
        if v["Type"] == "AWS::Serverless::Function" and v["Properties"]["CodeUri"].rstrip("/").endswith(folder)
    )
    return str(logical_id)


# LoaderFunction's handler needs the Redshift Data API, which moto accepts but never completes: its sample
# events run through the handler on the local warehouse in tests/integration/test_loader.py instead. The read
# API's answer HTTP responses, each with its own status: tests/integration/test_read_api.py runs every one.
@pytest.mark.parametrize(
    "event",
    sorted(
        rel
        for rel in sample_events()
        # the loader's and the report function's need the Redshift Data API (the stack runs their logic on DuckDB)
        if not rel.startswith(("loader/", "read_api/", "reports/"))
    ),
)
def test_every_sample_event_runs_through_its_function(local: dict[str, Any], event: str, capfd: Any) -> None:
    code = cli.main(
        [
            "invoke",
            function_of(event),
            "--event",
            str(ROOT / "events" / event),
            "--local",
            "--state-dir",
            str(local["state_dir"]),
        ]
    )
    out = capfd.readouterr().out
    assert code == cli.EXIT_OK
    response = json.loads(out[out.index("{\n") :])
    assert response == {"batchItemFailures": []}


def test_status_reports_the_mapping(local: dict[str, Any], capsys: Any) -> None:
    assert cli.main(["local", "status", "--state-dir", str(local["state_dir"])]) == cli.EXIT_OK
    assert "us-east-1/IngestEventSourceMapping" in capsys.readouterr().out


def test_kpl_aggregated_records_are_deaggregated_and_stored(local: dict[str, Any], tmp_path: Path) -> None:
    # Given a producer that KPL-aggregates per shard
    producer = Producer(local["kinesis"], local["res"].names["ReadingsStream"], lambda *_: None, aggregate=True)
    producer.check_stream()
    docs = [reading(f"kpl-{i % 13:02d}", "kpl-branch", 1_793_610_000_000 + i, i) for i in range(700)]
    # When it sends 700 readings
    progress = producer.send(Entry(encode(d), d["device_id"], [str(i)]) for i, d in enumerate(docs))
    # Then they travel in far fewer Kinesis records, and the ingest stores every one of them
    assert progress.sent == 700
    assert progress.calls < 10
    wait_for(lambda: len(stored_devices(local, "kpl-")) >= 700)
    assert len(stored_devices(local, "kpl-")) == 700


def test_the_stack_provides_a_redis_that_answers(local: dict[str, Any]) -> None:
    import redis

    state = stack.read_state(local["state_dir"])
    assert state["redis_kind"] in ("redis-server", "fakeredis", "external")
    assert redis.Redis.from_url(state["redis_url"]).ping()


def test_invoke_without_local_needs_the_deployed_names(
    local: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    event = str(ROOT / "events" / "ingest" / "valid-batch.json")
    # Without --local and without --env-vars the missing deployed names are named
    assert cli.main(["invoke", "IngestFunction", "--event", event]) == cli.EXIT_USAGE
    assert "QUARANTINE_BUCKET" in capfd.readouterr().err
    # With --env-vars it runs against "AWS" (here the stack's moto server, through AWS_ENDPOINT_URL)
    env_vars = tmp_path / "env.json"
    env_vars.write_text(json.dumps({"IngestFunction": {"QUARANTINE_BUCKET": local["res"].names["QuarantineBucket"]}}))
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.read_state(local["state_dir"])["endpoint"])
    code = cli.main(["invoke", "IngestFunction", "--event", event, "--env-vars", str(env_vars), "--region", REGION])
    out = capfd.readouterr().out
    assert code == cli.EXIT_OK
    assert json.loads(out[out.index("{\n") :]) == {"batchItemFailures": []}


def test_the_stack_loads_the_warehouse_and_loads_lists_it(local: dict[str, Any], capsys: Any) -> None:
    # Readings produced by the tests above were staged; the stack's scheduled loader puts them in DuckDB
    def loaded() -> bool:
        path = local["state_dir"] / "loader.json"
        return path.exists() and int(json.loads(path.read_text())["objects_loaded"]) > 0

    wait_for(loaded, 120)  # the stager batches for up to 30 s
    doc = json.loads((local["state_dir"] / "loader.json").read_text())
    assert 1 <= doc["copy_files"] <= doc["objects_loaded"]  # the loads read joined files (devicepipe.compaction)
    assert cli.main(["loads", "list", "--local", "--state-dir", str(local["state_dir"])]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "loaded: " in out and "quarantined: 0 objects" in out
    assert (
        cli.main(
            [
                "invoke",
                "LoaderFunction",
                "--event",
                str(ROOT / "events" / "loader" / "scheduled.json"),
                "--local",
                "--state-dir",
                str(local["state_dir"]),
            ]
        )
        == cli.EXIT_USAGE
    )
