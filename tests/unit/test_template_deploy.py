"""What a real `sam deploy` of template.yaml needs, read from the AWS docs (issue 15): each test names its page.

Nothing here reaches AWS. Where a rule depends on the region a stack is deployed in, the template's intrinsic
functions are evaluated for each samconfig environment (its region and parameter overrides), as CloudFormation
would evaluate them there.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import tomllib
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from devicepipe_tools.local.resources import RegionResources, Resolver
from devicepipe_tools.template import ROOT, resource
from tests.unit.test_template import resources_of

DEPLOY_DOC = ROOT / "docs" / "deploy.md"
LAYER_REQUIREMENTS = ROOT / "layers" / "common" / "requirements.txt"
BUILT_LAYER = ROOT / ".aws-sam" / "build" / "CommonLayer" / "python"


# ---------------------------------------------------------------- the template as each region's stack sees it
def environments() -> dict[str, dict[str, str]]:
    """Each samconfig deploy environment's region and parameter values (defaults, then its overrides)."""
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    out = {}
    for name, env in config.items():
        params = env.get("deploy", {}).get("parameters", {}) if isinstance(env, dict) else {}
        if "region" in params:
            pairs = [pair.split("=", 1) for pair in params.get("parameter_overrides", "").split()]
            overrides = {k: v.strip("\"'") for k, v in pairs}
            out[name] = {"AWS::Region": params["region"], **overrides}
    return out


class Stack(Resolver):
    """The local stack's resolver for one region with given parameter values, except that a resource's Ref or
    GetAtt, which only CloudFormation knows, resolves to ``<LogicalId>`` (``<LogicalId.Attribute>``)."""

    def __init__(self, template: dict[str, Any], values: dict[str, str]) -> None:
        super().__init__(template, RegionResources(values["AWS::Region"]))
        self.params |= {k: v for k, v in values.items() if k != "AWS::Region"}

    @property
    def region(self) -> str:
        return self.resources.region

    @property
    def values(self) -> dict[str, Any]:
        return self.pseudo | self.params

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        try:
            return super()._ref(name)
        except KeyError:
            return f"<{name}>"

    def _get_att(self, logical: str, attr: str) -> Any:
        return f"<{logical}.{attr}>"

    def deployed(self) -> dict[str, dict[str, Any]]:
        """The resources this region's stack creates, their properties evaluated (AWS::NoValue dropped)."""
        out = {}
        for name, res in self.template["Resources"].items():
            if "Condition" not in res or self.condition(res["Condition"]):
                out[name] = {**res, "Properties": _drop_novalue(self.resolve(res.get("Properties", {})))}
        return out


NO_VALUE = "<AWS::NoValue>"


def _drop_novalue(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_novalue(v) for k, v in node.items() if v != NO_VALUE}
    if isinstance(node, list):
        return [_drop_novalue(v) for v in node if v != NO_VALUE]
    return node


@pytest.fixture(params=sorted(environments()))
def stack(request: pytest.FixtureRequest, template: dict[str, Any]) -> Stack:
    """The template as one samconfig environment deploys it (us-east-1: primary, eu-west-1: secondary)."""
    return Stack(template, environments()[request.param])


# ---------------------------------------------------------------- 1. Aurora master credentials
def test_aurora_master_password_is_a_secret_the_stack_generates_not_one_rds_manages(template: dict[str, Any]) -> None:
    """Managed master passwords are not supported for clusters in a global database: https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/rds-secrets-manager.html"""
    cluster = resource(template, "AuroraCluster")["Properties"]
    assert "ManageMasterUserPassword" not in cluster and "MasterUserSecret" not in cluster
    secret = resource(template, "AuroraMasterSecret")
    assert secret["Type"] == "AWS::SecretsManager::Secret" and secret["Condition"] == "IsPrimaryRegion"
    generated = secret["Properties"]["GenerateSecretString"]
    assert generated["GenerateStringKey"] == "password" and 8 <= generated["PasswordLength"] <= 41
    assert json.loads(generated["SecretStringTemplate"]) == {"username": "devicepipe_admin"}
    assert not set(generated["ExcludeCharacters"]) ^ set("/'\"@ \\")  # what RDS refuses (and the escape)
    assert secret["Properties"]["KmsKeyId"] == {"Ref": "DataKey"}
    # the cluster's final snapshot keeps this password: the secret outlives the stack
    assert secret["DeletionPolicy"] == secret["UpdateReplacePolicy"] == "Retain"


def test_primary_cluster_reads_its_master_user_by_dynamic_reference_and_a_secondary_takes_none(stack: Stack) -> None:
    """A secondary cluster inherits the global database primary's master user: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-rds-dbcluster.html"""
    cluster = stack.deployed()["AuroraCluster"]["Properties"]
    if stack.condition("IsPrimaryRegion"):
        for prop, key in (("MasterUsername", "username"), ("MasterUserPassword", "password")):
            assert cluster[prop] == f"{{{{resolve:secretsmanager:<AuroraMasterSecret>:SecretString:{key}}}}}"
        assert "AuroraMasterSecret" in stack.deployed()
    else:
        assert not {"MasterUsername", "MasterUserPassword", "ManageMasterUserPassword"} & set(cluster)
        assert "AuroraMasterSecret" not in stack.deployed()


def test_aurora_master_secret_rotates_with_the_hosted_postgresql_single_user_function(template: dict[str, Any]) -> None:
    """Rotation of a database secret waits for the SecretTargetAttachment: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-secretsmanager-rotationschedule.html"""
    attachment = resource(template, "AuroraMasterSecretAttachment")["Properties"]
    assert attachment == {
        "SecretId": {"Ref": "AuroraMasterSecret"},
        "TargetId": {"Ref": "AuroraCluster"},
        "TargetType": "AWS::RDS::DBCluster",
    }
    rotation = resource(template, "AuroraMasterSecretRotation")
    assert rotation["Condition"] == "IsPrimaryRegion"
    assert {"AuroraMasterSecretAttachment", "AuroraInstanceA"} <= set(rotation["DependsOn"])
    props = rotation["Properties"]
    assert props["SecretId"] == {"Ref": "AuroraMasterSecret"}
    assert 1 <= props["RotationRules"]["AutomaticallyAfterDays"] <= 90
    hosted = props["HostedRotationLambda"]
    assert hosted["RotationType"] == "PostgreSQLSingleUser"
    assert hosted["KmsKeyArn"] == {"Fn::GetAtt": ["DataKey", "Arn"]}  # the secret's key
    assert (
        hosted["ExcludeCharacters"]
        == resource(template, "AuroraMasterSecret")["Properties"]["GenerateSecretString"]["ExcludeCharacters"]
    )
    # in the private subnets, where the Secrets Manager endpoint and the cluster answer its own group (what that
    # group may reach: tests/unit/test_template_network.py)
    assert hosted["VpcSubnetIds"] == {"Fn::Join": [",", [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]]}
    assert hosted["VpcSecurityGroupIds"] == {"Ref": "AuroraRotationSecurityGroup"}


def test_a_hosted_rotation_declares_the_secrets_manager_transform_and_deploys_with_auto_expand(
    template: dict[str, Any],
) -> None:
    """HostedRotationLambda needs the AWS::SecretsManager transform (a macro making a nested stack): https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/transform-aws-secretsmanager.html"""
    transforms = template["Transform"] if isinstance(template["Transform"], list) else [template["Transform"]]
    hosted = [
        r
        for r in resources_of(template, "AWS::SecretsManager::RotationSchedule").values()
        if "HostedRotationLambda" in r["Properties"]
    ]
    assert hosted
    assert "AWS::Serverless-2016-10-31" in transforms
    assert {"AWS::SecretsManager-2020-07-23", "AWS::SecretsManager-2024-09-16"} & set(transforms)
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for env in environments():
        assert "CAPABILITY_AUTO_EXPAND" in config[env]["deploy"]["parameters"]["capabilities"].split(), env


def test_the_master_secret_is_replicated_to_the_secondary_region(stack: Stack) -> None:
    """A replica secret keeps the credentials readable in the other region if the primary's is lost: https://docs.aws.amazon.com/secretsmanager/latest/userguide/create-manage-multi-region-secrets.html"""
    if stack.condition("IsPrimaryRegion"):
        replicas = stack.deployed()["AuroraMasterSecret"]["Properties"]["ReplicaRegions"]
        assert [r["Region"] for r in replicas] == [stack.values["SecondaryRegion"]] != [stack.region]


# ---------------------------------------------------------------- 4, 5. replication latency: alarm and dashboard
def test_replication_alarm_fires_when_the_slowest_write_takes_1_s(template: dict[str, Any]) -> None:
    """ReplicationLatency: milliseconds, 5-minute granularity, Average/Minimum/Maximum only: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/metrics-dimensions.html"""
    (alarm,) = [
        a
        for a in resources_of(template, "AWS::CloudWatch::Alarm").values()
        if (a["Properties"].get("Namespace"), a["Properties"].get("MetricName"))
        == ("AWS/DynamoDB", "ReplicationLatency")
    ]
    props = alarm["Properties"]
    # "under 1 s" is about every write, so the slowest one: an average hides the slow tail
    assert props["Statistic"] == "Maximum" and "ExtendedStatistic" not in props
    assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1000)
    assert props["Period"] == 300  # the metric's granularity: a shorter period would see mostly missing data
    # M of N (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/AlarmThatSendsEmail.html): one
    # slow period alone does not page, and the alarm clears without waiting for N good periods in a row
    assert 2 <= props["DatapointsToAlarm"] < props["EvaluationPeriods"] <= 5
    assert props["TreatMissingData"] == "notBreaching"


def receiving_regions(stack: Stack) -> dict[str, str]:
    """The ReceivingRegion each replication metric of this stack's alarm and dashboard names."""
    resources = stack.deployed()
    out = {}
    for name, res in resources.items():
        props = res["Properties"]
        metric = (props.get("Namespace"), props.get("MetricName"))
        if res["Type"] == "AWS::CloudWatch::Alarm" and metric == ("AWS/DynamoDB", "ReplicationLatency"):
            (out[name],) = [d["Value"] for d in props["Dimensions"] if d["Name"] == "ReceivingRegion"]
    body = json.loads(resources["Dashboard"]["Properties"]["DashboardBody"])
    for widget in body["widgets"]:
        for row in widget["properties"].get("metrics", []):
            if row[:2] == ["AWS/DynamoDB", "ReplicationLatency"]:
                out[widget["properties"]["title"]] = row[row.index("ReceivingRegion") + 1]
    return out


def test_each_region_shows_and_alarms_on_replication_to_the_other_region(stack: Stack) -> None:
    """DynamoDB emits ReplicationLatency per source and destination Region pair: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/V2globaltables_monitoring.html"""
    other = ({stack.values["PrimaryRegion"], stack.values["SecondaryRegion"]} - {stack.region}).pop()
    shown = receiving_regions(stack)
    assert len(shown) == 2  # the alarm and the dashboard widget
    assert set(shown.values()) == {other}, shown


# ---------------------------------------------------------------- 6. reserved concurrency and the account quota
def reserved_when_on(template: dict[str, Any], stack: Stack) -> int:
    on = Stack(template, {**stack.values, "ReserveConcurrency": "true"})
    return sum(f["Properties"].get("ReservedConcurrentExecutions", 0) for f in reserving_functions(on))


def reserving_functions(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in stack.deployed().values() if r["Type"] == "AWS::Serverless::Function"]


def test_reserved_concurrency_is_a_parameter_and_off_by_default(template: dict[str, Any], stack: Stack) -> None:
    """Lambda keeps 100 units of the account's concurrency unreserved: https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html"""
    param = template["Parameters"]["ReserveConcurrency"]
    assert param["Default"] == "false" and sorted(param["AllowedValues"]) == ["false", "true"]
    # by default a stack reserves nothing, so it deploys in an account with any concurrency quota
    assert all("ReservedConcurrentExecutions" not in f["Properties"] for f in reserving_functions(stack))
    # every reservation follows the parameter
    for name, fn in resources_of(template, "AWS::Serverless::Function").items():
        if "ReservedConcurrentExecutions" in fn["Properties"]:
            value = fn["Properties"]["ReservedConcurrentExecutions"]
            assert value["Fn::If"][0] == "ReservesConcurrency" and value["Fn::If"][2] == {"Ref": "AWS::NoValue"}
            assert value["Fn::If"][1] >= 1, name
    assert reserved_when_on(template, stack) > 0


def test_deploy_doc_states_the_concurrency_quota_a_reserving_stack_needs(template: dict[str, Any]) -> None:
    """The quota needed is 100 unreserved plus the reservations: https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html"""
    doc = DEPLOY_DOC.read_text()
    needed = max(reserved_when_on(template, Stack(template, values)) for values in environments().values())
    assert "ReserveConcurrency" in doc
    assert f"at least {100 + needed}" in doc, f"docs/deploy.md should say the quota must be at least {100 + needed}"


# ---------------------------------------------------------------- 7. boto3 with its botocore in the layer
def pins() -> dict[str, str]:
    out = {}
    for raw in LAYER_REQUIREMENTS.read_text().splitlines():
        if line := raw.split("#", 1)[0].strip():
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line  # the layer is built from exact pins
            out[req.name.lower()] = spec.version
    return out


def botocore_range(requires: list[str]) -> Requirement:
    (req,) = [Requirement(r) for r in requires if Requirement(r).name == "botocore" and not Requirement(r).marker]
    return req


def test_layer_pins_boto3_and_botocore_together_at_the_tested_versions() -> None:
    """A package that ships SDK dependencies must ship the SDK with them: https://docs.aws.amazon.com/lambda/latest/dg/python-package.html"""
    pinned = pins()
    assert pinned["boto3"] == importlib.metadata.version("boto3")  # what the test suite runs against
    assert pinned["botocore"] == importlib.metadata.version("botocore")
    assert Version(pinned["botocore"]) in botocore_range(importlib.metadata.requires("boto3") or []).specifier


def test_built_layer_ships_boto3_with_its_botocore() -> None:
    """Functions import the layer's packages before the runtime's: https://docs.aws.amazon.com/lambda/latest/dg/python-package.html"""
    if not BUILT_LAYER.is_dir():
        if os.environ.get("CI"):  # `make test` builds first (make package), so a missing build is a failure
            pytest.fail(f"{BUILT_LAYER.relative_to(ROOT)} is missing: run `make build`")
        pytest.skip("no sam build output (make build)")
    dists: dict[str, list[str]] = {}
    for info in BUILT_LAYER.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        dists.setdefault(name.lower().replace("_", "-"), []).append(version)
    pinned = pins()
    assert dists.get("boto3") == [pinned["boto3"]], "rebuild the layer (make build)"
    assert dists.get("botocore") == [pinned["botocore"]], "rebuild the layer (make build)"
    metadata = (BUILT_LAYER / f"boto3-{pinned['boto3']}.dist-info" / "METADATA").read_text()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert Version(pinned["botocore"]) in botocore_range(requires).specifier
    assert (BUILT_LAYER / "boto3" / "__init__.py").is_file() and (BUILT_LAYER / "botocore" / "__init__.py").is_file()


# ---------------------------------------------------------------- security findings
def test_logs_may_use_the_key_only_for_this_stacks_log_groups(template: dict[str, Any], stack: Stack) -> None:
    """The key policy binds CloudWatch Logs to log groups by the encryption context: https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/encrypt-log-data-kms.html"""
    key = stack.deployed()["DataKey"]["Properties"]["KeyPolicy"]["Statement"]
    (logs,) = [s for s in key if s["Principal"].get("Service") == f"logs.{stack.region}.amazonaws.com"]
    patterns = logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]
    patterns = patterns if isinstance(patterns, list) else [patterns]
    prefix = f"arn:aws:logs:{stack.region}:{stack.values['AWS::AccountId']}:log-group:"
    assert all(p.startswith(prefix) and stack.values["AWS::StackName"] in p for p in patterns), patterns
    # and every log group encrypted with the key is one of them (else creating it fails)
    groups = [
        r["Properties"]["LogGroupName"]
        for r in stack.deployed().values()
        if r["Type"] == "AWS::Logs::LogGroup" and r["Properties"].get("KmsKeyId") == "<DataKey.Arn>"
    ]
    assert groups
    for group in groups:
        assert any(fnmatch.fnmatchcase(prefix + group, p) for p in patterns), group


#: What a standard-iterator Kinesis mapping calls; SubscribeToShard is for enhanced fan-out consumers only.
STANDARD_ITERATOR = {
    "kinesis:DescribeStream",
    "kinesis:DescribeStreamSummary",
    "kinesis:GetRecords",
    "kinesis:GetShardIterator",
    "kinesis:ListShards",
}


def test_ingest_role_reads_its_stream_with_a_standard_iterators_actions_only(template: dict[str, Any]) -> None:
    """A standard iterator polls each shard; enhanced fan-out consumers subscribe: https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html"""
    esm = resource(template, "IngestEventSourceMapping")["Properties"]
    assert esm["EventSourceArn"] == {"Fn::GetAtt": ["ReadingsStream", "Arn"]}  # the stream, not a consumer
    assert not resources_of(template, "AWS::Kinesis::StreamConsumer")
    (policy,) = resource(template, "IngestRole")["Properties"]["Policies"]
    actions = set()
    for statement in policy["PolicyDocument"]["Statement"]:
        names = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        actions |= {a for a in names if a.startswith("kinesis:")}
    assert actions == STANDARD_ITERATOR


def test_redis_auth_token_meets_elasticache_rules_and_its_rotation_is_documented(template: dict[str, Any]) -> None:
    """AUTH tokens: 16-128 characters, few symbols, rotated by ROTATE then SET: https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/auth.html"""
    generated = resource(template, "RedisAuthSecret")["Properties"]["GenerateSecretString"]
    assert 16 <= generated["PasswordLength"] <= 128 and generated["ExcludePunctuation"] is True
    doc = DEPLOY_DOC.read_text()
    section = doc[doc.index("## Redis AUTH token") :]
    for needed in ("--auth-token-update-strategy ROTATE", "--auth-token-update-strategy SET", "put-secret-value"):
        assert needed in section, needed
    # ROTATE (both tokens valid), then the secret, then SET (only the new one): in that order
    rotate, put, set_ = (section.index(n) for n in ("ROTATE --apply", "put-secret-value", "SET --apply"))
    assert rotate < put < set_
