"""`devicepipe local env`: the environment standard clients need to work with a running local stack.

One region's: moto's endpoint for the AWS CLI and the SDKs, dummy credentials, the region, Redis, the registry,
the read API, the warehouse snapshot readers open, and the name of each stream, table, bucket, queue (its URL)
and topic (its ARN) as ``DEVICEPIPE_<LOGICAL_ID>`` (``ReadingsStream`` -> ``DEVICEPIPE_READINGS_STREAM``). Printed
as ``export`` lines for ``eval "$(devicepipe local env)"``, or as one JSON object.

The region goes in both variables: boto3 and the AWS CLI v1 read ``AWS_DEFAULT_REGION`` (botocore 1.43 never
reads ``AWS_REGION`` for the region); Lambda, the AWS CLI v2 and the other SDKs read ``AWS_REGION``.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from devicepipe_tools.local.net import port_plan
from devicepipe_tools.local.postgres import DATABASE
from devicepipe_tools.local.resources import create_region
from devicepipe_tools.local.stack import base_env, lambda_env, reader_url, region_resources
from devicepipe_tools.template import ROOT, load_template

#: Services of the resources whose names clients need (the service part of each resource's ARN).
_CLIENT_SERVICES = ("kinesis", "dynamodb", "s3", "sqs", "sns")
#: What base_env gives the stack's own processes only.
_PROCESS_ONLY = ("POWERTOOLS_TRACE_DISABLED",)


def client_env(state: dict[str, Any], region: str) -> dict[str, str]:
    """The variables for ``region`` of the stack whose state is ``state``."""
    res = region_resources(state, region)
    env = base_env(state["endpoint"], region, state["redis_urls"][region], state.get("registry_reader_url", ""))
    names = {
        f"DEVICEPIPE_{_snake(logical_id)}": name
        for logical_id, name in sorted(res.names.items())
        if _service(res.arns.get(logical_id, "")) in _CLIENT_SERVICES
    }
    return {
        # the AWS variables first, as a reader looks for them
        **dict(sorted(((k, v) for k, v in env.items() if k not in _PROCESS_ONLY), key=lambda kv: kv[0][:4] != "AWS_")),
        "DEVICEPIPE_API_URL": state.get("api_urls", {}).get(region, ""),
        "DEVICEPIPE_WAREHOUSE": state.get("warehouse_snapshot", ""),
        **names,
    }


def render(env: dict[str, str], as_json: bool = False) -> str:
    """``export NAME=value`` lines (quoted for any POSIX shell), or one JSON object."""
    if as_json:
        return json.dumps(env, indent=1)
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items())


def _service(arn: str) -> str:
    """``arn:aws:SERVICE:...``'s service."""
    parts = arn.split(":")
    return parts[2] if len(parts) > 2 else ""


def _snake(logical_id: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", logical_id).upper()


#: ``events/env.json`` is for the local stack started with ``devicepipe local up --port 4566``: moto on 4566, Redis
#: on 4567, the registry on 4568 (devicepipe_tools/local/net.py's port plan), region us-east-1.
ENV_VARS_PORT, ENV_VARS_REGION = 4566, "us-east-1"


def local_env_vars(port: int = ENV_VARS_PORT, region: str = ENV_VARS_REGION) -> dict[str, dict[str, str]]:
    """``events/env.json``: every function's environment on a local stack started on fixed ports, in SAM's
    ``--env-vars`` format (``{"IngestFunction": {"TABLE_NAME": ...}}``), resolved the way the stack resolves it:
    the template's resources created on a moto server, named, then each function's variables and the stack's own
    (endpoint, dummy credentials, ``REDIS_URL``, ``REGISTRY_URL``)."""
    # imported here: 0.3 s that every `devicepipe local env` would pay otherwise
    from moto.server import ThreadedMotoServer

    template = load_template()
    ports = port_plan(port, (region,))
    endpoint = f"http://127.0.0.1:{ports['moto']}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, moto_port = server.get_host_and_port()
        res = create_region(template, region, f"http://{host}:{moto_port}")
    finally:
        server.stop()
    res.names = {k: v.replace(f"http://{host}:{moto_port}", endpoint) for k, v in res.names.items()}
    redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
    registry_url = reader_url(f"postgresql://postgres@127.0.0.1:{ports['registry']}/{DATABASE}")
    functions = [k for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"]
    return {f: lambda_env(template, f, endpoint, redis_url, res, registry_url) for f in functions}


def write_env_vars(path: Path = ROOT / "events" / "env.json") -> Path:
    """Write ``local_env_vars`` to ``events/env.json``: ``python -m devicepipe_tools.local.env``."""
    path.write_text(json.dumps(local_env_vars(), indent=2) + "\n")
    return path


if __name__ == "__main__":
    print(write_env_vars().relative_to(ROOT))
