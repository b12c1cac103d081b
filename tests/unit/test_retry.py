"""Backoff, transient-error classification and the retry loop."""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError

from devicepipe.retry import Backoff, Deadline, Retrier, is_transient
from devicepipe_tools.fakes import client_error


def test_backoff_is_full_jitter_capped() -> None:
    b = Backoff(base_s=0.1, cap_s=1.0)
    assert b.delay(0, rng=lambda: 1.0) == pytest.approx(0.1)
    assert b.delay(3, rng=lambda: 1.0) == pytest.approx(0.8)
    assert b.delay(10, rng=lambda: 1.0) == pytest.approx(1.0)
    assert b.delay(10, rng=lambda: 0.0) == 0.0


def test_backoff_stays_at_its_cap_however_many_retries() -> None:
    # A producer with a long deadline retries past 1,024 times: 2.0**1024 overflowed and dropped the batch
    b = Backoff(base_s=0.1, cap_s=5.0, max_attempts=100_000)
    assert [b.delay(n, rng=lambda: 1.0) for n in (1_023, 1_024, 5_000, 10**9)] == [5.0] * 4


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (client_error("ProvisionedThroughputExceededException", "X"), True),
        (client_error("ThrottlingException", "X"), True),
        (client_error("SomethingNew", "X", status=503), True),
        (client_error("ValidationException", "X"), False),
        (client_error("AccessDeniedException", "X"), False),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (ValueError("x"), False),
    ],
)
def test_transient_classification(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_transient_errors_are_retried_until_success() -> None:
    waits: list[float] = []
    failures = iter([client_error("ThrottlingException", "X")] * 3)

    def attempt() -> bool:
        exc = next(failures, None)
        if exc:
            raise exc
        return True

    outcome = Retrier(Backoff(max_attempts=5), sleep=waits.append).run(attempt)
    assert outcome.done and outcome.retries == 3 and len(waits) == 3


def test_partial_results_are_retried_then_given_up() -> None:
    outcome = Retrier(Backoff(max_attempts=4), sleep=lambda _: None).run(lambda: False)
    assert not outcome.done
    assert outcome.retries == 3
    assert "gave up after 4 attempts" in outcome.error


def test_permanent_errors_propagate_at_once() -> None:
    calls = []

    def attempt() -> bool:
        calls.append(1)
        raise client_error("ValidationException", "X")

    with pytest.raises(Exception, match="ValidationException"):
        Retrier(sleep=lambda _: None).run(attempt)
    assert len(calls) == 1


def test_deadline_stops_retrying_before_the_timeout() -> None:
    remaining = [2_500]
    deadline = Deadline(lambda: remaining[0], reserve_ms=2_500)
    outcome = Retrier(Backoff(base_s=1.0, cap_s=1.0), deadline, sleep=lambda _: None).run(lambda: False)
    assert not outcome.done
    assert outcome.retries == 0
    assert "stopped before the function timeout" in outcome.error
