"""Both regions on the local stack: producer region failover (replication between them is not emulated yet)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devicepipe_tools import cli
from devicepipe_tools.events import encode, reading
from devicepipe_tools.fakes import FaultyKinesis
from devicepipe_tools.local import stack
from devicepipe_tools.local.resources import clients as local_clients
from devicepipe_tools.producer import Entry, Producer
from tests.integration.stack_helpers import stored_readings, wait_for

pytestmark = pytest.mark.integration
US, EU = "us-east-1", "eu-west-1"


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("two-regions")
    state = stack.up((US, EU), state_dir)
    try:
        yield {
            "state_dir": state_dir,
            **{
                r: {
                    "res": stack.region_resources(state, r),
                    **local_clients(state["endpoint"], r, "kinesis", "dynamodb"),
                }
                for r in (US, EU)
            },
        }
    finally:
        stack.down(state_dir)


def devices_stored(both: dict[str, Any], region: str, prefix: str) -> set[str]:
    return stored_readings(both[region]["dynamodb"], both[region]["res"].names["ReadingsTable"], prefix)


def test_readings_fail_over_to_the_healthy_region_none_lost_none_doubled(both: dict[str, Any]) -> None:
    # Given us-east-1's stream failing every put and eu-west-1 healthy
    broken = FaultyKinesis(both[US]["kinesis"], always_fail=True)
    producer = Producer(
        broken,
        both[US]["res"].names["ReadingsStream"],
        lambda *_: None,
        failover_after_s=0.2,
        fallbacks=[(both[EU]["kinesis"], both[EU]["res"].names["ReadingsStream"])],
    )
    docs = [reading(f"fo-{i % 11:02d}", "fo-branch", 1_793_610_000_000 + i, i) for i in range(900)]
    # When the producer sends
    progress = producer.send(Entry(encode(d), d["device_id"], [str(i)]) for i, d in enumerate(docs))
    # Then every reading went to eu-west-1, which stored each once, and replication brought each to us-east-1
    assert (progress.sent, progress.failed) == (900, 0) and progress.failed_over > 0
    wait_for(lambda: len(devices_stored(both, EU, "fo-")) >= 900 and len(devices_stored(both, US, "fo-")) >= 900)
    assert devices_stored(both, EU, "fo-") == devices_stored(both, US, "fo-")
    assert len(devices_stored(both, EU, "fo-")) == 900


def test_the_cli_prefers_the_first_region_when_it_is_healthy(both: dict[str, Any], tmp_path: Any) -> None:
    def ingested(region: str) -> int:
        done: int = stack.mapping_stats(both["state_dir"])[f"{region}/IngestEventSourceMapping"]["records_done"]
        return done

    wait_for(lambda: all(s["drained"] for s in stack.mapping_stats(both["state_dir"]).values()))
    before = {r: ingested(r) for r in (US, EU)}
    code = cli.main(
        [
            "produce",
            "--local",
            "--regions",
            f"{US},{EU}",
            "--simulate",
            "--count",
            "200",
            "--devices",
            "7",
            "--state-dir",
            str(both["state_dir"]),
            "--failed-file",
            str(tmp_path / "f.jsonl"),
        ]
    )
    assert code == cli.EXIT_OK
    wait_for(lambda: ingested(US) >= before[US] + 200)
    assert ingested(EU) == before[EU]
