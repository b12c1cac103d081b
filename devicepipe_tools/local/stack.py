"""The local stack: template resources on a moto server, and the functions behind their event source mappings.

``up`` first checks what would keep a stack from starting (regions, ports, binaries: ``preflight``) and refuses to
start over a stack that still lives, even in part; then it starts a supervisor in the background (its own session,
logging to ``.local/stack.log``) that
1. runs moto's server on a free 127.0.0.1 port,
2. creates every region's resources from template.yaml (``resources.create_region``),
3. starts one worker process per (region, function with an event source mapping), with that region's
   environment and the function's resolved variables, as Lambda would run them,
4. serves each region's HttpApi routes on a port of its own (``api_server``, one process per region),
and records endpoints (``api_urls``: each region's API) and its processes (pid and start time) in
``.local/state.json`` so ``produce --local``, ``invoke --local``, ``read --local``, ``status`` and the demo find it.

The supervisor restarts a process that dies, and every process dies with the supervisor (``supervisor``). ``down``
stops it all, and ends every process the state file records when the supervisor is gone. A stack that fails to
start says why in one line, and leaves nothing running.

With more than one region, the supervisor also replicates the global table between them (``replication``),
and honours regional outages (``outage``). Each region gets its own Redis database, as each region has its
own ElastiCache cluster in AWS.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from devicepipe.config import READER_LOGIN
from devicepipe.database import PgDatabase
from devicepipe.registry import migrate
from devicepipe_tools.local import files, moto_fixes
from devicepipe_tools.local.api_server import routes
from devicepipe_tools.local.files import read_json, write_json
from devicepipe_tools.local.net import accepting, free_port, in_use, port_plan
from devicepipe_tools.local.outage import OutageMiddleware, down_regions, set_down
from devicepipe_tools.local.postgres import LocalPostgres, PostgresUnavailable, find_binaries, start_postgres
from devicepipe_tools.local.redis_server import start_redis
from devicepipe_tools.local.resources import RegionResources, create_region, function_env
from devicepipe_tools.local.stream_reads import StreamReads
from devicepipe_tools.local.supervisor import (
    ChildSpec,
    Proc,
    Spawn,
    Supervisor,
    describe,
    end,
    launch,
    recorded,
    start_time,
)
from devicepipe_tools.template import ROOT, load_template

STATE_DIR = ROOT / ".local"
DEFAULT_REGIONS = ("us-east-1",)
DEFAULT_REPLICATION_DELAY_S = 1.0  # "writes replicate in about a second"
# Local ingest takes seconds where AWS takes milliseconds: the demo stretches the replication delay by about as
# much, so that writes of both regions still race within it as they would on AWS with about a second.
DEMO_REPLICATION_DELAY_S = 5.0
_REGISTRY_PREFIX = "devicepipe-registry-"
#: Files of a stack's run that the next stack in the same directory must not find (its moto state is new).
_RUN_FILES = (
    files.LOADER,
    files.REPORTS,
    files.WAREHOUSE,
    files.WAREHOUSE + ".wal",
    files.WAREHOUSE_SNAPSHOT,
    files.HOLDS,
    files.OUTAGES,
    files.REPLICATION,
)


class StackError(RuntimeError):
    """The local stack is not running, or could not start."""


def state_path(state_dir: Path = STATE_DIR) -> Path:
    return state_dir / files.STATE


def read_state(state_dir: Path = STATE_DIR) -> dict[str, Any]:
    """The running stack's state; raises ``StackError`` with what to do when there is none, or it is not whole."""
    state = read_json(state_path(state_dir))
    if not state:
        raise StackError("no local stack is running: start one with `devicepipe local up`")
    if not _supervisor(state).alive():
        raise StackError(_gone(state, state_dir))
    if "regions" not in state:
        raise StackError(f"the local stack (pid {state['pid']}) is still starting: wait for `devicepipe local up`")
    return state


def _supervisor(state: dict[str, Any]) -> Proc:
    return Proc("supervisor", state["pid"], state.get("pid_start"))


def _gone(state: dict[str, Any], state_dir: Path) -> str:
    """What a state file whose supervisor is gone means, and what to do."""
    if left := [p.pid for p in recorded(state) if p.alive()]:
        return (
            f"the local stack's supervisor (pid {state['pid']}) is gone, but {len(left)} of its processes still run "
            f"(pids {', '.join(map(str, left))}): `{command('down', state_dir)}` ends them"
        )
    return f"the local stack (pid {state['pid']}) is gone: see {state_dir / files.STACK_LOG}, then `local up`"


def command(action: str, state_dir: Path) -> str:
    """The `devicepipe local` command that acts on the stack of ``state_dir``, as a user types it."""
    return f"devicepipe local {action}" + (f" --state-dir {state_dir}" if state_dir != STATE_DIR else "")


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
    port: int | None = None,
) -> dict[str, Any]:
    """Start the stack in the background and wait until every worker is polling; with ``port``, on the fixed
    ports of ``net.port_plan``, else on free ones. Raises ``StackError`` in one line when it cannot start: before
    starting anything for what ``preflight`` finds, else after ending whatever had started."""
    preflight(regions, port)
    state_dir.mkdir(parents=True, exist_ok=True)
    with _starting(state_dir):
        _refuse_over_a_stack(state_dir)
        log = (state_dir / files.STACK_LOG).open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devicepipe_tools.local.stack",
                "--state-dir",
                str(state_dir),
                "--replication-delay",
                str(replication_delay_s),
                *(["--port", str(port)] if port else []),
                *regions,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the terminal that started it; its id is its processes' group's
            cwd=ROOT,
        )
        log.close()
        return _wait_ready(proc, state_dir, timeout_s)


def preflight(regions: tuple[str, ...], port: int | None = None) -> None:
    """What would keep a stack from starting, found before anything starts: ``StackError``, in one line."""
    try:
        moto_fixes.check_version()
    except moto_fixes.MotoVersionError as exc:
        raise StackError(str(exc)) from None
    if not regions or len(set(regions)) < len(regions):
        raise StackError(f"regions must be given once each: {', '.join(regions) or 'none given'}")
    if unknown := [r for r in regions if r not in _aws_regions()]:
        raise StackError(f"not an AWS region: {', '.join(unknown)} (e.g. us-east-1, eu-west-1)")
    for service, taken in (port_plan(port, regions) if port else {}).items():
        if in_use(taken):
            raise StackError(f"port {taken} ({service}) is in use: choose another --port, or stop what listens there")
    _api_function(load_template())
    if not os.environ.get("REGISTRY_URL"):
        try:
            find_binaries()
        except PostgresUnavailable as exc:
            raise StackError(str(exc)) from None


def _aws_regions() -> set[str]:
    """Every region botocore knows, in every partition (moto serves the same)."""
    import boto3

    session = boto3.session.Session()
    return {r for p in session.get_available_partitions() for r in session.get_available_regions("kinesis", p)}


@contextmanager
def _starting(state_dir: Path) -> Iterator[None]:
    """One `local up` at a time in a state directory (the lock goes with the process, however it ends)."""
    with (state_dir / files.LOCK).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `devicepipe local up` is starting a stack in {state_dir}") from None
        yield


def _refuse_over_a_stack(state_dir: Path) -> None:
    """``StackError`` when a stack of this directory lives, even in part; a dead one's leftovers are cleared."""
    state = read_json(state_path(state_dir))
    if not state:
        return
    if _supervisor(state).alive():
        raise StackError(f"a local stack is already running (pid {state['pid']}): `{command('down', state_dir)}` first")
    if any(p.alive() for p in recorded(state)):
        raise StackError(_gone(state, state_dir))
    _remove_registry(state)
    state_path(state_dir).unlink(missing_ok=True)


def _wait_ready(proc: subprocess.Popen[bytes], state_dir: Path, timeout_s: float) -> dict[str, Any]:
    log = state_dir / files.STACK_LOG
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            reason = read_json(state_path(state_dir)).get("failed") or f"its supervisor {describe(proc.returncode)}"
            down(state_dir)
            raise StackError(f"the local stack failed to start: {reason} (see {log})")
        state = read_json(state_path(state_dir))
        if state.get("ready") and state.get("pid") == proc.pid:
            return state
        time.sleep(0.2)
    down(state_dir)
    raise StackError(f"the local stack did not start within {timeout_s:.0f}s, and was stopped: see {log}")


def down(state_dir: Path = STATE_DIR, timeout_s: float = 30) -> bool:
    """Stop the stack, then end every process its state file records (and their group), its supervisor gone or
    not; False when there was none."""
    state = read_json(state_path(state_dir))
    if not state:
        return False
    supervisor = _supervisor(state)
    if supervisor.alive():
        os.kill(supervisor.pid, signal.SIGTERM)  # it stops its processes itself
        deadline = time.monotonic() + timeout_s
        while supervisor.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    end([supervisor, *recorded(state)], group=supervisor.pid, grace_s=5)
    _remove_registry(state)
    state_path(state_dir).unlink(missing_ok=True)
    return True


def _remove_registry(state: dict[str, Any]) -> None:
    """The registry's data directory, left behind when the supervisor was killed."""
    if (path := state.get("registry_dir")) and Path(path).name.startswith(_REGISTRY_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def hold(state_dir: Path, name: str, seconds: float) -> None:
    """Keep the stack's process ``name`` down for ``seconds`` once it exits: the supervisor starts it again only
    then (a Redis outage of that length, for `local chaos`)."""
    holds = read_json(state_dir / files.HOLDS)
    write_json(state_dir / files.HOLDS, {**holds, name: time.time() + seconds})


def process_lines(state: dict[str, Any]) -> list[str]:
    """``local status``'s lines for the stack's processes: restarts, and what the supervisor gave up."""
    entries = state.get("processes", [])
    restarted = [f"{p['name']} {p['restarts']}" for p in entries if p["restarts"]]
    lines = [
        f"  processes: {sum(1 for p in recorded(state) if p.alive())} of {len(entries)} running, "
        f"{sum(p['restarts'] for p in entries)} restarts" + (f" ({', '.join(restarted)})" if restarted else "")
    ]
    return lines + [
        f"  GAVE UP on {p['name']}: it {p['gave_up']}; the stack runs on without it (stack.log says why)"
        for p in entries
        if p.get("gave_up")
    ]


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
    return state_dir / files.REPLICATION


def replication_stats(state_dir: Path = STATE_DIR) -> dict[str, Any] | None:
    """The replicator's latest figures (delay, replicated, superseded, pending, held, lag); None with one region."""
    try:
        stats: dict[str, Any] = json.loads(replication_path(state_dir).read_text())
    except FileNotFoundError:
        return None
    return stats


def settled(state_dir: Path = STATE_DIR) -> bool:
    """Every mapping has polled its shards empty, as its worker running now says (not a predecessor that died),
    and, with several regions, replication has nothing queued or held. (A replicated write wakes the consumers up
    again: callers wait for this twice in a row.) ``StackError`` when the supervisor gave a process up: without it
    nothing settles."""
    state = read_state(state_dir)
    if given_up := [p for p in state.get("processes", []) if p.get("gave_up")]:
        raise StackError(f"the local stack gave up on {given_up[0]['name']}: it {given_up[0]['gave_up']}")
    running = {p.pid for p in recorded(state)}
    if not all(doc.get("pid") in running and _drained(doc) for doc in _worker_stats(state_dir)):
        return False
    if len(state["regions"]) == 1:
        return True
    replication = replication_stats(state_dir)
    return replication is not None and replication["pending"] == 0 and replication["held_for_down_regions"] == 0


def _drained(doc: dict[str, Any]) -> bool:
    return all(s["drained"] for s in doc["mappings"].values())


def _worker_stats(state_dir: Path) -> list[dict[str, Any]]:
    """Each worker's latest statistics file."""
    return [doc for path in sorted(state_dir.glob("esm-*.json")) if (doc := read_json(path))]


def mapping_stats(state_dir: Path = STATE_DIR) -> dict[str, dict[str, Any]]:
    """Each worker's latest event-source-mapping statistics, by ``<region>/<mapping>``."""
    return {
        f"{doc['region']}/{name}": stats for doc in _worker_stats(state_dir) for name, stats in doc["mappings"].items()
    }


def region_redis_url(url: str, index: int) -> str:
    """The URL of database ``index`` on the same Redis: one database per region."""
    base, sep, db = url.rpartition("/")
    return f"{base}/{index}" if sep and db.isdigit() else f"{url.rstrip('/')}/{index}"


class _Stack:
    """The supervisor process's side of the stack: starts it, runs it, and stops all it started, whatever
    happened."""

    def __init__(self, regions: list[str], state_dir: Path, replication_delay_s: float, base_port: int | None) -> None:
        self.regions = regions
        self.state_dir = state_dir
        self.replication_delay_s = replication_delay_s
        self.ports = port_plan(base_port, regions) if base_port else {}
        self.supervisor = Supervisor()
        self.stopping = False
        self.cleanups: list[Callable[[], None]] = []  # run last first, after the supervisor's processes stopped
        self.state: dict[str, Any] = {"pid": os.getpid(), "pid_start": start_time(os.getpid()), "ready": False}
        self.outages: OutageMiddleware | None = None
        self.replicator: Any = None

    def stop_soon(self, *_: Any) -> None:
        self.stopping = True

    def publish(self) -> None:
        write_json(state_path(self.state_dir), {**self.state, "processes": self.supervisor.processes()})

    def start(self) -> None:
        self.publish()  # the supervisor's identity first: `down` finds it from now on
        self._clear_previous_run()
        template = load_template()
        redis = start_redis(self.ports.get("redis"), self.state_dir / files.REDIS_DATA, self.supervisor.start)
        self.cleanups.append(redis.stop)
        registry = self._start_registry()
        endpoint = self._start_moto()
        resources = {region: create_region(template, region, endpoint) for region in self.regions}
        self._replicate(template, resources)
        redis_urls = {region: region_redis_url(redis.url, i) for i, region in enumerate(self.regions)}
        self.state |= {
            "endpoint": endpoint,
            "redis_url": redis_urls[self.regions[0]],
            "redis_urls": redis_urls,
            "redis_kind": redis.kind,
            # The registry's owner login (the CLI's `registry --local` writes with it); functions read with the
            # read-only login, as they connect to Aurora as devicepipe_reader.
            "registry_url": registry.url,
            "registry_reader_url": reader_url(registry.url),
            "registry_kind": registry.kind,
            "warehouse": str(self.state_dir / files.WAREHOUSE),  # the loader's: readers open the snapshot
            "warehouse_snapshot": str(self.state_dir / files.WAREHOUSE_SNAPSHOT),
            "regions": {r: asdict(res) for r, res in resources.items()},
            "started_at": time.time(),
        }
        self.publish()
        api_ports = self._start_workers(template, resources, reader_url(registry.url))
        self._wait_ready(api_ports)
        self.state |= {"api_urls": {region: f"http://127.0.0.1:{p}" for region, p in api_ports.items()}, "ready": True}
        self.publish()
        print(
            f"local stack ready: {endpoint}, regions {', '.join(self.regions)}, "
            f"{len(self.supervisor.children)} processes",
            flush=True,
        )

    def _clear_previous_run(self) -> None:
        for path in [*self.state_dir.glob("esm-*.json"), *(self.state_dir / name for name in _RUN_FILES)]:
            path.unlink(missing_ok=True)
        for directory in (files.CHECKPOINTS, files.REDIS_DATA):
            shutil.rmtree(self.state_dir / directory, ignore_errors=True)

    def _start_moto(self) -> str:
        """moto's server, in this process (its state lives here), behind the regional outages; its endpoint."""
        moto_fixes.apply()
        port = self.ports.get("moto") or free_port()
        # GetRecords answered beside moto (stream_reads), behind the outages: a down region's reads fail too
        stop, self.outages = moto_fixes.start_server(port, lambda app: OutageMiddleware(StreamReads(app)))
        self.cleanups.append(stop)
        return f"http://127.0.0.1:{port}"

    def _start_registry(self) -> LocalPostgres:
        data_dir = Path(tempfile.mkdtemp(prefix=_REGISTRY_PREFIX))
        self.cleanups.append(lambda: shutil.rmtree(data_dir, ignore_errors=True))
        self.state["registry_dir"] = str(data_dir)  # for `down`, should this process be killed
        self.publish()
        return start_registry(data_dir, self.ports.get("registry"), self.supervisor.start)

    def _replicate(self, template: dict[str, Any], resources: dict[str, RegionResources]) -> None:
        if len(self.regions) == 1:
            return
        from devicepipe_tools.local.replication import Replicator

        global_tables = [
            res.names[logical_id]
            for res in resources.values()
            for logical_id, spec in template["Resources"].items()
            if spec["Type"] == "AWS::DynamoDB::GlobalTable"
        ]
        self.replicator = Replicator(self.regions, set(global_tables), self.replication_delay_s)
        self.replicator.install()
        self.cleanups.append(self.replicator.uninstall)

    def _start_workers(
        self, template: dict[str, Any], resources: dict[str, RegionResources], registry_url: str
    ) -> dict[str, int]:
        """One worker per region and function with a mapping, the loader, and each region's read API (on the
        port returned)."""
        endpoint, redis_urls = self.state["endpoint"], self.state["redis_urls"]

        def env(function: str, region: str) -> dict[str, str]:
            return lambda_env(template, function, endpoint, redis_urls[region], resources[region], registry_url)

        for region in self.regions:
            for function in _functions_with_mappings(template):
                args = ["--state-dir", str(self.state_dir), "--region", region, "--function", function]
                self._spawn(f"worker {region}/{function}", "devicepipe_tools.local.worker", args, env(function, region))
        # The warehouse loader runs on a schedule in the primary region (the first one), over every region.
        primary = self.regions[0]
        loader_env = base_env(endpoint, primary, redis_urls[primary], registry_url)
        self._spawn("loader", "devicepipe_tools.local.loader_worker", ["--state-dir", str(self.state_dir)], loader_env)
        # Each region's HTTP API (what `sam local start-api` serves), on its own port.
        api_function = _api_function(template)
        if not api_function:
            return {}
        api_ports = {region: self.ports.get(f"read API {region}") or free_port() for region in self.regions}
        for region, port in api_ports.items():
            args = ["--region", region, "--function", api_function, "--port", str(port)]
            self._spawn(f"read API {region}", "devicepipe_tools.local.api_server", args, env(api_function, region))
        return api_ports

    def _spawn(self, name: str, module: str, args: list[str], env: dict[str, str]) -> None:
        """A Python process: ``python -m module args``, with ``env`` over this process's environment."""
        command = [sys.executable, "-m", module, *args]
        self.supervisor.start(ChildSpec(name, command, env={**os.environ, **env}, cwd=ROOT))

    def _wait_ready(self, api_ports: dict[str, int]) -> None:
        """Until every worker has reported its first statistics (mappings polling, loader cycled) and every API
        server accepts connections."""
        workers = sum(1 for name in self.supervisor.children if name.startswith("worker "))
        while not (
            len(list(self.state_dir.glob("esm-*.json"))) >= workers
            and (self.state_dir / files.LOADER).exists()
            and all(accepting(port) for port in api_ports.values())
        ):
            if self.stopping:
                raise StackError("stopped while starting")
            self._supervise()
            if gave_up := self.supervisor.gave_up():
                name, reason = next(iter(gave_up.items()))
                raise StackError(f"{name} {reason}")
            time.sleep(0.1)

    def _supervise(self) -> None:
        if self.supervisor.poll({k: float(v) for k, v in read_json(self.state_dir / files.HOLDS).items()}):
            self.publish()

    def run(self) -> None:
        """Until SIGTERM/SIGINT: restarts, regional outages, replication figures."""
        ticks = 0
        while not self.stopping:
            self._supervise()
            self._apply_outages()
            if self.replicator is not None and ticks % 5 == 0:
                write_json(replication_path(self.state_dir), {"updated_at": time.time(), **self.replicator.snapshot()})
            ticks += 1
            time.sleep(0.2)

    def _apply_outages(self) -> None:
        down = down_regions(self.state_dir)
        if self.outages is None or down == self.outages.down:
            return
        print(f"regions down: {', '.join(sorted(down)) or 'none'}", flush=True)
        self.outages.down = down
        if self.replicator is not None:
            self.replicator.set_down(down)
        self.state["down"] = sorted(down)
        self.publish()  # acknowledges `set_region_down`

    def stop(self) -> None:
        """The processes first (they use the rest), then the rest, the last started first."""
        self.supervisor.stop()
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # stop the rest all the same
                print(f"stopping the local stack: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def serve(
    regions: list[str],
    state_dir: Path,
    replication_delay_s: float = DEFAULT_REPLICATION_DELAY_S,
    base_port: int | None = None,
) -> int:
    """The supervisor: runs until SIGTERM/SIGINT, then stops everything it started. With ``base_port``, every
    server listens on its port of ``net.port_plan``, else on a free one. When the stack cannot start, it stops what
    did, records why in one line (the state file's ``failed``, for ``up``) and returns 1."""
    stack = _Stack(regions, state_dir, replication_delay_s, base_port)
    signal.signal(signal.SIGTERM, stack.stop_soon)
    signal.signal(signal.SIGINT, stack.stop_soon)
    failed = ""
    try:
        stack.start()
        stack.run()
    except Exception as exc:
        traceback.print_exc()
        failed = _one_line(exc)
        print(f"local stack failed: {failed}", file=sys.stderr, flush=True)
    finally:
        stack.stop()
    if failed:
        write_json(state_path(state_dir), {**stack.state, "failed": failed, "processes": []})
        return 1
    state_path(state_dir).unlink(missing_ok=True)
    return 0


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    ours = isinstance(exc, StackError | PostgresUnavailable | moto_fixes.MotoVersionError)
    return text if ours and text else f"{type(exc).__name__}: {text}".rstrip(": ")


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


def start_registry(data_dir: Path, port: int | None = None, spawn: Spawn = launch) -> LocalPostgres:
    """The registry's PostgreSQL, empty and migrated: a fresh one per stack, as moto's state is, in ``data_dir``
    (under the system's temporary directory: as root, PostgreSQL runs as another user, which must be able to reach
    it; the state directory may be private)."""
    server = start_postgres(data_dir, port=port, spawn=spawn)
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
    parser.add_argument("--port", type=int, help="fixed ports from this one on (net.port_plan)")
    parser.add_argument("regions", nargs="+")
    cli = parser.parse_args()
    sys.exit(serve(cli.regions, cli.state_dir, cli.replication_delay, cli.port))
