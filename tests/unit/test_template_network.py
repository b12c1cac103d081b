"""Security groups: each in-VPC function has its own, with only the egress it needs, and nothing has open egress
(issue 15). Rules are read as each region's stack creates them (tests/unit/test_template_deploy.py's Stack).

A rule is written ``(protocol, port, destination)``: ``sg:<LogicalId>`` for a security group, ``pl:<service>``
for a gateway endpoint's AWS-managed prefix list (the ``GatewayPrefixLists`` mapping).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.test_template import resources_of
from tests.unit.test_template_deploy import Stack, environments

Rule = tuple[str, int, str]
HTTPS_ENDPOINTS: Rule = ("tcp", 443, "sg:EndpointSecurityGroup")
DYNAMODB: Rule = ("tcp", 443, "pl:DynamoDB")
S3: Rule = ("tcp", 443, "pl:S3")
REDIS: Rule = ("tcp", 6379, "sg:RedisSecurityGroup")
AURORA: Rule = ("tcp", 5432, "sg:AuroraSecurityGroup")

#: What each function calls (functions/*/app.py) and through what: X-Ray (Tracing: Active) and Secrets Manager and
#: the Redshift Data API through interface endpoints; S3 and DynamoDB through gateway endpoints. The on-failure
#: queues, logs and KMS are reached by the services, not by the function.
NEEDS: dict[str, tuple[str, set[Rule]]] = {
    "IngestFunction": ("IngestSecurityGroup", {DYNAMODB, S3, HTTPS_ENDPOINTS}),
    # DynamoDB: the LATEST repair; S3: the quarantine of stream records it cannot decode (issue 16)
    "CacheUpdaterFunction": ("CacheUpdaterSecurityGroup", {REDIS, DYNAMODB, S3, HTTPS_ENDPOINTS}),
    "StagerFunction": ("StagerSecurityGroup", {S3, HTTPS_ENDPOINTS}),
    "ReadApiFunction": ("ReadApiSecurityGroup", {REDIS, DYNAMODB, S3, HTTPS_ENDPOINTS}),  # S3: branch reports
    "LoaderFunction": ("LoaderSecurityGroup", {S3, HTTPS_ENDPOINTS}),
    "AuroraMasterSecretRotation": ("AuroraRotationSecurityGroup", {HTTPS_ENDPOINTS, AURORA}),
    # issue 14 (tests/unit/test_template_reports.py): Redshift Data, SNS, X-Ray; reports and extracts; the registry
    "ReportFunction": ("ReportSecurityGroup", {HTTPS_ENDPOINTS, S3, AURORA}),
    # Secrets Manager, X-Ray; S3 for the custom resource's presigned response URL; the registry's writer
    "MigrationFunction": ("MigrationSecurityGroup", {HTTPS_ENDPOINTS, S3, AURORA}),
}


@pytest.fixture(params=sorted(environments()))
def stack(request: pytest.FixtureRequest, template: dict[str, Any]) -> Stack:
    return Stack(template, environments()[request.param])


def destination(stack: Stack, rule: dict[str, Any], prefix: str) -> str:
    """``sg:<LogicalId>``, ``pl:<service>`` or ``cidr:<block>`` of a resolved rule (``prefix``: Destination or
    Source)."""
    group = rule.get(f"{prefix}SecurityGroupId")
    if group is not None:
        return "sg:" + str(group).strip("<>")
    listed = rule.get(f"{prefix}PrefixListId")
    if listed is not None:
        mapping, region, service = listed["Fn::FindInMap"]
        assert (mapping, region) == ("GatewayPrefixLists", stack.region)
        return f"pl:{service}"
    return "cidr:" + str(rule.get("CidrIp") or rule.get("CidrIpv6"))


def rules(stack: Stack, group: str, direction: str) -> set[Rule]:
    """Every rule of a group in this region's stack: inline, and AWS::EC2::SecurityGroup{Egress,Ingress}."""
    deployed = stack.deployed()
    prefix = "Destination" if direction == "Egress" else "Source"
    found = [r for r in deployed[group]["Properties"].get(f"SecurityGroup{direction}", [])]
    found += [
        res["Properties"]
        for res in deployed.values()
        if res["Type"] == f"AWS::EC2::SecurityGroup{direction}" and res["Properties"]["GroupId"] == f"<{group}>"
    ]
    return {(r["IpProtocol"], int(r.get("FromPort", -1)), destination(stack, r, prefix)) for r in found}


def test_gateway_prefix_lists_are_known_for_every_region_the_stack_deploys_to(template: dict[str, Any]) -> None:
    """An outbound rule to a gateway endpoint names the service's prefix list (pl-...): https://docs.aws.amazon.com/vpc/latest/privatelink/gateway-endpoints.html"""
    table = template["Mappings"]["GatewayPrefixLists"]
    for env in environments().values():
        entry = table[env["AWS::Region"]]
        assert set(entry) == {"S3", "DynamoDB"}
        assert all(re.fullmatch(r"pl-[0-9a-f]{8,17}", v) for v in entry.values())
        assert entry["S3"] != entry["DynamoDB"]
    # the IDs AWS's own DescribePrefixLists examples print (us-east-1's DynamoDB list is not among them):
    # https://docs.aws.amazon.com/code-library/latest/ug/ec2_example_ec2_DescribePrefixLists_section.html
    assert table["us-east-1"]["S3"] == "pl-63a5400a"
    assert table["eu-west-1"] == {"S3": "pl-6da54004", "DynamoDB": "pl-6fa54006"}


@pytest.mark.parametrize("function", sorted(NEEDS))
def test_each_function_has_a_group_of_its_own_with_exactly_the_egress_it_needs(stack: Stack, function: str) -> None:
    """Security group rules: a destination is a CIDR, a prefix list or a security group: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-properties-ec2-securitygroup-egress.html"""
    deployed = stack.deployed()
    if function not in deployed:  # the loader and the rotation: primary region only
        assert not stack.condition("IsPrimaryRegion")
        return
    group, needs = NEEDS[function]
    props = deployed[function]["Properties"]
    if function == "AuroraMasterSecretRotation":
        assert props["HostedRotationLambda"]["VpcSecurityGroupIds"] == f"<{group}>"
    else:
        assert props["VpcConfig"]["SecurityGroupIds"] == [f"<{group}>"]
    assert rules(stack, group, "Egress") == needs


def test_no_two_functions_share_a_group_and_every_in_vpc_function_is_listed(stack: Stack) -> None:
    """A function's VpcConfig names the security groups of its network interfaces: https://docs.aws.amazon.com/lambda/latest/dg/configuration-vpc.html"""
    deployed = stack.deployed()
    in_vpc = {n for n, r in deployed.items() if "VpcConfig" in r.get("Properties", {})}
    assert in_vpc == {f for f in NEEDS if f in deployed} - {"AuroraMasterSecretRotation"}
    groups = [NEEDS[f][0] for f in NEEDS if f in deployed]
    assert len(groups) == len(set(groups))


@pytest.mark.parametrize(
    ("target", "port", "sources"),
    [
        ("EndpointSecurityGroup", 443, {g for g, needs in NEEDS.values() if HTTPS_ENDPOINTS in needs}),
        ("RedisSecurityGroup", 6379, {g for g, needs in NEEDS.values() if REDIS in needs}),
        ("AuroraSecurityGroup", 5432, {g for g, needs in NEEDS.values() if AURORA in needs}),
    ],
)
def test_endpoints_redis_and_aurora_accept_exactly_the_groups_that_reach_them(
    stack: Stack, target: str, port: int, sources: set[str]
) -> None:
    """Groups that reference each other take standalone ingress/egress resources: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-ec2-securitygroup.html"""
    deployed = stack.deployed()
    expected = {("tcp", port, f"sg:{g}") for g in sources if g in deployed}
    # something reaches each of them; Aurora only where its secret rotates (the primary region), else nothing
    assert expected or (target == "AuroraSecurityGroup" and not stack.condition("IsPrimaryRegion"))
    assert rules(stack, target, "Ingress") == expected


def test_no_security_group_has_open_or_default_egress(stack: Stack) -> None:
    """Without an egress rule EC2 adds allow-all egress; none may reach 0.0.0.0/0: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-ec2-securitygroup.html"""
    deployed = stack.deployed()
    groups = [n for n, r in deployed.items() if r["Type"] == "AWS::EC2::SecurityGroup"]
    assert len(groups) >= 7  # 10 in the primary region (the loader's, the rotation's, Redshift's)
    for group in groups:
        # an inline egress rule is what keeps EC2 from adding its allow-all default
        assert deployed[group]["Properties"].get("SecurityGroupEgress"), group
        for _, _, where in rules(stack, group, "Egress"):
            assert where not in {"cidr:0.0.0.0/0", "cidr:::/0"}, group
            assert not where.startswith("cidr:") or where == "cidr:127.0.0.1/32", (group, where)  # "no egress"


def test_the_warehouse_reads_s3_through_the_gateway_prefix_list_only(stack: Stack) -> None:
    """Enhanced VPC routing sends COPY's S3 traffic through the VPC: https://docs.aws.amazon.com/redshift/latest/mgmt/enhanced-vpc-routing.html"""
    if stack.condition("IsPrimaryRegion"):
        assert rules(stack, "RedshiftSecurityGroup", "Egress") == {S3}
        assert rules(stack, "RedshiftSecurityGroup", "Ingress") == set()


def test_no_shared_function_group_is_left(template: dict[str, Any]) -> None:
    """VpcConfig security groups, one per function here: https://docs.aws.amazon.com/lambda/latest/dg/configuration-vpc.html"""
    assert "FunctionSecurityGroup" not in template["Resources"]
    names = set(resources_of(template, "AWS::EC2::SecurityGroup"))
    assert {g for g, _ in NEEDS.values()} <= names
