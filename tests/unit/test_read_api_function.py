"""ReadApiFunction's module: what its import does (the function's cold start)."""

from __future__ import annotations

from tests.conftest import run_python

CHILD = """
import boto3.session
import devicepipe.api as api

def no_session(*args, **kwargs):
    raise AssertionError("a botocore session built at import")

boto3.session.Session = no_session
seen = {}
build_app = api.build_app

def spy(*args, **kwargs):
    seen.update(kwargs)
    return build_app(*args, **kwargs)

api.build_app = spy
import functions.read_api.app
print(seen["region"])
"""


def test_the_region_comes_from_lambdas_environment_without_a_session_at_import() -> None:
    out = run_python(CHILD, AWS_REGION="eu-west-1", AWS_DEFAULT_REGION="eu-west-1", POWERTOOLS_TRACE_DISABLED="true")
    assert out.split() == ["eu-west-1"]
