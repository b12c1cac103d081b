"""Run a template function's handler in this process, as the Lambda runtime would.

The handler is found from the template (``CodeUri`` + ``Handler``), the layer's code and the function's folder
go first on ``sys.path`` (``/opt/python`` and ``/var/task`` in Lambda), and each invocation gets a context whose
remaining time counts down from the function's ``Timeout``. Callers set the environment (one process per
function and region, so settings never leak between functions).
"""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devicepipe_tools.template import ROOT, resource

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class LambdaContext:
    """The Lambda context object: the attributes and method handlers and powertools use."""

    function_name: str = "devicepipe-local"
    memory_limit_in_mb: int = 1024
    timeout_s: float = 60.0
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:devicepipe-local"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self.started)) * 1000))


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_dir: str
    module: str
    attribute: str
    timeout_s: float
    memory_mb: int


def function_spec(template: dict[str, Any], logical_id: str) -> FunctionSpec:
    """Where a function's handler lives and its limits (Globals merged with the function's properties)."""
    props = {**template.get("Globals", {}).get("Function", {}), **resource(template, logical_id)["Properties"]}
    module, _, attribute = props["Handler"].rpartition(".")
    return FunctionSpec(
        logical_id,
        str(ROOT / props["CodeUri"]),
        module,
        attribute,
        float(props.get("Timeout", 3)),
        int(props.get("MemorySize", 128)),
    )


def load_handler(spec: FunctionSpec) -> Handler:
    """Import the handler module from the function's folder (layer code first on the path)."""
    for path in (spec.code_dir, str(ROOT / "layers" / "common")):
        if path not in sys.path:
            sys.path.insert(0, path)
    module_path = f"{spec.code_dir}/{spec.module.replace('.', '/')}.py"
    module_spec = importlib.util.spec_from_file_location(f"devicepipe_fn_{spec.logical_id}", module_path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load {module_path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    handler: Handler = getattr(module, spec.attribute)
    return handler


def context_for(spec: FunctionSpec, region: str) -> LambdaContext:
    name = f"devicepipe-{spec.logical_id}"
    return LambdaContext(
        function_name=name,
        memory_limit_in_mb=spec.memory_mb,
        timeout_s=spec.timeout_s,
        invoked_function_arn=f"arn:aws:lambda:{region}:123456789012:function:{name}",
    )


def main(argv: list[str]) -> int:
    """``python -m devicepipe_tools.local.functions FUNCTION EVENT_FILE REGION``, environment already set:
    invokes once and prints the response as JSON (what ``devicepipe invoke`` runs in a clean process)."""
    import json

    from devicepipe_tools.template import load_template

    function, event_file, region = argv
    spec = function_spec(load_template(), function)
    with open(event_file) as f:
        event = json.load(f)
    response = load_handler(spec)(event, context_for(spec, region))
    print(json.dumps(response, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
