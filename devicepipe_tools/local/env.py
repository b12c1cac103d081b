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
from typing import Any

from devicepipe_tools.local.stack import base_env, region_resources

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
