"""COPY input files sized for Redshift, made from many small staged objects.

The stager writes one object per stream batch, and Lambda caps a batch at 6 MB of event, so a staged object
holds at most about 115 KiB of gzip: at the design load (1,000 readings/s on 4 shards a region) that is about
550 objects an hour a region, each about 9x below Redshift's guidance for COPY input: files "of about equal
size, between 1 MB and 1 GB after compression", their number "a multiple of the number of slices"
(https://docs.aws.amazon.com/redshift/latest/dg/queries-troubleshooting-load-takes-too-long.html,
https://docs.aws.amazon.com/redshift/latest/dg/t_splitting-data-files.html). A gzip JSON file cannot be split
by Redshift, and every file is fetched and opened on its own, so a load of many small files is slow.

So the loader joins a load's objects into a few files before its COPY (``Loader.load``). The staged objects
are not touched: the ledger still records them, one by one, so exactly-once is unchanged, and a joined file
is a disposable copy (``manifests/compacted/``, expired by the bucket's lifecycle).

Joining re-compresses into one gzip member rather than concatenating the objects' bytes: RFC 1952 allows a
file of several members, but readers exist that stop after the first one without an error (a silent partial
load), and Redshift's documentation does not say how COPY reads them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MIB = 1024 * 1024
#: Redshift's lower bound for a compressed COPY input file.
MIN_FILE_BYTES = MIB
#: The loader holds one joined file in memory while it writes it (LoaderFunction has 512 MB).
MAX_FILE_BYTES = 64 * MIB
#: zlib level of a joined file: 6 compresses about as well as the stager's 9 at a fraction of its CPU.
LEVEL = 6
_GZIP = 31  # wbits: a gzip header and trailer (what COPY's GZIP option reads)


class CorruptObject(ValueError):
    """A staged object that is not the gzip it must be (it cannot load, now or later)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class Sizing:
    """How a load's objects are joined: files of at least ``min_file_bytes`` (0: never join), at most
    ``max_file_bytes``, and, once there is enough data for one file per slice, as many files as a multiple of
    ``slices`` (the warehouse's slice count: each slice loads files in parallel)."""

    min_file_bytes: int = MIN_FILE_BYTES
    max_file_bytes: int = MAX_FILE_BYTES
    slices: int = 4

    def file_count(self, total_bytes: int, objects: int) -> int:
        """How many files ``objects`` staged objects of ``total_bytes`` make (at most one per object)."""
        if self.min_file_bytes <= 0 or objects <= 1:
            return objects
        if total_bytes >= self.slices * self.min_file_bytes:
            files = self.slices * math.ceil(total_bytes / (self.slices * self.max_file_bytes))
        else:
            files = max(1, total_bytes // self.min_file_bytes)
        return min(files, objects)


def groups(sizes: Sequence[int], files: int) -> list[range]:
    """Split objects (in order, by their sizes) into ``files`` contiguous runs of about equal bytes."""
    total = sum(sizes)
    runs: list[range] = []
    start = 0
    done = 0
    for index, size in enumerate(sizes):
        done += size
        left_files = files - len(runs) - 1
        left_objects = len(sizes) - index - 1
        # Close a run at its share of the bytes, or when each file still to come needs one of the objects left.
        if left_files and (done >= total * (len(runs) + 1) / files or left_objects == left_files):
            runs.append(range(start, index + 1))
            start = index + 1
    runs.append(range(start, len(sizes)))
    return [r for r in runs if len(r)]


def join(bodies: Iterable[tuple[str, bytes]]) -> tuple[bytes, list[int]]:
    """One gzip member holding every line of the gzip ``bodies`` (``(name, bytes)``) in order, and how many lines
    each body holds (so a line number of the joined file maps back to its body). A body's last line is ended if
    it is not. Raises ``CorruptObject`` naming a body that does not decompress to its end."""
    out = zlib.compressobj(LEVEL, zlib.DEFLATED, _GZIP)
    parts: list[bytes] = []
    lines: list[int] = []
    for name, body in bodies:
        text = _gunzip(name, body)
        if text and not text.endswith(b"\n"):
            text += b"\n"
        parts.append(out.compress(text))
        lines.append(text.count(b"\n"))
    parts.append(out.flush())
    return b"".join(parts), lines


def locate(line: int, lines: Sequence[int]) -> tuple[int, int] | None:
    """Which body holds ``line`` (1-based) of a joined file, and its line there: ``(index, line)``, or None."""
    for index, count in enumerate(lines):
        if 1 <= line <= count:
            return index, line
        line -= count
    return None


def _gunzip(name: str, body: bytes) -> bytes:
    """Every member of a gzip body (the stager writes one; a hand-made object may have several)."""
    text: list[bytes] = []
    rest = body
    try:
        while rest:
            member = zlib.decompressobj(_GZIP)
            text.append(member.decompress(rest))
            if not member.eof:
                raise CorruptObject(name, "not gzip: truncated")
            rest = member.unused_data
    except zlib.error as exc:
        raise CorruptObject(name, f"not gzip: {exc}") from None
    if not body:
        raise CorruptObject(name, "not gzip: empty")
    return b"".join(text)
