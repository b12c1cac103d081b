"""The checkable rules of docs/template-review.md: retention, cross-region references, per-region conditions.

Each test names the AWS page its rule comes from. The template is evaluated as each samconfig environment deploys
it (``Stack`` of test_template_deploy), so a rule about "the secondary stack" is checked on what eu-west-1 creates.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest

from devicepipe_tools.template import ROOT, resource
from tests.unit.test_template_deploy import Stack, environments

REVIEW_DOC = ROOT / "docs" / "template-review.md"
DEPLOY_DOCS = (ROOT / "README.md", ROOT / "docs" / "warehouse-regions.md")

# What cfn-lint's I3011 calls stateful (its StatefulResources.json, the types this template uses), plus two types
# it does not list that hold data here: the Aurora global database and the Redshift Serverless namespace.
STATEFUL_TYPES = {
    "AWS::DynamoDB::GlobalTable",
    "AWS::ElastiCache::ReplicationGroup",
    "AWS::KMS::Key",
    "AWS::Kinesis::Stream",
    "AWS::Logs::LogGroup",
    "AWS::RDS::DBCluster",
    "AWS::RDS::DBInstance",
    "AWS::RDS::GlobalCluster",
    "AWS::RedshiftServerless::Namespace",
    "AWS::S3::Bucket",
    "AWS::SQS::Queue",
    "AWS::SecretsManager::Secret",
}
# Data nothing can rebuild: it must outlive both the stack and a replacement.
IRREPLACEABLE = {
    "ReadingsTable": "Retain",
    "StagingBucket": "Retain",
    "QuarantineBucket": "Retain",
    "AccessLogsBucket": "Retain",
    "DataKey": "Retain",
    "AuroraGlobalCluster": "Retain",
    "AuroraCluster": "Snapshot",
    "AuroraMasterSecret": "Retain",
    "RedshiftNamespace": "Retain",
}
# Physical-name properties of account-wide (not regional) namespaces: two regional stacks must not both claim one.
GLOBAL_NAMES = {
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
    "AWS::IAM::InstanceProfile": "InstanceProfileName",
    "AWS::S3::Bucket": "BucketName",
    "AWS::RDS::GlobalCluster": "GlobalClusterIdentifier",
}
# Values one region's stack takes from the other's (no cross-region Ref exists): parameter -> the region that needs it.
CROSS_REGION = {
    "ReplicaStreamArn": "secondary",
    "PrimaryStagingBucket": "secondary",
    "PrimaryStagingKeyId": "secondary",
    "SecondaryStagingBucket": "primary",
}
# Parameters only the primary's resources use, and only the secondary's.
PRIMARY_ONLY = ("SecondaryStagingBucket", "LoadIntervalMinutes", "RedshiftBaseCapacity")
SECONDARY_ONLY = ("ReplicaStreamArn", "PrimaryStagingBucket", "PrimaryStagingKeyId")
# Names both regions must give the same value: the shared table, the shared global database and its engine.
SHARED = ("PrimaryRegion", "SecondaryRegion", "TableName", "GlobalClusterName", "AuroraEngineVersion")

PLACEHOLDER = re.compile(r"<([A-Za-z0-9]+)(?:\.[A-Za-z0-9.]+)?>")
STREAM_ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/devicepipe-readings/stream/2026-01-01T00:00:00.000"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"


def stacks() -> dict[str, dict[str, str]]:
    """The samconfig environments keyed by role: ``primary`` and ``secondary``."""
    out = {}
    for values in environments().values():
        role = "primary" if values["AWS::Region"] == values.get("PrimaryRegion", "us-east-1") else "secondary"
        out[role] = values
    return out


def deploy(template: dict[str, Any], role: str, **params: str) -> Stack:
    return Stack(template, {**stacks()[role], **params})


def outputs(stack: Stack) -> dict[str, Any]:
    """The outputs this stack has, their values resolved."""
    return {
        name: stack.resolve(out["Value"])
        for name, out in stack.template.get("Outputs", {}).items()
        if "Condition" not in out or stack.condition(out["Condition"])
    }


def refers_to(node: Any, logical_id: str) -> bool:
    """Whether a template node names a resource by Ref, GetAtt or a ${...} of Sub."""
    if isinstance(node, dict):
        if node.get("Ref") == logical_id:
            return True
        att = node.get("Fn::GetAtt")
        if isinstance(att, list) and att and att[0] == logical_id:
            return True
        sub = node.get("Fn::Sub")
        text = sub if isinstance(sub, str) else sub[0] if isinstance(sub, list) else ""
        if re.search(rf"\$\{{{logical_id}[.}}]", text):
            return True
        return any(refers_to(v, logical_id) for v in node.values())
    if isinstance(node, list):
        return any(refers_to(v, logical_id) for v in node)
    return False


def deploy_docs() -> str:
    return "\n".join(path.read_text() for path in DEPLOY_DOCS)


# ---------------------------------------------------------------- deletion and replacement
def test_data_nothing_can_rebuild_outlives_stack_deletion_and_replacement(template: dict[str, Any]) -> None:
    """Retain/Snapshot on deletion and on replacement: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-attribute-updatereplacepolicy.html"""
    for logical_id, policy in IRREPLACEABLE.items():
        res = resource(template, logical_id)
        assert (res.get("DeletionPolicy"), res.get("UpdateReplacePolicy")) == (policy, policy), logical_id
    # deletion protection as well, where the service has it: a stack deletion cannot take them by mistake
    assert resource(template, "AuroraGlobalCluster")["Properties"]["DeletionProtection"] is True
    assert resource(template, "AuroraCluster")["Properties"]["DeletionProtection"] is True
    replicas = resource(template, "ReadingsTable")["Properties"]["Replicas"]
    assert all(replica["DeletionProtectionEnabled"] is True for replica in replicas)


def test_every_stateful_resource_states_its_deletion_and_replace_policy(template: dict[str, Any]) -> None:
    """No DeletionPolicy means CloudFormation deletes the resource: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-attribute-deletionpolicy.html"""
    implicit = [
        logical_id
        for logical_id, res in template["Resources"].items()
        if res["Type"] in STATEFUL_TYPES and not {"DeletionPolicy", "UpdateReplacePolicy"} <= res.keys()
    ]
    assert implicit == []


def test_the_stack_key_outlives_everything_retained_that_it_encrypts(template: dict[str, Any]) -> None:
    """Data encrypted under a deleted KMS key is unrecoverable: https://docs.aws.amazon.com/kms/latest/developerguide/deleting-keys.html"""
    kept = [
        logical_id
        for logical_id, res in template["Resources"].items()
        if res.get("DeletionPolicy") in ("Retain", "Snapshot") and refers_to(res.get("Properties", {}), "DataKey")
    ]
    assert {"StagingBucket", "QuarantineBucket", "AuroraCluster", "AuroraMasterSecret", "RedshiftNamespace"} <= set(
        kept
    )
    key = resource(template, "DataKey")
    assert key["DeletionPolicy"] == key["UpdateReplacePolicy"] == "Retain"


def test_retained_resources_with_fixed_names_are_named_in_the_reviews_redeploy_section(
    template: dict[str, Any],
) -> None:
    """A custom-named resource blocks its own replacement (and a redeploy next to the retained one): https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-properties-name.html"""
    name_props = ("TableName", "GlobalClusterIdentifier", "NamespaceName", "BucketName", "Name", "LogGroupName")
    fixed = [
        logical_id
        for logical_id, res in template["Resources"].items()
        if res.get("DeletionPolicy") == "Retain" and any(p in res.get("Properties", {}) for p in name_props)
    ]
    assert sorted(fixed) == ["AuroraGlobalCluster", "ReadingsTable", "RedshiftNamespace"]
    section = REVIEW_DOC.read_text().split("## Redeploying after a deletion", 1)[1].split("\n## ", 1)[0]
    for logical_id in fixed:
        assert f"`{logical_id}`" in section, logical_id


# ---------------------------------------------------------------- what each region's stack creates and refers to
@pytest.mark.parametrize("role", ["primary", "secondary"])
def test_a_stack_refers_only_to_resources_it_creates(template: dict[str, Any], role: str) -> None:
    """A resource that a condition leaves out cannot be referenced: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/conditions-section-structure.html"""
    stack = deploy(template, role)
    deployed = stack.deployed()
    text = json.dumps([{k: v["Properties"] for k, v in deployed.items()}, outputs(stack)])
    missing = {m[1] for m in PLACEHOLDER.finditer(text)} - deployed.keys()
    assert missing == set(), f"{role} stack refers to resources it does not create: {sorted(missing)}"
    for logical_id, res in deployed.items():
        depends = res.get("DependsOn", [])
        for target in [depends] if isinstance(depends, str) else depends:
            assert target in deployed, f"{logical_id} DependsOn {target}, absent from the {role} stack"


def test_only_the_primary_creates_the_shared_resources_and_the_warehouse(template: dict[str, Any]) -> None:
    """The stack's Region must be one of the global table's replicas (the other replicas are created from it): https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-dynamodb-globaltable.html"""
    primary, secondary = deploy(template, "primary"), deploy(template, "secondary")
    shared = {"ReadingsTable", "AuroraGlobalCluster", "AuroraMasterSecret", "RedshiftWorkgroup", "LoaderFunction"}
    assert shared <= primary.deployed().keys()
    assert not shared & secondary.deployed().keys()
    replicas = [r["Region"] for r in primary.deployed()["ReadingsTable"]["Properties"]["Replicas"]]
    assert replicas == [primary.region, secondary.region]
    # the secondary joins what the primary created, by the name both are given
    assert (
        secondary.deployed()["AuroraCluster"]["Properties"]["GlobalClusterIdentifier"]
        == secondary.params["GlobalClusterName"]
    )
    assert "MasterUsername" not in secondary.deployed()["AuroraCluster"]["Properties"]


def test_no_account_wide_name_is_claimed_by_both_regions_stacks(template: dict[str, Any]) -> None:
    """IAM names, bucket names and global cluster identifiers are unique in the account, not per Region: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-properties-name.html"""
    claimed: dict[str, set[tuple[str, str]]] = {}
    for role in ("primary", "secondary"):
        stack = deploy(template, role)
        claimed[role] = {
            (res["Type"], str(res["Properties"][GLOBAL_NAMES[res["Type"]]]))
            for res in stack.deployed().values()
            if GLOBAL_NAMES.get(res["Type"]) in res["Properties"]
        }
    assert claimed["primary"] & claimed["secondary"] == set()


def test_both_regions_give_the_same_value_to_every_shared_name(template: dict[str, Any]) -> None:
    """Every replica of a global table has the same name: https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_UpdateGlobalTable.html"""
    primary, secondary = deploy(template, "primary"), deploy(template, "secondary")
    for name in SHARED:
        assert primary.params[name] == secondary.params[name], name
    assert {primary.region, secondary.region} == {primary.params["PrimaryRegion"], primary.params["SecondaryRegion"]}


# ---------------------------------------------------------------- cross-region values: parameters and outputs
def _refs_anywhere(node: Any, fn: str) -> bool:
    if isinstance(node, dict):
        return fn in node or any(_refs_anywhere(v, fn) for v in node.values())
    if isinstance(node, list):
        return any(_refs_anywhere(v, fn) for v in node)
    return False


def test_cross_region_values_arrive_as_parameters_from_samconfig_or_the_documented_command(
    template: dict[str, Any],
) -> None:
    """Fn::ImportValue reads only exports of the same Region: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/intrinsic-function-reference-importvalue.html"""
    assert not _refs_anywhere(template["Resources"], "Fn::ImportValue")
    assert not _refs_anywhere(template["Resources"], "Fn::GetStackOutput")
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    overrides = {
        role: next(
            env["deploy"]["parameters"].get("parameter_overrides", "")
            for env in config.values()
            if isinstance(env, dict)
            and env.get("deploy", {}).get("parameters", {}).get("region") == values["AWS::Region"]
        )
        for role, values in stacks().items()
    }
    docs = deploy_docs()
    for param, role in CROSS_REGION.items():
        assert param in template["Parameters"], param
        # not known before the other stack exists: empty by default, which the template reads as "not yet"
        assert template["Parameters"][param]["Default"] == "", param
        assert f"{param}=" in overrides[role] or f"{param}=" in docs, f"nothing documents how {role} gets {param}"


@pytest.mark.parametrize(
    ("param", "other"),
    [(p, "secondary") for p in PRIMARY_ONLY] + [(p, "primary") for p in SECONDARY_ONLY],
)
def test_a_parameter_of_one_region_leaves_no_trace_in_the_other_regions_stack(
    template: dict[str, Any], param: str, other: str
) -> None:
    """Conditions decide per stack which resources and values exist: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/conditions-section-structure.html"""
    marker = f"MARKER-{param}"
    values: dict[str, str] = {param: marker}
    if param == "PrimaryStagingBucket":  # the template's Rules pair it with the key
        values["PrimaryStagingKeyId"] = KEY_ID
    stack = deploy(template, other, **values)
    deployed = stack.deployed()
    text = json.dumps([{k: v["Properties"] for k, v in deployed.items()}, outputs(stack)])
    assert marker not in text, f"{param} (not the {other}'s) reaches the {other} stack"


def test_outputs_the_other_region_needs_exist_under_the_names_the_docs_give(template: dict[str, Any]) -> None:
    """Ref of a KMS key is its key ID, of a bucket its name: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-kms-key.html"""
    wanted = set(re.findall(r"(\w+)=<(primary|secondary) (\w+)>", deploy_docs()))
    assert {
        ("PrimaryStagingBucket", "primary", "StagingBucketName"),
        ("PrimaryStagingKeyId", "primary", "DataKeyId"),
    } <= wanted
    assert ("SecondaryStagingBucket", "secondary", "StagingBucketName") in wanted
    for param, role, output in wanted:
        assert param in template["Parameters"], param
        assert output in outputs(deploy(template, role)), f"the {role} stack has no output {output}"
    assert template["Outputs"]["DataKeyId"]["Value"] == {"Ref": "DataKey"}
    assert template["Outputs"]["StagingBucketName"]["Value"] == {"Ref": "StagingBucket"}
    key_pattern = re.compile(template["Parameters"]["PrimaryStagingKeyId"]["AllowedPattern"])
    assert key_pattern.fullmatch(KEY_ID)
    assert not key_pattern.fullmatch(f"arn:aws:kms:us-east-1:123456789012:key/{KEY_ID}")


# ---------------------------------------------------------------- the secondary's first deploy
def stream_consumers(stack: Stack) -> dict[str, Any]:
    return {
        logical_id: res["Properties"]["EventSourceArn"]
        for logical_id, res in stack.deployed().items()
        if res["Type"] == "AWS::Lambda::EventSourceMapping"
        and res["Properties"]["EventSourceArn"] != "<ReadingsStream.Arn>"
    }


def test_a_secondary_without_its_replica_stream_deploys_no_stream_consumer(template: dict[str, Any]) -> None:
    """A DynamoDB event source mapping needs the stream's ARN, which only the replica's Region knows: https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html"""
    first = deploy(template, "secondary")  # samconfig's eu-west-1 environment: no ReplicaStreamArn yet
    assert first.params["ReplicaStreamArn"] == ""
    assert stream_consumers(first) == {}
    assert "ReplicationConfiguration" not in first.deployed()["StagingBucket"]["Properties"]
    assert "StagingReplicationRole" not in first.deployed()
    # the ingest path runs from the start: it writes to the replica the primary stack created
    assert "IngestEventSourceMapping" in first.deployed()

    later = deploy(
        template,
        "secondary",
        ReplicaStreamArn=STREAM_ARN,
        PrimaryStagingBucket="primary-staging",
        PrimaryStagingKeyId=KEY_ID,
    )
    assert stream_consumers(later) == {
        "CacheUpdaterEventSourceMapping": STREAM_ARN,
        "StagerEventSourceMapping": STREAM_ARN,
    }
    assert "StagingReplicationRole" in later.deployed()
    # the primary reads its own table's stream, never a parameter
    assert set(stream_consumers(deploy(template, "primary", ReplicaStreamArn=STREAM_ARN)).values()) == {
        "<ReadingsTable.StreamArn>"
    }


def test_a_late_replica_stream_arn_is_read_from_the_trim_horizon(template: dict[str, Any]) -> None:
    """Stream records are kept for 24 hours, so a secondary given its ARN later catches up on at most a day: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Streams.html"""
    for mapping in ("CacheUpdaterEventSourceMapping", "StagerEventSourceMapping"):
        assert resource(template, mapping)["Properties"]["StartingPosition"] == "TRIM_HORIZON", mapping
    assert "24 hours" in REVIEW_DOC.read_text()
