"""Powertools logger, metrics and tracer shared by every function (service and namespace from env vars).

The tracer is powertools' ``Tracer`` only where it traces: building one loads the X-Ray SDK, which took about
100 ms of each function's import where tracing is off (``make bench``, cold start), for nothing. There ``tracer`` is
a stand-in whose decorators return the function unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.shared import constants
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

F = TypeVar("F", bound=Callable[..., Any])

logger = Logger()
metrics = Metrics()


def tracing_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether powertools' Tracer would trace here: the rules of its ``_is_tracer_disabled``. Off when
    ``POWERTOOLS_TRACE_DISABLED`` is true, outside Lambda (no ``LAMBDA_TASK_ROOT``: tests, the local stack,
    benchmarks) and in SAM's or Chalice's local emulators; on in Lambda otherwise (template.yaml: Tracing Active).
    """
    env = os.environ if env is None else env
    if resolve_truthy_env_var_choice(env=env.get(constants.TRACER_DISABLED_ENV, "false")):
        return False
    in_lambda = bool(env.get(constants.LAMBDA_TASK_ROOT_ENV))
    emulated = bool(env.get(constants.SAM_LOCAL_ENV) or env.get(constants.CHALICE_LOCAL_ENV))
    return in_lambda and not emulated


class NoTracer:
    """What the functions use of ``Tracer`` where tracing is off: decorators that add nothing, with or without
    arguments (``@tracer.capture_method`` and ``@tracer.capture_method(capture_response=False)``)."""

    @overload
    def capture_lambda_handler(self, lambda_handler: F, **_: Any) -> F: ...

    @overload
    def capture_lambda_handler(self, lambda_handler: None = None, **_: Any) -> Callable[[F], F]: ...

    def capture_lambda_handler(self, lambda_handler: F | None = None, **_: Any) -> F | Callable[[F], F]:
        return lambda_handler if lambda_handler is not None else _unchanged

    @overload
    def capture_method(self, method: F, **_: Any) -> F: ...

    @overload
    def capture_method(self, method: None = None, **_: Any) -> Callable[[F], F]: ...

    def capture_method(self, method: F | None = None, **_: Any) -> F | Callable[[F], F]:
        return method if method is not None else _unchanged

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str | None = None) -> None:
        pass


def _unchanged(function: F) -> F:
    return function


def make_tracer(env: Mapping[str, str] | None = None) -> Tracer:
    """powertools' ``Tracer`` where tracing is on (imported only then), else a ``NoTracer`` (typed as the
    ``Tracer`` whose part it stands in for)."""
    if not tracing_enabled(env):
        return cast("Tracer", NoTracer())
    from aws_lambda_powertools import Tracer  # noqa: PLC0415 - not importing it where tracing is off is the point

    return Tracer()


tracer = make_tracer()
