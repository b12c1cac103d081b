"""Settings come from the environment, with one error naming every problem."""

from __future__ import annotations

import pytest

from devicepipe.config import ConfigError, IngestSettings


def test_settings_read_with_defaults() -> None:
    s = IngestSettings.from_env({"TABLE_NAME": "t", "QUARANTINE_BUCKET": "b", "AWS_REGION": "eu-west-1"})
    assert (s.table_name, s.quarantine_bucket, s.region) == ("t", "b", "eu-west-1")
    assert s.reading_ttl_days == 90 and s.max_concurrency == 32


def test_every_problem_is_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        IngestSettings.from_env({"AWS_REGION": "us-east-1", "READING_TTL_DAYS": "soon", "DDB_MAX_CONCURRENCY": "0"})
    message = str(info.value)
    for part in (
        "TABLE_NAME is required",
        "QUARANTINE_BUCKET is required",
        "READING_TTL_DAYS must be an integer",
        "DDB_MAX_CONCURRENCY must be between 1 and 128",
    ):
        assert part in message
