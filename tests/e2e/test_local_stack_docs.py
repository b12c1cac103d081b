"""The docs cannot drift: every command in README.md and docs/*.md is run or checked here, and every link resolves.

One mechanism for every page: each fenced block is read by its info string.

- ``sh test`` blocks (docs/local-stack.md only) are run in bash, in order, against a fresh local stack after the
  page's ``sh test setup`` block, and their output checked against the ``text output`` block after them (the page
  says how).
- Every command of a ``sh`` or ``bash`` block (``sh test`` blocks included) is checked without running it:
  ``devicepipe ...`` is parsed by the command's own argparse parser; ``make ...`` must name Makefile targets;
  ``sam ...`` must name a SAM CLI command and its options; ``aws ...`` must name an AWS CLI service, operation
  (or waiter, or ``s3`` command) and its options. Any other command must be shell plumbing (``eval``, ``cat``,
  ``date``, ...) or stand in a block that is run. Inline ``devicepipe`` and ``make`` spans in the prose are checked
  too: the subcommands and options they name must exist.
- Every fence says what it holds (``sh``, ``text``, ``json``, ...): a bare fence would hide commands from the checks.
- Every relative link leads to an existing file, and its ``#anchor`` to a heading of that file.

The checks without a stack are quick and run everywhere; the ``sh test`` blocks are marked ``e2e``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from devicepipe_tools import cli
from devicepipe_tools.local import stack
from devicepipe_tools.template import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGE = ROOT / "docs" / "local-stack.md"  # the page whose `sh test` blocks run against a stack
#: The dev extras' tools (aws, duckdb, devicepipe) sit beside the interpreter: first on the blocks' PATH.
PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
RETRY_S = 90  # a block is run again until its output matches: staging takes up to the stager's batching window
SHELL_INFOS = {"sh", "bash", "sh test", "sh test setup"}
#: Commands that only move data between the checked ones (or are shell syntax): allowed in any shell block.
PLUMBING = {"eval", "source", "export", "cat", "date", "echo", "git", "jq", "sort", "head"}
PLUMBING |= {"for", "do", "done", "if", "then", "fi", "{", "}"}
#: Options of the AWS CLI v2 that v1 (the dev extras' `aws`) does not know; the docs say when a command needs v2.
AWS_V2_ONLY = {"cli-binary-format", "no-cli-pager"}


# ----------------------------------------------------------------------------------------------- reading pages
@dataclass(frozen=True)
class Fence:
    page: Path
    line: int
    info: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fences(page: Path) -> list[Fence]:
    text = page.read_text()
    return [
        Fence(page, text.count("\n", 0, m.start()) + 1, m["info"].strip(), m["body"])
        for m in re.finditer(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", text, re.M | re.S)
    ]


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^```[^\n]*\n.*?^```$", "", page.read_text(), flags=re.M | re.S)


def logical_lines(body: str) -> list[str]:
    """A shell block's lines with continuations joined, comments and heredoc bodies dropped."""
    out: list[str] = []
    pending = ""
    heredoc: str | None = None
    for raw in body.splitlines():
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if m := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line):
            heredoc = m[1]
        if line.strip() and not line.strip().startswith("#"):
            out.append(line)
    return out


def substitutions(line: str) -> tuple[str, list[str]]:
    """The line with each ``$(...)`` replaced by a word, and the commands inside them (nested ones too)."""
    inner: list[str] = []
    while (start := line.find("$(")) >= 0:
        depth, end = 0, start + 1
        for end in range(start + 1, len(line)):
            depth += {"(": 1, ")": -1}.get(line[end], 0)
            if depth == 0:
                break
        inner.append(line[start + 2 : end])
        line = f"{line[:start]}SUBST{line[end + 1 :]}"
    nested = [cmd for text in inner for cmd in [substitutions(text)[0], *substitutions(text)[1]]]
    return line, nested


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one logical line: split at ``|``, ``&&``, ``;``, without assignments or redirects."""
    line, nested = substitutions(line)
    line = re.sub(r"<(?=[A-Za-z])[^<>\n]*>", "PLACEHOLDER", line)  # <object key>, <you>: one word
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in {"|", "||", "&&", ";", "&"}:
            commands.append([])
        elif set(token) <= set("<>&"):  # a redirect (or a heredoc): drop it, its target and a descriptor before it
            if commands[-1] and commands[-1][-1].isdigit():
                commands[-1].pop()
            skip_next = True
        elif commands[-1] or not re.fullmatch(r"[A-Za-z_]\w*=.*", token):  # not an assignment before the command
            commands[-1].append(token)
    out = [cmd for cmd in commands if cmd]
    for text in nested:
        out += simple_commands(text)
    return out


@dataclass(frozen=True)
class Command:
    fence: Fence
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name if self.argv[0].startswith(".venv/") else self.argv[0]

    def __str__(self) -> str:
        return f"{self.fence.where}: {shlex.join(self.argv)}"


def shell_commands() -> list[Command]:
    found: list[Command] = []
    for page in PAGES:
        for fence in fences(page):
            if fence.info not in SHELL_INFOS:
                continue
            functions = set(re.findall(r"^\s*(\w+)\(\)\s*\{", fence.body, re.M))
            for line in logical_lines(fence.body):
                for words in simple_commands(line):
                    argv = words
                    while argv and (argv[0] in {"do", "then", "{"} or re.fullmatch(r"\w+\(\)", argv[0])):
                        argv = argv[1:]  # `do cmd`, `name() { cmd`: the command is what follows
                    if argv and argv[0] not in functions:
                        found.append(Command(fence, tuple(argv)))
    return found


COMMANDS = shell_commands()


def inline_spans(prefix: str) -> list[tuple[Path, str]]:
    """Inline code spans of the pages' prose that start with ``prefix`` and read as one command (not a synopsis
    such as ``local up | down``)."""
    return [
        (page, span)
        for page in PAGES
        for span in re.findall(r"`([^`\n]+)`", prose(page))
        if span.startswith(prefix) and not re.search(r"[|\[\]]|\.\.\.|<", span)
    ]


# ----------------------------------------------------------------------------------------------- devicepipe
def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parse_devicepipe(argv: list[str]) -> str | None:
    """What argparse says about ``devicepipe ARGV`` (None: it parses), without running anything."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli._parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                return err.getvalue().strip().splitlines()[-1]
    return None


def options(parser: argparse.ArgumentParser) -> set[str]:
    """The parser's options, and its subcommands' (a span may stop at ``devicepipe read --local``)."""
    own = {opt for action in parser._actions for opt in action.option_strings}
    return own.union(*(options(sub) for sub in subparsers(parser).values()))


def devicepipe_span_problem(argv: list[str]) -> str | None:
    """A prose span such as ``devicepipe local up --port 4566``: its subcommands and options must exist."""
    parser = cli._parser()
    words = [w for w in argv if not w.startswith("-")]
    for word in words:
        choices = subparsers(parser)
        if not choices:
            break
        if word not in choices:
            return f"no subcommand {word!r} (there are {', '.join(choices)})"
        parser = choices[word]
    known = options(parser)
    unknown = [w.split("=")[0] for w in argv if w.startswith("--") and w.split("=")[0] not in known]
    return f"unknown options {unknown}" if unknown else None


# ----------------------------------------------------------------------------------------------- make, sam, aws
@cache
def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def make_problem(argv: list[str]) -> str | None:
    targets = [w for w in argv[1:] if not w.startswith("-") and "=" not in w]
    missing = [t for t in targets if t not in make_targets()]
    return f"no Makefile target {missing}" if missing else None


def sam_problem(argv: list[str]) -> str | None:
    from samcli.cli.main import cli as sam  # type: ignore[import-untyped]

    command: Any = sam
    ctx = sam.make_context("sam", ["--help"], resilient_parsing=True)
    path: list[str] = []
    for word in argv[1:]:
        if word.startswith("-") or not hasattr(command, "get_command"):
            break
        sub = command.get_command(ctx, word)
        if sub is None:
            return f"no command sam {' '.join([*path, word])}"
        command, path = sub, [*path, word]
    known = {opt for param in command.params for opt in param.opts}
    unknown = [w for w in argv[1:] if w.startswith("-") and w.split("=")[0] not in known]
    return f"sam {' '.join(path)} has no options {unknown}" if unknown else None


@cache
def aws_driver() -> Any:
    from awscli.clidriver import create_clidriver  # type: ignore[import-untyped]

    return create_clidriver()


def aws_problem(argv: list[str]) -> str | None:
    driver = aws_driver()
    words = [w for w in argv[1:] if not w.startswith("-")]
    table = driver._get_command_table()
    service = table.get(words[0]) if words else None
    if service is None:
        return f"no AWS CLI service {words[:1]}"
    commands = service.subcommand_table if hasattr(service, "subcommand_table") else service._get_command_table()
    command = commands.get(words[1]) if len(words) > 1 else None
    if command is None:
        return f"aws {words[0]} has no command {words[1:2]}"
    if hasattr(command, "subcommand_table") and command.subcommand_table:  # a waiter
        command = command.subcommand_table.get(words[2]) if len(words) > 2 else None
        if command is None:
            return f"aws {words[0]} {words[1]} has no {words[2:3]}"
    known = set(command.arg_table) | set(driver._get_argument_table()) | AWS_V2_ONLY
    unknown = [w for w in argv[1:] if w.startswith("--") and w[2:].split("=")[0] not in known]
    return f"aws {' '.join(words[:2])} has no options {unknown}" if unknown else None


def command_problem(command: Command) -> str | None:
    argv = list(command.argv)
    if command.name == "devicepipe":
        return parse_devicepipe(argv[1:])
    if command.name == "make":
        return make_problem(argv)
    if command.name == "sam":
        return sam_problem(argv)
    if command.name == "aws":
        return aws_problem(argv)
    if command.name in PLUMBING or command.fence.info.startswith("sh test"):
        return None  # shell plumbing, or run against the stack below
    return f"nothing checks {command.name!r}: use a checked command, or a `sh test` block that runs it"


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.fence.where}-{c.name}" for c in COMMANDS])
def test_command_in_the_docs_is_checked(command: Command) -> None:
    assert command_problem(command) is None, f"{command}\n{command_problem(command)}"


@pytest.mark.parametrize(("page", "span"), inline_spans("devicepipe "), ids=[s for _, s in inline_spans("devicepipe ")])
def test_devicepipe_named_in_the_prose_exists(page: Path, span: str) -> None:
    problem = devicepipe_span_problem(shlex.split(span)[1:])
    assert problem is None, f"{page.relative_to(ROOT)}: `{span}`: {problem}"


def test_make_targets_named_in_the_prose_exist() -> None:
    problems = [f"{p.relative_to(ROOT)}: `{s}`" for p, s in inline_spans("make ") if make_problem(shlex.split(s))]
    assert not problems, problems


def test_every_fence_says_what_it_holds() -> None:
    bare = [f.where for page in PAGES for f in fences(page) if not f.info]
    assert not bare, f"fences without an info string (sh, text, json, ...): {bare}"


def test_only_the_local_stack_page_has_blocks_run_against_a_stack() -> None:
    elsewhere = [f.where for p in PAGES if p != PAGE for f in fences(p) if f.info.startswith("sh test")]
    assert not elsewhere, elsewhere


def test_the_checks_catch_what_is_wrong() -> None:
    fence = Fence(PAGE, 1, "sh", "")
    wrong = [
        ["devicepipe", "local", "upp"],
        ["devicepipe", "read", "latest", "dev-1", "--local", "--jsn"],
        ["make", "demoo"],
        ["sam", "local", "invoke", "--env-var", "x.json"],
        ["aws", "kinesis", "put-records", "--stream", "s"],
        ["aws", "dynamodb", "wait", "table-exist"],
        ["psql", "-c", "select 1"],
    ]
    assert all(command_problem(Command(fence, tuple(argv))) for argv in wrong)
    assert devicepipe_span_problem(["local", "up", "--prot", "1"]) and not devicepipe_span_problem(["local", "up"])
    assert simple_commands('X=1 aws s3 ls "s3://$B/" | sort && eval "$(devicepipe local env)" >/dev/null') == [
        ["aws", "s3", "ls", "s3://$B/"],
        ["sort"],
        ["eval", "SUBST"],
        ["devicepipe", "local", "env"],
    ]


# ----------------------------------------------------------------------------------------------- links
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", prose(page))
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_link_checks_catch_what_is_wrong() -> None:
    assert slug("Start it on fixed ports") == "start-it-on-fixed-ports"
    assert slug("The demo: `make demo`") == "the-demo-make-demo"
    assert slug("3. Redis lost (failover, replacement, flush)") == "3-redis-lost-failover-replacement-flush"
    assert "how-this-page-is-tested" in anchors(PAGE)


# ----------------------------------------------------------------------------------------------- sh test blocks
@dataclass(frozen=True)
class Block:
    line: int
    script: str
    expected: str | None  # the `text output` block after it, if any

    @property
    def tool(self) -> str:
        return self.script.split()[0]


def page_blocks(page: Path) -> tuple[str, list[Block]]:
    """The page's setup block and its test blocks, in order."""
    found = fences(page)
    setup = [f.body for f in found if f.info == "sh test setup"]
    assert len(setup) == 1, "the page needs exactly one `sh test setup` block"
    blocks = [
        Block(f.line, f.body, found[i + 1].body if i + 1 < len(found) and found[i + 1].info == "text output" else None)
        for i, f in enumerate(found)
        if f.info == "sh test"
    ]
    return setup[0], blocks


def matches(expected: str, actual: str) -> bool:
    """``...`` stands for any text; runs of blanks compare equal; leading and trailing blank lines do not count."""

    def norm(text: str) -> str:
        return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())

    pattern = ".*".join(re.escape(part) for part in norm(expected).split("..."))
    return re.fullmatch(pattern, norm(actual), re.S) is not None


SETUP, BLOCKS = page_blocks(PAGE)


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
@pytest.mark.e2e
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
