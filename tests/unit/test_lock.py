"""constraints.txt pins every package `make venv` installs: the layer ships the versions the tests ran against."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from devicepipe_tools.local import moto_fixes
from devicepipe_tools.template import ROOT

LOCK = ROOT / "constraints.txt"
LAYER_REQUIREMENTS = ROOT / "layers" / "common" / "requirements.txt"


def canonical(name: str) -> str:
    """PEP 503's normalised name: pip treats ``aws_lambda_powertools`` and ``aws-lambda-powertools`` as one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines (extras and markers dropped), by canonical name; comments skipped."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[canonical(name.split("[", 1)[0])] = version.strip()
    return out


def test_every_lock_line_pins_one_version_and_the_project_is_not_in_it() -> None:
    lines = [ln for ln in LOCK.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[^=\s;]+", ln) for ln in lines), lines
    assert "devicepipe" not in pins(LOCK)  # the project is installed editable, from the work tree


def test_the_layer_requirements_are_the_locked_versions() -> None:
    layer, locked = pins(LAYER_REQUIREMENTS), pins(LOCK)
    assert layer  # boto3, botocore, powertools, orjson, redis, pg8000, tzdata
    assert {name: locked.get(name) for name in layer} == layer


def project_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]


def test_every_project_requirement_is_locked() -> None:
    """A requirement added to pyproject.toml without `make lock` would install unpinned."""
    names = {canonical(re.split(r"[\[=<>!~;\s]", spec, maxsplit=1)[0]) for spec in project_requirements()}
    assert sorted(names - set(pins(LOCK))) == [], "run `make lock`"


def test_pyproject_exact_pins_are_the_locked_versions() -> None:
    pattern = r"([A-Za-z0-9._-]+)(?:\[[^]]*\])?==(\S+)"
    exact = {canonical(m[1]): m[2] for s in project_requirements() if (m := re.fullmatch(pattern, s))}
    assert exact and {name: pins(LOCK).get(name) for name in exact} == exact


def test_the_venv_runs_the_locked_versions() -> None:
    """`make venv` installs with the lock; a venv that drifted (a hand install, an old venv) fails here."""
    drifted = {}
    for name, version in pins(LOCK).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            drifted[name] = f"{installed} installed, {version} locked"
    assert drifted == {}, "run `make venv`"


def test_make_venv_installs_with_the_lock_and_the_lock_pins_a_known_moto() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [ln for ln in makefile.splitlines() if "$(BIN)/python -m pip install" in ln]
    assert installs and all("-c constraints.txt" in ln for ln in installs)
    assert ".".join(pins(LOCK)["moto"].split(".")[:2]) in moto_fixes.KNOWN_SERIES
