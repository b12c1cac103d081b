"""docs/local-stack.md, run: each `sh test` block against a fresh local stack, its output checked against the
`text output` block after it (the page says how), so the page cannot drift from the stack."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devicepipe_tools.local import stack
from devicepipe_tools.template import ROOT

pytestmark = pytest.mark.e2e
PAGE = ROOT / "docs" / "local-stack.md"
#: The dev extras' tools (aws, duckdb, devicepipe) sit beside the interpreter: first on the blocks' PATH.
PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
RETRY_S = 90  # a block is run again until its output matches: staging takes up to the stager's batching window


@dataclass(frozen=True)
class Block:
    line: int
    script: str
    expected: str | None  # the `text output` block after it, if any

    @property
    def tool(self) -> str:
        return self.script.split()[0]


def page_blocks(text: str) -> tuple[str, list[Block]]:
    """The page's setup block and its test blocks, in order."""
    fences = [
        (text.count("\n", 0, m.start()) + 1, m["info"].strip(), m["body"])
        for m in re.finditer(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", text, re.M | re.S)
    ]
    setup = [body for _, info, body in fences if info == "sh test setup"]
    assert len(setup) == 1, "the page needs exactly one `sh test setup` block"
    blocks = [
        Block(line, body, fences[i + 1][2] if i + 1 < len(fences) and fences[i + 1][1] == "text output" else None)
        for i, (line, info, body) in enumerate(fences)
        if info == "sh test"
    ]
    return setup[0], blocks


def matches(expected: str, actual: str) -> bool:
    """``...`` stands for any text; runs of blanks compare equal; leading and trailing blank lines do not count."""

    def norm(text: str) -> str:
        return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())

    pattern = ".*".join(re.escape(part) for part in norm(expected).split("..."))
    return re.fullmatch(pattern, norm(actual), re.S) is not None


SETUP, BLOCKS = page_blocks(PAGE.read_text())


@pytest.fixture(scope="module")
def docs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("stack")
    stack.up(("us-east-1",), state_dir)
    try:
        yield {"state_dir": state_dir, "cwd": tmp_path_factory.mktemp("work")}
    finally:
        stack.down(state_dir)


def run(block: Block, docs_stack: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """The block in bash after the page's setup, with ``devicepipe`` bound to the test's stack."""
    preamble = (
        "set -eo pipefail\n"
        f'devicepipe() {{ {sys.executable} -m devicepipe_tools.cli "$@" --state-dir {docs_stack["state_dir"]}; }}\n'
    )
    return subprocess.run(
        ["bash", "-c", preamble + SETUP + block.script],
        capture_output=True,
        text=True,
        cwd=docs_stack["cwd"],
        env={**os.environ, "PATH": PATH},
        timeout=60,
        check=False,
    )


def test_expected_output_matching() -> None:
    assert matches("a ...\n...Z", "a\tb c  d\n2026-12-01T02:44:37.000000Z\n")
    assert matches("{...}", '{"x": 1}') and not matches("{...}", '{"x": 1}!')
    assert not matches("dev-01 21.5", "dev-01 21.6")


def test_the_page_has_blocks_to_run() -> None:
    assert {b.tool for b in BLOCKS} >= {"aws", "redis-cli", "duckdb", "python", "psql", "curl"}
    assert all(b.expected is not None for b in BLOCKS)


# In the page's order: later blocks read what earlier ones wrote.
@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}-{b.tool}" for b in BLOCKS])
def test_block(block: Block, docs_stack: dict[str, Any]) -> None:
    if not shutil.which(block.tool, path=PATH):
        if os.environ.get("CI"):  # .ci/run installs every tool the page uses: missing is a failure there
            pytest.fail(f"{block.tool} is required in CI")
        pytest.skip(f"{block.tool} is not installed")
    deadline = time.monotonic() + RETRY_S
    while True:
        done = run(block, docs_stack)
        if done.returncode == 0 and (block.expected is None or matches(block.expected, done.stdout)):
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"docs/local-stack.md line {block.line}: exit {done.returncode}\n--- expected\n{block.expected}\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )
        time.sleep(1)
