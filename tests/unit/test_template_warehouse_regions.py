"""One warehouse for two regions (issue 15 item 3, issue 19 items 2 and 4): the secondary region's staged readings
are replicated by S3 into the primary region's staging bucket, and the loader and COPY read only that bucket.

Each test encodes a rule of the AWS documentation, cited in its docstring; docs/warehouse-regions.md explains
the design.
"""

from __future__ import annotations

import json
from typing import Any

from devicepipe_tools.template import function_environment, resource
from tests.unit.test_template import resources_of

RULE_ID = "staged-readings-to-warehouse-region"
ORIGIN_PREFIX = {"Fn::Sub": "readings/origin=${AWS::Region}/"}


def replication(template: dict[str, Any]) -> dict[str, Any]:
    """The staging bucket's replication configuration, as the secondary stack deploys it."""
    conditional = resource(template, "StagingBucket")["Properties"]["ReplicationConfiguration"]
    condition, config, otherwise = conditional["Fn::If"]
    assert condition == "ReplicatesStaging" and otherwise == {"Ref": "AWS::NoValue"}
    return dict(config)


def rule(template: dict[str, Any]) -> dict[str, Any]:
    (only,) = replication(template)["Rules"]
    return dict(only)


def policy_statements(template: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    (policy,) = resource(template, role)["Properties"]["Policies"]
    return {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}


def test_only_the_secondary_stack_replicates_its_own_origin_prefix_into_the_primarys_bucket(
    template: dict[str, Any],
) -> None:
    """Replication copies new objects of a source bucket, filtered by prefix, to a destination bucket in another
    Region, keeping their keys and metadata (creation time included):
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication.html"""
    assert template["Conditions"]["ReplicatesStaging"] == {
        "Fn::And": [
            {"Fn::Not": [{"Fn::Condition": "IsPrimaryRegion"}]},  # (the loader's spelling of !Condition)
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "PrimaryStagingBucket"}, ""]}]},
        ]
    }
    r = rule(template)
    assert r["Id"] == RULE_ID and r["Status"] == "Enabled"
    # only this region's own readings (the stager writes nothing else there), under the same keys in the target
    assert r["Filter"] == {"Prefix": ORIGIN_PREFIX}
    assert r["Destination"]["Bucket"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${PrimaryStagingBucket}"}
    assert replication(template)["Role"] == {"Fn::GetAtt": ["StagingReplicationRole", "Arn"]}
    assert resource(template, "StagingReplicationRole")["Condition"] == "ReplicatesStaging"


def test_lifecycle_expirations_are_not_replicated_each_bucket_expires_its_own(template: dict[str, Any]) -> None:
    """With a Filter (configuration V2) delete markers are not replicated unless asked, and actions of a lifecycle
    configuration are never replicated:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-what-is-isnot-replicated.html"""
    assert rule(template)["DeleteMarkerReplication"] == {"Status": "Disabled"}
    lifecycle = resource(template, "StagingBucket")["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any(r["Status"] == "Enabled" and r.get("ExpirationInDays") for r in lifecycle)  # in both stacks


def test_replication_has_versioning_on_both_buckets(template: dict[str, Any]) -> None:
    """Replication requires that "both source and destination buckets must have versioning enabled":
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication.html#replication-requirements
    (source and destination are the same template's StagingBucket, deployed in each region)."""
    props = resource(template, "StagingBucket")["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert "Condition" not in resource(template, "StagingBucket")  # exists in both regions


def test_sse_kms_staged_objects_are_opted_in_and_replicas_use_a_key_of_the_destination_region(
    template: dict[str, Any],
) -> None:
    """SSE-KMS objects replicate only with SourceSelectionCriteria SseKmsEncryptedObjects enabled and a
    ReplicaKmsKeyID, a key "created in the same AWS Region as the destination buckets":
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-config-for-kms-objects.html ;
    a key ARN rather than an alias, which KMS would resolve in the requester's account:
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-properties-s3-bucket-encryptionconfiguration.html"""
    encryption = resource(template, "StagingBucket")["Properties"]["BucketEncryption"]
    default = encryption["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert default["SSEAlgorithm"] == "aws:kms"  # so every staged object is SSE-KMS: without the opt-in, none moves
    r = rule(template)
    assert r["SourceSelectionCriteria"] == {"SseKmsEncryptedObjects": {"Status": "Enabled"}}
    key = r["Destination"]["EncryptionConfiguration"]["ReplicaKmsKeyID"]["Fn::Sub"]
    assert key == "arn:${AWS::Partition}:kms:${PrimaryRegion}:${AWS::AccountId}:key/${PrimaryStagingKeyId}"
    assert template["Parameters"]["PrimaryStagingKeyId"]["AllowedPattern"].startswith("^$|^[0-9a-f]{8}-")
    outputs = template["Outputs"]
    assert outputs["DataKeyId"]["Value"] == {"Ref": "DataKey"}  # what the secondary stack is given
    assert outputs["StagingBucketName"]["Value"] == {"Ref": "StagingBucket"}


def test_s3_replication_time_control_with_its_metrics(template: dict[str, Any]) -> None:
    """S3 RTC replicates 99.99 % of objects within 15 minutes and turns replication metrics on:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-time-control.html ; ReplicationTime must be
    given with a Metrics block and 15 is the only valid time:
    https://docs.aws.amazon.com/AmazonS3/latest/API/API_ReplicationTimeValue.html"""
    destination = rule(template)["Destination"]
    assert destination["ReplicationTime"] == {"Status": "Enabled", "Time": {"Minutes": 15}}
    assert destination["Metrics"] == {"Status": "Enabled", "EventThreshold": {"Minutes": 15}}


def test_the_replication_role_has_what_s3_needs_and_no_more(template: dict[str, Any]) -> None:
    """The role S3 assumes needs GetReplicationConfiguration and ListBucket on the source bucket,
    GetObjectVersionForReplication/Acl/Tagging on its objects, Replicate* on the destination's objects:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/setting-repl-config-perm-overview.html ; for SSE-KMS,
    kms:Decrypt on the source key and kms:Encrypt on the replica key, with an S3 Bucket Key also kms:Decrypt on
    the replica key and the bucket ARN as encryption context:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-config-for-kms-objects.html . Same account:
    the destination bucket needs no policy granting it (only a cross-account destination does):
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication.html#replication-requirements"""
    role = resource(template, "StagingReplicationRole")["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "s3.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    stmts = policy_statements(template, "StagingReplicationRole")
    replicate = stmts["ReplicateIntoWarehouseRegion"]
    assert set(replicate["Action"]) == {"s3:ReplicateObject", "s3:ReplicateDelete", "s3:ReplicateTags"}
    assert replicate["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::${PrimaryStagingBucket}/readings/origin=${AWS::Region}/*"
    }
    source_key = stmts["DecryptSourceObjects"]
    assert source_key["Action"] == "kms:Decrypt" and source_key["Resource"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    assert source_key["Condition"]["StringEquals"] == {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}
    replica_key = stmts["EncryptReplicas"]
    assert set(replica_key["Action"]) == {"kms:Encrypt", "kms:Decrypt"}
    assert replica_key["Resource"] == rule(template)["Destination"]["EncryptionConfiguration"]["ReplicaKmsKeyID"]
    assert replica_key["Condition"]["StringEquals"] == {
        "kms:ViaService": {"Fn::Sub": "s3.${PrimaryRegion}.amazonaws.com"}
    }
    contexts = replica_key["Condition"]["StringLike"]["kms:EncryptionContext:aws:s3:arn"]
    assert {"Fn::Sub": "arn:${AWS::Partition}:s3:::${PrimaryStagingBucket}"} in contexts  # the Bucket Key's
    # The source side is granted by the source bucket's policy (the role cannot name the bucket that names it).
    granted = {}
    for item in resource(template, "StagingBucketPolicy")["Properties"]["PolicyDocument"]["Statement"]:
        if "Fn::If" in item:
            condition, statement, otherwise = item["Fn::If"]
            assert condition == "ReplicatesStaging" and otherwise == {"Ref": "AWS::NoValue"}
            assert statement["Principal"] == {"AWS": {"Fn::GetAtt": ["StagingReplicationRole", "Arn"]}}
            granted[json.dumps(statement["Resource"])] = set(statement["Action"])
    assert granted == {
        json.dumps({"Fn::GetAtt": ["StagingBucket", "Arn"]}): {"s3:GetReplicationConfiguration", "s3:ListBucket"},
        json.dumps({"Fn::Sub": "${StagingBucket.Arn}/readings/origin=${AWS::Region}/*"}): {
            "s3:GetObjectVersionForReplication",
            "s3:GetObjectVersionAcl",
            "s3:GetObjectVersionTagging",
        },
    }


def test_staging_starts_only_once_s3_may_replicate_it(template: dict[str, Any]) -> None:
    """S3 says "if object replication fails after you upload an object, you can't retry replication" (missing
    role, KMS or bucket permissions make it FAILED):
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-status.html . So the stager's mapping is
    created after the policy that lets the replication role read what it stages."""
    assert resource(template, "StagerEventSourceMapping")["DependsOn"] == "StagingBucketPolicy"


def test_a_secondary_stack_that_stages_must_replicate(template: dict[str, Any]) -> None:
    """Rules refuse a stack's parameters before any resource is touched:
    https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/rules-section-structure.html . A secondary
    stack (given ReplicaStreamArn) stages readings the warehouse sees only once replicated."""
    rules = template["Rules"]
    stages = rules["SecondaryStagingReplicates"]
    assert stages["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ReplicaStreamArn"}, ""]}]}
    assert stages["Assertions"][0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "PrimaryStagingBucket"}, ""]}]}
    key = rules["StagingReplicationNeedsTheReplicaKey"]
    assert key["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "PrimaryStagingBucket"}, ""]}]}
    assert key["Assertions"][0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "PrimaryStagingKeyId"}, ""]}]}


def test_copy_lists_and_gets_only_the_warehouse_regions_bucket(template: dict[str, Any]) -> None:
    """COPY needs "for COPY from Amazon S3, permission to LIST the Amazon S3 bucket and GET the Amazon S3 objects
    that are being loaded, and the manifest file":
    https://docs.aws.amazon.com/redshift/latest/dg/copy-usage_notes-access-permissions.html . One bucket, in the
    warehouse's region: with REGION, "all resources, including a manifest file ... must be located in the
    specified region": https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-source-s3.html"""
    stmts = policy_statements(template, "RedshiftCopyRole")
    assert stmts["ListStagingBucket"]["Action"] == "s3:ListBucket"
    assert stmts["ListStagingBucket"]["Resource"] == {"Fn::GetAtt": ["StagingBucket", "Arn"]}
    assert stmts["ReadStagedReadingsAndManifests"]["Resource"] == [
        {"Fn::Sub": "${StagingBucket.Arn}/readings/*"},
        {"Fn::Sub": "${StagingBucket.Arn}/manifests/*"},
    ]
    decrypt = stmts["DecryptStagedObjects"]  # replicas are encrypted with this stack's key too
    assert decrypt["Resource"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    assert decrypt["Condition"]["StringEquals"] == {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}
    # issue 14: the registry extract each report run COPYs, under the reports bucket's extracts/ (same key, same
    # region; tests/unit/test_template_reports.py)
    extracts = {"ListRegistryExtracts", "ReadRegistryExtracts"}
    assert set(stmts) == {"ListStagingBucket", "ReadStagedReadingsAndManifests", "DecryptStagedObjects"} | extracts
    text = json.dumps(resource(template, "RedshiftCopyRole"))
    assert "SecondaryStagingBucket" not in text and "SecondaryRegion" not in text


def test_the_loader_lists_only_its_own_regions_bucket(template: dict[str, Any]) -> None:
    """The loader runs in a VPC without NAT; "a gateway endpoint is available only in the Region where you
    created it": https://docs.aws.amazon.com/vpc/latest/privatelink/vpc-endpoints-s3.html"""
    env = function_environment(template, "LoaderFunction")
    assert env["STAGING_BUCKET"] == {"Ref": "StagingBucket"} and "STAGING_SOURCES" not in env
    stmts = policy_statements(template, "LoaderRole")
    assert stmts["ListStaging"]["Resource"] == {"Fn::GetAtt": ["StagingBucket", "Arn"]}
    assert "SecondaryStagingBucket" not in json.dumps(resource(template, "LoaderRole"))


def test_the_load_lag_alarm_allows_for_replication_lag(template: dict[str, Any]) -> None:
    """A replica keeps its source's creation time (https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication.html),
    so the secondary's objects appear up to 15 minutes old (S3 RTC:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-time-control.html). Threshold: three load
    intervals plus those 15 minutes; period: two intervals, a multiple of 60 s
    (https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricAlarm.html)."""
    props = resource(template, "LoadLagAlarm")["Properties"]
    assert props["Threshold"] == {"Fn::FindInMap": ["LoadLag", {"Ref": "LoadIntervalMinutes"}, "ThresholdSeconds"]}
    assert props["Period"] == {"Fn::FindInMap": ["LoadLag", {"Ref": "LoadIntervalMinutes"}, "PeriodSeconds"]}
    table = template["Mappings"]["LoadLag"]
    intervals = template["Parameters"]["LoadIntervalMinutes"]["AllowedValues"]
    assert set(table) == {str(i) for i in intervals}
    for interval in intervals:
        row = table[str(interval)]
        assert row["ThresholdSeconds"] == (3 * interval + 15) * 60, interval
        assert row["PeriodSeconds"] == 2 * interval * 60 and row["PeriodSeconds"] % 60 == 0, interval


def test_replication_failures_and_latency_are_alarmed_where_s3_publishes_them(template: dict[str, Any]) -> None:
    """S3 Replication metrics are per rule and published in the Region of the destination bucket:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/repl-metrics.html ; for their alarms AWS advises
    treating missing data as "ignore": https://docs.aws.amazon.com/AmazonS3/latest/userguide/metrics-dimensions.html"""
    alarms = {
        a["Properties"]["MetricName"]: a
        for a in resources_of(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("Namespace") == "AWS/S3"
        and {"Name": "RuleId", "Value": RULE_ID} in a["Properties"]["Dimensions"]  # not the reports' (issue 14)
    }
    assert set(alarms) >= {"OperationsFailedReplication", "ReplicationLatency"}
    for name in ("OperationsFailedReplication", "ReplicationLatency"):
        alarm = alarms[name]
        assert alarm["Condition"] == "HasSecondaryStaging"  # the primary (destination) region, source named
        props = alarm["Properties"]
        assert props["Dimensions"] == [
            {"Name": "SourceBucket", "Value": {"Ref": "SecondaryStagingBucket"}},
            {"Name": "DestinationBucket", "Value": {"Ref": "StagingBucket"}},
            {"Name": "RuleId", "Value": RULE_ID},
        ]
        assert props["TreatMissingData"] == "ignore" and props["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    assert alarms["OperationsFailedReplication"]["Properties"]["Threshold"] == 0
    assert alarms["ReplicationLatency"]["Properties"]["Threshold"] == 15 * 60
