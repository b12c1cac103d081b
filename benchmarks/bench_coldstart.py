"""Cold start: each function's import time against a bare ``import boto3``, measured in fresh interpreters.

Each run is a new Python importing one module (timed inside, so the interpreter's own start-up, the same for
all, is left out); rounds alternate the floor and every function so that all see the same load, and each figure
is the best of ``ROUNDS``. The child can import only what Lambda can: the standard library, the project's code and
the layer's requirements with everything they require (``layer_modules``). This environment has more, and
libraries import what they find: botocore awscrt, urllib3 pyOpenSSL, X-Ray's patching every library it can trace
(requests, for one). Lambda has none of them.

Two modes: tracing off (``POWERTOOLS_TRACE_DISABLED=true``, and wherever powertools would not trace: tests, the
local stack, SAM local), target <= 1.5x the floor; and tracing on, as in Lambda with template.yaml's
``Tracing: Active`` (``LAMBDA_TASK_ROOT`` set), which loads the X-Ray SDK. One ``-X importtime`` run per function
names what it imports beyond boto3, by package.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 7
TARGET = 1.5
FLOOR = "boto3"
MODES = {
    "tracing off": {"POWERTOOLS_TRACE_DISABLED": "true"},
    "tracing on": {"LAMBDA_TASK_ROOT": str(ROOT)},
}
_CHILD = """
import importlib, importlib.machinery, site, sys, time

SITE = tuple(site.getsitepackages())

class OnlyLambdas:
    def find_spec(self, name, path=None, target=None):
        if path is not None or name in {allowed!r}:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name)
        where = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), ""))
        if where and where.startswith(SITE):
            raise ModuleNotFoundError(f"No module named {{name!r}} in Lambda", name=name)
        return None

sys.meta_path.insert(0, OnlyLambdas())
{preload}
started = time.perf_counter()
importlib.import_module({module!r})
print(time.perf_counter() - started)
"""


@cache
def layer_modules() -> frozenset[str]:
    """Top-level modules Lambda can import: the project's, and those of the layer's requirements
    (layers/common/requirements.txt) and of everything they require, extras included, as installed here."""
    lines = (ROOT / "layers" / "common" / "requirements.txt").read_text().splitlines()
    todo = [Requirement(line.split("#")[0]) for line in lines if line[:1].isalnum()]
    dists: set[str] = set()
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in dists:
            continue
        dists.add(name)
        extras = [{"extra": e} for e in req.extras] or [{"extra": ""}]
        for text in importlib.metadata.requires(req.name) or []:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate(e) for e in extras):
                todo.append(dep)
    modules = {"devicepipe", "functions"}
    for module, owners in importlib.metadata.packages_distributions().items():
        if any(o.lower().replace("_", "-") in dists for o in owners):
            modules.add(module)
    return frozenset(modules)


def functions() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "functions").glob("*/app.py"))


def child_env(mode: dict[str, str]) -> dict[str, str]:
    """A clean environment (no developer settings), as a function's: region, powertools' names, the mode."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "layers" / "common")]),
        "AWS_REGION": "us-east-1",  # Lambda sets both
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "coldstart",
        "POWERTOOLS_METRICS_NAMESPACE": "devicepipe",
    }
    return {**env, **mode}


def import_s(module: str, mode: dict[str, str], preload: str = "", importtime: bool = False) -> tuple[float, str]:
    """Seconds to import ``module`` in a fresh interpreter, and its ``-X importtime`` report when asked."""
    code = _CHILD.format(allowed=sorted(layer_modules()), preload=preload, module=module)
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", code]
    done = subprocess.run(argv, env=child_env(mode), cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1]), done.stderr


def beyond_floor(report: str, top: int = 3) -> list[tuple[str, float]]:
    """From ``-X importtime`` of ``import boto3`` then a module: seconds of self time by top-level package of what
    the module imported that boto3 had not, largest first."""
    by_package: dict[str, float] = {}
    after_floor = False
    for line in report.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header, or not importtime's
        if not after_floor:  # a module is reported once its own imports are: boto3's line ends its tree
            after_floor = fields[2].rstrip() == f" {FLOOR}"
            continue
        package = fields[2].strip().split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(fields[0]) / 1e6
    return sorted(by_package.items(), key=lambda kv: -kv[1])[:top]


def measure(rounds: int = ROUNDS) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Best import seconds of the floor per mode and of each function per mode, over alternating rounds."""
    floor = dict.fromkeys(MODES, math.inf)
    best = {mode: dict.fromkeys(functions(), math.inf) for mode in MODES}
    for _ in range(rounds):
        for mode, env in MODES.items():
            floor[mode] = min(floor[mode], import_s(FLOOR, env)[0])
            for name in functions():
                best[mode][name] = min(best[mode][name], import_s(f"functions.{name}.app", env)[0])
    return floor, best


def main() -> list[tuple[str, float, float, bool]]:
    floor, best = measure()
    print(
        f"cold start: import of each function's module, best of {ROUNDS} fresh interpreters, against a bare"
        f" `import {FLOOR}` (only the standard library, our code and the layer's requirements importable, as in Lambda)"
    )
    rows = []
    for mode, env in MODES.items():
        target = " (target <= 1.5x)" if mode == "tracing off" else " (as deployed: template.yaml traces)"
        print(f"  {mode}: floor {floor[mode] * 1000:5.1f} ms{target}")
        for name, seconds in best[mode].items():
            ratio = seconds / floor[mode]
            _, report = import_s(f"functions.{name}.app", env, preload=f"import {FLOOR}", importtime=True)
            heaviest = ", ".join(f"{p} {s * 1000:.0f}" for p, s in beyond_floor(report))
            print(f"    {name:14s} {seconds * 1000:6.1f} ms  {ratio:4.2f}x   beyond boto3 (ms): {heaviest}")
            if mode == "tracing off":
                rows.append((f"import {name} / boto3, tracing off", ratio, TARGET, ratio <= TARGET))
            else:
                rows.append((f"import {name} / boto3, tracing on", ratio, 0.0, True))
    return rows
