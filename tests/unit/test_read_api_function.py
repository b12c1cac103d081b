"""ReadApiFunction's module: what its import does (the function's cold start)."""

from __future__ import annotations

import os
import subprocess
import sys

from devicepipe_tools.template import ROOT

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
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "layers" / "common")]),
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["eu-west-1"]
