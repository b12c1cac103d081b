"""Invariants of template.yaml and samconfig.toml that a regression must not break."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest

from benchmarks import bench_consumers as bench
from devicepipe.loader import COMPACTED_PREFIX
from devicepipe_tools.probe import PROBE_PK_PREFIX
from devicepipe_tools.template import ROOT, function_environment, resource
from functions.cache_updater import app as cache_app
from functions.stager import app as stager_app


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_kinesis_stream_has_four_shards_24h_and_kms(template: dict[str, Any]) -> None:
    props = resource(template, "ReadingsStream")["Properties"]
    assert props["ShardCount"] == 4
    assert props["RetentionPeriodHours"] == 24
    assert props["StreamEncryption"]["EncryptionType"] == "KMS"


def test_global_table_owned_by_primary_with_both_replicas(template: dict[str, Any]) -> None:
    table = resource(template, "ReadingsTable")
    assert table["Type"] == "AWS::DynamoDB::GlobalTable"
    assert table["Condition"] == "IsPrimaryRegion"
    assert template["Conditions"]["IsPrimaryRegion"] == {
        "Fn::Equals": [{"Ref": "AWS::Region"}, {"Ref": "PrimaryRegion"}]
    }
    assert table["DeletionPolicy"] == "Retain"
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert [r["Region"] for r in props["Replicas"]] == [{"Ref": "PrimaryRegion"}, {"Ref": "SecondaryRegion"}]
    for replica in props["Replicas"]:
        assert replica["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert template["Parameters"]["PrimaryRegion"]["Default"] == "us-east-1"
    assert template["Parameters"]["SecondaryRegion"]["Default"] == "eu-west-1"


def test_branch_index_is_sparse_on_latest_only_attributes(template: dict[str, Any]) -> None:
    props = resource(template, "ReadingsTable")["Properties"]
    (gsi,) = props["GlobalSecondaryIndexes"]
    keys = [k["AttributeName"] for k in gsi["KeySchema"]]
    assert keys == ["latest_branch", "latest_at"]
    # Reading items never carry these attributes (only LATEST items do), which keeps the index sparse.
    assert [k["AttributeName"] for k in props["KeySchema"]] == ["pk", "sk"]


def test_ingest_reads_the_kinesis_stream(template: dict[str, Any]) -> None:
    esm = resource(template, "IngestEventSourceMapping")["Properties"]
    assert esm["EventSourceArn"] == {"Fn::GetAtt": ["ReadingsStream", "Arn"]}
    assert esm["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["IngestFailureQueue", "Arn"]}


MAPPINGS = [
    "IngestEventSourceMapping",
    "CacheUpdaterEventSourceMapping",
    "StagerEventSourceMapping",
]


def test_every_event_source_mapping_is_listed_here(template: dict[str, Any]) -> None:
    assert set(resources_of(template, "AWS::Lambda::EventSourceMapping")) == set(MAPPINGS)


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_every_event_source_mapping_cannot_block_a_shard(template: dict[str, Any], mapping: str) -> None:
    esm = resource(template, mapping)["Properties"]
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["BisectBatchOnFunctionError"] is True
    assert 0 < esm["MaximumRetryAttempts"] <= 10
    assert 60 <= esm["MaximumRecordAgeInSeconds"] <= 86_400
    assert esm["MaximumBatchingWindowInSeconds"] >= 0
    assert esm["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][1] == "Arn"


def test_the_path_to_readers_waits_in_no_batching_window(template: dict[str, Any]) -> None:
    """A reading must be visible through the read API within 2 s of PutRecords. Lambda polls a Kinesis shard
    once per second with a standard iterator (https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html)
    and a DynamoDB stream shard four times per second (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html),
    so polling alone may take 1.25 s of the budget: the mappings between a device and the cache take no batching
    window (the default, 0: https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-params.html); the cache
    updater's also carries the LATEST repair (a regression is visible until fixed). The stager, which readers do
    not wait on, keeps one to write fewer, larger objects for COPY."""
    window = {m: resource(template, m)["Properties"]["MaximumBatchingWindowInSeconds"] for m in MAPPINGS}
    on_the_read_path = ("IngestEventSourceMapping", "CacheUpdaterEventSourceMapping")
    assert all(window[m] == 0 for m in on_the_read_path)
    assert window["StagerEventSourceMapping"] >= 1


def test_the_stagers_batches_are_as_large_as_lambda_sends_at_the_design_load(template: dict[str, Any]) -> None:
    """The stager writes one object per invocation, and Redshift wants COPY files of 1 MB to 1 GB compressed
    (https://docs.aws.amazon.com/redshift/latest/dg/queries-troubleshooting-load-takes-too-long.html), so its
    batches are the largest Lambda sends: BatchSize at DynamoDB Streams' maximum, 10,000
    (https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-params.html), and a window long enough for the 6 MB
    invocation payload, not the clock, to close a batch at the design load (1,000 readings/s on 4 shards: Lambda
    sends when the window ends, the batch is full or the payload reaches 6 MB,
    https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html). Not much longer: a longer window only holds a
    lighter load back from the warehouse. Objects per hour and their sizes: `make bench`."""
    props = resource(template, "StagerEventSourceMapping")["Properties"]
    records = bench.shard_stream(50)
    record_bytes = sum(len(json.dumps(r, separators=(",", ":"))) for r in records) / len(records)
    batch = bench.esm_batch(props, bench.READINGS_PER_S / bench.SHARDS, record_bytes)
    assert props["BatchSize"] == 10_000
    assert batch.closed_by == "payload"
    assert batch.seconds <= props["MaximumBatchingWindowInSeconds"] <= 1.25 * batch.seconds


@pytest.mark.parametrize(
    ("settings", "per_s", "expected"),
    [
        ({"BatchSize": 1000, "MaximumBatchingWindowInSeconds": 10}, 250, ("BatchSize", 1000, 4.0)),
        ({"BatchSize": 10_000, "MaximumBatchingWindowInSeconds": 10}, 250, ("window", 2500, 10.0)),
        ({"BatchSize": 10_000, "MaximumBatchingWindowInSeconds": 300}, 250, ("payload", 6553, 26.212)),
        ({"BatchSize": 500, "MaximumBatchingWindowInSeconds": 0}, 100, ("window", 25, 0.25)),  # a poll's worth
    ],
)
def test_lambdas_stream_batching_arithmetic(
    settings: dict[str, int], per_s: float, expected: tuple[str, int, float]
) -> None:
    batch = bench.esm_batch(settings, per_s, record_bytes=960)
    assert (batch.closed_by, batch.records, round(batch.seconds, 3)) == expected


def test_functions_run_python313_on_arm64_with_the_common_layer(template: dict[str, Any]) -> None:
    fn_globals = template["Globals"]["Function"]
    assert fn_globals["Runtime"] == "python3.13"
    assert fn_globals["Architectures"] == ["arm64"]
    assert fn_globals["Layers"] == [{"Ref": "CommonLayer"}]
    layer = resource(template, "CommonLayer")
    assert layer["Metadata"]["BuildMethod"] == "python3.13"
    assert layer["Properties"]["ContentUri"] == "layers/common/"


def test_ingest_environment_names_every_required_setting(template: dict[str, Any]) -> None:
    env = function_environment(template, "IngestFunction")
    for name in ("TABLE_NAME", "QUARANTINE_BUCKET", "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"):
        assert name in env


def statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, role in resources_of(template, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            out += [(name, s) for s in policy["PolicyDocument"]["Statement"]]
    return out


#: Actions that support no resource-level scoping: the only ones allowed on Resource "*".
UNSCOPABLE = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}


def test_iam_has_no_wildcard_actions_and_star_resources_only_where_unscopable(template: dict[str, Any]) -> None:
    for role, stmt in statements(template):
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        assert all("*" not in a for a in actions), (role, stmt)
        if stmt["Resource"] == "*":
            # Data API statement actions take no resource: allowed only when scoped to the caller's statements.
            owned = "redshift-data:statement-owner-iam-userid" in json.dumps(stmt.get("Condition", {}))
            assert set(actions) <= UNSCOPABLE or (owned and all(a.startswith("redshift-data:") for a in actions)), (
                role,
                stmt,
            )


def test_each_function_has_its_own_role(template: dict[str, Any]) -> None:
    roles = [f["Properties"]["Role"] for f in resources_of(template, "AWS::Serverless::Function").values()]
    assert len(roles) == len(set(map(str, roles))) >= 3


def test_ingest_role_writes_only_its_table_and_quarantine_prefix(template: dict[str, Any]) -> None:
    by_sid = {s["Sid"]: s for role, s in statements(template) if role == "IngestRole"}
    assert by_sid["WriteReadings"]["Action"] == ["dynamodb:BatchWriteItem", "dynamodb:PutItem"]
    assert by_sid["WriteReadings"]["Resource"]["Fn::Sub"].endswith(":table/${TableName}")
    assert by_sid["Quarantine"]["Resource"] == {"Fn::Sub": "${QuarantineBucket.Arn}/quarantine/*"}


@pytest.mark.parametrize(
    ("function", "role", "stage"),
    [("CacheUpdaterFunction", "CacheUpdaterRole", cache_app.STAGE), ("StagerFunction", "StagerRole", stager_app.STAGE)],
)
def test_stream_consumers_quarantine_what_they_cannot_decode_under_their_own_stage(
    template: dict[str, Any], function: str, role: str, stage: str
) -> None:
    assert function_environment(template, function)["QUARANTINE_BUCKET"] == {"Ref": "QuarantineBucket"}
    by_sid = {s["Sid"]: s for name, s in statements(template) if name == role}
    assert by_sid["Quarantine"]["Action"] == "s3:PutObject"
    assert by_sid["Quarantine"]["Resource"] == {"Fn::Sub": f"${{QuarantineBucket.Arn}}/quarantine/stage={stage}/*"}


def test_stream_quarantines_raise_their_own_alarm_and_the_ingests_keeps_its_threshold(template: dict[str, Any]) -> None:
    """The ingest quarantines what producers send (some bad records are expected: QuarantineAlarmThreshold);
    the table holds only what the ingest accepted, so any stream record a consumer quarantines is a writer other
    than the ingest or a fault of ours, and alarms at once. Metric math sums the two consumers' counts:
    https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/Create-alarm-on-metric-math-expression.html"""
    (ingest,) = alarms_on(template, "Quarantined")
    assert ingest["Dimensions"] == [{"Name": "service", "Value": "ingest"}]
    assert ingest["Threshold"] == {"Ref": "QuarantineAlarmThreshold"}
    stream = resource(template, "StreamQuarantineAlarm")["Properties"]
    stats = {m["Id"]: m["MetricStat"]["Metric"] for m in stream["Metrics"] if "MetricStat" in m}
    assert {m["MetricName"] for m in stats.values()} == {"Quarantined"}
    assert {m["Dimensions"][0]["Value"] for m in stats.values()} == {"cache-updater", "stager"}
    (total,) = [m for m in stream["Metrics"] if m.get("ReturnData", True)]
    assert all(f"FILL({metric_id}, 0)" in total["Expression"] for metric_id in stats)
    assert (stream["Threshold"], stream["ComparisonOperator"]) == (0, "GreaterThanThreshold")


@pytest.mark.parametrize("logical_id", ["QuarantineBucket", "StagingBucket"])
def test_buckets_are_encrypted_versioned_private_and_tls_only(template: dict[str, Any], logical_id: str) -> None:
    props = resource(template, logical_id)["Properties"]
    assert (
        props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"][
            "SSEAlgorithm"
        ]
        == "aws:kms"
    )
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert props["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"]
    policies = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in resources_of(template, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": logical_id}
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in policies[0]
    )


def test_queues_and_log_groups_are_encrypted(template: dict[str, Any]) -> None:
    for queue in resources_of(template, "AWS::SQS::Queue").values():
        assert queue["Properties"]["KmsMasterKeyId"]
    for group in resources_of(template, "AWS::Logs::LogGroup").values():
        assert group["Properties"]["KmsKeyId"] and group["Properties"]["RetentionInDays"]


def test_samconfig_has_one_environment_per_region() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for region in ("us-east-1", "eu-west-1"):
        params = config[region]["deploy"]["parameters"]
        assert params["region"] == region
        assert "PrimaryRegion=us-east-1" in params["parameter_overrides"]


def test_private_subnets_in_two_azs_with_endpoints_and_no_internet_route(template: dict[str, Any]) -> None:
    subnets = resources_of(template, "AWS::EC2::Subnet")
    azs = {json.dumps(s["Properties"]["AvailabilityZone"]) for s in subnets.values()}
    assert len(subnets) >= 2 and len(azs) >= 2
    assert all(s["Properties"]["MapPublicIpOnLaunch"] is False for s in subnets.values())
    assert not resources_of(template, "AWS::EC2::InternetGateway")
    assert not resources_of(template, "AWS::EC2::NatGateway")
    services = {
        e["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 1)[1]: e["Properties"]["VpcEndpointType"]
        for e in resources_of(template, "AWS::EC2::VPCEndpoint").values()
    }
    assert services["dynamodb"] == services["s3"] == "Gateway"
    assert services["secretsmanager"] == "Interface"


def test_redis_is_multi_az_encrypted_with_auth_from_secrets_manager(template: dict[str, Any]) -> None:
    props = resource(template, "RedisReplicationGroup")["Properties"]
    assert props["MultiAZEnabled"] is True and props["AutomaticFailoverEnabled"] is True
    assert props["NumCacheClusters"] >= 2
    assert props["TransitEncryptionEnabled"] is True and props["AtRestEncryptionEnabled"] is True
    assert "resolve:secretsmanager" in props["AuthToken"]["Fn::Sub"]
    # who may connect: tests/unit/test_template_network.py
    assert resource(template, "CacheUpdaterFunction")["Properties"]["VpcConfig"]["SecurityGroupIds"] == [
        {"Ref": "CacheUpdaterSecurityGroup"}
    ]


@pytest.mark.parametrize("function", ["CacheUpdaterFunction", "StagerFunction"])
def test_stream_consumers_run_in_the_vpc(template: dict[str, Any], function: str) -> None:
    vpc = resource(template, function)["Properties"]["VpcConfig"]
    assert vpc["SubnetIds"] == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]


@pytest.mark.parametrize("mapping", MAPPINGS[1:])
def test_stream_consumer_mappings_read_this_regions_table_stream(template: dict[str, Any], mapping: str) -> None:
    esm = resource(template, mapping)
    assert esm["Condition"] == "ConsumesTableStream"
    assert esm["Properties"]["EventSourceArn"] == {
        "Fn::If": ["IsPrimaryRegion", {"Fn::GetAtt": ["ReadingsTable", "StreamArn"]}, {"Ref": "ReplicaStreamArn"}]
    }


def test_stager_filter_keeps_own_region_reading_writes_only(template: dict[str, Any]) -> None:
    (pattern,) = resource(template, "StagerEventSourceMapping")["Properties"]["FilterCriteria"]["Filters"]
    parsed = json.loads(pattern["Pattern"]["Fn::Sub"].replace("${AWS::Region}", "eu-west-1"))
    assert parsed["dynamodb"]["NewImage"]["origin_region"] == {"S": ["eu-west-1"]}
    assert parsed["eventName"] == ["INSERT", "MODIFY"]


def test_one_warehouse_in_the_primary_region_private_encrypted_audited(template: dict[str, Any]) -> None:
    ns, wg = resource(template, "RedshiftNamespace"), resource(template, "RedshiftWorkgroup")
    assert ns["Condition"] == wg["Condition"] == "IsPrimaryRegion"
    assert ns["Properties"]["KmsKeyId"] == {"Ref": "DataKey"}
    assert set(ns["Properties"]["LogExports"]) == {"useractivitylog", "userlog", "connectionlog"}
    assert ns["Properties"]["ManageAdminPassword"] is True
    props = wg["Properties"]
    assert props["PubliclyAccessible"] is False and props["EnhancedVpcRouting"] is True
    assert {"ParameterKey": "require_ssl", "ParameterValue": "true"} in props["ConfigParameters"]
    assert len(props["SubnetIds"]) == 3
    assert "SecurityGroupIngress" not in resource(template, "RedshiftSecurityGroup")["Properties"]


def test_copy_role_reads_only_staged_readings_and_manifests(template: dict[str, Any]) -> None:
    (policy,) = resource(template, "RedshiftCopyRole")["Properties"]["Policies"]
    stmts = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert stmts["ReadStagedReadingsAndManifests"]["Action"] == "s3:GetObject"
    resources = json.dumps(stmts["ReadStagedReadingsAndManifests"]["Resource"])
    assert "/readings/*" in resources and "/manifests/*" in resources and '"*"' not in resources


def test_loader_runs_on_a_schedule_alone(template: dict[str, Any]) -> None:
    fn = resource(template, "LoaderFunction")
    assert fn["Condition"] == "IsPrimaryRegion"
    # one at a time when ReserveConcurrency=true (tests/unit/test_template_deploy.py: off by default)
    assert fn["Properties"]["ReservedConcurrentExecutions"]["Fn::If"][:2] == ["ReservesConcurrency", 1]
    schedule = fn["Properties"]["Events"]["LoadSchedule"]
    assert schedule["Type"] == "Schedule" and "rate(" in schedule["Properties"]["Schedule"]["Fn::Sub"]


#: Functions bounded by their HTTP API stage's throttling instead of reserved concurrency (issue 15: the others
#: may reserve theirs (ReserveConcurrency), and Lambda keeps 100 of the account's concurrency unreserved:
#: https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html).
API_THROTTLED = {"ReadApiFunction": "ReadApi"}


def test_functions_encrypt_their_environment_and_bound_their_concurrency(template: dict[str, Any]) -> None:
    assert template["Globals"]["Function"]["KmsKeyArn"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    for name, fn in resources_of(template, "AWS::Serverless::Function").items():
        if name in API_THROTTLED:
            assert "ReservedConcurrentExecutions" not in fn["Properties"], name
            assert resource(template, API_THROTTLED[name])["Properties"]["DefaultRouteSettings"], name
        else:
            assert fn["Properties"]["ReservedConcurrentExecutions"]["Fn::If"][1] >= 1, name  # when reserved
        assert "VpcConfig" in fn["Properties"], name


def test_data_buckets_log_access_to_the_log_bucket(template: dict[str, Any]) -> None:
    for name in ("QuarantineBucket", "StagingBucket"):
        logging = resource(template, name)["Properties"]["LoggingConfiguration"]
        assert logging["DestinationBucketName"] == {"Ref": "AccessLogsBucket"}


def test_every_checkov_suppression_says_why(template: dict[str, Any]) -> None:
    skips = [
        (name, s)
        for name, r in template["Resources"].items()
        for s in r.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for name, skip in skips:
        assert skip["id"].startswith("CKV") and len(skip.get("comment", "")) > 40, (name, skip)


def alarms_on(template: dict[str, Any], metric: object) -> list[dict[str, Any]]:
    return [
        a["Properties"]
        for a in resources_of(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == metric  # metric-math alarms have Metrics instead
    ]


def alarmed_names(template: dict[str, Any], metric: str) -> set[str]:
    out = set()
    for props in alarms_on(template, metric):
        for d in props["Dimensions"]:
            v = d["Value"]
            out.add(v.get("Ref") or v.get("Fn::GetAtt", [""])[0] if isinstance(v, dict) else v)
    return out


def test_cache_updater_takes_readings_for_the_cache_and_latest_changes_for_the_repair(
    template: dict[str, Any],
) -> None:
    """One mapping serves both purposes of CacheUpdaterFunction. Its filters are ORed: a record that satisfies
    one or more of them is sent to the function (https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html,
    five filters per mapping by default). The repair's conditional PutItem is the only table write the role allows,
    and the repair's failures, which share the function's Errors, IteratorAge and queue alarms with the cache's,
    have an alarm of their own."""
    filters = resource(template, "CacheUpdaterEventSourceMapping")["Properties"]["FilterCriteria"]["Filters"]
    assert [json.loads(f["Pattern"]) for f in filters] == [
        {"eventName": ["INSERT", "MODIFY"], "dynamodb": {"Keys": {"sk": {"S": [{"prefix": "R#"}]}}}},
        {"eventName": ["MODIFY"], "dynamodb": {"Keys": {"sk": {"S": ["LATEST"]}}}},
    ]
    statements = resource(template, "CacheUpdaterRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    table_actions = {a for st in statements for a in _actions(st) if a.startswith("dynamodb:")}
    stream_reads = {
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
    }
    assert table_actions == stream_reads | {"dynamodb:PutItem"}
    (put,) = [st for st in statements if "dynamodb:PutItem" in _actions(st)]
    assert put["Resource"]["Fn::Sub"].endswith(":table/${TableName}")
    for metric in ("CacheFailures", "LatestRepairFailures"):
        (alarm,) = alarms_on(template, metric)
        assert alarm["Dimensions"] == [{"Name": "service", "Value": "cache-updater"}]


#: Parameters of each stack the template deploys, and of the secondary's first deploy (before its replica exists).
STACKS = {
    "primary": {"AWS::Region": "us-east-1", "PrimaryRegion": "us-east-1", "ReplicaStreamArn": ""},
    "secondary": {
        "AWS::Region": "eu-west-1",
        "PrimaryRegion": "us-east-1",
        "ReplicaStreamArn": "arn:aws:dynamodb:eu-west-1:123456789012:table/readings/stream/2026-01-01T00:00:00.000",
    },
    "secondary-before-replica": {"AWS::Region": "eu-west-1", "PrimaryRegion": "us-east-1", "ReplicaStreamArn": ""},
}


def resolved(template: dict[str, Any], value: Any, params: dict[str, str]) -> Any:
    """``value`` with conditions, ``Fn::If`` and the parameters in ``params`` resolved; anything else kept."""
    if not isinstance(value, dict) or len(value) != 1:
        return value
    ((fn, arg),) = value.items()
    if fn == "Ref":
        return params.get(arg, value)
    if fn == "Condition":
        return resolved(template, template["Conditions"][arg], params)
    if fn == "Fn::If":
        name, yes, no = arg
        return resolved(template, yes if resolved(template, {"Condition": name}, params) else no, params)
    if fn == "Fn::Equals":
        return resolved(template, arg[0], params) == resolved(template, arg[1], params)
    if fn == "Fn::Not":
        return not resolved(template, arg[0], params)
    if fn == "Fn::Or":
        return any(resolved(template, a, params) for a in arg)
    if fn == "Fn::And":
        return all(resolved(template, a, params) for a in arg)
    return value


STREAM_ATTRIBUTES = {"StreamArn", "LatestStreamArn"}  # of AWS::DynamoDB::GlobalTable, AWS::DynamoDB::Table


def table_stream_readers(template: dict[str, Any], params: dict[str, str]) -> dict[str, list[str]]:
    """The event source mappings a stack creates on each DynamoDB table stream, by stream."""
    readers: dict[str, list[str]] = {}
    for name, esm in resources_of(template, "AWS::Lambda::EventSourceMapping").items():
        if "Condition" in esm and not resolved(template, {"Condition": esm["Condition"]}, params):
            continue
        source = resolved(template, esm["Properties"]["EventSourceArn"], params)
        on_table = isinstance(source, dict) and source.get("Fn::GetAtt", ["", ""])[1] in STREAM_ATTRIBUTES
        if on_table or (isinstance(source, str) and ":dynamodb:" in source and "/stream/" in source):
            readers.setdefault(json.dumps(source, sort_keys=True), []).append(name)
    return readers


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_no_table_stream_has_more_than_two_readers(template: dict[str, Any], stack: str) -> None:
    """AWS: "For single-Region tables that are not global tables, you can design for up to two Lambda functions
    to read from the same DynamoDB Streams shard at the same time. Exceeding this limit can result in request
    throttling." (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html, "Simultaneous readers of a shard
    in DynamoDB Streams"; the same quota: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html).
    Every mapping reads every shard of its stream, so each stack, its conditions resolved as it deploys, may
    put at most two mappings on a table stream."""
    readers = table_stream_readers(template, STACKS[stack])
    assert all(len(names) <= 2 for names in readers.values()), readers
    assert bool(readers) == (STACKS[stack]["AWS::Region"] == "us-east-1" or bool(STACKS[stack]["ReplicaStreamArn"]))


@pytest.mark.xfail(strict=True, reason="open: the stager is a second reader of a global table's stream (issue 15)")
@pytest.mark.parametrize("stack", ["primary", "secondary"])
def test_a_global_tables_stream_has_one_reader(template: dict[str, Any], stack: str) -> None:
    """The same pages go further for global tables: "For global tables, we recommend you limit the number of
    simultaneous functions to one to avoid request throttling."
    (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html). ReadingsTable is an AWS::DynamoDB::GlobalTable."""
    assert resource(template, "ReadingsTable")["Type"] == "AWS::DynamoDB::GlobalTable"
    readers = table_stream_readers(template, STACKS[stack])
    assert all(len(names) <= 1 for names in readers.values()), readers


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


def test_every_function_is_alarmed_on_errors_throttles_and_p99_duration(template: dict[str, Any]) -> None:
    functions = set(resources_of(template, "AWS::Serverless::Function"))
    for metric in ("Errors", "Throttles", "Duration"):
        assert functions <= alarmed_names(template, metric), metric
    assert all(a["ExtendedStatistic"] == "p99" for a in alarms_on(template, "Duration"))


def test_stream_lag_given_up_batches_replication_and_load_lag_are_alarmed(template: dict[str, Any]) -> None:
    mapped = {
        r["Properties"]["FunctionName"]["Ref"]
        for r in resources_of(template, "AWS::Lambda::EventSourceMapping").values()
    }
    assert mapped <= alarmed_names(template, "IteratorAge")
    destinations = {
        r["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]["Fn::GetAtt"][0]
        for r in resources_of(template, "AWS::Lambda::EventSourceMapping").values()
    }
    assert destinations | {"LoaderDeadLetterQueue"} <= alarmed_names(template, "ApproximateNumberOfMessagesVisible")
    for metric in (
        "ReplicationLatency",
        "WriteThrottleEvents",
        "Quarantined",
        "OldestPendingAgeSeconds",
        "LoadFailures",
    ):
        assert alarms_on(template, metric), metric
    for props in resources_of(template, "AWS::CloudWatch::Alarm").values():
        assert props["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    assert resource(template, "AlarmTopic")["Properties"]["KmsMasterKeyId"] == {"Ref": "DataKey"}


def test_dashboard_shows_the_flow_stage_by_stage(template: dict[str, Any]) -> None:
    body = json.loads(resource(template, "Dashboard")["Properties"]["DashboardBody"]["Fn::Sub"][0])
    stages = [int(w["properties"]["title"].split(" ", 1)[0]) for w in body["widgets"]]
    assert stages == list(range(1, len(stages) + 1)) and len(stages) >= 8


def test_aurora_global_database_multi_az_encrypted_two_day_backups(template: dict[str, Any]) -> None:
    global_cluster = resource(template, "AuroraGlobalCluster")
    assert global_cluster["Condition"] == "IsPrimaryRegion"
    assert global_cluster["Properties"]["Engine"] == "aurora-postgresql"
    assert global_cluster["Properties"]["StorageEncrypted"] is True
    cluster = resource(template, "AuroraCluster")["Properties"]
    assert cluster["GlobalClusterIdentifier"] == {
        "Fn::If": ["IsPrimaryRegion", {"Ref": "AuroraGlobalCluster"}, {"Ref": "GlobalClusterName"}]
    }
    assert cluster["BackupRetentionPeriod"] == 2
    assert cluster["StorageEncrypted"] is True and cluster["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    assert cluster["DeletionProtection"] is True and cluster["EnableIAMDatabaseAuthentication"] is True
    # the password is a generated secret, read by dynamic reference (tests/unit/test_template_deploy.py)
    assert "ManageMasterUserPassword" not in cluster
    assert "{{resolve:secretsmanager:" in cluster["MasterUserPassword"]["Fn::If"][1]["Fn::Sub"]
    instances = [i["Properties"] for i in resources_of(template, "AWS::RDS::DBInstance").values()]
    assert len(instances) >= 2 and all(i["DBClusterIdentifier"] == {"Ref": "AuroraCluster"} for i in instances)
    assert len({json.dumps(i["AvailabilityZone"]) for i in instances}) == len(instances)  # different AZs
    assert not any(i["PubliclyAccessible"] for i in instances)
    assert "SecurityGroupIngress" not in resource(template, "AuroraSecurityGroup")["Properties"]  # see below
    assert resource(template, "AuroraFromRotation")["Properties"]["SourceSecurityGroupId"] == {
        "Ref": "AuroraRotationSecurityGroup"
    }
    assert alarms_on(template, {"Fn::If": ["IsPrimaryRegion", "AuroraReplicaLag", "AuroraGlobalDBReplicationLag"]})


def test_operator_policies_are_scoped_producers_to_the_stream_probe_to_its_markers(template: dict[str, Any]) -> None:
    producer = resource(template, "ProducerPolicy")["Properties"]["PolicyDocument"]["Statement"]
    assert {a for st in producer for a in _actions(st)} == {
        "kinesis:PutRecords",
        "kinesis:PutRecord",
        "kinesis:DescribeStreamSummary",
        "kinesis:ListShards",
        "kms:GenerateDataKey",
    }
    assert producer[0]["Resource"] == {"Fn::GetAtt": ["ReadingsStream", "Arn"]}
    (probe,) = resource(template, "ReplicationProbePolicy")["Properties"]["PolicyDocument"]["Statement"]
    assert probe["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{PROBE_PK_PREFIX}*"]}}
    assert set(_actions(probe)) == {"dynamodb:PutItem", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"}


def on(target: object, *actions: str) -> set[tuple[str, str]]:
    """``(action, resource)`` pairs as the role tests compare grants."""
    return {(a, json.dumps(target, sort_keys=True)) for a in actions}


#: What Lambda needs to run in a VPC and to trace: actions without resource-level permissions
#: (https://docs.aws.amazon.com/lambda/latest/dg/configuration-vpc.html).
IN_VPC_AND_TRACED = on(
    "*",
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
)


def test_the_loader_reads_staged_objects_to_join_them_and_their_joined_copies_expire(template: dict[str, Any]) -> None:
    """The loader joins staged objects into COPY files of 1 MB or more (devicepipe.compaction): it reads the staged
    readings (GetObject on readings/* only) and writes the joined files under manifests/compacted/, which the
    COPY role already reads (manifests/*). A lifecycle rule's Prefix limits it to keys that start with it
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-properties-s3-bucket-rule.html), so the
    joined copies go after a day while staged readings keep their retention."""
    (policy,) = resource(template, "LoaderRole")["Properties"]["Policies"]
    stmts = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert stmts["ReadStagedReadings"]["Action"] == "s3:GetObject"
    assert stmts["ReadStagedReadings"]["Resource"] == {"Fn::Sub": "${StagingBucket.Arn}/readings/*"}
    assert stmts["Manifests"]["Resource"] == {"Fn::Sub": "${StagingBucket.Arn}/manifests/*"}
    rules = {r["Id"]: r for r in resource(template, "StagingBucket")["Properties"]["LifecycleConfiguration"]["Rules"]}
    joined = rules["expire-joined-copy-files"]
    assert joined["Prefix"] == f"{COMPACTED_PREFIX}/" and joined["ExpirationInDays"] == 1
    assert joined["Status"] == "Enabled" and "Prefix" not in rules["expire-staged-readings"]
