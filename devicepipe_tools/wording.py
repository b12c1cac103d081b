"""Figures in the commands' output worded for people: counts with the right plural, times that may not exist yet.

``count(1, "object")`` is ``1 object``, never ``1 objects``; ``ms(None)`` says that nothing was measured rather
than ``None ms``; ``fraction`` words ``0/0 markers`` as ``no markers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_IRREGULAR = {"branch view": "branch views", "COPY file": "COPY files"}


def plural(word: str) -> str:
    """English plural of a unit word: ``object`` -> ``objects``, ``branch`` -> ``branches``, ``entry`` ->
    ``entries``; the last word of a phrase is the one that changes."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return f"{word}es"
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        return f"{word[:-1]}ies"
    return f"{word}s"


def count(n: int | float, word: str, many: str | None = None) -> str:
    """``n`` and the unit word, singular for exactly one: ``count(3, "object")`` is ``3 objects``."""
    return f"{n} {word if n == 1 else (many or plural(word))}"


def ms(value: float | None) -> str:
    """A time in milliseconds, or ``n/a`` when nothing was measured (no record yet, no marker seen)."""
    return "n/a" if value is None else f"{value} ms"


def percentiles(label: str, figures: Mapping[str, Any], keys: tuple[str, ...] = ("p50", "p99")) -> str:
    """``latency p50 12.0 ms p99 40.5 ms``, or ``no latency measured`` when no figure was measured."""
    if all(figures.get(k) is None for k in keys):
        return f"no {label} measured"
    return f"{label} " + " ".join(f"{k} {ms(figures.get(k))}" for k in keys)


def fraction(part: int, whole: int, word: str) -> str:
    """``3/5 markers``, ``1/1 marker``, or ``no markers`` when there were none to count."""
    if whole == 0:
        return f"no {plural(word)}"
    return f"{part}/{whole} {word if whole == 1 else plural(word)}"


def by_key(figures: Mapping[str, Any]) -> str:
    """A mapping as ``us-east-1 22, eu-west-1 53`` (or ``none``), not as Python's ``{'us-east-1': 22, ...}``."""
    return ", ".join(f"{k} {v}" for k, v in figures.items()) or "none"
