"""Repairs LATEST items that global-table replication moved backwards.

Within one region the conditional write keeps a device's LATEST item monotonic by ``(ts, seq)``. Across
regions it cannot: a global table settles concurrent writes to one item by last writer wins (by write time),
so when two regions update a device's LATEST within the replication delay, the later *write* wins everywhere,
even when it carries the older *reading*. The receiving region's stream shows that as a MODIFY of the LATEST
item whose old image is newer than its new image. Writing the old image back, with the same condition as the
ingest, restores the newest reading; that write is now the last writer, so it replicates to every region. A
repair that finds something newer already there (another region repaired first, or a newer reading arrived)
is refused by the condition and changes nothing, so repairs are idempotent and cannot move LATEST back.

Records are read through ``devicepipe.streams``, as the cache and the stager read them: a LATEST change whose
images break the item contract is no regression here; the cache updater quarantines it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from devicepipe.dynamo import DynamoWriter, Item
from devicepipe.streams import Change, decode


@dataclass(frozen=True, slots=True)
class Regression:
    """A device whose LATEST went back: the image to restore, and the stream record that showed it."""

    device_id: str
    restore: Item
    sequence_number: str

    @property
    def version(self) -> str:
        return str(self.restore["latest_at"]["S"])


@dataclass
class RepairResult:
    regressions: int = 0
    repaired: int = 0
    already_newer: int = 0  # the condition found an equal or newer reading: nothing to do
    failed: list[str] = field(default_factory=list)  # sequence numbers to report as batchItemFailures


def regressions(records: Sequence[dict[str, Any]]) -> list[Regression]:
    """Every device whose LATEST item a record of the batch moved back, with the newest image seen lost."""
    return regressions_in(decode(records).changes)


def regressions_in(changes: Sequence[Change]) -> list[Regression]:
    """``regressions`` of a batch already decoded."""
    found: dict[str, Regression] = {}
    for change in changes:
        old, new = change.old, change.new
        if change.event_name != "MODIFY" or not change.is_latest or old is None or new is None:
            continue
        if old["latest_at"] <= new["latest_at"]:
            continue
        # The image as stored, attribute for attribute: nothing of it passes through Python values.
        regression = Regression(old["device_id"], change.record["dynamodb"]["OldImage"], change.sequence_number)
        previous = found.get(regression.device_id)
        if previous is None or previous.version < regression.version:
            found[regression.device_id] = regression
    return list(found.values())


def repair(writer: DynamoWriter, records: Sequence[dict[str, Any]]) -> RepairResult:
    """Write back what the batch's regressions lost; failures name the records to retry."""
    return restore(writer, regressions(records))


def restore(writer: DynamoWriter, found: Sequence[Regression]) -> RepairResult:
    """Write back the lost images of ``found`` (from ``regressions``); failures name the records to retry."""
    if not found:
        return RepairResult()
    written = writer.put_latest([r.restore for r in found])
    # Rejected items cannot happen for an image DynamoDB itself stored; count them as failed, never as done.
    failed = {*written.failed, *written.rejected}
    return RepairResult(
        regressions=len(found),
        repaired=len(found) - len(written.stale) - len(failed),
        already_newer=len(written.stale),
        failed=[found[i].sequence_number for i in sorted(failed)],
    )
