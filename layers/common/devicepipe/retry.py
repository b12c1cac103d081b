"""Bounded, jittered retries for AWS calls, stopped early by the Lambda deadline."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

#: Error codes worth retrying: throttling, capacity and server-side faults.
TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "InternalServerError",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "KMSThrottlingException",
    }
)
#: Beyond 2**64 times any sensible base, every cap has long been reached.
_MAX_EXPONENT = 64
_TRANSIENT_EXCEPTIONS = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (empty for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_transient(exc: BaseException) -> bool:
    """True for errors that a later attempt may not see (throttling, 5xx, connection trouble)."""
    if isinstance(exc, _TRANSIENT_EXCEPTIONS):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in TRANSIENT_CODES or status >= 500
    return False


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").

    ``max_attempts`` counts every try, the first included.
    """

    base_s: float = 0.05
    cap_s: float = 2.0
    max_attempts: int = 8

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (0-based). The exponent stops growing once the cap is
        reached (2.0 ** 1024 overflows a float: a long-running retry loop must not crash on its 1,024th try)."""
        return rng() * min(self.cap_s, self.base_s * 2.0 ** min(retry, _MAX_EXPONENT))


@dataclass
class Deadline:
    """Time left in the invocation, less a reserve kept for reporting failures back to Lambda."""

    remaining_ms: Callable[[], int]
    reserve_ms: int = 2_000

    def allows(self, wait_s: float) -> bool:
        return self.remaining_ms() - self.reserve_ms > wait_s * 1000

    @classmethod
    def unlimited(cls) -> Deadline:
        return cls(lambda: 2**31, 0)


@dataclass
class Retrier:
    """Runs an attempt until it reports done, retrying transient errors and partial results.

    ``attempt`` returns True when all its work is done and False when part is left for another try
    (e.g. ``UnprocessedItems``); it raises for errors. Non-transient errors propagate at once.
    """

    backoff: Backoff = field(default_factory=Backoff)
    deadline: Deadline = field(default_factory=Deadline.unlimited)
    sleep: Callable[[float], None] = time.sleep

    def run(self, attempt: Callable[[], bool]) -> Outcome:
        """Run ``attempt`` until done, out of attempts, or out of time."""
        retries, last_error = 0, "incomplete"
        while True:
            try:
                if attempt():
                    return Outcome(True, retries, "")
                last_error = "partial result (unprocessed items)"
            except Exception as exc:
                if not is_transient(exc):
                    raise
                last_error = error_code(exc) or type(exc).__name__
            if retries + 1 >= self.backoff.max_attempts:
                return Outcome(False, retries, f"gave up after {retries + 1} attempts: {last_error}")
            wait = self.backoff.delay(retries)
            if not self.deadline.allows(wait):
                return Outcome(False, retries, f"stopped before the function timeout: {last_error}")
            self.sleep(wait)
            retries += 1


@dataclass(frozen=True)
class Outcome:
    """How a retried call ended: ``done`` or not, after how many retries, and the last error if not."""

    done: bool
    retries: int
    error: str
