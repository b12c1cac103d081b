"""The Redshift rule guard: every statement the loader builds passes it, for any manifest size, and each rule
refuses a statement Redshift (or the Data API) would refuse. Doc pages are beside each rule in
devicepipe_tools/redshift_rules.py; docs/warehouse-sql.md lists them."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from devicepipe.compaction import Sizing
from devicepipe.config import ConfigError, IngestSettings, LoaderSettings
from devicepipe.loader import Loader, Manifest, Source, StagedObject
from devicepipe.warehouse import (
    BRANCH_REPORT,
    DDL,
    DEDUP,
    LOAD_ERRORS,
    LOADED_KEYS,
    LoadFailed,
    ledger_document,
)
from devicepipe_tools import redshift_rules as rules
from devicepipe_tools.local.duckdb_warehouse import DuckDBWarehouse

ROLE = "arn:aws:iam::123456789012:role/devicepipe-us-east-1-WarehouseCopyRole-ABCDEFGHIJKL"
BUCKET = "devicepipe-us-east-1-stagingbucket-0123456789ab"
#: MANIFEST_MAX_OBJECTS's default and its maximum (pinned below against LoaderSettings).
DEFAULT_OBJECTS, MAX_OBJECTS = 500, 10_000
#: The statement size the loader keeps to: a hundredth of the Data API's limit, whatever the manifest.
WELL_INSIDE = rules.MAX_STATEMENT_BYTES // 50


def manifest_of(n: int) -> Manifest:
    """A manifest of ``n`` objects with keys as long as the stager writes them."""
    source = Source(BUCKET, "us-east-1")
    objects = tuple(
        StagedObject(
            source,
            f"readings/origin=eu-west-1/dt=2026-11-02/hour=09/shardId-000000000003-"
            f"{49650000000000000000000000000000000000000000 + i:056d}-{i:056d}.jsonl.gz",
            1_000_000,
        )
        for i in range(n)
    )
    return Manifest(source, objects)


def loader_batch(n: int) -> list[str]:
    """The statements one load of an ``n``-object manifest sends, as ``Loader.load`` builds them."""
    batches: list[list[str]] = []

    class Recording:
        def execute(self, statements: Sequence[str]) -> None:
            batches.append(list(statements))

        def query(self, sql: str) -> list[tuple[object, ...]]:
            return []

    class S3:
        def put_object(self, **_: object) -> None:
            pass

    source = Source(BUCKET, "us-east-1")
    # the statements name the manifest, not its files: joining (which reads the objects) is left out
    Loader(S3(), Recording(), source, BUCKET, ROLE, max_objects=MAX_OBJECTS, sizing=Sizing(0)).load(manifest_of(n))
    (batch,) = batches
    return batch


def test_manifest_max_objects_maximum_is_the_one_tested_here() -> None:
    env = {
        "WORKGROUP_NAME": "wg",
        "DATABASE_NAME": "devicepipe",
        "COPY_ROLE_ARN": ROLE,
        "MANIFEST_BUCKET": BUCKET,
        "STAGING_BUCKET": BUCKET,
        "AWS_REGION": "us-east-1",
    }
    assert LoaderSettings.from_env(env).max_objects == DEFAULT_OBJECTS
    assert LoaderSettings.from_env({**env, "MANIFEST_MAX_OBJECTS": str(MAX_OBJECTS)}).max_objects == MAX_OBJECTS
    with pytest.raises(ConfigError):
        LoaderSettings.from_env({**env, "MANIFEST_MAX_OBJECTS": str(MAX_OBJECTS + 1)})


@pytest.mark.parametrize("objects", [1, 2, DEFAULT_OBJECTS, 2_000, MAX_OBJECTS])
def test_every_statement_the_loader_builds_passes_the_guard(objects: int) -> None:
    batch = loader_batch(objects)
    assert rules.check_batch(batch) == []
    assert rules.check_batch(DDL) == []
    for sql in (LOADED_KEYS, LOAD_ERRORS.format(query_id=4242), BRANCH_REPORT):
        assert rules.check_statement(sql) == []


def test_no_statement_grows_with_the_manifest() -> None:
    """The old ledger INSERT listed every object (99-118 KB at 500 objects, ~3 MB at 10,000) and the DELETE every
    key: the Data API refuses over 100 KB, the manifest was quarantined, and ``reload`` failed again."""
    sizes = {n: [len(sql.encode()) for sql in loader_batch(n)] for n in (1, DEFAULT_OBJECTS, MAX_OBJECTS)}
    assert max(sizes[MAX_OBJECTS]) < WELL_INSIDE
    for n in (DEFAULT_OBJECTS, MAX_OBJECTS):  # the same statements; only the count's digits differ (1 .. 10000)
        assert all(abs(a - b) <= 4 for a, b in zip(sizes[1], sizes[n], strict=True))
    assert len(loader_batch(MAX_OBJECTS)) <= rules.MAX_BATCH_STATEMENTS


def test_the_ledger_file_names_every_object_of_the_manifest_once() -> None:
    manifest = manifest_of(DEFAULT_OBJECTS)
    lines = gzip.decompress(manifest.ledger()).decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"object_key": o.url} for o in manifest.objects]
    assert manifest.ledger_key == manifest.key.removesuffix(".json") + ".objects.jsonl.gz"
    assert ledger_document([]) == gzip.compress(b"", mtime=0)


def test_the_dedup_statement_aliases_the_relation_qualify_follows() -> None:
    """Every load failed at this statement on Redshift: QUALIFY directly after an unaliased FROM relation."""
    assert rules.check_statement(DEDUP) == []
    old = DEDUP.replace("FROM stage AS st", "FROM stage").replace("st.", "")
    assert [v.rule for v in rules.check_statement(old)] == ["qualify_from_alias"]


#: One statement (or batch) per rule that Redshift or the Data API refuses, with the rule that must refuse it.
REFUSED: dict[str, list[str]] = {
    "parses": ["SELEC device_id FROM readings"],
    "statement_size": ["INSERT INTO loaded_objects (object_key) VALUES " + ", ".join(["('x')"] * 30_000)],
    "qualify_from_alias": [
        "SELECT * FROM stage QUALIFY ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY ingested_at DESC) = 1"
    ],
    "copy_options": [
        "COPY stage FROM 's3://b/m.json' IAM_ROLE 'arn:aws:iam::1:role/r' FORMAT JSON 'auto' GZIP MANIFEST "
        "REGION 'eu-west-1'"
    ],
    "merge_forms": [
        "MERGE INTO readings USING (SELECT * FROM stage) AS s ON readings.device_id = s.device_id "
        "WHEN MATCHED THEN UPDATE SET metrics = s.metrics "
        "WHEN NOT MATCHED THEN INSERT (device_id, metrics) VALUES (s.device_id, s.metrics)"
    ],
    "super_not_a_key": ["CREATE TABLE t (device_id VARCHAR(128), metrics SUPER) DISTKEY (metrics)"],
    "reserved_words": ["SELECT device_id, ts AS timestamp FROM readings"],
    "denied_functions": ["SELECT branch_id, STRING_AGG(device_id, ',') FROM readings GROUP BY branch_id"],
    "sort_aggregates_share_order": [  # the example the PERCENTILE_CONT page shows failing
        "SELECT salesid, SUM(pricepaid), PERCENTILE_CONT(0.6) WITHIN GROUP (ORDER BY salesid), MEDIAN(pricepaid) "
        "FROM sales GROUP BY salesid, pricepaid"
    ],
    "batch_size": ["SELECT 1"] * (rules.MAX_BATCH_STATEMENTS + 1),
    "one_transaction": ["LOCK load_ledger", "TRUNCATE loaded_objects"],
    "merge_source_unique": [
        "MERGE INTO readings USING stage AS s "
        "ON readings.device_id = s.device_id AND readings.ts = s.ts AND readings.seq = s.seq "
        "WHEN MATCHED THEN UPDATE SET metrics = s.metrics "
        "WHEN NOT MATCHED THEN INSERT (device_id, ts, seq, metrics) VALUES (s.device_id, s.ts, s.seq, s.metrics)"
    ],
}


def test_every_rule_has_a_refused_example() -> None:
    assert set(REFUSED) == {"parses", *rules.STATEMENT_RULES, *rules.BATCH_RULES}


@pytest.mark.parametrize("rule", sorted(REFUSED))
def test_each_rule_refuses_what_redshift_refuses_and_accepts_the_loaders_statements(rule: str) -> None:
    with pytest.raises(rules.RuleViolation) as info:
        rules.guard(REFUSED[rule])
    assert info.value.rule == rule
    batch = loader_batch(DEFAULT_OBJECTS)
    if rule in rules.STATEMENT_RULES:
        st = [rules.parse(sql) for sql in batch + DDL]
        assert [msg for s in st for msg in rules.STATEMENT_RULES[rule](s)] == []
    elif rule in rules.BATCH_RULES:
        assert list(rules.BATCH_RULES[rule]([rules.parse(sql) for sql in batch])) == []


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("COPY stage FROM 's3://b/m.json' FORMAT JSON 'auto' GZIP MANIFEST", "IAM_ROLE"),
        ("COPY stage FROM 's3://b/m.json' IAM_ROLE 'r' CREDENTIALS 'x' FORMAT JSON 'auto' GZIP MANIFEST", "excludes"),
        ("COPY stage FROM 's3://b/m.json' IAM_ROLE 'r' FORMAT JSON 'auto' GZIP MANIFEST DELIMITER '|'", "with JSON"),
        ("COPY stage FROM 's3://b/m.json' IAM_ROLE 'r' FORMAT CSV GZIP MANIFEST", "JSON 'auto'"),
        ("COPY stage FROM 's3://b/m.json' IAM_ROLE 'r' FORMAT JSON 'auto' GZIP ZSTD MANIFEST", "compression"),
        ("COPY stage FROM 's3://b/readings/' IAM_ROLE 'r' FORMAT JSON 'auto' GZIP", "one S3 object"),
    ],
)
def test_copy_options_that_do_not_go_together(sql: str, message: str) -> None:
    (violation, *_) = rules.check_statement(sql)
    assert violation.rule == "copy_options" and message in violation.message


@pytest.mark.parametrize(
    "sql",
    [
        "MERGE INTO readings USING stage_dedup AS s ON readings.device_id = s.device_id "
        "WHEN MATCHED AND s.seq > 1 THEN UPDATE SET metrics = s.metrics "
        "WHEN NOT MATCHED THEN INSERT (device_id) VALUES (s.device_id)",
        "MERGE INTO readings USING stage_dedup AS s ON readings.device_id = s.device_id "
        "WHEN MATCHED THEN UPDATE SET metrics = s.metrics[0] "
        "WHEN NOT MATCHED THEN INSERT (device_id) VALUES (s.device_id)",
        "MERGE INTO readings USING stage_dedup AS s ON readings.device_id = s.device_id "
        "WHEN MATCHED THEN UPDATE SET metrics = s.metrics.temp "
        "WHEN NOT MATCHED THEN INSERT (device_id) VALUES (s.device_id)",
        "MERGE INTO readings USING stage_dedup AS s ON readings.seq > s.seq "
        "WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT (device_id) VALUES (s.device_id)",
    ],
)
def test_merge_forms_redshift_does_not_support(sql: str) -> None:
    assert "merge_forms" in {v.rule for v in rules.check_statement(sql)}


def test_a_merge_source_deduplicated_on_another_key_is_refused() -> None:
    batch = loader_batch(1)
    dedup = batch.index(DEDUP)
    batch[dedup] = DEDUP.replace("PARTITION BY st.device_id, st.ts, st.seq", "PARTITION BY st.device_id, st.ts")
    assert [v.rule for v in rules.check_batch(batch)] == ["merge_source_unique"]


def test_staged_values_stay_inside_copy_json_and_super_limits() -> None:
    """Not checkable statically (the values are data): bounded upstream by the ingest's reading size. COPY JSON:
    4 MB per object (https://docs.aws.amazon.com/redshift/latest/dg/copy-parameters-data-format.html#copy-json);
    SUPER: 16 MB a value, a string 65,535 bytes (https://docs.aws.amazon.com/redshift/latest/dg/limitations-super.html).
    A staged line is one reading (at most MAX_READING_BYTES) plus a few stored attributes."""
    env = {"TABLE_NAME": "t", "QUARANTINE_BUCKET": "q", "AWS_REGION": "us-east-1"}
    assert IngestSettings.from_env(env).max_reading_bytes == 65_536
    largest = IngestSettings.from_env({**env, "MAX_READING_BYTES": "196608"}).max_reading_bytes
    with pytest.raises(ConfigError):
        IngestSettings.from_env({**env, "MAX_READING_BYTES": str(largest + 1)})
    assert largest + 4_096 < 4 * 1024 * 1024 < 16 * 1024 * 1024
    # with the default, no string inside a reading reaches 65,535 bytes: the reading's own fields take more than
    # one byte ({"device_id":"x","branch_id":"b","ts":0,"metrics":{"k":"..."}})
    assert 65_536 - len('{"device_id":"x","branch_id":"b","ts":0,"metrics":{"k":""}}') < 65_535


def test_the_local_warehouse_refuses_what_redshift_refuses_with_the_rules_name(tmp_path: Path) -> None:
    warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb", s3=None)
    old_dedup = DEDUP.replace("FROM stage AS st", "FROM stage").replace("st.", "")
    with pytest.raises(LoadFailed, match="qualify_from_alias") as info:
        warehouse.execute([old_dedup])
    assert not info.value.retryable  # Redshift would fail it again: the manifest is quarantined
    with pytest.raises(LoadFailed, match="denied_functions"):
        warehouse.query("SELECT NOW() FROM readings")
    assert not (tmp_path / "wh.duckdb").exists()  # refused before DuckDB saw anything
