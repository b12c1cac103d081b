"""The template's resources on a moto server: physical names, intrinsic functions, creation.

The local stack names resources the way CloudFormation would expose them to the functions (stream name, bucket
name, queue URL, ARNs) and resolves each function's environment against those names, so handlers run
unmodified with ``AWS_ENDPOINT_URL`` pointing at moto.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
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
        if len(value) == 1:
            ((fn, arg),) = value.items()
            if function := _FUNCTIONS.get(fn):
                return function(self, arg)
        return {k: self.resolve(v) for k, v in value.items()}

    def _sub(self, arg: Any) -> str:
        text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
        return re.sub(r"\$\{([^}]+)\}", lambda m: str(extra.get(m[1]) or self._sub_var(m[1])), text)

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


#: The intrinsic functions ``Resolver.resolve`` evaluates (a one-key dict of another key is plain data).
_FUNCTIONS: dict[str, Callable[[Resolver, Any], Any]] = {
    "Ref": lambda r, name: r._ref(name),
    "Fn::GetAtt": lambda r, arg: r._get_att(*(arg if isinstance(arg, list) else arg.split(".", 1))),
    "Fn::Sub": Resolver._sub,
    "Fn::Equals": lambda r, arg: operator.eq(*r.resolve(arg)),
    "Fn::If": lambda r, arg: r.resolve(arg[1] if r.condition(arg[0]) else arg[2]),
    "Condition": Resolver.condition,  # a condition naming another (load_template reads !Condition so)
    "Fn::Condition": Resolver.condition,
    "Fn::Not": lambda r, arg: not r.resolve(arg[0]),
    "Fn::And": lambda r, arg: all(r.resolve(a) for a in arg),
    "Fn::Or": lambda r, arg: any(r.resolve(a) for a in arg),
    "Fn::Join": lambda r, arg: arg[0].join(str(p) for p in r.resolve(arg[1])),
}


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
    creator = _Creator(template, RegionResources(region), endpoint)
    for logical_id, spec in template["Resources"].items():
        creator.create(logical_id, spec["Type"], spec.get("Properties", {}))
    return creator.res


class _Creator:
    """Creates one region's resources, one method per resource type; records their names and ARNs in ``res``."""

    def __init__(self, template: dict[str, Any], res: RegionResources, endpoint: str) -> None:
        self.template = template
        self.res = res
        self.region = res.region
        self.resolver = Resolver(template, res)
        self.client = clients(endpoint, res.region, "kinesis", "dynamodb", "s3", "sqs", "sns")

    def create(self, logical_id: str, kind: str, props: dict[str, Any]) -> None:
        make = {
            "AWS::Kinesis::Stream": self._stream,
            "AWS::DynamoDB::GlobalTable": self._table,
            "AWS::S3::Bucket": self._bucket,
            "AWS::SQS::Queue": self._queue,
            "AWS::SNS::Topic": self._topic,
            "AWS::Serverless::Function": self._function,
        }.get(kind)
        if make is not None:
            make(logical_id, props)
        else:
            self._not_emulated(logical_id, kind)

    def _named(self, logical_id: str, name: str, arn: str) -> None:
        self.res.names[logical_id] = name
        self.res.arns[logical_id] = arn

    def _stream(self, logical_id: str, props: dict[str, Any]) -> None:
        name = physical_name(logical_id, self.region)
        kinesis = self.client["kinesis"]
        kinesis.create_stream(StreamName=name, ShardCount=int(props.get("ShardCount", 1)))
        kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1})
        self._named(logical_id, name, f"arn:aws:kinesis:{self.region}:{ACCOUNT}:stream/{name}")

    def _table(self, logical_id: str, props: dict[str, Any]) -> None:
        # Every region has its replica; in AWS the primary stack creates both (condition IsPrimaryRegion).
        name = str(self.resolver.resolve(props["TableName"]))
        dynamodb = self.client["dynamodb"]
        out = dynamodb.create_table(**create_table_kwargs(self.template, logical_id, name))
        if attr := ttl_attribute(self.template, logical_id):
            dynamodb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": attr}
            )
        self._named(logical_id, name, out["TableDescription"]["TableArn"])
        if "LatestStreamArn" in out["TableDescription"]:
            self.res.stream_arns[logical_id] = out["TableDescription"]["LatestStreamArn"]

    def _bucket(self, logical_id: str, props: dict[str, Any]) -> None:
        name = physical_name(logical_id, self.region)
        kwargs: dict[str, Any] = {"Bucket": name}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.client["s3"].create_bucket(**kwargs)
        if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
            self.client["s3"].put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        self._named(logical_id, name, f"arn:aws:s3:::{name}")

    def _queue(self, logical_id: str, props: dict[str, Any]) -> None:
        name = physical_name(logical_id, self.region)
        url = self.client["sqs"].create_queue(QueueName=name)["QueueUrl"]
        self._named(logical_id, url, f"arn:aws:sqs:{self.region}:{ACCOUNT}:{name}")

    def _topic(self, logical_id: str, props: dict[str, Any]) -> None:
        arn = self.client["sns"].create_topic(Name=physical_name(logical_id, self.region))["TopicArn"]
        self._named(logical_id, arn, arn)  # !Ref of a topic is its ARN

    def _function(self, logical_id: str, props: dict[str, Any]) -> None:
        name = f"{STACK}-{logical_id}"
        self._named(logical_id, name, f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{name}")

    def _not_emulated(self, logical_id: str, kind: str) -> None:
        """KMS, IAM, logs, VPC, ElastiCache, secrets: nothing local reads them; their names resolve so that Refs
        do. The local Redis is given to the functions as REDIS_URL, the local PostgreSQL as REGISTRY_URL."""
        self._named(
            logical_id, physical_name(logical_id, self.region), f"arn:aws:local:{self.region}:{ACCOUNT}:{logical_id}"
        )
        attributes = self.res.attributes
        if kind == "AWS::ElastiCache::ReplicationGroup":
            attributes[f"{logical_id}.PrimaryEndPoint.Address"] = "127.0.0.1"
            attributes[f"{logical_id}.PrimaryEndPoint.Port"] = "6379"
        elif kind == "AWS::RDS::DBCluster":
            for endpoint_attr in ("Endpoint", "ReadEndpoint"):
                attributes[f"{logical_id}.{endpoint_attr}.Address"] = "127.0.0.1"
            attributes[f"{logical_id}.Endpoint.Port"] = "5432"
            attributes[f"{logical_id}.DBClusterResourceId"] = f"cluster-{logical_id.lower()}"


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
