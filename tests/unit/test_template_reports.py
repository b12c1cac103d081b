"""Issue 14 in template.yaml: the Aurora registry (IAM-authenticated reads, migrations at deploy time, the Data API
for the CLI) and branch reports (schedule, bucket, topic, replication to the other region, the read API's route).

Each rule that comes from AWS behaviour names the page it was checked against. The template is evaluated as each
samconfig environment deploys it (``Stack`` of test_template_deploy): us-east-1 is the primary, eu-west-1 the
secondary; docs/deploy.md ("Registry", "Branch reports") explains the design.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from devicepipe_tools.template import ROOT, function_environment, resource
from tests.unit.test_template import IN_VPC_AND_TRACED, alarms_on, on, resources_of
from tests.unit.test_template_deploy import Stack, environments
from tests.unit.test_template_network import AURORA, HTTPS_ENDPOINTS, S3, rules
from tests.unit.test_template_read_api import api_body, operations, sam_transform
from tests.unit.test_template_review import deploy, outputs

DEPLOY_DOC = (ROOT / "docs" / "deploy.md").read_text()
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
READER = "devicepipe_reader"
DB_USER_ARN = (
    "arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}:dbuser:${AuroraCluster.DBClusterResourceId}/"
    + READER
)
REPORTS_RULE = "reports-to-secondary-region"
#: What exists only where the warehouse is (the primary): the report run, the migrations, the topic, SNS's endpoint.
PRIMARY_ONLY_RESOURCES = {
    "ReportFunction",
    "ReportRole",
    "ReportLogGroup",
    "ReportDeadLetterQueue",
    "ReportSecurityGroup",
    "BranchReportsTopic",
    "BranchReportsTopicPolicy",
    "SnsEndpoint",
    "MigrationFunction",
    "MigrationRole",
    "MigrationLogGroup",
    "MigrationSecurityGroup",
    "RegistrySchema",
    "RegistryAdminPolicy",
    "AuroraFromReport",
    "AuroraFromMigration",
    "EndpointsFromReport",
    "EndpointsFromMigration",
}
#: Parameters only one region's resources use (a marker given to the other region's stack must leave no trace).
PRIMARY_ONLY_PARAMETERS = (
    "SecondaryReportsBucket",
    "SecondaryReportsKeyId",
    "ReportScheduleExpression",
    "ReportLinkTtlSeconds",
    "MigrationsVersion",
)
SECONDARY_ONLY_PARAMETERS = ("PrimaryReportsBucket",)


@pytest.fixture(params=sorted(environments()))
def stack(request: pytest.FixtureRequest, template: dict[str, Any]) -> Stack:
    """The template as one samconfig environment deploys it (us-east-1: primary, eu-west-1: secondary)."""
    return Stack(template, environments()[request.param])


@pytest.fixture(scope="module")
def transformed(template: dict[str, Any]) -> dict[str, Any]:
    """What SAM's transform makes of the template (routes, schedule rule, async invocation config)."""
    return sam_transform(template)


def grants(template: dict[str, Any], logical_id: str) -> set[tuple[str, str]]:
    """A role's or managed policy's grants as (action, resource), resources as JSON; Allow statements only."""
    res = resource(template, logical_id)["Properties"]
    documents = [p["PolicyDocument"] for p in res.get("Policies", [])] + (
        [res["PolicyDocument"]] if "PolicyDocument" in res else []
    )
    out = set()
    for document in documents:
        for stmt in document["Statement"]:
            assert stmt["Effect"] == "Allow", (logical_id, stmt)
            actions = [stmt["Action"]] if isinstance(stmt["Action"], str) else stmt["Action"]
            targets = stmt["Resource"] if isinstance(stmt["Resource"], list) else [stmt["Resource"]]
            out |= {(a, json.dumps(r, sort_keys=True)) for a in actions for r in targets}
    return out


def sids(template: dict[str, Any], logical_id: str) -> dict[str, dict[str, Any]]:
    (policy,) = resource(template, logical_id)["Properties"]["Policies"]
    return {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}


DATA_KEY = {"Fn::GetAtt": ["DataKey", "Arn"]}
WORKGROUP = {"Fn::GetAtt": ["RedshiftWorkgroup", "Workgroup.WorkgroupArn"]}


# ---------------------------------------------------------------- which region creates what
def test_report_and_migration_run_only_where_the_warehouse_and_the_writer_are(template: dict[str, Any]) -> None:
    """A condition leaves a resource out of a stack, and nothing may then refer to it:
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/conditions-section-structure.html"""
    primary, secondary = deploy(template, "primary").deployed(), deploy(template, "secondary").deployed()
    assert primary.keys() >= PRIMARY_ONLY_RESOURCES
    assert not PRIMARY_ONLY_RESOURCES & secondary.keys()
    for logical_id in PRIMARY_ONLY_RESOURCES:
        assert resource(template, logical_id)["Condition"] == "IsPrimaryRegion", logical_id
    # every region keeps reports for its read API, which serves them on the same route
    for deployed in (primary, secondary):
        assert {"ReportsBucket", "ReportsBucketPolicy", "ReadApiFunction"} <= deployed.keys()
        events = deployed["ReadApiFunction"]["Properties"]["Events"]
        assert events["BranchReport"]["Properties"]["Path"] == "/branches/{branch_id}/report"


@pytest.mark.parametrize(
    ("param", "other"),
    [(p, "secondary") for p in PRIMARY_ONLY_PARAMETERS] + [(p, "primary") for p in SECONDARY_ONLY_PARAMETERS],
)
def test_a_reports_parameter_of_one_region_leaves_no_trace_in_the_other(
    template: dict[str, Any], param: str, other: str
) -> None:
    """Conditions decide per stack which resources and values exist:
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/conditions-section-structure.html"""
    marker = f"MARKER-{param}"
    values = {param: marker}
    if param == "SecondaryReportsBucket":  # the template's Rules pair it with the key
        values["SecondaryReportsKeyId"] = KEY_ID
    stack = deploy(template, other, **values)
    text = json.dumps([{k: v["Properties"] for k, v in stack.deployed().items()}, outputs(stack)])
    assert marker not in text, f"{param} reaches the {other} stack"


# ---------------------------------------------------------------- registry: network and IAM authentication
def test_aurora_takes_postgresql_only_from_the_functions_that_use_the_registry(stack: Stack) -> None:
    """Ingress from another group names it as the source; groups that reference each other take standalone rules:
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-ec2-securitygroupingress.html"""
    expected = (
        {
            ("tcp", 5432, "sg:AuroraRotationSecurityGroup"),
            ("tcp", 5432, "sg:MigrationSecurityGroup"),
            ("tcp", 5432, "sg:ReportSecurityGroup"),
        }
        if stack.condition("IsPrimaryRegion")
        else set()  # the secondary's cluster takes no connection yet
    )
    assert rules(stack, "AuroraSecurityGroup", "Ingress") == expected


def test_each_new_function_has_exactly_the_egress_it_needs(stack: Stack) -> None:
    """No NAT here: S3 through the gateway endpoint's prefix list
    (https://docs.aws.amazon.com/vpc/latest/privatelink/gateway-endpoints.html), SNS through an interface endpoint
    (https://docs.aws.amazon.com/sns/latest/dg/sns-vpc-create-endpoint.html). An IAM database token is a SigV4
    signature made by the SDK, not a call to AWS, so the report function needs no STS or Secrets Manager path:
    https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/UsingWithRDS.IAMDBAuth.Connecting.html"""
    if not stack.condition("IsPrimaryRegion"):
        return
    assert rules(stack, "ReportSecurityGroup", "Egress") == {HTTPS_ENDPOINTS, S3, AURORA}
    assert rules(stack, "MigrationSecurityGroup", "Egress") == {HTTPS_ENDPOINTS, S3, AURORA}
    assert ("tcp", 443, "sg:ReportSecurityGroup") in rules(stack, "EndpointSecurityGroup", "Ingress")
    assert ("tcp", 443, "sg:MigrationSecurityGroup") in rules(stack, "EndpointSecurityGroup", "Ingress")
    sns = stack.deployed()["SnsEndpoint"]["Properties"]
    assert sns["ServiceName"] == f"com.amazonaws.{stack.region}.sns"
    assert sns["VpcEndpointType"] == "Interface" and sns["PrivateDnsEnabled"] is True
    assert sns["SecurityGroupIds"] == ["<EndpointSecurityGroup>"]
    # the read API reaches its region's reports bucket through the same gateway endpoint
    assert S3 in rules(stack, "ReadApiSecurityGroup", "Egress")


def test_a_custom_resource_in_the_vpc_can_answer_cloudformation(template: dict[str, Any], stack: Stack) -> None:
    """CloudFormation: "custom resources in the VPC must have access to CloudFormation-specific Amazon S3 buckets.
    Custom resources must send responses to a presigned Amazon S3 URL" (a bucket in the stack's Region):
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-cloudformation-customresource.html
    and the S3 gateway endpoint serves its Region ("a gateway endpoint is available only in the Region where you
    created it"): https://docs.aws.amazon.com/vpc/latest/privatelink/vpc-endpoints-s3.html"""
    if not stack.condition("IsPrimaryRegion"):
        return
    assert S3 in rules(stack, "MigrationSecurityGroup", "Egress")
    endpoint = stack.deployed()["S3Endpoint"]["Properties"]
    assert endpoint["VpcEndpointType"] == "Gateway" and endpoint["ServiceName"] == f"com.amazonaws.{stack.region}.s3"
    assert "PolicyDocument" not in endpoint  # the default full-access policy: the response bucket is not ours
    assert endpoint["RouteTableIds"] == ["<PrivateRouteTable>"]
    subnets = stack.deployed()["MigrationFunction"]["Properties"]["VpcConfig"]["SubnetIds"]
    associations = {
        r["Properties"]["SubnetId"]
        for r in stack.deployed().values()
        if r["Type"] == "AWS::EC2::SubnetRouteTableAssociation"
        and r["Properties"]["RouteTableId"] == "<PrivateRouteTable>"
    }
    assert set(subnets) <= associations


def test_functions_read_the_registry_as_devicepipe_reader_with_iam_tokens(template: dict[str, Any]) -> None:
    """IAM database authentication on the cluster, and rds-db:connect on a db-user resource,
    arn:${Partition}:rds-db:${Region}:${Account}:dbuser:${DbiResourceId}/${DbUserName}, where for Aurora the
    resource ID is the cluster's (DBClusterResourceId):
    https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonrdsiamauthentication.html ,
    https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/UsingWithRDS.IAMDBAuth.IAMPolicy.html"""
    cluster = resource(template, "AuroraCluster")
    assert "Condition" not in cluster  # both regions' clusters
    assert cluster["Properties"]["EnableIAMDatabaseAuthentication"] is True
    reader = sids(template, "ReportRole")["RegistryReader"]
    assert reader["Action"] == "rds-db:connect"
    assert reader["Resource"] == {"Fn::Sub": DB_USER_ARN}  # this region's cluster, one user, no wildcard
    # the only database grant in the template, and no function reads the master secret but the migrations
    connecting = {
        name
        for name in resources_of(template, "AWS::IAM::Role")
        for action, _ in grants(template, name)
        if action.startswith("rds-db:")
    }
    assert connecting == {"ReportRole"}
    reading_master = {
        name
        for name in resources_of(template, "AWS::IAM::Role")
        if '"Ref": "AuroraMasterSecret"' in json.dumps(resource(template, name))
    }
    assert reading_master == {"MigrationRole"}
    env = function_environment(template, "ReportFunction")
    assert env["REGISTRY_USER"] == READER
    assert env["REGISTRY_HOST"] == {"Fn::GetAtt": ["AuroraCluster", "ReadEndpoint.Address"]}  # own region, reader
    assert env["REGISTRY_PORT"] == {"Fn::GetAtt": ["AuroraCluster", "Endpoint.Port"]}
    assert env["REGISTRY_DATABASE"] == "devicepipe"
    assert not {k for k in env if "SECRET" in k}


def test_the_registry_database_the_functions_name_is_created_with_the_primary_cluster(stack: Stack) -> None:
    """RDS: "a database named postgres is always created. If this parameter is specified, an additional database with
    this name is created": https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CreateDBCluster.html ;
    a secondary cluster of a global database gets the primary's data by replication:
    https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/aurora-global-database.html"""
    cluster = stack.deployed()["AuroraCluster"]["Properties"]
    named = {
        fn: stack.resolve(function_environment(stack.template, fn)["REGISTRY_DATABASE"])
        for fn in ("ReportFunction", "MigrationFunction")
    }
    if stack.condition("IsPrimaryRegion"):
        assert set(named.values()) == {cluster["DatabaseName"]} == {"devicepipe"}
    else:
        assert "DatabaseName" not in cluster


def test_the_data_api_is_on_the_primary_cluster_only(template: dict[str, Any], stack: Stack) -> None:
    """Data API: "a secondary cluster doesn't have a writer instance until it's promoted ... Data API requires
    access to the writer instance for query processing, even for read queries", and no T instance classes:
    https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/data-api.limitations.html ; for provisioned
    Aurora PostgreSQL 16 it needs 16.1 or later:
    https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/Concepts.Aurora_Fea_Regions_DB-eng.Feature.Data_API.html
    and CloudFormation's EnableHttpEndpoint is "valid for cluster type: Aurora DB clusters only":
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-rds-dbcluster.html"""
    cluster = stack.deployed()["AuroraCluster"]["Properties"]
    assert cluster["EnableHttpEndpoint"] is stack.condition("IsPrimaryRegion")
    params = template["Parameters"]
    major, minor = (int(x) for x in params["AuroraEngineVersion"]["Default"].split(".")[:2])
    assert (major, minor) >= (16, 1)
    assert not params["AuroraInstanceClass"]["Default"].startswith("db.t")


def test_the_cli_finds_the_cluster_the_secret_and_the_reader_endpoint(template: dict[str, Any]) -> None:
    """Data API callers need rds-data actions on the cluster's ARN and GetSecretValue on the secret, which Data API
    reads with the caller's rights: https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/data-api.access.html"""
    primary, secondary = outputs(deploy(template, "primary")), outputs(deploy(template, "secondary"))
    assert primary["RegistryClusterArn"] == "<AuroraCluster.DBClusterArn>"
    assert primary["RegistrySecretArn"] == "<AuroraMasterSecret>"
    for out in (primary, secondary):
        assert out["RegistryReaderEndpoint"] == "<AuroraCluster.ReadEndpoint.Address>"
    assert not {"RegistryClusterArn", "RegistrySecretArn"} & secondary.keys()  # no Data API there
    data_api = {
        "rds-data:ExecuteStatement",
        "rds-data:BatchExecuteStatement",
        "rds-data:BeginTransaction",
        "rds-data:CommitTransaction",
        "rds-data:RollbackTransaction",
    }
    assert grants(template, "RegistryAdminPolicy") == (
        on({"Fn::GetAtt": ["AuroraCluster", "DBClusterArn"]}, *data_api)
        | on({"Ref": "AuroraMasterSecret"}, "secretsmanager:GetSecretValue")
        | on(DATA_KEY, "kms:Decrypt")
    )
    (decrypt,) = [
        s
        for s in resource(template, "RegistryAdminPolicy")["Properties"]["PolicyDocument"]["Statement"]
        if s["Action"] == "kms:Decrypt"
    ]
    assert decrypt["Condition"]["StringEquals"] == {
        "kms:ViaService": {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"}
    }
    assert outputs(deploy(template, "primary"))["RegistryAdminPolicyArn"] == "<RegistryAdminPolicy>"


# ---------------------------------------------------------------- registry: migrations at deploy time
def test_migrations_run_from_a_custom_resource_whenever_they_change(template: dict[str, Any]) -> None:
    """CloudFormation sends a custom resource an Update when a property changes, and waits ServiceTimeout (1 to
    3600 s, default 3600) for the answer:
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-cloudformation-customresource.html
    Lambda retries a failed asynchronous invocation twice, one and then two minutes apart:
    https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html"""
    schema = resource(template, "RegistrySchema")
    assert schema["Type"] == "Custom::RegistryMigrations" and schema["Condition"] == "IsPrimaryRegion"
    props = schema["Properties"]
    assert props["ServiceToken"] == {"Fn::GetAtt": ["MigrationFunction", "Arn"]}
    # what changes with the migrations: an operator's version, the function's code (a new published version),
    # the common layer (where migrations/ ships)
    assert props["MigrationsVersion"] == {"Ref": "MigrationsVersion"}
    assert props["FunctionVersion"] == {"Ref": "MigrationFunction.Version"}
    assert props["CommonLayer"] == {"Ref": "CommonLayer"}
    function = resource(template, "MigrationFunction")["Properties"]
    assert function["AutoPublishAlias"]  # without it MigrationFunction.Version does not exist
    attempts = 3 * function["Timeout"] + 60 + 120
    assert attempts <= props["ServiceTimeout"] <= 3600
    # after the instances accept connections and the function's network paths exist
    assert {"AuroraInstanceA", "AuroraInstanceB", "AuroraFromMigration", "EndpointsFromMigration"} <= set(
        schema["DependsOn"]
    )


def test_the_migration_function_uses_the_master_secret_on_the_writer_and_nothing_else(template: dict[str, Any]) -> None:
    """Secrets Manager reads a secret encrypted with a customer key with the caller's kms:Decrypt:
    https://docs.aws.amazon.com/secretsmanager/latest/userguide/security-encryption.html"""
    fn = resource(template, "MigrationFunction")["Properties"]
    assert fn["CodeUri"] == "functions/migrate/" and fn["Handler"] == "app.lambda_handler"
    assert fn["Role"] == {"Fn::GetAtt": ["MigrationRole", "Arn"]}
    env = function_environment(template, "MigrationFunction")
    assert env["REGISTRY_HOST"] == {"Fn::GetAtt": ["AuroraCluster", "Endpoint.Address"]}  # the writer
    assert env["REGISTRY_PORT"] == {"Fn::GetAtt": ["AuroraCluster", "Endpoint.Port"]}
    assert env["REGISTRY_DATABASE"] == "devicepipe"
    assert env["REGISTRY_SECRET_ARN"] == {"Ref": "AuroraMasterSecret"}
    assert grants(template, "MigrationRole") == (
        on({"Ref": "AuroraMasterSecret"}, "secretsmanager:GetSecretValue")
        | on(DATA_KEY, "kms:Decrypt")
        | on({"Fn::GetAtt": ["MigrationLogGroup", "Arn"]}, "logs:CreateLogStream", "logs:PutLogEvents")
        | IN_VPC_AND_TRACED
    )


# ---------------------------------------------------------------- reports bucket and topic
def test_reports_bucket_is_encrypted_versioned_private_tls_only_logged_and_expiring(
    template: dict[str, Any], stack: Stack
) -> None:
    """S3 security practices: block public access, default encryption, deny requests without
    aws:SecureTransport, server access logging, versioning:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/security-best-practices.html"""
    bucket = resource(template, "ReportsBucket")
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    props = stack.deployed()["ReportsBucket"]["Properties"]
    (sse,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "<DataKey.Arn>"}
    assert sse["BucketKeyEnabled"] is True
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(props["PublicAccessBlockConfiguration"].values()) and len(props["PublicAccessBlockConfiguration"]) == 4
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert props["LoggingConfiguration"]["DestinationBucketName"] == "<AccessLogsBucket>"
    lifecycle = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    assert all(r["Status"] == "Enabled" for r in lifecycle.values())
    assert lifecycle["expire-reports"]["Prefix"] == "reports/"
    assert lifecycle["expire-reports"]["NoncurrentVersionExpiration"]["NoncurrentDays"] >= 1
    assert lifecycle["expire-registry-extracts"]["Prefix"] == "extracts/"
    assert lifecycle["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] >= 1
    policy = stack.deployed()["ReportsBucketPolicy"]["Properties"]
    assert policy["Bucket"] == "<ReportsBucket>"
    (deny,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} and deny["Action"] == "s3:*"
    assert deny["Resource"] == ["<ReportsBucket.Arn>", "<ReportsBucket.Arn>/*"]


def test_branch_reports_topic_is_encrypted_and_takes_tls_only(template: dict[str, Any]) -> None:
    """Server-side encryption with a customer key, whose publishers need kms:GenerateDataKey and kms:Decrypt:
    https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html ; TLS only by denying sns:Publish when
    aws:SecureTransport is false: https://docs.aws.amazon.com/sns/latest/dg/sns-security-best-practices.html#enforce-encryption-data-in-transit"""
    topic = resource(template, "BranchReportsTopic")
    assert topic["Properties"]["KmsMasterKeyId"] == {"Ref": "DataKey"}
    assert "TopicName" not in topic["Properties"]  # no account-wide name for two regions' stacks to claim
    policy = resource(template, "BranchReportsTopicPolicy")["Properties"]
    assert policy["Topics"] == [{"Ref": "BranchReportsTopic"}]
    (deny,) = policy["PolicyDocument"]["Statement"]
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "sns:Publish")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert {("kms:GenerateDataKey", json.dumps(DATA_KEY)), ("kms:Decrypt", json.dumps(DATA_KEY))} <= grants(
        template, "ReportRole"
    )


def test_new_log_groups_are_encrypted_expiring_and_covered_by_the_key_policy(template: dict[str, Any]) -> None:
    """A log group encrypted with a customer key needs the key policy to admit its ARN in the encryption context:
    https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/encrypt-log-data-kms.html"""
    for function, group, suffix in (
        ("ReportFunction", "ReportLogGroup", "reports"),
        ("MigrationFunction", "MigrationLogGroup", "migrate"),
    ):
        props = resource(template, group)["Properties"]
        assert props["KmsKeyId"] == DATA_KEY and props["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert props["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{AWS::StackName}}-{suffix}"}
        logging = resource(template, function)["Properties"]["LoggingConfig"]
        assert logging == {"LogGroup": {"Ref": group}, "LogFormat": "JSON"}


# ---------------------------------------------------------------- the report run
def test_reports_run_on_an_hourly_schedule_with_retries_and_a_dead_letter_queue(
    template: dict[str, Any], transformed: dict[str, Any]
) -> None:
    """A rate expression's unit is singular for 1 (rate(1 hour)):
    https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rate-expressions.html ; a rule target's retry
    policy (MaximumEventAgeInSeconds 60-86400, MaximumRetryAttempts 0-185):
    https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_RetryPolicy.html ; the invocation is
    asynchronous, retried at most twice by Lambda, kept up to 6 hours, then sent to the dead-letter queue:
    https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-configuring.html"""
    param = template["Parameters"]["ReportScheduleExpression"]
    assert param["Default"] == "rate(1 hour)"
    pattern = re.compile(param["AllowedPattern"])
    assert pattern.fullmatch("rate(1 hour)") and pattern.fullmatch("cron(5 * * * ? *)")
    assert not pattern.fullmatch("every hour")
    fn = resource(template, "ReportFunction")["Properties"]
    ((name, event),) = fn["Events"].items()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"] == {"Ref": "ReportScheduleExpression"}
    retry = event["Properties"]["RetryPolicy"]
    assert 60 <= retry["MaximumEventAgeInSeconds"] <= 86_400 and 0 <= retry["MaximumRetryAttempts"] <= 185
    rule = transformed["Resources"][f"ReportFunction{name}"]
    assert rule["Type"] == "AWS::Events::Rule" and rule["Condition"] == "IsPrimaryRegion"
    assert rule["Properties"]["ScheduleExpression"] == {"Ref": "ReportScheduleExpression"}
    invoke = fn["EventInvokeConfig"]
    assert 0 <= invoke["MaximumRetryAttempts"] <= 2 and 60 <= invoke["MaximumEventAgeInSeconds"] <= 21_600
    # a retried run must finish before the next scheduled one has long overtaken it
    assert invoke["MaximumEventAgeInSeconds"] >= fn["Timeout"]
    assert fn["DeadLetterQueue"] == {"Type": "SQS", "TargetArn": {"Fn::GetAtt": ["ReportDeadLetterQueue", "Arn"]}}
    queue = resource(template, "ReportDeadLetterQueue")
    assert queue["Properties"]["KmsMasterKeyId"] == {"Ref": "DataKey"}
    # Lambda sends to the dead-letter queue with the function's role
    assert ("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["ReportDeadLetterQueue", "Arn"]})) in grants(
        template, "ReportRole"
    )


def test_report_function_is_configured_as_the_report_code_reads_it(template: dict[str, Any]) -> None:
    """The function's settings (devicepipe.config.ReportSettings, RegistrySettings), by environment variable."""
    fn = resource(template, "ReportFunction")["Properties"]
    assert fn["CodeUri"] == "functions/reports/" and fn["Handler"] == "app.lambda_handler"
    assert fn["VpcConfig"]["SecurityGroupIds"] == [{"Ref": "ReportSecurityGroup"}]
    env = function_environment(template, "ReportFunction")
    own = {k: v for k, v in env.items() if not k.startswith("POWERTOOLS_")}
    assert set(own) == {
        "WORKGROUP_NAME",
        "DATABASE_NAME",
        "COPY_ROLE_ARN",
        "REPORTS_BUCKET",
        "REPORTS_TOPIC_ARN",
        "REGISTRY_HOST",
        "REGISTRY_PORT",
        "REGISTRY_DATABASE",
        "REGISTRY_USER",
        "REPORT_GAP_MINUTES",
        "REPORT_FINAL_AFTER_HOURS",
        "REPORT_LINK_TTL_SECONDS",
    }
    loader = function_environment(template, "LoaderFunction")
    assert own["WORKGROUP_NAME"] == loader["WORKGROUP_NAME"] and own["DATABASE_NAME"] == loader["DATABASE_NAME"]
    assert own["COPY_ROLE_ARN"] == {"Fn::GetAtt": ["RedshiftCopyRole", "Arn"]}
    assert own["REPORTS_BUCKET"] == {"Ref": "ReportsBucket"}
    assert own["REPORTS_TOPIC_ARN"] == {"Ref": "BranchReportsTopic"}  # Ref of a topic is its ARN
    assert (own["REPORT_GAP_MINUTES"], own["REPORT_FINAL_AFTER_HOURS"]) == ("15", "24")
    assert own["REPORT_LINK_TTL_SECONDS"] == {"Ref": "ReportLinkTtlSeconds"}
    assert env["POWERTOOLS_SERVICE_NAME"] == "reports"


def test_the_link_lifetime_default_is_one_a_lambda_role_session_is_documented_to_reach(
    template: dict[str, Any],
) -> None:
    """A presigned URL made with temporary credentials stops working when they expire, whatever its expiry says,
    and SigV4 caps it at 7 days: https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-presigned-url.html ;
    services that assume a role, "such as the AWS Lambda execution role, don't necessarily comply with the
    role's session duration settings":
    https://repost.aws/knowledge-center/presigned-url-s3-bucket-expiration ; and a role assumed from a role
    session (role chaining) lasts at most one hour:
    https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_terms-and-concepts.html#iam-term-role-chaining"""
    param = template["Parameters"]["ReportLinkTtlSeconds"]
    assert param["Default"] <= 3600
    assert param["MaxValue"] == 7 * 24 * 3600 and param["MinValue"] >= 1
    section = DEPLOY_DOC.split("## Branch reports", 1)[1].split("\n## ", 1)[0]
    assert "ReportLinkTtlSeconds" in section and "role chaining" in section


def test_report_role_grants_exactly_what_a_run_needs(template: dict[str, Any]) -> None:
    """Data API statements on the workgroup, the statement-reading actions only for the caller's own statements
    (they take no resource): https://docs.aws.amazon.com/redshift/latest/mgmt/data-api-access.html ; an encrypted
    topic's publisher needs the key: https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html ; the
    registry by rds-db:connect (above); logs carry the embedded-format metrics:
    https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format.html"""
    reports = {"Fn::Sub": "${ReportsBucket.Arn}/reports/*"}
    extracts = {"Fn::Sub": "${ReportsBucket.Arn}/extracts/*"}
    assert grants(template, "ReportRole") == (
        on(WORKGROUP, "redshift-data:BatchExecuteStatement", "redshift-data:ExecuteStatement")
        | on(
            "*", "redshift-data:DescribeStatement", "redshift-data:GetStatementResult", "redshift-data:CancelStatement"
        )
        | on(WORKGROUP, "redshift-serverless:GetCredentials")
        | on({"Fn::Sub": DB_USER_ARN}, "rds-db:connect")
        | on(reports, "s3:GetObject", "s3:PutObject")
        | on(extracts, "s3:GetObject", "s3:PutObject")
        | on({"Ref": "BranchReportsTopic"}, "sns:Publish")
        | on(DATA_KEY, "kms:Decrypt", "kms:GenerateDataKey")
        | on({"Fn::GetAtt": ["ReportLogGroup", "Arn"]}, "logs:CreateLogStream", "logs:PutLogEvents")
        | on({"Fn::GetAtt": ["ReportDeadLetterQueue", "Arn"]}, "sqs:SendMessage")
        | IN_VPC_AND_TRACED
    )
    owned = sids(template, "ReportRole")["OwnStatementsOnly"]
    assert owned["Condition"] == {"StringEquals": {"redshift-data:statement-owner-iam-userid": "${aws:userid}"}}


def test_copy_reads_only_the_registry_extracts_of_the_reports_bucket(template: dict[str, Any]) -> None:
    """COPY needs LIST on the bucket and GET on the objects it loads:
    https://docs.aws.amazon.com/redshift/latest/dg/copy-usage_notes-access-permissions.html ; s3:prefix narrows
    a listing: https://docs.aws.amazon.com/AmazonS3/latest/userguide/amazon-s3-policy-keys.html"""
    stmts = sids(template, "RedshiftCopyRole")
    listing = stmts["ListRegistryExtracts"]
    assert listing["Action"] == "s3:ListBucket" and listing["Resource"] == {"Fn::GetAtt": ["ReportsBucket", "Arn"]}
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["extracts/*"]}}
    assert stmts["ReadRegistryExtracts"] == {
        "Sid": "ReadRegistryExtracts",
        "Effect": "Allow",
        "Action": "s3:GetObject",
        "Resource": {"Fn::Sub": "${ReportsBucket.Arn}/extracts/*"},
    }
    # the extracts are under the stack key, which the copy role decrypts through S3 in its region only
    decrypt = stmts["DecryptStagedObjects"]
    assert decrypt["Resource"] == DATA_KEY
    assert decrypt["Condition"] == {"StringEquals": {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}}
    assert "/reports/" not in json.dumps(resource(template, "RedshiftCopyRole"))


# ---------------------------------------------------------------- reports in the secondary region
def test_reports_replicate_from_the_primary_into_the_secondary_bucket(template: dict[str, Any]) -> None:
    """Replication needs versioning on both buckets and copies new objects under the rule's prefix:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication.html#replication-requirements ; SSE-KMS
    objects only when opted in, with a replica key of the destination Region, named by ARN:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-config-for-kms-objects.html ; replication
    metrics without RTC: https://docs.aws.amazon.com/AmazonS3/latest/userguide/repl-metrics.html"""
    assert template["Conditions"]["ReplicatesReports"] == {
        "Fn::And": [
            {"Fn::Condition": "IsPrimaryRegion"},
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "SecondaryReportsBucket"}, ""]}]},
        ]
    }
    first = deploy(template, "primary").deployed()  # samconfig alone: the secondary's bucket is not known yet
    assert "ReplicationConfiguration" not in first["ReportsBucket"]["Properties"]
    assert "ReportsReplicationRole" not in first
    second = deploy(
        template, "primary", SecondaryReportsBucket="secondary-reports", SecondaryReportsKeyId=KEY_ID
    ).deployed()
    config = second["ReportsBucket"]["Properties"]["ReplicationConfiguration"]
    assert config["Role"] == "<ReportsReplicationRole.Arn>"
    (rule,) = config["Rules"]
    assert rule["Id"] == REPORTS_RULE and rule["Status"] == "Enabled"
    assert rule["Filter"] == {"Prefix": "reports/"}  # not the extracts
    assert rule["DeleteMarkerReplication"] == {"Status": "Disabled"}
    assert rule["SourceSelectionCriteria"] == {"SseKmsEncryptedObjects": {"Status": "Enabled"}}
    destination = rule["Destination"]
    assert destination["Bucket"] == "arn:aws:s3:::secondary-reports"
    assert (
        destination["EncryptionConfiguration"]["ReplicaKmsKeyID"] == f"arn:aws:kms:eu-west-1:123456789012:key/{KEY_ID}"
    )
    assert destination["Metrics"] == {"Status": "Enabled"}
    assert resource(template, "ReportsBucket")["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    assert "Condition" not in resource(template, "ReportsBucket")  # the destination is the same template's
    # a secondary stack never replicates reports, whatever it is given
    secondary = deploy(template, "secondary", SecondaryReportsBucket="x-reports", SecondaryReportsKeyId=KEY_ID)
    assert "ReplicationConfiguration" not in secondary.deployed()["ReportsBucket"]["Properties"]


def test_the_reports_replication_role_has_what_s3_needs_and_no_more(template: dict[str, Any]) -> None:
    """Replicate* on the destination's objects, the source side granted in the source bucket's policy, kms:Decrypt
    on the source key and kms:Encrypt (and, with an S3 Bucket Key, kms:Decrypt) on the replica key:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/setting-repl-config-perm-overview.html ,
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-config-for-kms-objects.html"""
    role = resource(template, "ReportsReplicationRole")
    assert role["Condition"] == "ReplicatesReports"
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "s3.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    replica_key = {
        "Fn::Sub": "arn:${AWS::Partition}:kms:${SecondaryRegion}:${AWS::AccountId}:key/${SecondaryReportsKeyId}"
    }
    assert grants(template, "ReportsReplicationRole") == (
        on(
            {"Fn::Sub": "arn:${AWS::Partition}:s3:::${SecondaryReportsBucket}/reports/*"},
            "s3:ReplicateObject",
            "s3:ReplicateDelete",
            "s3:ReplicateTags",
        )
        | on(DATA_KEY, "kms:Decrypt")
        | on(replica_key, "kms:Encrypt", "kms:Decrypt")
    )
    stmts = sids(template, "ReportsReplicationRole")
    assert stmts["DecryptSourceReports"]["Condition"]["StringEquals"] == {
        "kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}
    }
    encrypt = stmts["EncryptReplicas"]["Condition"]
    assert encrypt["StringEquals"] == {"kms:ViaService": {"Fn::Sub": "s3.${SecondaryRegion}.amazonaws.com"}}
    contexts = encrypt["StringLike"]["kms:EncryptionContext:aws:s3:arn"]
    assert {"Fn::Sub": "arn:${AWS::Partition}:s3:::${SecondaryReportsBucket}"} in contexts  # the Bucket Key's
    # source side, in the bucket policy, only under the condition
    granted = {}
    for item in resource(template, "ReportsBucketPolicy")["Properties"]["PolicyDocument"]["Statement"]:
        if "Fn::If" in item:
            condition, statement, otherwise = item["Fn::If"]
            assert condition == "ReplicatesReports" and otherwise == {"Ref": "AWS::NoValue"}
            assert statement["Principal"] == {"AWS": {"Fn::GetAtt": ["ReportsReplicationRole", "Arn"]}}
            granted[json.dumps(statement["Resource"])] = set(statement["Action"])
    assert granted == {
        json.dumps({"Fn::GetAtt": ["ReportsBucket", "Arn"]}): {"s3:GetReplicationConfiguration", "s3:ListBucket"},
        json.dumps({"Fn::Sub": "${ReportsBucket.Arn}/reports/*"}): {
            "s3:GetObjectVersionForReplication",
            "s3:GetObjectVersionAcl",
            "s3:GetObjectVersionTagging",
        },
    }
    # Rules refuse a bucket without its replica key, before anything is touched:
    # https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/rules-section-structure.html
    rule = template["Rules"]["ReportsReplicationNeedsTheReplicaKey"]
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "SecondaryReportsBucket"}, ""]}]}
    assert rule["Assertions"][0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "SecondaryReportsKeyId"}, ""]}]}


def test_failed_report_replication_is_alarmed_where_s3_publishes_it(template: dict[str, Any]) -> None:
    """Replication metrics are per rule, in the destination bucket's Region:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/repl-metrics.html ; missing data "ignore":
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/metrics-dimensions.html"""
    alarm = resource(template, "ReportsReplicationFailedAlarm")
    assert alarm["Condition"] == "HasPrimaryReports"
    assert template["Conditions"]["HasPrimaryReports"] == {
        "Fn::And": [
            {"Fn::Not": [{"Fn::Condition": "IsPrimaryRegion"}]},
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "PrimaryReportsBucket"}, ""]}]},
        ]
    }
    props = alarm["Properties"]
    assert (props["Namespace"], props["MetricName"]) == ("AWS/S3", "OperationsFailedReplication")
    assert props["Dimensions"] == [
        {"Name": "SourceBucket", "Value": {"Ref": "PrimaryReportsBucket"}},
        {"Name": "DestinationBucket", "Value": {"Ref": "ReportsBucket"}},
        {"Name": "RuleId", "Value": REPORTS_RULE},
    ]
    assert props["TreatMissingData"] == "ignore" and props["Threshold"] == 0


def test_cross_region_report_values_arrive_as_documented_parameters(template: dict[str, Any]) -> None:
    """Fn::ImportValue reads only exports of the same Region, so the other region's bucket and key are parameters:
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/intrinsic-function-reference-importvalue.html
    and Ref of a KMS key is its key ID, of a bucket its name:
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-kms-key.html"""
    wanted = set(re.findall(r"(\w+)=<(primary|secondary) (\w+)>", DEPLOY_DOC))
    assert {
        ("SecondaryReportsBucket", "secondary", "ReportsBucketName"),
        ("SecondaryReportsKeyId", "secondary", "DataKeyId"),
        ("PrimaryReportsBucket", "primary", "ReportsBucketName"),
    } <= wanted
    for param, role, output in wanted:
        assert template["Parameters"][param]["Default"] == "", param  # not known before the other stack exists
        assert output in outputs(deploy(template, role)), f"the {role} stack has no output {output}"
    assert template["Outputs"]["ReportsBucketName"]["Value"] == {"Ref": "ReportsBucket"}
    key = re.compile(template["Parameters"]["SecondaryReportsKeyId"]["AllowedPattern"])
    assert key.fullmatch(KEY_ID) and not key.fullmatch(f"arn:aws:kms:eu-west-1:123456789012:key/{KEY_ID}")
    # the two passes, in order
    section = DEPLOY_DOC.split("## Branch reports", 1)[1].split("\n## ", 1)[0]
    assert section.index("--config-env eu-west-1") < section.index("SecondaryReportsBucket=<secondary")


# ---------------------------------------------------------------- the read API's report route
def test_the_read_api_serves_reports_from_its_regions_bucket_with_the_other_routes_auth(
    template: dict[str, Any], transformed: dict[str, Any]
) -> None:
    """An HttpApi event makes a route with a Lambda proxy integration:
    https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-property-function-httpapi.html ;
    without s3:ListBucket a missing object answers 403 instead of 404:
    https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html"""
    ops = operations(api_body(transformed))
    report = ops[("GET", "/branches/{branch_id}/report")]
    assert report["security"] == ops[("GET", "/branches/{branch_id}/devices")]["security"] == [{"ReadApiAuth": []}]
    assert report["x-amazon-apigateway-integration"]["payloadFormatVersion"] == "2.0"
    assert function_environment(template, "ReadApiFunction")["REPORTS_BUCKET"] == {"Ref": "ReportsBucket"}
    read = grants(template, "ReadApiRole")
    assert on({"Fn::Sub": "${ReportsBucket.Arn}/reports/*"}, "s3:GetObject") <= read
    assert on({"Fn::GetAtt": ["ReportsBucket", "Arn"]}, "s3:ListBucket") <= read
    assert ("kms:Decrypt", json.dumps(DATA_KEY)) in read  # replicas are under this region's key
    assert not {a for a, r in read if a.startswith("s3:") and a not in ("s3:GetObject", "s3:ListBucket")}
    assert not {r for a, r in read if a == "s3:GetObject"} - {json.dumps({"Fn::Sub": "${ReportsBucket.Arn}/reports/*"})}


# ---------------------------------------------------------------- alarms and dashboard
def test_report_failures_errors_and_given_up_runs_are_alarmed(template: dict[str, Any]) -> None:
    """Embedded metric format: the namespace and dimensions the function writes are the ones CloudWatch files the
    metric under: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html"""
    (failures,) = alarms_on(template, "ReportFailures")
    namespace = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    service = function_environment(template, "ReportFunction")["POWERTOOLS_SERVICE_NAME"]
    assert failures["Namespace"] == namespace
    assert failures["Dimensions"] == [{"Name": "service", "Value": service}]
    assert (failures["Statistic"], failures["Threshold"], failures["ComparisonOperator"]) == (
        "Sum",
        0,
        "GreaterThanThreshold",
    )
    for metric in ("Errors", "Throttles", "Duration"):
        names = {
            a["Dimensions"][0]["Value"]["Ref"]
            for a in alarms_on(template, metric)
            if isinstance(a["Dimensions"][0]["Value"], dict)
        }
        assert {"ReportFunction", "MigrationFunction"} <= names, metric
    queues = [
        a
        for a in alarms_on(template, "ApproximateNumberOfMessagesVisible")
        if a["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["ReportDeadLetterQueue", "QueueName"]}
    ]
    assert len(queues) == 1 and queues[0]["Threshold"] == 0
    for name in ("ReportFailuresAlarm", "ReportDeadLetterDepthAlarm", "ReportErrorsAlarm", "MigrationErrorsAlarm"):
        assert resource(template, name)["Condition"] == "IsPrimaryRegion", name


def test_the_dashboard_has_a_reports_row_in_both_regions(stack: Stack) -> None:
    """Dashboard body structure (metric widgets, "." repeats the previous row's value):
    https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/CloudWatch-Dashboard-Body-Structure.html"""
    body = json.loads(stack.deployed()["Dashboard"]["Properties"]["DashboardBody"])
    text = json.dumps(body)
    assert '"ReportFailures"' in text and '"ReportsWritten"' in text and '"DatabaseConnections"' in text
    reports = [w for w in body["widgets"] if "Reports" in w["properties"]["title"]]
    assert len(reports) == 2
    names = {row[3] for w in reports for row in w["properties"]["metrics"] if "FunctionName" in row}
    primary = stack.condition("IsPrimaryRegion")
    assert names == ({"<ReportFunction>"} if primary else {"none"})
