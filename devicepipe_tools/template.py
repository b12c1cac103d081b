"""Reads template.yaml (CloudFormation short-form tags included) and turns its resources into API calls.

Tests and the local stack build their resources from here, so they follow the template instead of copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that keeps ``!Ref X`` as ``{"Ref": X}`` and ``!Sub ...`` as ``{"Fn::Sub": ...}``."""


def _tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain data, intrinsic functions as their long-form dicts."""
    with path.open() as f:
        data = yaml.load(f, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a template")
    return data


def resource(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    """One resource by logical id, with a clear error when it is missing."""
    try:
        res: dict[str, Any] = template["Resources"][logical_id]
    except KeyError:
        raise KeyError(f"template has no resource {logical_id!r}") from None
    return res


def parameter_default(template: dict[str, Any], name: str) -> Any:
    return template["Parameters"][name].get("Default")


def create_table_kwargs(template: dict[str, Any], logical_id: str, table_name: str) -> dict[str, Any]:
    """``dynamodb.create_table`` arguments for an ``AWS::DynamoDB::GlobalTable`` (one region's replica)."""
    props = resource(template, logical_id)["Properties"]
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if props.get("GlobalSecondaryIndexes"):
        kwargs["GlobalSecondaryIndexes"] = [
            {k: v for k, v in gsi.items() if k in ("IndexName", "KeySchema", "Projection")}
            for gsi in props["GlobalSecondaryIndexes"]
        ]
    if stream := props.get("StreamSpecification"):
        kwargs["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    return kwargs


def ttl_attribute(template: dict[str, Any], logical_id: str) -> str | None:
    spec = resource(template, logical_id)["Properties"].get("TimeToLiveSpecification") or {}
    return spec.get("AttributeName") if spec.get("Enabled") else None


def function_environment(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    """A function's environment variables: the Globals section merged with the function's own."""
    globals_env = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    own = resource(template, logical_id)["Properties"].get("Environment", {}).get("Variables", {})
    return {**globals_env, **own}
