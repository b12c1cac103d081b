"""The template's resources on a moto server: physical names, intrinsic functions, creation.

The local stack names resources the way CloudFormation would expose them to the functions (stream name, bucket
name, queue URL, ARNs) and resolves each function's environment against those names, so handlers run
unmodified with ``AWS_ENDPOINT_URL`` pointing at moto.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from devicepipe_tools.template import create_table_kwargs, function_environment, ttl_attribute

ACCOUNT = "123456789012"  # moto's default account
STACK = "devicepipe"


@dataclass
class RegionResources:
    """Physical names and ARNs of one region's resources, by logical id."""

    region: str
    names: dict[str, str] = field(default_factory=dict)  # what !Ref returns
    arns: dict[str, str] = field(default_factory=dict)  # what !GetAtt X.Arn returns
    stream_arns: dict[str, str] = field(default_factory=dict)  # tables: !GetAtt X.StreamArn
    attributes: dict[str, str] = field(default_factory=dict)  # any other "Logical.Attribute"


class Resolver:
    """Resolves ``Ref``, ``Fn::GetAtt``, ``Fn::Sub``, ``Fn::Join``, ``Fn::If`` and the condition functions for one
    region."""

    def __init__(self, template: dict[str, Any], resources: RegionResources) -> None:
        self.template = template
        self.resources = resources
        self.params = {k: v.get("Default") for k, v in template.get("Parameters", {}).items()}
        # The secondary region's stack is given its replica's stream ARN as a parameter (README, "Deploy").
        if "ReadingsTable" in resources.stream_arns:
            self.params["ReplicaStreamArn"] = resources.stream_arns["ReadingsTable"]
        self.pseudo = {
            "AWS::Region": resources.region,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::StackName": STACK,
            "AWS::URLSuffix": "amazonaws.com",
        }

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template.get("Conditions", {})[name]))

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: self.resolve(v) for k, v in value.items()}
        ((fn, arg),) = value.items()
        if fn == "Ref":
            return self._ref(arg)
        if fn == "Fn::GetAtt":
            logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
            return self._get_att(logical, attr)
        if fn == "Fn::Sub":
            text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(extra.get(m[1]) or self._sub_var(m[1])), text)
        if fn == "Fn::Equals":
            a, b = self.resolve(arg)
            return a == b
        if fn == "Fn::If":
            cond, yes, no = arg
            return self.resolve(yes if self.condition(cond) else no)
        if fn in ("Condition", "Fn::Condition"):  # a condition naming another (load_template reads !Condition so)
            return self.condition(arg)
        if fn == "Fn::Not":
            return not self.resolve(arg[0])
        if fn == "Fn::And":
            return all(self.resolve(a) for a in arg)
        if fn == "Fn::Or":
            return any(self.resolve(a) for a in arg)
        if fn == "Fn::Join":
            sep, parts = arg
            return sep.join(str(p) for p in self.resolve(parts))
        return {k: self.resolve(v) for k, v in value.items()}

    def _sub_var(self, name: str) -> str:
        if "." in name:
            logical, attr = name.split(".", 1)
            return str(self._get_att(logical, attr))
        return str(self._ref(name))

    def _ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        if name in self.resources.names:
            return self.resources.names[name]
        raise KeyError(f"local stack cannot resolve Ref {name!r}")

    def _get_att(self, logical: str, attr: str) -> Any:
        if attr == "Arn" and logical in self.resources.arns:
            return self.resources.arns[logical]
        if attr == "StreamArn" and logical in self.resources.stream_arns:
            return self.resources.stream_arns[logical]
        if f"{logical}.{attr}" in self.resources.attributes:
            return self.resources.attributes[f"{logical}.{attr}"]
        raise KeyError(f"local stack cannot resolve GetAtt {logical}.{attr}")


def clients(endpoint: str, region: str, *services: str, config: Config | None = None) -> dict[str, Any]:
    """boto3 clients for the local stack's moto server (fake credentials, one region)."""
    session = boto3.session.Session(
        region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing"
    )
    return {s: session.client(s, endpoint_url=endpoint, config=config) for s in services}  # type: ignore[call-overload]


def physical_name(logical_id: str, region: str) -> str:
    """Deterministic lower-case names (valid for S3) unique per region, like CloudFormation's generated ones."""
    return f"{STACK}-{logical_id.lower()}-{region}"


def create_region(template: dict[str, Any], region: str, endpoint: str) -> RegionResources:
    """Create one region's Kinesis streams, DynamoDB tables, S3 buckets, SQS queues and SNS topics on moto."""
    res = RegionResources(region)
    resolver = Resolver(template, res)
    client = clients(endpoint, region, "kinesis", "dynamodb", "s3", "sqs", "sns")
    for logical_id, spec in template["Resources"].items():
        kind, props = spec["Type"], spec.get("Properties", {})
        if kind == "AWS::Kinesis::Stream":
            name = physical_name(logical_id, region)
            client["kinesis"].create_stream(StreamName=name, ShardCount=int(props.get("ShardCount", 1)))
            client["kinesis"].get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1})
            res.names[logical_id] = name
            res.arns[logical_id] = f"arn:aws:kinesis:{region}:{ACCOUNT}:stream/{name}"
        elif kind == "AWS::DynamoDB::GlobalTable":
            # Every region has its replica; in AWS the primary stack creates both (condition IsPrimaryRegion).
            name = str(resolver.resolve(props["TableName"]))
            out = client["dynamodb"].create_table(**create_table_kwargs(template, logical_id, name))
            if attr := ttl_attribute(template, logical_id):
                client["dynamodb"].update_time_to_live(
                    TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": attr}
                )
            res.names[logical_id] = name
            res.arns[logical_id] = out["TableDescription"]["TableArn"]
            if "LatestStreamArn" in out["TableDescription"]:
                res.stream_arns[logical_id] = out["TableDescription"]["LatestStreamArn"]
        elif kind == "AWS::S3::Bucket":
            name = physical_name(logical_id, region)
            kwargs: dict[str, Any] = {"Bucket": name}
            if region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            client["s3"].create_bucket(**kwargs)
            if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
                client["s3"].put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
            res.names[logical_id] = name
            res.arns[logical_id] = f"arn:aws:s3:::{name}"
        elif kind == "AWS::SQS::Queue":
            name = physical_name(logical_id, region)
            url = client["sqs"].create_queue(QueueName=name)["QueueUrl"]
            res.names[logical_id] = url
            res.arns[logical_id] = f"arn:aws:sqs:{region}:{ACCOUNT}:{name}"
        elif kind == "AWS::SNS::Topic":
            arn = client["sns"].create_topic(Name=physical_name(logical_id, region))["TopicArn"]
            res.names[logical_id] = arn  # !Ref of a topic is its ARN
            res.arns[logical_id] = arn
        elif kind == "AWS::Serverless::Function":
            name = f"{STACK}-{logical_id}"
            res.names[logical_id] = name
            res.arns[logical_id] = f"arn:aws:lambda:{region}:{ACCOUNT}:function:{name}"
        else:
            # Not emulated (KMS, IAM, logs, VPC, ElastiCache, secrets: nothing local reads them); their
            # names resolve so that Refs do. The local Redis is given to the functions as REDIS_URL.
            res.names[logical_id] = physical_name(logical_id, region)
            res.arns[logical_id] = f"arn:aws:local:{region}:{ACCOUNT}:{logical_id}"
            if kind == "AWS::ElastiCache::ReplicationGroup":
                res.attributes[f"{logical_id}.PrimaryEndPoint.Address"] = "127.0.0.1"
                res.attributes[f"{logical_id}.PrimaryEndPoint.Port"] = "6379"
            elif kind == "AWS::RDS::DBCluster":  # the local PostgreSQL is given to the functions as REGISTRY_URL
                for endpoint_attr in ("Endpoint", "ReadEndpoint"):
                    res.attributes[f"{logical_id}.{endpoint_attr}.Address"] = "127.0.0.1"
                res.attributes[f"{logical_id}.Endpoint.Port"] = "5432"
                res.attributes[f"{logical_id}.DBClusterResourceId"] = f"cluster-{logical_id.lower()}"
    return res


def function_env(template: dict[str, Any], logical_id: str, res: RegionResources) -> dict[str, str]:
    """A function's environment variables, resolved against the local resources."""
    resolver = Resolver(template, res)
    return {k: str(resolver.resolve(v)) for k, v in function_environment(template, logical_id).items()}


def template_env(template: dict[str, Any], logical_id: str, region: str) -> tuple[dict[str, str], list[str]]:
    """A function's variables that resolve from parameters alone, and the names of those that need a
    deployed resource's name (for invoking against real AWS)."""
    resolver = Resolver(template, RegionResources(region))
    resolved, missing = {}, []
    for name, value in function_environment(template, logical_id).items():
        try:
            resolved[name] = str(resolver.resolve(value))
        except KeyError:
            missing.append(name)
    return resolved, missing
