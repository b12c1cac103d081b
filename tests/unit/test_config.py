"""Settings come from the environment, with one error naming every problem."""

from __future__ import annotations

import pytest

from devicepipe.cache import connect
from devicepipe.config import CacheSettings, ConfigError, IngestSettings, StagerSettings


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


def test_cache_settings_need_a_redis_host_or_url() -> None:
    with pytest.raises(ConfigError, match=r"REDIS_HOST \(or REDIS_URL\) is required"):
        CacheSettings.from_env({"AWS_REGION": "us-east-1", "TABLE_NAME": "t"})
    s = CacheSettings.from_env(
        {
            "AWS_REGION": "us-east-1",
            "TABLE_NAME": "t",
            "REDIS_HOST": "r.example",
            "REDIS_TLS": "false",
            "REDIS_PORT": "6380",
        }
    )
    assert (s.redis_host, s.redis_port, s.redis_tls, s.key_prefix) == ("r.example", 6380, False, "dp")
    with pytest.raises(ConfigError, match="REDIS_TLS must be true or false"):
        CacheSettings.from_env({"AWS_REGION": "x", "TABLE_NAME": "t", "REDIS_HOST": "h", "REDIS_TLS": "maybe"})


def test_stager_settings_name_the_bucket() -> None:
    with pytest.raises(ConfigError, match="STAGING_BUCKET is required"):
        StagerSettings.from_env({"AWS_REGION": "us-east-1"})


@pytest.mark.parametrize("secret", ['{"token": "s3cret"}', "s3cret"])
def test_redis_connection_uses_tls_and_the_auth_token_from_secrets_manager(secret: str) -> None:
    class Secrets:
        def get_secret_value(self, SecretId: str) -> dict[str, str]:
            assert SecretId == "arn:secret"
            return {"SecretString": secret}

    settings = CacheSettings(
        region="us-east-1", table_name="t", redis_host="r.example", redis_auth_secret_arn="arn:secret"
    )
    client = connect(settings, Secrets())
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["password"]) == ("r.example", 6379, "s3cret")
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert kwargs["health_check_interval"] == 30
