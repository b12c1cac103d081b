"""The partial batch response of the stream functions (``ReportBatchItemFailures``), in one type.

Lambda retries from the lowest sequence number reported (Kinesis and DynamoDB streams alike), and an empty
identifier makes it retry the whole batch:
https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchItemFailures:
    """The records of a batch that Lambda must retry, by sequence number, in stream order."""

    sequence_numbers: tuple[str, ...] = ()

    @classmethod
    def of(cls, sequence_numbers: Iterable[str], failed: Container[str]) -> BatchItemFailures:
        """The ``failed`` among a batch's ``sequence_numbers`` (every record's, in stream order)."""
        return cls(tuple(s for s in sequence_numbers if s in failed))

    def to_response(self) -> dict[str, list[dict[str, str]]]:
        """What the handler returns to Lambda."""
        return {"batchItemFailures": [{"itemIdentifier": s} for s in self.sequence_numbers]}
