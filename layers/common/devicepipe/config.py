"""Typed settings read once from environment variables, with one clear error naming every problem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


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
