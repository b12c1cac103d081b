"""`devicepipe plan`: the arithmetic on hand-computed cases, the template's real settings, the CLI, the price table.

Hand-computed figures use AWS's 730-hour month: 2,628,000 seconds.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from devicepipe.loader import LATE_ARRIVAL_S
from devicepipe_tools import plan
from devicepipe_tools.cli import EXIT_OK, EXIT_USAGE, main
from devicepipe_tools.template import load_template, parameter_default, resource

MONTH_S = 2_628_000
GIB = 1024**3


# ----------------------------------------------------------------------------------------------- fixtures
def _prices(**overrides: float) -> plan.Prices:
    """Round unit prices so every figure below can be worked out by hand."""
    usd = {
        "kinesis.shard_hour": 0.01,
        "kinesis.put_payload_million": 1.0,
        "lambda.gb_second_arm": 0.00001,
        "lambda.requests_million": 0.2,
        "dynamodb.write_request_million": 1.0,
        "dynamodb.replicated_write_request_million": 1.0,
        "dynamodb.read_request_million": 1.0,
        "dynamodb.storage_gb_month": 1.0,
        "dynamodb.pitr_gb_month": 1.0,
        "transfer.inter_region_gb": 1.0,
        "s3.storage_gb_month": 1.0,
        "s3.put_thousand": 1.0,
        "s3.get_thousand": 1.0,
        "s3.replication_time_control_gb": 1.0,
        "elasticache.node_hour.cache.t4g.small": 0.01,
        "aurora.instance_hour.db.r6g.large": 1.0,
        "aurora.storage_gb_month": 1.0,
        "redshift.rpu_hour": 1.0,
        "redshift.storage_gb_month": 1.0,
        "vpc.interface_endpoint_az_hour": 1.0,
        "apigateway.http_requests_million": 1.0,
        "cloudwatch.alarm_month": 1.0,
        "cloudwatch.dashboard_month": 1.0,
        "cloudwatch.logs_ingested_gb": 1.0,
        "kms.key_month": 1.0,
        "secretsmanager.secret_month": 1.0,
        **overrides,
    }
    lines = {
        (item, "us-east-1"): plan.Price(item, "us-east-1", v, "unit", "2026-12-01", "https://x")
        for item, v in usd.items()
    }
    return plan.Prices(lines, "us-east-1", {"cache.t4g.small": 1.37})


def _small_template(window_s: int = 1) -> dict[str, Any]:
    """A template with only what the planner needs: a 2-shard stream, one ingest function (1,024 MB) whose mapping
    waits up to ``window_s``, a table with one GSI and no PITR, a staging bucket and a one-node cache."""
    return {
        "Parameters": {
            "PrimaryRegion": {"Default": "us-east-1"},
            "SecondaryRegion": {"Default": "eu-west-1"},
            "ReadingTtlDays": {"Default": 10},
        },
        "Conditions": {},
        "Resources": {
            "Stream": {"Type": "AWS::Kinesis::Stream", "Properties": {"ShardCount": 2}},
            "Table": {
                "Type": "AWS::DynamoDB::GlobalTable",
                "Properties": {"GlobalSecondaryIndexes": [{"IndexName": "ByBranchLatest"}], "Replicas": []},
            },
            "StagingBucket": {
                "Type": "AWS::S3::Bucket",
                "Properties": {"LifecycleConfiguration": {"Rules": [{"ExpirationInDays": 7}]}},
            },
            "Cache": {
                "Type": "AWS::ElastiCache::ReplicationGroup",
                "Properties": {"CacheNodeType": "cache.t4g.small", "NumCacheClusters": 1},
            },
            "IngestFunction": {"Type": "AWS::Serverless::Function", "Properties": {"MemorySize": 1024}},
            "IngestMapping": {
                "Type": "AWS::Lambda::EventSourceMapping",
                "Properties": {
                    "FunctionName": {"Ref": "IngestFunction"},
                    "EventSourceArn": {"Fn::GetAtt": ["Stream", "Arn"]},
                    "BatchSize": 100,
                    "MaximumBatchingWindowInSeconds": window_s,
                },
            },
        },
    }


def _cost(result: plan.Plan, service: str, unit: str, region: str = "us-east-1") -> float:
    return sum(li.usd for li in result.lines if li.service == service and li.unit == unit and li.region == region)


def _quantity(result: plan.Plan, service: str, unit: str, region: str = "us-east-1") -> float:
    return sum(li.quantity for li in result.lines if li.service == service and li.unit == unit and li.region == region)


# ----------------------------------------------------------------------------------------------- building blocks
def test_mapping_invocations_with_a_batching_window() -> None:
    # 10 records/s on 2 shards = 5/s a shard; a 10 s window gathers 50 records; 10 / 50 = 0.2 invocations/s.
    assert plan.mapping_invocations(10, 2, "dynamodb", 1000, 10) == plan.Invocations(0.2, 50)
    # 1,000/s on one shard would gather 10,000 in 10 s: a batch of 100 is full first, so 10 invocations/s.
    assert plan.mapping_invocations(1000, 1, "kinesis", 100, 10) == plan.Invocations(10, 100)
    # 0.05/s: a window rarely holds two records; one record each, 0.05 invocations/s.
    assert plan.mapping_invocations(0.05, 1, "dynamodb", 1000, 10) == plan.Invocations(0.05, 1)
    assert plan.mapping_invocations(0, 4, "kinesis", 100, 0) == plan.Invocations(0, 0)


def test_a_stream_batch_closes_at_six_mb_of_event_whatever_its_batch_size() -> None:
    """Lambda closes a stream batch at the 6 MB invocation payload
    (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html): the stager's 10,000 records of about 960 B do
    not fit, so 250 records/s a shard in a 30 s window make batches of 6,553, not 7,500."""
    record = 165 + plan.STREAM_RECORD_EXTRA_BYTES
    capped = plan.mapping_invocations(250, 1, "dynamodb", 10_000, 30, record)
    assert capped.records_each == plan.PAYLOAD_BYTES // record == 6553
    assert plan.mapping_invocations(250, 1, "dynamodb", 10_000, 30).records_each == 7500  # size not counted


def test_the_stream_record_size_is_the_one_the_bench_measures() -> None:
    from benchmarks import bench_consumers
    from devicepipe_tools.producer import simulate

    reading = sum(len(json.dumps(d, separators=(",", ":"))) for d in simulate(1250, 50, count=200, seed=16)) / 200
    measured = bench_consumers.stream_record_bytes() - reading
    assert measured == pytest.approx(plan.STREAM_RECORD_EXTRA_BYTES, rel=0.05)


def test_copy_files_a_cycle_are_the_loaders_joined_files() -> None:
    # 137 objects of 115 KiB (15 MiB): 4 files, one a slice; 1,000 objects of 3 KiB: 2 manifests of 1.5 MiB, a file each
    assert plan.copy_files_for(137, 115 * 1024) == 4
    assert plan.copy_files_for(1000, 3 * 1024) == 2
    assert plan.copy_files_for(0, 1024) == 0


def test_mapping_invocations_without_a_window_follow_the_polls() -> None:
    # DynamoDB streams are polled 4 times a second. At 4 ln 2 = 2.77 records/s on one shard a poll finds none
    # with probability exp(-ln 2) = 1/2, so 4 x 1/2 = 2 invocations/s of 2 ln 2 = 1.386 records.
    inv = plan.mapping_invocations(4 * math.log(2), 1, "dynamodb", 500, 0)
    assert inv.per_s == pytest.approx(2.0)
    assert inv.records_each == pytest.approx(2 * math.log(2))
    # Kinesis (one poll a second) at 4,000 records/s on one shard: full batches of 1,000, 4 invocations/s.
    assert plan.mapping_invocations(4000, 1, "kinesis", 1000, 0) == plan.Invocations(4, 1000)


def test_request_units_round_up_per_item() -> None:
    assert [plan.write_units(b) for b in (1, 1024, 1025, 3000)] == [1, 1, 2, 3]
    # eventually consistent: half a unit per 4 KB; strongly consistent: one
    assert plan.read_units(4096) == 0.5
    assert plan.read_units(4097) == 1.0
    assert plan.read_units(4097, eventually_consistent=False) == 2.0


def test_durations_reproduce_the_ingest_benchmark() -> None:
    ingest = plan.PROFILES["ingest"]
    # At a full vCPU (1,769 MB): 16 ms + 1,000 x (4 + 47.5) us = 67.5 ms, make bench's 62-73 ms per batch through
    # the real client (docs/benchmarks.md).
    assert plan.duration_ms(ingest, 1000, 1769) == pytest.approx(67.5)
    # At 1,024 MB Lambda gives 1,024 / 1,769 of a vCPU: the CPU part takes 1,769 / 1,024 = 1.7275 times longer.
    assert plan.duration_ms(ingest, 1000, 1024) == pytest.approx(16 + 4 + 47.5 * 1769 / 1024)


def test_stream_filters_pick_what_each_consumer_gets() -> None:
    # Two regions, 10 devices every 1 s: 10 readings/s, 5 ingested in each region; both streams carry all.
    fleet = plan.Fleet(10, 1, 2, ("us-east-1", "eu-west-1"))
    kinds = plan.stream_record_kinds(fleet, latest_per_s=10)
    readings = {"dynamodb": {"Keys": {"sk": {"S": [{"prefix": "R#"}]}}}, "eventName": ["INSERT", "MODIFY"]}
    own = {  # the stager's filter as the eu-west-1 stack resolves it
        "eventName": ["INSERT", "MODIFY"],
        "dynamodb": {"Keys": {"sk": {"S": [{"prefix": "R#"}]}}, "NewImage": {"origin_region": {"S": ["eu-west-1"]}}},
    }
    latest = {"eventName": ["MODIFY"], "dynamodb": {"Keys": {"sk": {"S": ["LATEST"]}}}}
    assert plan.matching_rate([readings], kinds) == 10  # every region's reading inserts
    assert plan.matching_rate([own], kinds) == 5  # the stager: its own region's readings only
    assert plan.matching_rate([readings, latest], kinds) == 20  # the cache updater: + every LATEST update
    assert plan.matching_rate([], kinds) == 30  # no filter: TTL deletes (10/s) too


# ----------------------------------------------------------------------------------------------- whole plans
def test_one_region_plan_by_hand() -> None:
    # 100 devices every 100 s: 1 reading/s of 100 bytes; 10 branches; no reads.
    fleet = plan.Fleet(100, 100, 10, ("us-east-1",), reading_bytes=100, reads_per_s=0)
    result = plan.plan(fleet, _small_template(), _prices())
    k = result.needs["kinesis"]
    # Kinesis: a record is 100 + 16 (partition key) = 116 B; 1 record/s is 1/1000 of a shard (116 B/s is far
    # below 1 MiB/s); x2 headroom -> 1 shard needed; the template's 2 are costed: 2 x 730 = 1,460 shard-hours.
    assert k["shard_load"] == pytest.approx(0.001)
    assert (k["shards_needed"], k["template_shards"], k["shards_costed"]) == (1, 2, 2)
    assert _quantity(result, "Kinesis", "shard-hours") == 1460
    assert _cost(result, "Kinesis", "shard-hours") == pytest.approx(14.60)
    # one 25 KB PUT payload unit per record: 2,628,000 a month at $1 a million
    assert _cost(result, "Kinesis", "PUT payload units") == pytest.approx(2.628)

    d = result.needs["dynamodb"]
    # Items: reading 100 + 110 = 210 B, LATEST 100 + 145 = 245 B: one write unit each.
    assert d["item_bytes"] == {"reading": 210, "latest": 245, "gsi": 245}
    # One region: plain write units. Reading item + LATEST = 2 units/s; the GSI's key changes on every LATEST
    # update (delete + put) = 2 units/s. 2 x 2,628,000 = 5,256,000 each, at $1 a million.
    assert _cost(result, "DynamoDB", "write units (table)") == pytest.approx(5.256)
    assert _cost(result, "DynamoDB", "write units (GSI)") == pytest.approx(5.256)
    assert d["ttl_replicated_deletes_per_s_per_region"] == 0
    assert _cost(result, "DynamoDB", "read units") == 0
    # Storage: 1 reading/s x 86,400 s x (10 TTL days + 2 days' lag) = 1,036,800 items of 210 + 100 B, plus
    # 100 LATEST items and 100 index entries of 245 + 100 B: 321,477,000 B = 0.29940 GiB.
    assert d["storage_gb_per_region"] == pytest.approx((1_036_800 * 310 + 100 * 345 * 2) / GIB)
    assert _cost(result, "DynamoDB", "GB-months (PITR)") == 0  # the template turns no PITR on

    # Ingest: 1 record/s over 2 shards, a 1 s window gathers 0.5 -> one record an invocation, 1 a second:
    # 2,628,000 invocations of 16 ms + (4 + 47.5 x 1,769/1,024) us = 16.09 ms, billed 17 ms, at 1 GB.
    fn = result.needs["lambda"]["IngestFunction"]["us-east-1"]
    assert fn["invocations_per_month"] == pytest.approx(MONTH_S)
    assert fn["billed_ms_per_invocation"] == 17
    assert fn["gb_seconds_per_month"] == pytest.approx(MONTH_S * 0.017)  # 44,676 GB-s
    assert _cost(result, "Lambda", "IngestFunction GB-seconds") == pytest.approx(0.44676)
    assert _cost(result, "Lambda", "IngestFunction requests") == pytest.approx(0.5256)
    # logs: 1,200 B an invocation = 3,153,600,000 B = 2.937 GiB at $1
    assert _cost(result, "CloudWatch", "IngestFunction log GB") == pytest.approx(MONTH_S * 1200 / GIB)

    # Redis: 8 MiB baseline + 100 x (100 + 1,080) B; one node for 730 h at $0.01.
    assert result.needs["redis"]["memory_mb"] == pytest.approx((8 * 1024**2 + 100 * 1180) / 1024**2)
    assert _cost(result, "ElastiCache Redis", "node-hours") == pytest.approx(7.30)
    # nothing else in this template costs anything
    assert _cost(result, "Aurora PostgreSQL", "instance-hours") == 0
    assert "Data transfer" not in result.by_service()
    expected = 14.60 + 2.628 + 5.256 * 2 + (1_036_800 * 310 + 69_000) / GIB + 0.44676 + 0.5256
    assert result.total == pytest.approx(expected + MONTH_S * 1200 / GIB + 7.30)


def test_two_regions_pay_every_write_in_each_region() -> None:
    # The same fleet ingested half in each region: each region's table still takes every write.
    fleet = plan.Fleet(100, 100, 10, ("us-east-1", "eu-west-1"), reading_bytes=100, reads_per_s=0)
    result = plan.plan(fleet, _small_template(), _prices())
    for region in fleet.regions:
        # replicated writes: reading + LATEST = 2 units/s, plus TTL deletes replicated from the other region
        # (1 reading/s expires, half of them deleted elsewhere) = 0.5/s: 2.5 x 2,628,000 = 6,570,000
        assert _quantity(result, "DynamoDB", "write units (table)", region) == pytest.approx(6_570_000)
        assert _quantity(result, "DynamoDB", "write units (GSI)", region) == pytest.approx(5_256_000)
        # each region sends its own half of the writes to the other: (0.5 x 210 + 0.5 x 245) B/s
        sent = (0.5 * 210 + 0.5 * 245) * MONTH_S / GIB
        assert _quantity(result, "Data transfer", "GB replicated out", region) == pytest.approx(sent)
        # Kinesis: each region's stream takes 0.5 records/s, and each region pays for its own shards
        assert _quantity(result, "Kinesis", "PUT payload units", region) == pytest.approx(MONTH_S / 2)
    # eu-west-1 has no lines of its own in this price table: priced at us-east-1's and said so
    assert any("priced at us-east-1 rates" in w for w in result.warnings)
    assert all(li.price_region == "us-east-1" for li in result.lines)


def test_undersized_capacity_is_flagged_and_costed_at_what_is_needed() -> None:
    # 10,000 devices every second: 10,000 records/s of 216 B on a 2-shard stream (2,000 records/s).
    fleet = plan.Fleet(10_000, 1, 10, ("us-east-1",), reading_bytes=200, reads_per_s=0)
    result = plan.plan(fleet, _small_template(window_s=0), _prices())
    # load = 10,000 / 1,000 = 10 shards; x2 headroom = 20 needed
    assert result.needs["kinesis"]["shards_needed"] == 20
    assert _quantity(result, "Kinesis", "shard-hours") == 20 * 730
    assert any("20 shards needed" in w and "raise ShardCount" in w for w in result.warnings)


def test_the_planner_reads_the_templates_real_settings() -> None:
    template = load_template()
    fleet = plan.Fleet(1000, 60, 50, ("us-east-1", "eu-west-1"))
    settings = plan.settings_from_template(template, fleet)
    primary, secondary = settings.region("us-east-1"), settings.region("eu-west-1")
    stream = next(r for r in template["Resources"].values() if r["Type"] == "AWS::Kinesis::Stream")
    assert primary.kinesis_shards == stream["Properties"]["ShardCount"]
    assert settings.reading_ttl_days == parameter_default(template, "ReadingTtlDays")
    assert settings.staging_retention_days == parameter_default(template, "StagingRetentionDays")
    assert settings.load_interval_minutes == parameter_default(template, "LoadIntervalMinutes")
    assert primary.redis_node_type == parameter_default(template, "RedisNodeType")
    assert primary.aurora_class == parameter_default(template, "AuroraInstanceClass")
    assert primary.redshift_base_rpu == parameter_default(template, "RedshiftBaseCapacity")
    assert secondary.redshift_base_rpu == 0  # one warehouse, in the primary region
    for fn in primary.functions:
        assert fn.memory_mb == resource(template, fn.name)["Properties"]["MemorySize"]
    # every event source mapping of the template, with its batch size and window
    for logical_id, res in template["Resources"].items():
        if res["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        props = res["Properties"]
        trigger = next(t for fn in primary.functions for t in fn.triggers if t.source == logical_id)
        assert trigger.batch_size == props["BatchSize"]
        assert trigger.window_s == props.get("MaximumBatchingWindowInSeconds", 0)
    roles = {role for fn in primary.functions for role in fn.roles}
    assert {"ingest", "cache", "stager", "read-api", "loader"} <= roles
    assert "loader" not in {role for fn in secondary.functions for role in fn.roles}  # IsPrimaryRegion


def test_the_seed_fleet_on_the_real_template() -> None:
    result = plan.plan(plan.Fleet(1000, 60, 50, ("us-east-1", "eu-west-1")), load_template(), plan.load_prices())
    doc = result.to_json()
    assert doc["fleet"]["is_seed_fleet"]
    assert doc["seed"]["seed_total"] == 285
    assert set(plan.SEED_COSTS) <= set(doc["seed"]["rows"])
    # 1,000 devices / 60 s = 16.7 readings/s: 43.8 M a month
    assert doc["fleet"]["readings_per_month"] == pytest.approx(43_800_000)
    assert result.needs["kinesis"]["shards_needed"] == 1  # far below the template's 4
    assert result.total > plan.SEED_TOTAL


def test_a_load_cycle_lists_a_window_not_the_retained_history() -> None:
    """Since issue 16 a cycle lists each origin from its watermark (``LATE_ARRIVAL_S`` behind the newest hour),
    so its LIST requests do not grow with the staging bucket's retention; the loader reads every staged object
    to join it, and COPY reads the joined files."""
    fleet = plan.Fleet(5000, 5, 50, ("us-east-1", "eu-west-1"), reading_bytes=165)
    template = load_template()
    short = plan.plan(fleet, template, plan.load_prices())
    template["Parameters"]["StagingRetentionDays"]["Default"] = 365
    long = plan.plan(fleet, template, plan.load_prices())
    s_short, s_long = short.needs["staging"], long.needs["staging"]
    assert s_long["retained_objects_per_region"] > 10 * s_short["retained_objects_per_region"]
    assert s_long["list_requests_per_cycle"] == s_short["list_requests_per_cycle"]
    # both origins in the primary's bucket: each origin's window in pages, its quarantine listing, the origins
    per_s = s_short["objects_per_month_per_region"] / MONTH_S
    window_s = LATE_ARRIVAL_S + 3600 + 15 * 60
    assert s_short["list_requests_per_cycle"] == 2 * (math.ceil(per_s * window_s / plan.S3_LIST_PAGE) + 1) + 1
    joined = _quantity(short, "S3 staging", "GET requests (loader joining)")
    assert joined == pytest.approx(2 * s_short["objects_per_month_per_region"])
    copies = _quantity(short, "S3 staging", "GET requests (COPY)")
    assert copies < joined / 10  # the joined files and the manifests, not every staged object


# ----------------------------------------------------------------------------------------------- the CLI
def test_cli_prints_the_plan_beside_the_seeds_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "1,000 devices every 60 s in 50 branches" in out
    assert "seed's table" in out and "285.00" in out
    assert re.search(r"^  Total\s+[\d,.]+\s+[\d,.]+\s+[\d,.]+\s+285\.00$", out, re.MULTILINE)
    assert "check them before use" in out


def test_cli_json_is_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["plan", "--devices", "500", "--interval", "30", "--branches", "5", "--regions", "us-east-1", "--json"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["fleet"]["regions"] == ["us-east-1"]
    assert doc["seed"] is None  # not the seed's fleet
    total = sum(line["usd"] for line in doc["monthly_usd"]["lines"])
    assert doc["monthly_usd"]["total"] == pytest.approx(total, abs=0.01)


def test_cli_detail_lists_every_cost_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--detail"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "Cost lines" in out and "shard-hours" in out and "replicated" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--regions", "us-east-1,us-east-1"], "names a region twice"),
        (["--regions", "mars-north-9x"], "not a region name"),
        (["--regions", ","], "at least one region"),
        (["--devices", "10", "--branches", "20"], "cannot exceed --devices"),
        (["--cache-hit-ratio", "1.5"], "between 0 and 1"),
        (["--headroom", "0.5"], "at least 1"),
        (["--reading-bytes", "70000"], "MAX_READING_BYTES"),
    ],
)
def test_cli_bad_input_is_a_clear_error(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args", [["--devices", "0"], ["--interval", "-1"], ["--interval", "abc"], ["--reads-per-second", "-2"]]
)
def test_cli_malformed_numbers_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plan", *args])
    assert info.value.code == EXIT_USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_cli_reports_a_broken_price_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "prices.toml"
    broken.write_text("[[price]]\nitem = 'kinesis.shard_hour'\n")
    assert main(["plan", "--prices", str(broken)]) == EXIT_USAGE
    assert "price line 1 (kinesis.shard_hour)" in capsys.readouterr().err
    broken.write_text("not = toml = at all")
    assert main(["plan", "--prices", str(broken)]) == EXIT_USAGE
    assert "cannot read the price table" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- the price table
def test_every_price_line_has_its_region_date_and_aws_source() -> None:
    doc = tomllib.loads(plan.PRICES.read_text())
    assert doc["price"]
    for line in doc["price"]:
        assert re.fullmatch(r"[a-z]{2}-[a-z]+-\d", line["region"]), line
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", line["date"]), line
        assert re.match(r"https://(aws\.amazon\.com|docs\.aws\.amazon\.com)/", line["source"]), line
        assert line["usd"] >= 0 and line["unit"] and line["seen"], line


def test_the_default_region_prices_everything_the_real_template_uses() -> None:
    prices = plan.load_prices()
    plan.plan(plan.Fleet(1000, 60, 50, ("us-east-1",)), load_template(), prices)
    assert prices.fallbacks == set()
