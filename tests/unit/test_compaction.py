"""Joining staged objects into COPY files sized for Redshift (devicepipe.compaction)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from devicepipe.compaction import MIB, CorruptObject, Sizing, groups, join, locate

SLICES = 4


@pytest.mark.parametrize(
    ("total_mib", "objects", "files"),
    [
        (0.5, 10, 1),  # less than one file's worth: one file (as close to 1 MB as there is)
        (3.5, 40, 3),  # under one file a slice: as many files of at least 1 MB as there is data for
        (4, 40, 4),  # one a slice
        (30, 275, 4),  # the design load's 15-minute cycle: one file a slice, 7.5 MB each
        (256, 500, 4),  # at most 64 MiB a file
        (257, 500, 8),  # then the next multiple of the slices
        (30, 3, 3),  # never more files than objects
        (30, 1, 1),
    ],
)
def test_file_count_follows_redshifts_copy_guidance(total_mib: float, objects: int, files: int) -> None:
    """Files "between 1 MB and 1 GB after compression", their number "a multiple of the number of slices"
    (https://docs.aws.amazon.com/redshift/latest/dg/t_splitting-data-files.html): here at least 1 MiB and at most
    64 MiB (what the loader holds in memory), a multiple of the slices once there is 1 MiB a slice."""
    sizing = Sizing(slices=SLICES)
    count = sizing.file_count(int(total_mib * MIB), objects)
    assert count == files
    if total_mib >= SLICES and objects >= SLICES:
        assert count % SLICES == 0
        assert total_mib * MIB / count <= sizing.max_file_bytes


def test_joining_can_be_turned_off() -> None:
    assert Sizing(min_file_bytes=0).file_count(100 * MIB, 50) == 50


@pytest.mark.parametrize(
    ("sizes", "files"),
    [([100] * 10, 1), ([100] * 10, 3), ([100] * 8, 4), ([900, 10, 10, 10, 10, 10], 3), ([5, 5, 5, 500], 4)],
)
def test_groups_are_contiguous_runs_of_about_equal_bytes(sizes: list[int], files: int) -> None:
    runs = groups(sizes, files)
    assert len(runs) == files
    assert [i for r in runs for i in r] == list(range(len(sizes)))  # every object once, in order
    share = sum(sizes) / files
    # no run goes past its share by more than the object that closed it
    assert all(sum(sizes[i] for i in r) <= share + max(sizes[i] for i in r) for r in runs)


def test_a_joined_file_holds_every_line_once_in_order_as_one_gzip_member() -> None:
    bodies = [
        ("a", gzip.compress(b"1\n2\n", mtime=0)),
        ("b", gzip.compress(b"3", mtime=0)),  # no newline at the end: one is added, lines stay apart
        ("c", gzip.compress(b"4\n", mtime=0) + gzip.compress(b"5\n", mtime=0)),  # two members in, both read
    ]
    body, lines = join(bodies)
    assert gzip.decompress(body) == b"1\n2\n3\n4\n5\n"
    assert lines == [2, 1, 2]
    # one member: a reader that stops after the first member still reads every line
    member = zlib.decompressobj(31)
    assert member.decompress(body) == b"1\n2\n3\n4\n5\n" and member.unused_data == b""


def test_a_line_of_a_joined_file_maps_back_to_its_object() -> None:
    lines = [2, 1, 2]
    assert [locate(n, lines) for n in range(1, 6)] == [(0, 1), (0, 2), (1, 1), (2, 1), (2, 2)]
    assert locate(0, lines) is None and locate(6, lines) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"not gzip at all", "incorrect header check"), (gzip.compress(b"1\n2\n")[:-6], "truncated"), (b"", "empty")],
)
def test_an_object_that_is_not_gzip_is_named(body: bytes, reason: str) -> None:
    with pytest.raises(CorruptObject, match=reason) as caught:
        join([("good", gzip.compress(b"1\n")), ("s3://staging/bad.jsonl.gz", body)])
    assert caught.value.name == "s3://staging/bad.jsonl.gz"
