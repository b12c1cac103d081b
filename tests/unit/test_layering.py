"""Import boundaries, read from the source (no import runs):

- Lambda code (the layer's ``devicepipe`` and ``functions/``) imports only the standard library, itself and the
  layer's requirements: what the deployed zip and layer hold. Tooling (``devicepipe_tools``, ``tests``,
  ``benchmarks``) is not deployed, so an import of it works here and fails in Lambda.
- The local emulator's internals (``_``-prefixed names of ``devicepipe_tools.local``) are used inside it only:
  the CLI, the other tooling, tests and benchmarks go through its public names.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devicepipe_tools.template import ROOT

LAMBDA_CODE = (ROOT / "layers" / "common" / "devicepipe", ROOT / "functions")
EMULATOR = "devicepipe_tools.local"
EMULATOR_DIR = ROOT / "devicepipe_tools" / "local"
SKIPPED_DIRS = {".venv", ".venv-checkov", ".aws-sam", ".local", "build", "dist", "node_modules", ".git"}


def python_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(ROOT).parts))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def layer_modules() -> set[str]:
    """Top-level modules of the layer's requirements (``aws_lambda_powertools`` for aws-lambda-powertools, ...)."""
    lines = (ROOT / "layers" / "common" / "requirements.txt").read_text().splitlines()
    required = {canonical(re.split(r"[\[=<>;\s]", ln.strip(), maxsplit=1)[0]) for ln in lines if ln[:1].isalnum()}
    return {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if any(canonical(d) in required for d in dists)
    }


def imports(tree: ast.AST) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every import outside ``if TYPE_CHECKING:``; module is absolute ("" relative)."""
    for node in _outside_type_checking(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "") if node.level == 0 else ""
            yield node.lineno, module, [alias.name for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value, []


def _outside_type_checking(tree: ast.AST) -> Iterator[ast.AST]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_outside_type_checking(child)])
            continue
        yield node
        yield from _outside_type_checking(node)


def lambda_violations(path: Path, source: str, allowed: set[str]) -> list[str]:
    out = []
    for line, module, _ in imports(ast.parse(source)):
        top = module.split(".")[0]
        if top and top not in allowed:
            out.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    return out


def private_uses(path: Path, source: str) -> list[str]:
    """Uses of the emulator's ``_``-prefixed names: imported by name, read as an attribute of one of its modules,
    or named in a string (``monkeypatch.setattr("devicepipe_tools.local.stack._x", ...)``)."""
    tree = ast.parse(source)
    found, modules = _private_imports(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and _names_emulator_module(node.value, modules):
            found.append((node.lineno, f"uses {ast.unparse(node)}"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = re.finditer(rf"{re.escape(EMULATOR)}(\.\w+)*\.(_\w+)", node.value)
            found += [(node.lineno, f"names {m[0]}") for m in names if _private(m[2])]
    return [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in found]


def _private_imports(tree: ast.AST) -> tuple[list[tuple[int, str]], set[str]]:
    """Imports of the emulator's private names or modules, and the local names bound to its modules."""
    found, modules = [], set()
    for line, module, names in imports(tree):
        if not module.startswith(EMULATOR):
            continue
        if module == EMULATOR:
            modules |= {n for n in names if not _private(n)}
        found += [(line, f"imports {module}.{n}") for n in names if _private(n)]
        if any(_private(part) for part in module.split(".")):
            found.append((line, f"imports {module}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.asname and a.name.startswith(EMULATOR + ".")}
    return found, modules


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _names_emulator_module(node: ast.expr, modules: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in modules
    return ast.unparse(node).startswith(EMULATOR + ".")


def test_lambda_code_imports_only_the_standard_library_itself_and_the_layer() -> None:
    allowed = set(sys.stdlib_module_names) | {"devicepipe", "__future__"} | layer_modules()
    assert {"boto3", "botocore", "aws_lambda_powertools", "orjson", "redis", "pg8000"} <= allowed
    files = python_files(*LAMBDA_CODE)
    assert len(files) > 20
    found = [v for p in files for v in lambda_violations(p, p.read_text(), allowed)]
    assert found == [], "Lambda code must not import tooling or packages the layer lacks"


def test_nothing_outside_the_emulator_uses_its_private_names() -> None:
    this = Path(__file__).resolve()  # its examples name private names
    files = [p for p in python_files(ROOT) if EMULATOR_DIR not in p.parents and p != this]
    assert any(p.name == "cli.py" for p in files) and any("tests" in p.parts for p in files)
    found = [v for p in files for v in private_uses(p, p.read_text())]
    assert found == [], "use (or add) a public name of devicepipe_tools.local"


@pytest.mark.parametrize(
    "source",
    [
        "from devicepipe_tools.local.stack import _Stack",
        "from devicepipe_tools.local import stack\nstack._supervisor({})",
        "import devicepipe_tools.local.stack as s\ns._gone({}, None)",
        "import devicepipe_tools.local.stack\ndevicepipe_tools.local.stack._one_line(None)",
        "monkeypatch.setattr('devicepipe_tools.local.stack._aws_regions', set)",
    ],
)
def test_a_private_use_is_found(source: str) -> None:
    assert private_uses(ROOT / "tests" / "x.py", source)


@pytest.mark.parametrize(
    "source",
    [
        "from devicepipe_tools.local.stack import up, StackError",
        "from devicepipe_tools.local import stack\nstack.up()\nstack.__file__",
        "from devicepipe_tools import plan\nplan._Context",  # not the emulator's
    ],
)
def test_a_public_use_passes(source: str) -> None:
    assert private_uses(ROOT / "tests" / "x.py", source) == []


@pytest.mark.parametrize(
    "source",
    [
        "from devicepipe_tools.local.files import STATE",
        "import devicepipe_tools",
        "import moto",
        "import importlib\nimportlib.import_module('tests.conftest')",
        "def f():\n    import duckdb",
    ],
)
def test_lambda_code_importing_tooling_is_found(source: str) -> None:
    allowed = set(sys.stdlib_module_names) | {"devicepipe"} | layer_modules()
    assert lambda_violations(ROOT / "functions" / "x.py", source, allowed)


def test_type_checking_imports_are_not_lambda_imports() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mypy_boto3_s3 import S3Client\n"
    assert lambda_violations(ROOT / "functions" / "x.py", source, set(sys.stdlib_module_names)) == []
