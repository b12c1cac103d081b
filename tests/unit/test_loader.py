"""Loader planning, the Redshift SQL, failure classification and the Data API adapter (botocore Stubber)."""

from __future__ import annotations

import json

import boto3
import pytest
import sqlglot
from botocore.stub import Stubber

from devicepipe.loader import Loader, Manifest, Source, StagedObject
from devicepipe.retry import Backoff, Deadline
from devicepipe.warehouse import DDL, LoadFailed, RedshiftDataApi, is_retryable, load_statements

US, EU = Source("staging-us", "us-east-1"), Source("staging-eu", "eu-west-1")


def objs(source: Source, sizes: list[int]) -> list[StagedObject]:
    return [
        StagedObject(source, f"readings/origin={source.region}/dt=2026-11-02/hour=09/{i:04d}.jsonl.gz", s)
        for i, s in enumerate(sizes)
    ]


def test_manifests_are_bounded_by_count_and_bytes_and_never_mix_sources() -> None:
    loader = Loader(s3=None, warehouse=None, sources=[US, EU], manifest_bucket="m", max_objects=3, max_bytes=1000)  # type: ignore[arg-type]
    manifests = loader.plan(objs(US, [100] * 7) + objs(EU, [600, 600, 100]))
    assert [(m.source.region, len(m.objects)) for m in manifests] == [
        ("us-east-1", 3),
        ("us-east-1", 3),
        ("us-east-1", 1),
        ("eu-west-1", 1),
        ("eu-west-1", 2),
    ]
    assert all(sum(o.size for o in m.objects) <= 1000 for m in manifests)


def test_manifest_names_and_documents_are_deterministic() -> None:
    a = Manifest(US, tuple(objs(US, [10, 20])))
    b = Manifest(US, tuple(objs(US, [10, 20])))
    assert a.key == b.key and a.key.startswith("manifests/us-east-1/")
    doc = json.loads(a.document())
    assert doc["entries"][0] == {"url": a.objects[0].url, "mandatory": True, "meta": {"content_length": 10}}


def test_every_statement_parses_as_redshift() -> None:
    statements = DDL + load_statements(
        "s3://b/manifests/m.json",
        "manifests/m.json",
        ["s3://b/readings/x.jsonl.gz"],
        "arn:aws:iam::1:role/copy",
        "us-east-1",
    )
    for sql in statements:
        assert sqlglot.parse_one(sql, read="redshift") is not None, sql
    assert statements[len(DDL)] == "LOCK load_ledger"  # the transaction starts by serialising loaders
    copy = next(s for s in statements if s.startswith("COPY"))
    for option in (
        "FORMAT JSON 'auto'",
        "GZIP",
        "MANIFEST",
        "IAM_ROLE 'arn:aws:iam::1:role/copy'",
        "REGION 'us-east-1'",
    ):
        assert option in copy


@pytest.mark.parametrize(
    ("message", "retryable"),
    [
        ("Cluster is paused", True),
        ("ThrottlingException: Rate exceeded", True),
        ("ActiveStatementsExceededException", True),
        ("Load into table 'stage' failed. Check 'sys_load_error_detail' system table for details.", False),
        ("Invalid JSONPath format", False),
    ],
)
def test_failures_are_classified(message: str, retryable: bool) -> None:
    assert is_retryable(message) is retryable


def data_api() -> tuple[RedshiftDataApi, Stubber]:
    client = boto3.client("redshift-data", region_name="us-east-1")
    api = RedshiftDataApi(client, "warehouse", "devicepipe", backoff=Backoff(base_s=0.0), sleep=lambda _: None)
    return api, Stubber(client)


def test_a_load_is_one_batch_polled_to_completion() -> None:
    api, stub = data_api()
    stub.add_response(
        "batch_execute_statement",
        {"Id": "s-1"},
        {"WorkgroupName": "warehouse", "Database": "devicepipe", "Sqls": ["A", "B"]},
    )
    stub.add_response("describe_statement", {"Id": "s-1", "Status": "STARTED"}, {"Id": "s-1"})
    stub.add_response("describe_statement", {"Id": "s-1", "Status": "FINISHED"}, {"Id": "s-1"})
    with stub:
        api.execute(["A", "B"])
    stub.assert_no_pending_responses()


def test_a_failed_copy_reports_file_line_column_and_reason() -> None:
    api, stub = data_api()
    stub.add_response("batch_execute_statement", {"Id": "s-2"})
    stub.add_response(
        "describe_statement",
        {
            "Id": "s-2",
            "Status": "FAILED",
            "Error": "Load into table 'stage' failed.",
            "SubStatements": [{"Id": "s-2:3", "Status": "FAILED", "RedshiftQueryId": 4242}],
        },
    )
    stub.add_response("execute_statement", {"Id": "q-1"})
    stub.add_response("describe_statement", {"Id": "q-1", "Status": "FINISHED"})
    stub.add_response(
        "get_statement_result",
        {
            "Records": [
                [
                    {"stringValue": "s3://b/readings/x.jsonl.gz"},
                    {"longValue": 17},
                    {"stringValue": "ts"},
                    {"stringValue": "Invalid timestamp format"},
                ]
            ],
            "ColumnMetadata": [],
            "TotalNumRows": 1,
        },
    )
    with stub, pytest.raises(LoadFailed) as info:
        api.execute(["COPY ..."])
    assert not info.value.retryable
    assert info.value.errors == [
        {"file": "s3://b/readings/x.jsonl.gz", "line": 17, "column": "ts", "reason": "Invalid timestamp format"}
    ]


def test_a_statement_near_the_timeout_is_cancelled_and_retryable() -> None:
    api, stub = data_api()
    api.deadline = Deadline(lambda: 500, reserve_ms=0)
    stub.add_response("batch_execute_statement", {"Id": "s-3"})
    stub.add_response("describe_statement", {"Id": "s-3", "Status": "STARTED"})
    stub.add_response("cancel_statement", {"Status": True}, {"Id": "s-3"})
    with stub, pytest.raises(LoadFailed) as info:
        api.execute(["COPY ..."])
    assert info.value.retryable and "cancelled" in str(info.value)
