"""Typed settings read once from environment variables, with one clear error naming every problem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from devicepipe.compaction import MAX_FILE_BYTES, MIN_FILE_BYTES, Sizing

#: The registry's read-only login (created by the first migration; functions connect as it).
READER_LOGIN = "devicepipe_reader"


class ConfigError(RuntimeError):
    """A required setting is missing or malformed."""


class _Env:
    """Collects every problem before raising, so one deploy fixes them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str) -> str:
        value = self.env.get(name, "").strip()
        if not value:
            self.problems.append(f"{name} is required")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name} must be an integer, got {raw!r}")
            return default
        if not low <= value <= high:
            self.problems.append(f"{name} must be between {low} and {high}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw not in ("true", "false", "1", "0", "yes", "no"):
            self.problems.append(f"{name} must be true or false, got {raw!r}")
        return raw in ("true", "1", "yes")

    def check(self, what: str) -> None:
        if self.problems:
            raise ConfigError(f"{what}: " + "; ".join(self.problems))


@dataclass(frozen=True)
class IngestSettings:
    """Settings of IngestFunction (see template.yaml for the variables)."""

    table_name: str
    quarantine_bucket: str
    region: str
    reading_ttl_days: int = 90
    max_reading_bytes: int = 65_536
    max_clock_skew_s: int = 86_400
    max_concurrency: int = 32

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IngestSettings:
        """Read the settings; raises ``ConfigError`` listing every missing or invalid variable."""
        e = _Env(os.environ if env is None else env)
        settings = cls(
            table_name=e.text("TABLE_NAME"),
            quarantine_bucket=e.text("QUARANTINE_BUCKET"),
            region=e.text("AWS_REGION"),
            reading_ttl_days=e.integer("READING_TTL_DAYS", 90, 1, 36_500),
            # DynamoDB items stop at 400 KB; the reading is stored twice (reading and LATEST items).
            max_reading_bytes=e.integer("MAX_READING_BYTES", 65_536, 256, 196_608),
            max_clock_skew_s=e.integer("MAX_CLOCK_SKEW_SECONDS", 86_400, 0, 31_536_000),
            max_concurrency=e.integer("DDB_MAX_CONCURRENCY", 32, 1, 128),
        )
        e.check("IngestFunction settings")
        return settings


@dataclass(frozen=True)
class CacheSettings:
    """Settings of CacheUpdaterFunction: Redis by ``REDIS_URL`` (local stack, tests) or by host, port, TLS
    and an AUTH token in Secrets Manager (AWS)."""

    region: str
    table_name: str
    redis_url: str = ""
    redis_host: str = ""
    redis_port: int = 6379
    redis_tls: bool = True
    redis_auth_secret_arn: str = ""
    key_prefix: str = "dp"
    retention_days: int = 90

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, what: str = "CacheUpdaterFunction") -> CacheSettings:
        e = _Env(os.environ if env is None else env)
        settings = cls(
            region=e.text("AWS_REGION"),
            table_name=e.text("TABLE_NAME"),
            redis_url=e.env.get("REDIS_URL", "").strip(),
            redis_host=e.env.get("REDIS_HOST", "").strip(),
            redis_port=e.integer("REDIS_PORT", 6379, 1, 65_535),
            redis_tls=e.flag("REDIS_TLS", True),
            redis_auth_secret_arn=e.env.get("REDIS_AUTH_SECRET_ARN", "").strip(),
            key_prefix=e.env.get("CACHE_KEY_PREFIX", "dp").strip() or "dp",
            retention_days=e.integer("READING_TTL_DAYS", 90, 1, 36_500),
        )
        if not settings.redis_url and not settings.redis_host:
            e.problems.append("REDIS_HOST (or REDIS_URL) is required")
        e.check(f"{what} settings")
        return settings


@dataclass(frozen=True)
class ReadApiSettings:
    """Settings of ReadApiFunction: the cache's (Redis, table) and the read API's own."""

    cache: CacheSettings
    stale_after_s: int = 900
    version: str = ""
    reports_bucket: str = ""  # optional: without it GET /branches/{id}/report answers 500 (logged)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReadApiSettings:
        e = _Env(os.environ if env is None else env)
        stale_after_s = e.integer("STALE_AFTER_SECONDS", 900, 1, 31_536_000)
        try:
            cache = CacheSettings.from_env(e.env, what="ReadApiFunction")
        except ConfigError as exc:
            e.problems.insert(0, str(exc).partition(": ")[2])
            cache = CacheSettings(region="", table_name="")
        e.check("ReadApiFunction settings")
        return cls(
            cache, stale_after_s, e.env.get("SERVICE_VERSION", "").strip(), e.env.get("REPORTS_BUCKET", "").strip()
        )


@dataclass(frozen=True)
class StagerSettings:
    """Settings of StagerFunction."""

    region: str
    staging_bucket: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StagerSettings:
        e = _Env(os.environ if env is None else env)
        settings = cls(region=e.text("AWS_REGION"), staging_bucket=e.text("STAGING_BUCKET"))
        e.check("StagerFunction settings")
        return settings


@dataclass(frozen=True)
class QuarantineSettings:
    """Where a stream consumer (CacheUpdaterFunction, StagerFunction) quarantines the records it cannot decode:
    the ingest's quarantine bucket, under the consumer's own stage."""

    bucket: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, what: str = "stream consumer") -> QuarantineSettings:
        e = _Env(os.environ if env is None else env)
        settings = cls(bucket=e.text("QUARANTINE_BUCKET"))
        e.check(f"{what} settings")
        return settings


@dataclass(frozen=True)
class RepairSettings:
    """Settings of the LATEST repair, which runs in CacheUpdaterFunction beside the cache."""

    table_name: str
    max_concurrency: int = 8

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RepairSettings:
        e = _Env(os.environ if env is None else env)
        settings = cls(table_name=e.text("TABLE_NAME"), max_concurrency=e.integer("MAX_CONCURRENCY", 8, 1, 64))
        e.check("CacheUpdaterFunction (LATEST repair) settings")
        return settings


@dataclass(frozen=True)
class LoaderSettings:
    """Settings of LoaderFunction.

    ``STAGING_BUCKET``: the staging bucket of the loader's own region (``AWS_REGION``), which holds both regions'
    readings (the other region's replicated in) and the manifests. The former ``STAGING_SOURCES`` (buckets of
    several regions) is refused: a COPY cannot read another region's bucket from here (docs/warehouse-regions.md).
    """

    workgroup: str
    database: str
    copy_role_arn: str
    manifest_bucket: str
    staging_bucket: str
    region: str
    max_objects: int = 500
    max_bytes: int = 512 * 1024 * 1024
    sizing: Sizing = field(default_factory=Sizing)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoaderSettings:
        e = _Env(os.environ if env is None else env)
        if e.env.get("STAGING_SOURCES", "").strip():
            e.problems.append(
                "STAGING_SOURCES is no longer read: the loader loads only STAGING_BUCKET, its own region's bucket, "
                "into which the other region's staging is replicated (docs/warehouse-regions.md)"
            )
        settings = cls(
            workgroup=e.text("WORKGROUP_NAME"),
            database=e.text("DATABASE_NAME"),
            copy_role_arn=e.text("COPY_ROLE_ARN"),
            manifest_bucket=e.text("MANIFEST_BUCKET"),
            staging_bucket=e.text("STAGING_BUCKET"),
            region=e.text("AWS_REGION"),
            max_objects=e.integer("MANIFEST_MAX_OBJECTS", 500, 1, 10_000),
            max_bytes=e.integer("MANIFEST_MAX_BYTES", 512 * 1024 * 1024, 1024, 64 * 1024**3),
            # COPY files joined from staged objects (devicepipe.compaction); COPY_FILE_MIN_BYTES=0 never joins.
            sizing=Sizing(
                e.integer("COPY_FILE_MIN_BYTES", MIN_FILE_BYTES, 0, 1024**3),
                e.integer("COPY_FILE_MAX_BYTES", MAX_FILE_BYTES, 1024 * 1024, 256 * 1024 * 1024),  # held in memory
                e.integer("WAREHOUSE_SLICES", Sizing().slices, 1, 1024),
            ),
        )
        if settings.sizing.min_file_bytes > settings.sizing.max_file_bytes:
            e.problems.append("COPY_FILE_MIN_BYTES must not be above COPY_FILE_MAX_BYTES")
        e.check("LoaderFunction settings")
        return settings


@dataclass(frozen=True)
class ReportSettings:
    """Settings of ReportFunction (the registry's connection: ``RegistrySettings``).

    ``REPORT_LINK_TTL_SECONDS`` stops at SigV4's 7 days; S3 ends a link sooner when the role session that signed
    it ends (``devicepipe.delivery.deliver``).
    """

    workgroup: str
    database: str
    copy_role_arn: str
    reports_bucket: str
    topic_arn: str
    region: str
    gap_threshold_s: int = 900
    final_after_s: int = 86_400
    link_ttl_s: int = 3_600

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReportSettings:
        e = _Env(os.environ if env is None else env)
        settings = cls(
            workgroup=e.text("WORKGROUP_NAME"),
            database=e.text("DATABASE_NAME"),
            copy_role_arn=e.text("COPY_ROLE_ARN"),
            reports_bucket=e.text("REPORTS_BUCKET"),
            topic_arn=e.text("REPORTS_TOPIC_ARN"),
            region=e.text("AWS_REGION"),
            gap_threshold_s=e.integer("REPORT_GAP_MINUTES", 15, 1, 1440) * 60,
            final_after_s=e.integer("REPORT_FINAL_AFTER_HOURS", 24, 0, 24 * 30) * 3600,
            link_ttl_s=e.integer("REPORT_LINK_TTL_SECONDS", 3_600, 60, 604_800),
        )
        e.check("ReportFunction settings")
        return settings


@dataclass(frozen=True)
class RegistrySettings:
    """How a function reaches the registry (``registry.connect``).

    ``REGISTRY_URL`` (``postgresql://user[:password]@host:port/database``, the local stack and tests) overrides the
    rest. Otherwise this region's Aurora endpoint, ``REGISTRY_HOST`` (the reader endpoint: reads stay in the region,
    and the Data API cannot read a global database's secondary), as ``REGISTRY_USER`` with an IAM token over
    verified TLS. ``REGISTRY_CA_BUNDLE`` names the CA bundle to verify the server with (default: the RDS bundle the
    layer ships). ``password`` is never read from the environment: a caller that holds a secret (the migration
    function, with the master secret) sets it with ``dataclasses.replace`` and no token is made.
    """

    region: str = ""
    url: str = ""
    host: str = ""
    port: int = 5432
    database: str = "devicepipe"
    user: str = READER_LOGIN
    password: str = ""
    ca_bundle: str = ""
    timeout_s: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RegistrySettings:
        e = _Env(os.environ if env is None else env)
        url = e.env.get("REGISTRY_URL", "").strip()
        settings = cls(
            region=e.env.get("AWS_REGION", "").strip(),
            url=url,
            host=e.env.get("REGISTRY_HOST", "").strip(),
            port=e.integer("REGISTRY_PORT", 5432, 1, 65_535),
            database=e.env.get("REGISTRY_DATABASE", "").strip() or "devicepipe",
            user=e.env.get("REGISTRY_USER", "").strip() or READER_LOGIN,
            ca_bundle=e.env.get("REGISTRY_CA_BUNDLE", "").strip(),
            timeout_s=e.integer("REGISTRY_TIMEOUT_SECONDS", 10, 1, 300),
        )
        if url and not url.startswith(("postgresql://", "postgres://")):
            e.problems.append(f"REGISTRY_URL must be a postgresql://user@host:port/database URL, got {url[:30]!r}")
        if not url and not settings.host:
            e.problems.append("REGISTRY_HOST (or REGISTRY_URL) is required")
        if not url and not settings.region:
            e.problems.append("AWS_REGION is required (it signs the IAM token)")
        e.check("registry settings")
        return settings
