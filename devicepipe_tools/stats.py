"""Latency summaries printed by the local stack, the demo and the probes."""

from __future__ import annotations

from collections.abc import Iterable


def summary_ms(durations_s: Iterable[float]) -> dict[str, float | int | None]:
    """Count, p50, p95, p99 and max (nearest rank) of durations in seconds, in milliseconds."""
    values = sorted(durations_s)
    n = len(values)

    def ms(value: float) -> float:
        return round(value * 1000, 1)

    return {
        "count": n,
        **{f"p{q}": ms(values[min(n - 1, n * q // 100)]) if n else None for q in (50, 95, 99)},
        "max": ms(values[-1]) if n else None,
    }
