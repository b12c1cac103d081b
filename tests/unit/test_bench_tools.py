"""The benchmarks' own tools: the HTTP-layer stub for real boto3 clients, alternating windows, import reports."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import boto3
import pytest

from benchmarks.aws_stub import dynamodb_writes, s3_puts, stub, stubbed_client
from benchmarks.bench_coldstart import MODES, beyond_floor, import_s, layer_modules
from benchmarks.bench_ingest import windowed_many


def test_a_rest_xml_client_is_answered_in_the_process() -> None:
    requests: list[Any] = []

    def answer(operation: str, request: Any) -> tuple[dict[str, str], bytes]:
        requests.append(request)
        return s3_puts(operation, request)

    s3 = stubbed_client("s3", answer)
    response = s3.put_object(Bucket="staging", Key="readings/a.jsonl.gz", Body=b"rows", ContentType="application/gzip")
    assert response["ETag"] == '"bench"'
    assert s3.calls == {"PutObject": 1}
    assert requests[0].method == "PUT" and requests[0].url.endswith("/readings/a.jsonl.gz")


def test_a_json_client_answers_with_latency_and_counts_by_operation() -> None:
    dynamodb = stubbed_client("dynamodb", dynamodb_writes, parse_body=False, latency_s=0.02)
    started = time.perf_counter()
    dynamodb.put_item(TableName="t", Item={"pk": {"S": "a"}})
    assert time.perf_counter() - started >= 0.02
    assert dynamodb.calls == {"PutItem": 1}


def test_stub_takes_a_client_as_built() -> None:
    client = stub(boto3.client("dynamodb"), dynamodb_writes, parse_body=False)
    client.batch_write_item(RequestItems={"t": [{"PutRequest": {"Item": {"pk": {"S": "a"}}}}]})
    assert client.calls == {"BatchWriteItem": 1}


def test_windowed_many_gives_each_subject_its_best_and_ratios_per_window() -> None:
    floor_s, subjects = windowed_many(0.2, 0.1, lambda: sum(range(2_000)), lambda: sum(range(20_000)), lambda: None)
    assert floor_s > 0
    (slow_s, slow_ratios), (none_s, _) = subjects
    assert slow_s > floor_s > none_s
    assert slow_ratios and all(r > 1 for r in slow_ratios)


def test_beyond_floor_counts_only_what_came_after_boto3() -> None:
    report = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:      5000 |       5000 |   botocore",
            "import time:       100 |       5100 | boto3",
            "import time:     30000 |      30000 |     redis.asyncio",
            "import time:      2000 |      32000 |   redis",
            "import time:      4000 |       4000 |   devicepipe.cache",
            "import time:       500 |      36500 | functions.cache_updater.app",
        ]
    )
    assert beyond_floor(report) == [("redis", 0.032), ("devicepipe", 0.004), ("functions", 0.0005)]


def test_the_cold_start_child_imports_only_what_lambda_has() -> None:
    # The layer's requirements and what they require (pg8000 -> scramp, powertools[tracer] -> aws-xray-sdk)
    assert {"boto3", "botocore", "aws_lambda_powertools", "aws_xray_sdk", "redis", "scramp", "devicepipe"} <= set(
        layer_modules()
    )
    # Not what only this environment has: botocore would sign with awscrt, X-Ray would patch requests
    assert not {"awscrt", "OpenSSL", "requests", "moto", "pytest"} & set(layer_modules())
    assert import_s("json", MODES["tracing off"])[0] > 0
    with pytest.raises(subprocess.CalledProcessError):
        import_s("requests", MODES["tracing off"])
