"""Cache updates: newest reading per device, compare-and-set, one round trip per batch (fakeredis with Lua)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from devicepipe.cache import CacheUnavailable, CacheWriter, newest_per_device, update_from_item
from devicepipe.streams import Change, changes
from devicepipe_tools.events import dynamodb_record, reading, table_item


def batch(*records: tuple[str, dict[str, Any]]) -> list[Change]:
    return list(
        changes([dynamodb_record(name, item, sequence_number=100 + i) for i, (name, item) in enumerate(records)])
    )


def doc(device: str, ts: str, seq: int, branch: str = "br-1") -> dict[str, Any]:
    return table_item(reading(device, branch, ts, seq))


@pytest.fixture
def writer() -> CacheWriter:
    return CacheWriter(fakeredis.FakeRedis(decode_responses=True), prefix="t")


def test_newest_per_device_ignores_removals_and_latest_items() -> None:
    changes_ = batch(
        ("INSERT", doc("a", "2026-11-02T09:00:00Z", 1)),
        ("INSERT", doc("a", "2026-11-02T09:00:00Z", 3)),
        ("INSERT", doc("a", "2026-11-02T08:00:00Z", 9)),
        ("INSERT", table_item(reading("b", "br", "2026-11-02T12:00:00Z", 1), latest=True)),
        ("REMOVE", doc("c", "2026-11-02T09:00:00Z", 1)),
        ("MODIFY", doc("d", "2026-11-02T07:00:00Z", 1)),
    )
    updates = {u.device_id: u for u in newest_per_device(changes_)}
    assert set(updates) == {"a", "d"}
    assert updates["a"].version == "2026-11-02T09:00:00.000000Z#0000000000000000003"


def test_update_carries_the_whole_reading_and_its_expiry() -> None:
    item = doc("a", "2026-11-02T09:00:00.250Z", 7)
    update = update_from_item(item, item["sk"][2:])
    assert update.event_ms == 1_793_610_000_250
    assert update.expires_at == item["expires_at"]
    assert update.fields["origin_region"] == "us-east-1"
    assert '"metrics":{"door":"closed","humidity":0.41,"temp_c":21.5}' in update.fields["reading"]


def test_older_or_equal_versions_never_replace_newer(writer: CacheWriter) -> None:
    newer, older = doc("a", "2026-11-02T09:00:05Z", 2), doc("a", "2026-11-02T09:00:00Z", 1)
    assert writer.apply(newest_per_device(batch(("INSERT", newer)))) == 1
    assert writer.apply(newest_per_device(batch(("INSERT", older)))) == 0
    assert writer.apply(newest_per_device(batch(("INSERT", newer)))) == 0  # replay
    assert writer.redis.hget(writer.device_key("a"), "seq") == "2"


def test_branch_view_follows_the_device(writer: CacheWriter) -> None:
    writer.apply(newest_per_device(batch(("INSERT", doc("a", "2026-11-02T09:00:00Z", 1, branch="nyc")))))
    writer.apply(newest_per_device(batch(("INSERT", doc("a", "2026-11-02T10:00:00Z", 2, branch="bos")))))
    assert writer.redis.zscore(writer.branch_key("nyc"), "a") is None
    assert writer.redis.zscore(writer.branch_key("bos"), "a") == 1_793_613_600_000


def test_one_round_trip_per_batch_once_the_script_is_loaded(writer: CacheWriter) -> None:
    items = [doc(f"d{i}", "2026-11-02T09:00:00Z", i) for i in range(50)]
    writer.apply(newest_per_device(batch(("INSERT", items[0]))))
    before = writer.round_trips
    assert writer.apply(newest_per_device(batch(*(("INSERT", i) for i in items)))) == 49
    assert writer.round_trips - before == 1


def test_script_flushed_by_a_restart_is_loaded_again(writer: CacheWriter) -> None:
    writer.apply(newest_per_device(batch(("INSERT", doc("a", "2026-11-02T09:00:00Z", 1)))))
    writer.redis.script_flush()
    assert writer.apply(newest_per_device(batch(("INSERT", doc("a", "2026-11-02T09:00:01Z", 1))))) == 1


def test_redis_failure_raises_cache_unavailable() -> None:
    server = fakeredis.FakeServer()
    writer = CacheWriter(fakeredis.FakeRedis(server=server), prefix="t")
    server.connected = False
    with pytest.raises(CacheUnavailable):
        writer.apply(newest_per_device(batch(("INSERT", doc("a", "2026-11-02T09:00:00Z", 1)))))
