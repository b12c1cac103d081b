"""The local stack's resolver evaluates the template's intrinsic functions as CloudFormation does."""

from __future__ import annotations

from typing import Any

import pytest

from devicepipe_tools.local.resources import RegionResources, Resolver

TEMPLATE: dict[str, Any] = {
    "Parameters": {"Env": {"Default": "prod"}, "Shards": {"Default": 2}},
    "Conditions": {
        "IsProd": {"Fn::Equals": [{"Ref": "Env"}, "prod"]},
        "NotProd": {"Fn::Not": [{"Condition": "IsProd"}]},
    },
}
RES = RegionResources(
    "eu-west-1",
    names={"Bucket": "b-name"},
    arns={"Bucket": "arn:aws:s3:::b-name"},
    attributes={"Cache.PrimaryEndPoint.Address": "127.0.0.1"},
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"Ref": "Env"}, "prod"),
        ({"Ref": "AWS::Region"}, "eu-west-1"),
        ({"Ref": "Bucket"}, "b-name"),
        ({"Fn::GetAtt": ["Bucket", "Arn"]}, "arn:aws:s3:::b-name"),
        ({"Fn::GetAtt": "Cache.PrimaryEndPoint.Address"}, "127.0.0.1"),
        ({"Fn::Sub": "${Bucket}-${AWS::Region}-${Bucket.Arn}"}, "b-name-eu-west-1-arn:aws:s3:::b-name"),
        ({"Fn::Sub": ["${X}/${Env}", {"X": {"Ref": "Bucket"}}]}, "b-name/prod"),
        ({"Fn::If": ["IsProd", "yes", "no"]}, "yes"),
        ({"Fn::If": ["NotProd", "yes", "no"]}, "no"),
        ({"Fn::And": [{"Condition": "IsProd"}, {"Fn::Equals": [1, 1]}]}, True),
        ({"Fn::Or": [{"Condition": "NotProd"}, {"Fn::Equals": ["a", "b"]}]}, False),
        ({"Fn::Join": ["-", ["a", {"Ref": "Shards"}]]}, "a-2"),
        ([{"Ref": "Env"}, "x"], ["prod", "x"]),
        ({"Key": {"Ref": "Env"}}, {"Key": "prod"}),  # a one-key dict that is no function is data
        ({"A": 1, "B": {"Ref": "Env"}}, {"A": 1, "B": "prod"}),
    ],
)
def test_intrinsic_functions(value: Any, expected: Any) -> None:
    assert Resolver(TEMPLATE, RES).resolve(value) == expected


def test_an_unknown_reference_names_itself() -> None:
    with pytest.raises(KeyError, match="cannot resolve Ref 'Nope'"):
        Resolver(TEMPLATE, RES).resolve({"Ref": "Nope"})
    with pytest.raises(KeyError, match=r"cannot resolve GetAtt Bucket\.Nope"):
        Resolver(TEMPLATE, RES).resolve({"Fn::GetAtt": ["Bucket", "Nope"]})
