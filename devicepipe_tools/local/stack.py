"""The local stack: template resources on a moto server, and the functions behind their event source mappings.

``up`` starts a supervisor in the background (its own session, logging to ``.local/stack.log``) that
1. runs moto's server on a free 127.0.0.1 port,
2. creates every region's resources from template.yaml (``resources.create_region``),
3. starts one worker process per (region, function with an event source mapping), with that region's
   environment and the function's resolved variables, as Lambda would run them,
4. serves each region's HttpApi routes on a port of its own (``api_server``, one process per region),
and records endpoints (``api_urls``: each region's API) and pids in ``.local/state.json`` so ``produce --local``,
``invoke --local``, ``read --local``, ``status`` and the demo find it. ``down`` stops it all.

With more than one region, the supervisor also replicates the global table between them (``replication``),
and honours regional outages (``outage``). Each region gets its own Redis database, as each region has its
own ElastiCache cluster in AWS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from devicepipe.config import READER_LOGIN
from devicepipe.database import PgDatabase
from devicepipe.registry import migrate
from devicepipe_tools.local.api_server import routes
from devicepipe_tools.local.net import accepting, free_port
from devicepipe_tools.local.outage import OutageMiddleware, down_regions, set_down
from devicepipe_tools.local.postgres import LocalPostgres, start_postgres
from devicepipe_tools.local.redis_server import start_redis
from devicepipe_tools.local.resources import RegionResources, create_region, function_env
from devicepipe_tools.template import ROOT, load_template

STATE_DIR = ROOT / ".local"
DEFAULT_REGIONS = ("us-east-1",)
DEFAULT_REPLICATION_DELAY_S = 1.0  # "writes replicate in about a second"
# Local ingest takes seconds where AWS takes milliseconds: the demo stretches the replication delay by about as
# much, so that writes of both regions still race within it as they would on AWS with about a second.
DEMO_REPLICATION_DELAY_S = 5.0


class StackError(RuntimeError):
    """The local stack is not running, or could not start."""


def state_path(state_dir: Path = STATE_DIR) -> Path:
    return state_dir / "state.json"


def read_state(state_dir: Path = STATE_DIR) -> dict[str, Any]:
    """The running stack's state; raises ``StackError`` with what to do when there is none."""
    path = state_path(state_dir)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise StackError("no local stack is running: start one with `devicepipe local up`") from None
    if not _alive(state["pid"]):
        raise StackError(
            f"the local stack (pid {state['pid']}) is gone: see {state_dir / 'stack.log'}, then `local up`"
        )
    return state


def base_env(endpoint: str, region: str, redis_url: str, registry_url: str = "") -> dict[str, str]:
    """What every local process needs: fake credentials, the region, every client pointed at moto, the local
    Redis (``REDIS_URL`` takes precedence over the template's host, TLS and AUTH settings) and the local
    registry as its read-only login (``REGISTRY_URL`` over the Aurora endpoint and IAM authentication)."""
    return {
        "REDIS_URL": redis_url,
        "REGISTRY_URL": registry_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ENDPOINT_URL": endpoint,
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


def up(
    regions: tuple[str, ...] = DEFAULT_REGIONS,
    state_dir: Path = STATE_DIR,
    timeout_s: float = 90,
    replication_delay_s: float = DEFAULT_REPLICATION_DELAY_S,
) -> dict[str, Any]:
    """Start the stack in the background and wait until every worker is polling."""
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        state = read_state(state_dir)
    except StackError:
        pass
    else:
        raise StackError(f"a local stack is already running (pid {state['pid']}): `devicepipe local down` first")
    state_path(state_dir).unlink(missing_ok=True)
    log = (state_dir / "stack.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devicepipe_tools.local.stack",
            "--state-dir",
            str(state_dir),
            "--replication-delay",
            str(replication_delay_s),
            *regions,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # survives the terminal that started it; `down` stops it
        cwd=ROOT,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the local stack failed to start: see {state_dir / 'stack.log'}")
        path = state_path(state_dir)
        if path.exists():
            state = json.loads(path.read_text())
            if state.get("ready"):
                return dict(state)
        time.sleep(0.2)
    proc.terminate()
    raise StackError(f"the local stack did not start within {timeout_s:.0f}s: see {state_dir / 'stack.log'}")


def down(state_dir: Path = STATE_DIR, timeout_s: float = 30) -> bool:
    """Stop the stack; False when none was running."""
    path = state_path(state_dir)
    if not path.exists():
        return False
    pid = json.loads(path.read_text())["pid"]
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def set_region_down(state_dir: Path, region: str, down: bool, timeout_s: float = 10) -> set[str]:
    """Take a region of the running stack down (or back up) and wait until the supervisor has applied it."""
    state = read_state(state_dir)
    if region not in state["regions"]:
        raise StackError(f"the local stack runs {', '.join(state['regions'])}, not {region}")
    wanted = set_down(state_dir, region, down)
    deadline = time.monotonic() + timeout_s
    while set(read_state(state_dir).get("down", [])) != wanted:
        if time.monotonic() > deadline:
            raise StackError(f"the local stack did not apply the outage within {timeout_s:.0f}s")
        time.sleep(0.05)
    return wanted


def replication_path(state_dir: Path = STATE_DIR) -> Path:
    return state_dir / "replication.json"


def replication_stats(state_dir: Path = STATE_DIR) -> dict[str, Any] | None:
    """The replicator's latest figures (delay, replicated, superseded, pending, held, lag); None with one region."""
    try:
        stats: dict[str, Any] = json.loads(replication_path(state_dir).read_text())
    except FileNotFoundError:
        return None
    return stats


def settled(state_dir: Path = STATE_DIR) -> bool:
    """Every mapping has polled its shards empty and, with several regions, replication has nothing queued or
    held. (A replicated write wakes the consumers up again: callers wait for this twice in a row.)"""
    if not all(s["drained"] for s in mapping_stats(state_dir).values()):
        return False
    if len(read_state(state_dir)["regions"]) == 1:
        return True
    replication = replication_stats(state_dir)
    return replication is not None and replication["pending"] == 0 and replication["held_for_down_regions"] == 0


def mapping_stats(state_dir: Path = STATE_DIR) -> dict[str, dict[str, Any]]:
    """Each worker's latest event-source-mapping statistics, by ``<region>/<mapping>``."""
    out = {}
    for path in sorted(state_dir.glob("esm-*.json")):
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError):
            continue  # being rewritten: the next read gets it
        for name, stats in data["mappings"].items():
            out[f"{data['region']}/{name}"] = stats
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def region_redis_url(url: str, index: int) -> str:
    """The URL of database ``index`` on the same Redis: one database per region."""
    base, sep, db = url.rpartition("/")
    return f"{base}/{index}" if sep and db.isdigit() else f"{url.rstrip('/')}/{index}"


def serve(regions: list[str], state_dir: Path, replication_delay_s: float = DEFAULT_REPLICATION_DELAY_S) -> None:
    """The supervisor: runs until SIGTERM/SIGINT, then stops the workers and moto."""
    import logging

    from moto.server import ThreadedMotoServer

    from devicepipe_tools.local import moto_fixes

    template = load_template()
    api_function = _api_function(template)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    moto_fixes.apply()
    redis = start_redis()
    registry = start_registry()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    outages = OutageMiddleware(server._server.app)  # type: ignore[union-attr]
    server._server.app = outages  # type: ignore[union-attr]
    endpoint = f"http://127.0.0.1:{port}"
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    resources = {region: create_region(template, region, endpoint) for region in regions}
    replicator = None
    if len(regions) > 1:
        from devicepipe_tools.local.replication import Replicator

        global_tables = [
            res.names[logical_id]
            for res in resources.values()
            for logical_id, spec in template["Resources"].items()
            if spec["Type"] == "AWS::DynamoDB::GlobalTable"
        ]
        replicator = Replicator(regions, set(global_tables), replication_delay_s)
        replicator.install()
    redis_urls = {region: region_redis_url(redis.url, i) for i, region in enumerate(regions)}
    state: dict[str, Any] = {
        "pid": os.getpid(),
        "endpoint": endpoint,
        "redis_url": redis_urls[regions[0]],
        "redis_urls": redis_urls,
        "redis_kind": redis.kind,
        # The registry's owner login (the CLI's `registry --local` writes with it); functions read with the
        # read-only login, as they connect to Aurora as devicepipe_reader.
        "registry_url": registry.url,
        "registry_reader_url": reader_url(registry.url),
        "registry_kind": registry.kind,
        "warehouse": str(state_dir / "warehouse.duckdb"),
        "regions": {r: asdict(res) for r, res in resources.items()},
        "started_at": time.time(),
        "ready": False,
    }
    write_json(state_path(state_dir), state)
    stale_files = ("loader.json", "warehouse.duckdb", "outages.json")
    for stale in [*state_dir.glob("esm-*.json"), replication_path(state_dir), *(state_dir / n for n in stale_files)]:
        stale.unlink(missing_ok=True)
    workers = [
        _spawn(
            "devicepipe_tools.local.worker",
            ["--state-dir", str(state_dir), "--region", region, "--function", function],
            lambda_env(template, function, endpoint, redis_urls[region], res, reader_url(registry.url)),
        )
        for region, res in resources.items()
        for function in _functions_with_mappings(template)
    ]
    # The warehouse loader runs on a schedule in the primary region (the first one), over every region.
    primary = regions[0]
    loader = _spawn(
        "devicepipe_tools.local.loader_worker",
        ["--state-dir", str(state_dir)],
        base_env(endpoint, primary, redis_urls[primary], reader_url(registry.url)),
    )
    # Each region's HTTP API (what `sam local start-api` serves), on its own port.
    api_ports = {region: free_port() for region in regions} if api_function else {}
    apis = [
        _spawn(
            "devicepipe_tools.local.api_server",
            ["--region", region, "--function", api_function, "--port", str(port)],
            lambda_env(
                template, api_function, endpoint, redis_urls[region], resources[region], reader_url(registry.url)
            ),
        )
        for region, port in api_ports.items()
        if api_function
    ]
    processes = [*workers, loader, *apis]
    # Ready once every worker has reported its first statistics (mappings polling, loader cycled) and every
    # API server accepts connections.
    while not stopping and (
        len(list(state_dir.glob("esm-*.json"))) < len(workers)
        or not (state_dir / "loader.json").exists()
        or not all(accepting(port) for port in api_ports.values())
    ):
        if any(p.poll() is not None for p in processes):
            print("a worker exited during start-up", file=sys.stderr)
            stopping = True
            break
        time.sleep(0.1)
    state["api_urls"] = {region: f"http://127.0.0.1:{port}" for region, port in api_ports.items()}
    state["workers"] = [p.pid for p in processes]
    state["ready"] = not stopping
    write_json(state_path(state_dir), state)
    print(f"local stack ready: {endpoint}, regions {', '.join(regions)}, {len(processes)} workers", flush=True)
    ticks = 0
    while not stopping:
        if any(p.poll() is not None for p in processes):
            print("a worker exited; stopping the stack", file=sys.stderr, flush=True)
            break
        down = down_regions(state_dir)
        if down != outages.down:
            print(f"regions down: {', '.join(sorted(down)) or 'none'}", flush=True)
            outages.down = down
            if replicator is not None:
                replicator.set_down(down)
            write_json(state_path(state_dir), {**state, "down": sorted(down)})  # acknowledges `set_region_down`
        if replicator is not None and ticks % 5 == 0:
            write_json(replication_path(state_dir), {"updated_at": time.time(), **replicator.snapshot()})
        ticks += 1
        time.sleep(0.2)
    if replicator is not None:
        replicator.uninstall()
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
    server.stop()
    redis.stop()
    registry.stop()
    state_path(state_dir).unlink(missing_ok=True)


def lambda_env(
    template: dict[str, Any],
    function: str,
    endpoint: str,
    redis_url: str,
    res: RegionResources,
    registry_url: str = "",
) -> dict[str, str]:
    """A function's environment in one region of the local stack, as Lambda would set it: the local stack's
    (``base_env``) and the function's variables resolved against the region's resources."""
    return {**base_env(endpoint, res.region, redis_url, registry_url), **function_env(template, function, res)}


def start_registry() -> LocalPostgres:
    """The registry's PostgreSQL, empty and migrated: a fresh one per stack, as moto's state is, in a directory
    of its own under the system's temporary directory (as root, PostgreSQL runs as another user, which must be
    able to reach it; the state directory may be private)."""
    data_dir = Path(tempfile.mkdtemp(prefix="devicepipe-registry-"))
    try:
        server = start_postgres(data_dir)
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    stop = server.stop

    def stop_and_remove() -> None:
        stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    server.stop = stop_and_remove
    try:
        db = PgDatabase.from_url(server.url)
        try:
            migrate(db)
        finally:
            db.close()
    except BaseException:
        server.stop()
        raise
    return server


def reader_url(url: str) -> str:
    """The same database as the read-only login the migrations create (trust authentication locally)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{READER_LOGIN}@{host}"))


def _spawn(module: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A worker process: ``python -m module args``, with ``env`` over this process's environment."""
    return subprocess.Popen([sys.executable, "-m", module, *args], env={**os.environ, **env}, cwd=ROOT)


def _api_function(template: dict[str, Any]) -> str | None:
    """The function behind the template's HttpApi routes, if any. One at most: the local stack serves one API
    per region from one process, which runs one function's handler with that function's environment."""
    functions = sorted({route.function for route in routes(template)})
    if len(functions) > 1:
        raise StackError(f"the local stack serves one function's HttpApi routes, template.yaml has {functions}")
    return functions[0] if functions else None


def _functions_with_mappings(template: dict[str, Any]) -> list[str]:
    found = []
    for spec in template["Resources"].values():
        if spec["Type"] == "AWS::Lambda::EventSourceMapping":
            ref = spec["Properties"]["FunctionName"]["Ref"]
            if ref not in found:
                found.append(ref)
    return found


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic write, so readers never see half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def region_resources(state: dict[str, Any], region: str) -> RegionResources:
    try:
        return RegionResources(**state["regions"][region])
    except KeyError:
        raise StackError(f"the local stack has no region {region}: it runs {', '.join(state['regions'])}") from None


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="local stack supervisor (started by `devicepipe local up`)")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--replication-delay", type=float, default=DEFAULT_REPLICATION_DELAY_S)
    parser.add_argument("regions", nargs="+")
    cli = parser.parse_args()
    serve(cli.regions, cli.state_dir, cli.replication_delay)
