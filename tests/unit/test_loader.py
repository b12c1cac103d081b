"""Loader planning, the Redshift SQL, failure classification and the Data API adapter (botocore Stubber)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import duckdb
import pytest
import sqlglot
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from devicepipe.compaction import Sizing
from devicepipe.config import ConfigError, LoaderSettings
from devicepipe.loader import LATE_ARRIVAL_S, CrossRegionStaging, Loader, Manifest, Source, StagedObject
from devicepipe.retry import Backoff, Deadline, Retrier
from devicepipe.staging import Stager
from devicepipe.streams import changes
from devicepipe.warehouse import (
    DDL,
    LoadFailed,
    RedshiftDataApi,
    api_error_retryable,
    load_statements,
    loaded_keys_query,
    statement_retryable,
    watermark_statements,
    watermarks_query,
)
from devicepipe_tools import redshift_rules
from devicepipe_tools.events import insert_batch

#: The primary region's staging bucket: its own readings and, replicated in, the secondary region's.
US, EU = Source("staging-us", "us-east-1"), Source("staging-eu", "eu-west-1")


def objs(source: Source, sizes: list[int], origin: str = "") -> list[StagedObject]:
    return [
        StagedObject(source, f"readings/origin={origin or source.region}/dt=2026-11-02/hour=09/{i:04d}.jsonl.gz", s)
        for i, s in enumerate(sizes)
    ]


def test_manifests_are_bounded_by_count_and_bytes_over_both_origins_in_one_bucket() -> None:
    # Given the primary's bucket holding its own objects and the secondary's replicated ones (same keys)
    loader = Loader(s3=None, warehouse=None, source=US, manifest_bucket="staging-us", max_objects=3, max_bytes=1000)  # type: ignore[arg-type]
    objects = objs(US, [100] * 7) + objs(US, [600, 600, 100], origin="eu-west-1")
    # When they are planned
    manifests = loader.plan(objects)
    # Then in key order (eu-west-1's origin first), bounded, each object once, all in the one bucket
    assert [len(m.objects) for m in manifests] == [1, 3, 3, 3]
    assert all(sum(o.size for o in m.objects) <= 1000 for m in manifests)
    assert sorted(o.url for m in manifests for o in m.objects) == sorted(o.url for o in objects)
    assert all(o.url.startswith("s3://staging-us/") for m in manifests for o in m.objects)


def test_a_staging_bucket_in_another_region_is_refused() -> None:
    """COPY with REGION needs the manifest in that region too, and the loader's VPC has no path to another
    region's S3: https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-source-s3.html"""
    with pytest.raises(CrossRegionStaging, match="staging-eu is in eu-west-1, the warehouse in us-east-1"):
        Loader(s3=None, warehouse=None, source=EU, manifest_bucket="staging-us", region="us-east-1")  # type: ignore[arg-type]
    with pytest.raises(CrossRegionStaging):
        Manifest(US, tuple(objs(EU, [10])))


def test_loader_settings_name_one_bucket_in_the_functions_own_region() -> None:
    env = {
        "WORKGROUP_NAME": "wg",
        "DATABASE_NAME": "devicepipe",
        "COPY_ROLE_ARN": "arn:aws:iam::1:role/copy",
        "MANIFEST_BUCKET": "staging-us",
        "STAGING_BUCKET": "staging-us",
        "AWS_REGION": "us-east-1",
    }
    settings = LoaderSettings.from_env(env)
    assert (settings.staging_bucket, settings.region) == ("staging-us", "us-east-1")
    # COPY files are joined by default (1 MiB, 64 MiB, 4 slices); 0 turns joining off; nonsense is refused
    assert settings.sizing == Sizing()
    assert LoaderSettings.from_env({**env, "COPY_FILE_MIN_BYTES": "0", "WAREHOUSE_SLICES": "16"}).sizing == Sizing(
        0, Sizing().max_file_bytes, 16
    )
    with pytest.raises(ConfigError, match="WAREHOUSE_SLICES"):
        LoaderSettings.from_env({**env, "WAREHOUSE_SLICES": "0"})
    with pytest.raises(ConfigError, match="COPY_FILE_MIN_BYTES must not be above COPY_FILE_MAX_BYTES"):
        LoaderSettings.from_env({**env, "COPY_FILE_MIN_BYTES": str(128 * 2**20), "COPY_FILE_MAX_BYTES": str(2**20)})
    with pytest.raises(ConfigError, match="COPY_FILE_MAX_BYTES"):  # one joined file is held in memory
        LoaderSettings.from_env({**env, "COPY_FILE_MAX_BYTES": str(2**30)})
    # the former multi-region setting is refused with what to do instead
    with pytest.raises(ConfigError, match="STAGING_SOURCES is no longer read"):
        LoaderSettings.from_env({**env, "STAGING_SOURCES": "staging-us:us-east-1,staging-eu:eu-west-1"})
    with pytest.raises(ConfigError, match="STAGING_BUCKET is required"):
        LoaderSettings.from_env({k: v for k, v in env.items() if k != "STAGING_BUCKET"})


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
        "s3://b/manifests/m.objects.jsonl.gz",
        1,
        "arn:aws:iam::1:role/copy",
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
    ):
        assert option in copy


class RecordingWarehouse:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def execute(self, statements: list[str]) -> None:
        self.batches.append(list(statements))

    def query(self, sql: str) -> list[tuple[object, ...]]:
        return []


class RecordingS3:
    def __init__(self) -> None:
        self.puts: list[tuple[str, str, bytes]] = []

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: object) -> None:
        self.puts.append((Bucket, Key, Body))


def test_the_copy_names_no_region_and_only_objects_of_the_warehouse_regions_bucket() -> None:
    """With REGION, "all resources, including a manifest file ... must be located in the specified region";
    without it, the bucket must be in the cluster's region. So: no REGION, and manifest and objects in the
    warehouse region's bucket. https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-source-s3.html
    """
    s3, warehouse = RecordingS3(), RecordingWarehouse()
    loader = Loader(s3, warehouse, US, "staging-us", "arn:aws:iam::1:role/copy", region="us-east-1", sizing=Sizing(0))  # type: ignore[arg-type]
    (manifest,) = loader.plan(objs(US, [10, 20]) + objs(US, [30], origin="eu-west-1"))
    loader.load(manifest)
    (bucket, key, body), (ledger_bucket, ledger_key, _) = s3.puts
    assert bucket == ledger_bucket == "staging-us" and key == manifest.key and ledger_key == manifest.ledger_key
    urls = [e["url"] for e in json.loads(body)["entries"]]
    assert len(urls) == 3 and all(u.startswith("s3://staging-us/readings/") for u in urls)
    assert any("origin=eu-west-1" in u for u in urls)  # the secondary's readings, replicated in
    copy, copy_objects = [s for s in warehouse.batches[0] if s.startswith("COPY")]
    assert "REGION" not in copy.upper() and "REGION" not in copy_objects.upper()
    assert f"FROM 's3://staging-us/{manifest.key}'" in copy
    assert f"FROM 's3://staging-us/{manifest.ledger_key}'" in copy_objects


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        ("ActiveStatementsExceededException", True),
        ("ActiveSessionsExceededException", True),
        ("BatchExecuteStatementException", True),
        ("InternalServerException", True),
        ("ThrottlingException", True),
        ("ValidationException", False),  # e.g. a statement over 100 KB: the same call fails again
        ("ResourceNotFoundException", False),
    ],
)
def test_data_api_errors_are_classified_by_their_documented_code(code: str, retryable: bool) -> None:
    exc = ClientError({"Error": {"Code": code, "Message": "paused throttl timeout"}}, "BatchExecuteStatement")
    assert api_error_retryable(exc) is retryable


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        ("FAILED", "ERROR: 1023 DETAIL: Serializable isolation violation on table - 123, transactions ...", True),
        ("FAILED", "ERROR:1023 DETAIL: Serializable isolation violation on table in Redshift", True),
        ("ABORTED", "", True),  # stopped by CancelStatement, not by its SQL
        ("FAILED", "Load into table 'stage' failed. Check 'sys_load_error_detail' system table for details.", False),
        ("FAILED", 'ERROR: syntax error at or near "QUALIFY"', False),
        ("FAILED", "connection timeout while the cluster is paused", False),  # words do not count, only codes
    ],
)
def test_failed_statements_are_classified_by_redshift_error_number(status: str, error: str, retryable: bool) -> None:
    assert statement_retryable({"Status": status, "Error": error}) is retryable


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


# --- the watermark's assumptions, pinned -------------------------------------------------------------------------


def test_staged_keys_carry_the_hour_the_watermark_reads() -> None:
    """The loader lists by hour: it relies on ``staging.object_key`` putting a sortable hour after the origin."""
    staged = Stager(RecordingS3(), "staging-us", "eu-west-1", Retrier())
    key = staged.stage(list(changes(insert_batch(0, 2, origin_region="eu-west-1")))).key
    assert key.startswith("readings/origin=eu-west-1/dt=")
    assert StagedObject(US, key, 1).partition == "dt=2026-11-02/hour=09"
    assert StagedObject(US, "readings/origin=eu-west-1/other/x.jsonl.gz", 1).partition is None


def test_the_late_arrival_window_covers_how_late_the_template_lets_an_object_appear(template: dict[str, Any]) -> None:
    """An object appears after its hour by at most the stager's record age, batching window and timeout, plus S3
    Replication Time Control's 15 minutes for a replica; the watermark stays further behind than that."""
    mapping = template["Resources"]["StagerEventSourceMapping"]["Properties"]
    stager = template["Resources"]["StagerFunction"]["Properties"]
    latest = mapping["MaximumRecordAgeInSeconds"] + mapping["MaximumBatchingWindowInSeconds"] + stager["Timeout"]
    assert latest + 15 * 60 <= LATE_ARRIVAL_S


@pytest.mark.parametrize(
    ("prefix", "start_after"),
    [
        ("readings/origin=us-east-1/", ""),
        ("readings/origin=us-east-1/", "readings/origin=us-east-1/dt=2026-11-02/hour=07"),
    ],
)
def test_the_ledger_is_read_by_key_range_exactly_as_s3_lists(prefix: str, start_after: str) -> None:
    """The ledger query of a cycle selects exactly the keys its listing would (S3's Prefix and StartAfter)."""
    keys = [
        f"s3://b/readings/origin={o}/dt=2026-11-0{d}/hour={h:02d}/{i}.jsonl.gz"
        for o in ("eu-west-1", "us-east-1", "us-east-10")
        for d in (1, 2, 3)
        for h in (6, 7, 8)
        for i in range(2)
    ] + ["s3://b/readings/origin=us-east-1", "s3://b/readings/origin=us-east-10/x", "s3://b/readings0"]
    con = duckdb.connect()
    con.execute("CREATE TABLE loaded_objects (object_key VARCHAR)")
    con.executemany("INSERT INTO loaded_objects VALUES (?)", [[k] for k in keys])
    ranges = [(f"s3://b/{prefix}", f"s3://b/{start_after}" if start_after else "")]
    got = {k for (k,) in con.execute(loaded_keys_query(ranges)).fetchall()}
    listed = {k for k in keys if k.startswith(f"s3://b/{prefix}") and k > f"s3://b/{start_after}"}
    assert got == listed and listed
    assert redshift_rules.check_statement(loaded_keys_query(ranges * 3)) == []


def test_watermark_statements_are_one_small_locked_transaction() -> None:
    marks = {f"s3://b/readings/origin={r}/": "dt=2026-11-02/hour=07" for r in ("us-east-1", "eu-west-1")}
    batch = watermark_statements(marks)
    assert batch[0] == "LOCK load_ledger" and len(batch) == 5
    assert redshift_rules.check_batch(batch) == [] and redshift_rules.check_batch(DDL) == []
    assert redshift_rules.check_statement(watermarks_query("s3://b/readings/")) == []
    assert max(len(sql) for sql in batch) < 300


def test_quarantined_objects_are_counted_and_alarmed(template: dict[str, Any]) -> None:
    """An object moved aside is a data problem someone must look at: counted per cycle and alarmed at the first."""
    (alarm,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"].get("MetricName") == "ObjectsQuarantined"
    ]
    assert alarm["Namespace"] == "devicepipe" and alarm["Dimensions"] == [{"Name": "service", "Value": "loader"}]
    assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "Sum",
        0,
        "GreaterThanThreshold",
    )
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
