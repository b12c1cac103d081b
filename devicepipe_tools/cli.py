"""The `devicepipe` command: produce readings, run the local stack, read data back, invoke functions without Docker.

Exit codes: 0 success; 1 some records could not be sent (see the failed-records file), the demo found the
pipeline inconsistent, or a read request failed (no answer, or an error answer); 2 usage or configuration
error (bad arguments, no stream, no stack, no API); 3 invalid input lines (skipped, or with --strict the run
stopped at the first one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, MutableMapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, NoCredentialsError

from devicepipe_tools import read_client, registry_cli, wording
from devicepipe_tools.local import stack
from devicepipe_tools.local.outage import down_regions
from devicepipe_tools.local.resources import clients as local_clients
from devicepipe_tools.producer import (
    FailureFile,
    InvalidInput,
    Producer,
    ProducerError,
    ProgressLine,
    entries_from_readings,
    read_readings,
    simulate,
)
from devicepipe_tools.read_client import NoApi, ReadClient, RequestFailed
from devicepipe_tools.template import ROOT, load_template

if TYPE_CHECKING:
    from devicepipe.loader import Loader

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INPUT = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    _accept_aws_region()
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except (stack.StackError, ProducerError, NoApi) as exc:
        print(f"devicepipe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RequestFailed as exc:
        print(f"devicepipe: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except NoCredentialsError:
        print("devicepipe: no AWS credentials found (use --local for the local stack)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("devicepipe: interrupted", file=sys.stderr)
        return 130
    return code


def _accept_aws_region(environ: MutableMapping[str, str] = os.environ) -> None:
    """Take the region from ``AWS_REGION`` as well: boto3 reads only ``AWS_DEFAULT_REGION`` (or the profile), while
    Lambda, the AWS CLI v2 and the other SDKs read ``AWS_REGION``, which wins there and so here too. Set in the
    environment, it reaches every client of the command and the processes it starts."""
    if region := environ.get("AWS_REGION"):
        environ["AWS_DEFAULT_REGION"] = region


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devicepipe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_produce(sub)
    _add_local(sub)
    _add_loads(sub)
    _add_probe(sub)
    _add_read(sub)
    _add_cache(sub)
    _add_invoke(sub)
    _add_plan(sub)
    registry_cli.add_parser(sub)
    return parser


_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # what add_subparsers returns


def _add_state_dir(p: argparse.ArgumentParser, default: Path | None = stack.STATE_DIR) -> None:
    """Where the local stack keeps its state (tests point it elsewhere); not shown in --help."""
    p.add_argument("--state-dir", type=Path, default=default, help=argparse.SUPPRESS)


def _add_produce(sub: _Subparsers) -> None:
    p = sub.add_parser("produce", help="push readings to the Kinesis stream")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="JSON-lines file of readings ('-' for stdin)")
    src.add_argument("--simulate", action="store_true", help="generate readings from simulated devices")
    p.add_argument("--devices", type=_positive, default=100, help="simulated devices (default 100)")
    p.add_argument("--branches", type=_positive, default=10, help="branches they belong to (default 10)")
    p.add_argument("--rate", type=float, help="readings per second (default: as fast as possible)")
    p.add_argument("--count", type=_positive, help="readings to simulate")
    p.add_argument("--duration", type=float, help="seconds to simulate")
    p.add_argument("--stream", help="stream name, comma-separated with --regions (required without --local)")
    p.add_argument("--region", help="AWS region (default: the credential chain's, or the stack's first)")
    p.add_argument(
        "--regions",
        help="regions in order of preference (e.g. us-east-1,eu-west-1): a region that "
        "keeps failing is skipped for 30 s and its readings go to the next; give one --stream each",
    )
    p.add_argument("--local", action="store_true", help="send to the running local stack")
    p.add_argument("--kpl", action="store_true", help="KPL-aggregate records per shard")
    p.add_argument("--strict", action="store_true", help="stop at the first invalid input line (exit 3)")
    p.add_argument("--no-validate", action="store_true", help="send lines as they are (for testing quarantine)")
    p.add_argument("--failed-file", default="produce-failed.jsonl", help="where unsendable records go")
    p.add_argument("--max-in-flight", type=_positive, default=8, help="concurrent PutRecords calls (default 8)")
    p.add_argument("--deadline", type=float, default=60.0, help="seconds a batch may retry (default 60)")
    p.add_argument(
        "--failover-after",
        type=float,
        default=10.0,
        help="with --regions: seconds a region may fail a batch before it goes to the next one (default 10)",
    )
    _add_state_dir(p)
    p.set_defaults(run=_produce)


def _add_local(sub: _Subparsers) -> None:
    p = sub.add_parser("local", help="the local stack: up | down | status | env | demo | outage | recover | report")
    lsub = p.add_subparsers(required=True, metavar="ACTION")
    for name, run, text, add_options in (
        ("up", _local_up, "start the local stack in the background", _local_up_options),
        ("down", _local_down, "stop it", None),
        ("status", _local_status, "show its resources, event source mappings, loader and replication", None),
        (
            "env",
            _local_env,
            "print the environment for the AWS CLI, boto3, redis-cli, psql, duckdb (docs/local-stack.md)",
            _local_env_options,
        ),
        ("demo", _local_demo, "run the pipeline end to end on a fresh stack and check it", _local_demo_options),
        (
            "chaos",
            _local_chaos,
            "kill its processes at random under load on a fresh stack, then check it",
            _local_chaos_options,
        ),
        ("outage", _local_outage, "take one region of the running stack down (503s, functions stop)", _region_arg),
        ("recover", _local_outage, "bring a region that is down back up", _region_arg),
        (
            "report",
            _local_report,
            "run the branch reports now (ReportFunction's run, on the local warehouse)",
            _local_report_options,
        ),
    ):
        a = lsub.add_parser(name, help=text)
        # demo and chaos start a fresh stack in a directory of their own (DEMO_DIR, CHAOS_DIR) unless given one.
        _add_state_dir(a, None if name in ("demo", "chaos") else stack.STATE_DIR)
        a.set_defaults(run=run, action_name=name)
        if add_options:
            add_options(a)


def _region_arg(a: argparse.ArgumentParser) -> None:
    a.add_argument("region")


def _local_env_options(a: argparse.ArgumentParser) -> None:
    a.add_argument("--region", help="the stack's region to print (default: its first)")
    a.add_argument("--json", action="store_true", help="one JSON object instead of export lines")


def _local_up_options(a: argparse.ArgumentParser) -> None:
    a.add_argument(
        "--port",
        type=_port,
        help="fixed ports: moto on PORT, Redis PORT+1, the registry PORT+2, each region's read API PORT+3 "
        "on (default: free ports)",
    )
    _add_stack_regions(a, stack.DEFAULT_REPLICATION_DELAY_S)


def _local_report_options(a: argparse.ArgumentParser) -> None:
    a.add_argument("--period", help="a day, YYYY-MM-DD (default: each branch's last two finished days)")
    a.add_argument("--branch", action="append", default=[], help="this branch only (repeatable)")


def _add_stack_regions(a: argparse.ArgumentParser, replication_delay_s: float) -> None:
    """The regions of a stack the command starts, and the replication delay between them."""
    a.add_argument(
        "--regions",
        default="us-east-1",
        help="comma-separated, or 'all' for samconfig.toml's (default us-east-1)",
    )
    a.add_argument(
        "--replication-delay-ms",
        type=_non_negative,
        default=round(replication_delay_s * 1000),
        help="global-table replication delay between regions (default %(default)s)",
    )


def _local_demo_options(a: argparse.ArgumentParser) -> None:
    _add_stack_regions(a, stack.DEMO_REPLICATION_DELAY_S)
    a.add_argument("--readings", type=_positive, default=10_000, help="good readings (default 10000)")
    a.add_argument("--devices", type=_positive, default=200)
    a.add_argument("--branches", type=_positive, default=12)
    a.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    a.add_argument("--timeout", type=float, default=600, help="seconds to wait for draining")
    a.add_argument("--json", action="store_true", help="print the figures as JSON too")


def _local_chaos_options(a: argparse.ArgumentParser) -> None:
    a.add_argument("--duration", type=_positive_float, default=90, help="seconds of load (default 90)")
    a.add_argument("--rate", type=_positive_float, default=50, help="readings per second (default 50)")
    a.add_argument("--fault-every", type=_positive_float, default=6, help="mean seconds between faults")
    a.add_argument("--seed", type=int, help="repeat a run's faults (default: a new seed, printed)")
    a.add_argument("--timeout", type=float, default=300, help="seconds to wait for draining")


def _add_loads(sub: _Subparsers) -> None:
    p = sub.add_parser("loads", help="warehouse loads: list | errors OBJECT | reload OBJECT")
    p.add_argument("action", choices=["list", "errors", "reload"])
    p.add_argument("object", nargs="?", help="a quarantined staged object's key (as `loads list` shows it)")
    p.add_argument("--local", action="store_true", help="the local stack's warehouse (DuckDB)")
    p.add_argument("--workgroup", help="Redshift Serverless workgroup (AWS)")
    p.add_argument("--database", default="devicepipe", help="database (AWS; default devicepipe)")
    p.add_argument(
        "--staging-bucket",
        help="the warehouse region's staging bucket: both regions' readings, the other's replicated in (AWS)",
    )
    p.add_argument("--manifest-bucket", help="bucket holding the manifests (AWS; default: --staging-bucket)")
    p.add_argument("--region", help="AWS region of the warehouse (and of its staging bucket)")
    _add_state_dir(p)
    p.set_defaults(run=_loads)


def _add_probe(sub: _Subparsers) -> None:
    p = sub.add_parser("probe", help="probe replication: global-table replication lag between regions")
    p.add_argument("what", choices=["replication"])
    p.add_argument("--regions", help="comma-separated; every ordered pair is probed (default: samconfig.toml's)")
    p.add_argument("--local", action="store_true", help="probe the running local stack")
    p.add_argument("--table", help="table name (default: the template's TableName default)")
    p.add_argument("--count", type=_positive, default=20, help="markers per direction (default 20)")
    p.add_argument("--interval-ms", type=_positive, default=100, help="between markers (default 100)")
    p.add_argument("--poll-ms", type=_positive, default=20, help="between reads of the target (default 20)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a marker counts as lost")
    p.add_argument("--max-p99-ms", type=float, help="also fail (exit 1) when p99 lag is above this")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    _add_state_dir(p)
    p.set_defaults(run=_probe)


def _add_read(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "read", help="read data back through the read API: latest | history | branch | branches | report"
    )
    rsub = p.add_subparsers(required=True, metavar="WHAT")
    for name, text, add_arguments in (
        ("latest", "a device's newest reading", _device_arg),
        ("history", "a device's readings, newest first", _read_history_arguments),
        ("branch", "a branch's devices with their latest readings, most recently seen first", _read_branch_arguments),
        ("branches", "every branch that has devices", None),
        ("report", "a branch's report for one day (its stored report)", _read_report_arguments),
    ):
        r = rsub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")
        r.set_defaults(run=_read, what=name, all=False)
        if add_arguments:
            add_arguments(r)
        _add_read_api_options(r)


def _device_arg(r: argparse.ArgumentParser) -> None:
    r.add_argument("device")


def _read_history_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("device")
    r.add_argument("--since", type=_when, help="from this time: 30m, 1h, 2d ago, or an RFC 3339 time")
    r.add_argument("--until", type=_when, help="up to this time (exclusive), in the same forms")
    _add_paging(r)


def _read_branch_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("branch")
    r.add_argument("--stale-after", type=_positive, help="seconds after which a device is stale")
    _add_paging(r)


def _read_report_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("branch")
    r.add_argument("--period", type=_day, help="the branch's local day, YYYY-MM-DD (default: yesterday, UTC)")


def _add_paging(r: argparse.ArgumentParser) -> None:
    r.add_argument("--limit", type=_positive, help="entries per page, 1..1000 (default: the API's 100)")
    r.add_argument(
        "--all",
        action="store_true",
        help="every page, following next_cursor (--json: one document holding them all)",
    )


def _add_read_api_options(r: argparse.ArgumentParser) -> None:
    """Which read API a read asks, how, and how it prints the answer."""
    r.add_argument("--json", action="store_true", help="print the API's JSON as it is (for scripts)")
    target = r.add_mutually_exclusive_group()
    target.add_argument("--local", action="store_true", help="the running local stack's API")
    target.add_argument("--api-url", help="this API (default: the deployed stack's ReadApiUrl output)")
    r.add_argument("--region", help="region (default: AWS_REGION, AWS_DEFAULT_REGION, samconfig.toml's first)")
    r.add_argument("--stack-name", help="deployed stack (default: samconfig.toml's stack_name for the region)")
    r.add_argument("--token", help="JWT sent as a Bearer token instead of SigV4 (default $DEVICEPIPE_API_TOKEN)")
    r.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    _add_state_dir(r)


def _add_cache(sub: _Subparsers) -> None:
    p = sub.add_parser("cache", help="the Redis cache: rebuild (refill it from the table after a loss)")
    p.add_argument("action", choices=["rebuild"])
    p.add_argument("--local", action="store_true", help="the running local stack (every region, or --region's)")
    p.add_argument("--region", action="append", help="region to rebuild (repeat for several; AWS: required)")
    p.add_argument("--stack-name", help="deployed stack (default: samconfig.toml's stack_name for the region)")
    p.add_argument("--table", help="table name (default: the stack's TableName output)")
    p.add_argument("--redis-url", help="AWS: reach Redis through this URL (a tunnel) instead of the stack's endpoint")
    p.add_argument("--batch", type=_positive, default=500, help="devices per Redis pipeline (default 500)")
    p.add_argument("--json", action="store_true", help="print each region's figures as JSON too")
    _add_state_dir(p)
    p.set_defaults(run=_cache)


def _add_invoke(sub: _Subparsers) -> None:
    p = sub.add_parser("invoke", help="run one function's handler with an event (Docker-free sam local invoke)")
    p.add_argument("function", help="logical id in template.yaml, e.g. IngestFunction")
    p.add_argument("--event", required=True, help="event JSON file (see events/)")
    p.add_argument("--local", action="store_true", help="against the running local stack")
    p.add_argument("--region", help="region (default: the local stack's first, or the credential chain's)")
    p.add_argument("--env-vars", help="JSON file of environment overrides, as for `sam local invoke --env-vars`")
    _add_state_dir(p)
    p.set_defaults(run=_invoke)


def _add_plan(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "plan",
        help="capacity and monthly cost of a fleet on this template (docs/plan.md)",
        description="What a fleet needs (Kinesis, Lambda, DynamoDB, S3, Redis, Aurora, Redshift) and what it costs "
        "a month, from template.yaml's settings and devicepipe_tools/prices.toml. Defaults: the seed's fleet.",
    )
    p.add_argument("--devices", type=_positive, default=1000, help="devices (default 1000)")
    p.add_argument("--interval", type=_positive_float, default=60.0, help="seconds between a device's readings (60)")
    p.add_argument("--branches", type=_positive, default=50, help="branches the devices belong to (default 50)")
    p.add_argument("--regions", help="comma-separated, primary first (default: the template's two regions)")
    p.add_argument("--reading-bytes", type=_positive, default=200, help="bytes of one reading's JSON (default 200)")
    p.add_argument(
        "--reads-per-second", type=_non_negative_float, default=5.0, help="read API requests/s, all regions (5)"
    )
    p.add_argument("--cache-hit-ratio", type=float, default=0.85, help="share of reads Redis answers (0.85)")
    p.add_argument("--headroom", type=float, default=2.0, help="capacity / average load to size for (2)")
    p.add_argument("--prices", type=Path, help="price table (default devicepipe_tools/prices.toml)")
    p.add_argument("--detail", action="store_true", help="also print every cost line (quantity x unit price)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (for scripts)")
    p.set_defaults(run=_plan)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be zero or a positive number")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1024 <= value <= 65_000:
        raise argparse.ArgumentTypeError("must be a port from 1024 to 65000")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be zero or a positive integer")
    return value


# ----------------------------------------------------------------------------------------------- produce
def _produce(args: argparse.Namespace) -> int:
    regions = _regions(args.regions) if args.regions else (args.region,)
    targets = _local_targets(args, regions) if args.local else _aws_targets(args, regions)
    invalid: list[tuple[int, str]] = []

    def on_invalid(line: int, reason: str) -> None:
        invalid.append((line, reason))
        print(f"line {line}: {reason}", file=sys.stderr)

    entries, total = _entries(args, on_invalid)
    failures = FailureFile(args.failed_file)
    client, stream = targets[0]
    producer = Producer(
        client,
        stream,
        failures,
        max_in_flight=args.max_in_flight,
        deadline_s=args.deadline,
        aggregate=args.kpl,
        fallbacks=targets[1:],
        failover_after_s=args.failover_after,
    )
    for problem in producer.check_stream():
        print(f"devicepipe: {problem}; using the other regions", file=sys.stderr)
    stopped_early = False
    with ProgressLine(producer.progress, total):
        try:
            progress = producer.send(entries)
        except InvalidInput:
            stopped_early, progress = True, producer.progress
    failures.close()
    print(
        f"sent {progress.sent}, failed {progress.failed}, invalid input lines {len(invalid)}, "
        f"retried {progress.retried}, {wording.count(progress.calls, 'PutRecords call')}, {progress.rate:.0f} records/s"
        + (f", {progress.failed_over} failed over to another region" if progress.failed_over else "")
        + (f"; failed records written to {failures.path}" if failures.count else "")
        + ("; stopped at the first invalid line (--strict)" if stopped_early else "")
    )
    if progress.failed:
        return EXIT_FAILED
    return EXIT_INPUT if invalid else EXIT_OK


def _local_targets(args: argparse.Namespace, regions: tuple[str | None, ...]) -> list[tuple[Any, str]]:
    """The local stack's Kinesis client and stream of each region (default: its first); --stream names the first."""
    state = stack.read_state(args.state_dir)
    regions = regions if regions != (None,) else (next(iter(state["regions"])),)
    targets = [
        (
            local_clients(state["endpoint"], str(r), "kinesis")["kinesis"],
            stack.region_resources(state, str(r)).names["ReadingsStream"],
        )
        for r in regions
    ]
    if args.stream:
        targets[0] = (targets[0][0], args.stream)
    return targets


def _aws_targets(args: argparse.Namespace, regions: tuple[str | None, ...]) -> list[tuple[Any, str]]:
    """A Kinesis client and --stream's stream for each region, in order of preference."""
    streams = args.stream.split(",") if args.stream else []
    if not streams or len(streams) != len(regions):
        raise ProducerError("--stream is required, one per region of --regions (or --local for the local stack)")
    config = Config(retries={"mode": "standard"})
    try:
        return [
            (boto3.client("kinesis", region_name=r, config=config), st) for r, st in zip(regions, streams, strict=True)
        ]
    except BotoCoreError as exc:
        raise ProducerError(str(exc)) from None


def _entries(args: argparse.Namespace, on_invalid: Callable[[int, str], None]) -> tuple[Any, int | None]:
    """The entries to send, from --simulate or --file, and how many there will be when that is known."""
    if not args.simulate:
        lines = sys.stdin if args.file == "-" else _open(args.file)
        return read_readings(lines, on_invalid, strict=args.strict, validate=not args.no_validate), None
    if args.count is None and args.duration is None:
        raise ProducerError("--simulate needs --count or --duration")
    readings = simulate(args.devices, args.branches, count=args.count, duration_s=args.duration, rate=args.rate)
    return entries_from_readings(readings), args.count


def _open(path: str) -> Any:
    try:
        return open(path)
    except OSError as exc:
        raise ProducerError(f"cannot read {path}: {exc.strerror}") from None


# ----------------------------------------------------------------------------------------------- local
def _samconfig() -> dict[str, Any]:
    return tomllib.loads((ROOT / "samconfig.toml").read_text())


def _deploy_parameters() -> list[dict[str, Any]]:
    """The deploy parameters of each samconfig.toml config env (one per region)."""
    return [
        env["deploy"]["parameters"]
        for env in _samconfig().values()
        if isinstance(env, dict) and "parameters" in env.get("deploy", {})
    ]


def _regions(text: str) -> tuple[str, ...]:
    """Comma-separated regions, or ``all``: every region samconfig.toml deploys to."""
    if text.strip() == "all":
        return tuple(params["region"] for params in _deploy_parameters() if "region" in params)
    return tuple(r.strip() for r in text.split(",") if r.strip())


def _local_up(args: argparse.Namespace) -> int:
    state = stack.up(
        _regions(args.regions), args.state_dir, replication_delay_s=args.replication_delay_ms / 1000, port=args.port
    )
    print(f"local stack up: {state['endpoint']} (pid {state['pid']}), regions {', '.join(state['regions'])}")
    print(f"  redis ({state['redis_kind']}): " + ", ".join(f"{r} {url}" for r, url in state["redis_urls"].items()))
    _print_api_urls(state)
    for region, res in state["regions"].items():
        for logical_id, name in res["names"].items():
            if logical_id in ("ReadingsStream", "ReadingsTable", "QuarantineBucket", "IngestFailureQueue"):
                print(f"  {region}  {logical_id:20s} {name}")
    print('  for the AWS CLI, redis-cli, psql, duckdb, curl: eval "$(devicepipe local env)" (docs/local-stack.md)')
    return EXIT_OK


def _local_env(args: argparse.Namespace) -> int:
    from devicepipe_tools.local.env import client_env, render

    state = stack.read_state(args.state_dir)
    print(render(client_env(state, args.region or next(iter(state["regions"]))), as_json=args.json))
    return EXIT_OK


def _print_api_urls(state: dict[str, Any]) -> None:
    for region, url in state.get("api_urls", {}).items():
        print(f"  read API {region}: {url}  (`devicepipe read ... --local --region {region}`)")


def _local_down(args: argparse.Namespace) -> int:
    print("local stack stopped" if stack.down(args.state_dir) else "no local stack was running")
    return EXIT_OK


def _local_status(args: argparse.Namespace) -> int:
    state = stack.read_state(args.state_dir)
    print(f"local stack: {state['endpoint']} (pid {state['pid']}), regions {', '.join(state['regions'])}")
    print(f"  redis ({state['redis_kind']}): " + ", ".join(f"{r} {url}" for r, url in state["redis_urls"].items()))
    _print_api_urls(state)
    print("\n".join(stack.process_lines(state)))
    for name, s in stack.mapping_stats(args.state_dir).items():
        lat = s["latency_ms"]
        print(
            f"  {name}: {wording.count(s['records_done'], 'record')} done in "
            f"{wording.count(s['invocations'], 'invocation')}, "
            f"{wording.count(s['partial_failures'], 'partial failure')}, "
            f"{wording.count(s['function_errors'], 'error')}, "
            f"{s['sent_to_destination']} to the on-failure destination, {wording.percentiles('latency', lat)}, "
            f"{'drained' if s['drained'] else 'busy'}" + (f"; last error: {s['last_error']}" if s["last_error"] else "")
        )
    from devicepipe_tools.local.loader_worker import status_lines

    for line in status_lines(args.state_dir):
        print(line)
    if down := down_regions(args.state_dir):
        print(f"  regions down: {', '.join(sorted(down))}")
    if r := stack.replication_stats(args.state_dir):
        print(
            f"  replication (delay {r['delay_ms']} ms): {wording.count(r['replicated'], 'write')} replicated, "
            f"{r['superseded']} superseded by a later write, {r['pending']} pending, {r['held_for_down_regions']} "
            f"held for regions down; {wording.percentiles('lag', r['lag_ms'])}"
        )
    return EXIT_FAILED if any(p.get("gave_up") for p in state.get("processes", [])) else EXIT_OK


def _local_outage(args: argparse.Namespace) -> int:
    down = stack.set_region_down(args.state_dir, args.region, down=args.action_name == "outage")
    print(f"regions down: {', '.join(sorted(down)) or 'none'}")
    return EXIT_OK


#: Functions whose handlers need the Redshift Data API: the local stack runs their logic on DuckDB instead.
_RUN_BY_THE_STACK = {
    "LoaderFunction": "devicepipe loads list --local",
    "ReportFunction": "devicepipe local report [--period D] [--branch B]",
}


def _local_report(args: argparse.Namespace) -> int:
    """ReportFunction's run on the local stack, with its event's rules (``{"period", "branches"}``)."""
    from devicepipe.report_run import BadRequest, parse_request
    from devicepipe_tools.local.loader_worker import build_report_replicators, build_report_runtime, run_reports

    state = stack.read_state(args.state_dir)
    template = load_template()
    event = {k: v for k, v in (("period", args.period), ("branches", args.branch or None)) if v is not None}
    try:
        request = parse_request(event, datetime.now(UTC))
        runtime = build_report_runtime(state, args.state_dir, template)
        figures = run_reports(runtime, build_report_replicators(state, template), set(state.get("down", [])), request)
    except BadRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{wording.count(figures['due'], 'report')} due: {figures['written']} written, "
        f"{figures['unchanged']} unchanged, {figures['failed']} failed; "
        f"{wording.count(figures['notified'], 'notification')}; "
        f"{wording.count(figures['replicated'], 'object')} replicated to the other regions; {figures['seconds']} s"
    )
    for failure in figures["failures"]:
        print(f"  failed: {failure['branch_id']} {failure['period']}: {failure['reason']}", file=sys.stderr)
    return EXIT_FAILED if figures["failures"] else EXIT_OK


def _local_demo(args: argparse.Namespace) -> int:
    from devicepipe_tools.local.demo import DEMO_DIR, render, run_demo

    result = run_demo(
        readings=args.readings,
        devices=args.devices,
        branches=args.branches,
        regions=_regions(args.regions),
        replication_delay_s=args.replication_delay_ms / 1000,
        keep=args.keep,
        timeout_s=args.timeout,
        state_dir=args.state_dir or (_kept_demo_dir() if args.keep else DEMO_DIR),
    )
    print(render(result))
    if args.json:
        print(json.dumps(result.figures, indent=1))
    return EXIT_OK if result.consistent else EXIT_FAILED


def _kept_demo_dir() -> Path:
    """Where ``demo --keep`` runs: the local stack's own directory, so that the stack it leaves is the local stack
    every command finds (`local status`, `down`, `env`, `produce --local`, ...). Refused over a running one."""
    try:
        state = stack.read_state(stack.STATE_DIR)
    except stack.StackError:
        return stack.STATE_DIR  # none, or a dead one's leftovers: the demo clears those before it starts
    raise stack.StackError(
        f"a local stack is already running (pid {state['pid']}): `devicepipe local down` first, or run the demo "
        "without --keep (it then starts a stack of its own and stops it when done)"
    )


def _local_chaos(args: argparse.Namespace) -> int:
    from devicepipe_tools.local.chaos import CHAOS_DIR, render, run_chaos

    result = run_chaos(
        duration_s=args.duration,
        rate=args.rate,
        fault_every_s=args.fault_every,
        seed=args.seed,
        timeout_s=args.timeout,
        state_dir=args.state_dir or CHAOS_DIR,
    )
    print(render(result))
    return EXIT_OK if result.consistent else EXIT_FAILED


# ----------------------------------------------------------------------------------------------- probe
# A probe measures; it should see a failing region fail quickly, not hide it behind long client retries.
PROBE_CONFIG = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2, read_timeout=5)


def _probe(args: argparse.Namespace) -> int:
    from devicepipe_tools.probe import probe_replication
    from devicepipe_tools.template import load_template, parameter_default

    if args.local:
        state = stack.read_state(args.state_dir)
        regions = _regions(args.regions) if args.regions else tuple(state["regions"])
        missing = [r for r in regions if r not in state["regions"]]
        if missing:
            print(
                f"devicepipe: the local stack runs {', '.join(state['regions'])}, not {', '.join(missing)}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        table = args.table or stack.region_resources(state, regions[0]).names["ReadingsTable"]
        dynamodb = {
            r: local_clients(state["endpoint"], r, "dynamodb", config=PROBE_CONFIG)["dynamodb"] for r in regions
        }
    else:
        regions = _regions(args.regions or "all")
        table = args.table or str(parameter_default(load_template(), "TableName"))
        dynamodb = {r: boto3.client("dynamodb", region_name=r, config=PROBE_CONFIG) for r in regions}
    if len(regions) < 2:
        print("devicepipe: probing replication needs at least two regions (--regions a,b)", file=sys.stderr)
        return EXIT_USAGE
    results = []
    for source in regions:
        for target in regions:
            if source == target:
                continue
            print(f"probing {table}: {source} -> {target}, {args.count} markers ...", file=sys.stderr)
            result = probe_replication(
                dynamodb[source],
                dynamodb[target],
                table,
                source,
                target,
                count=args.count,
                interval_s=args.interval_ms / 1000,
                poll_s=args.poll_ms / 1000,
                timeout_s=args.timeout,
            )
            print(result.line())
            for failure in result.failures[:5]:
                print(f"  failure: {failure}")
            results.append(result)
    if args.json:
        print(json.dumps([r.summary() for r in results], indent=1))
    failed = any(r.failures for r in results)
    too_slow = args.max_p99_ms is not None and any(
        (r.summary()["lag_ms"]["p99"] or 0) > args.max_p99_ms for r in results
    )
    if too_slow:
        print(f"p99 replication lag above {args.max_p99_ms:.0f} ms", file=sys.stderr)
    return EXIT_FAILED if failed or too_slow else EXIT_OK


# ----------------------------------------------------------------------------------------------- loads
def _loads(args: argparse.Namespace) -> int:
    missing = [] if args.local else [f for f in ("workgroup", "staging_bucket", "region") if not getattr(args, f)]
    if missing:
        print(
            f"devicepipe: loads needs --local, or {', '.join('--' + m.replace('_', '-') for m in missing)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    loader = _loader(args)
    if args.action == "list":
        return _loads_list(loader)
    if not args.object:
        print(f"devicepipe: loads {args.action} needs a quarantined object's key", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "errors":
        return _loads_errors(loader, args.object)
    return _loads_reload(loader, args.object)


def _loader(args: argparse.Namespace) -> Loader:
    """The local stack's loader, or one on the Redshift Data API and the staging bucket the options name."""
    from devicepipe.loader import Loader, Source
    from devicepipe.warehouse import RedshiftDataApi

    if args.local:
        from devicepipe_tools.local.loader_worker import build_loader

        # Listing reads the readers' snapshot: it never waits for the loader, nor makes the loader wait.
        return build_loader(stack.read_state(args.state_dir), args.state_dir, snapshot=args.action == "list")
    warehouse = RedshiftDataApi(boto3.client("redshift-data", region_name=args.region), args.workgroup, args.database)
    source = Source(args.staging_bucket, args.region)
    s3 = boto3.client("s3", region_name=args.region)
    return Loader(s3, warehouse, source, args.manifest_bucket or args.staging_bucket, region=args.region)


def _loads_list(loader: Loader) -> int:
    """What is pending, the last loads, and what is quarantined."""
    pending = loader.pending()
    manifests = len(loader.plan(pending))
    print(f"pending: {wording.count(len(pending), 'staged object')} in {wording.count(manifests, 'manifest')}")
    for obj in pending[:10]:
        print(f"  {obj.url}  {obj.size} bytes")
    ((count,),) = loader.warehouse.query("SELECT COUNT(*) FROM load_ledger") or [(0,)]
    loaded = loader.warehouse.query(
        "SELECT manifest_key, loaded_at, object_count FROM load_ledger ORDER BY loaded_at DESC LIMIT 10"
    )
    print(f"loaded: {wording.count(count, 'manifest')}")
    for key, at, n in reversed(loaded):
        print(f"  {key}  {at}  {wording.count(n, 'object')}")
    quarantined = loader.quarantine_records()
    quarantined_objects = wording.count(len(quarantined), "object")
    print(f"quarantined: {quarantined_objects} (`loads errors KEY`; fix the object, then `loads reload KEY`)")
    for doc in quarantined:
        first = (doc["errors"] or [{"line": "?", "reason": doc["error"]}])[0]
        print(f"  {doc['key']}  line {first['line']}: {str(first['reason'])[:100]}")
    return EXIT_OK


def _loads_errors(loader: Loader, key: str) -> int:
    record = loader.quarantine_record(key)
    if record is None:
        print(f"devicepipe: no quarantined object {key}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{record['object']} (quarantined {record['quarantined_at']}): {record['error']}")
    for e in record["errors"] or [{"file": "?", "line": "?", "column": "?", "reason": record["error"]}]:
        print(_load_error_line(e))
    return EXIT_OK


def _loads_reload(loader: Loader, key: str) -> int:
    from devicepipe.warehouse import LoadFailed

    try:
        loader.reload(key)
    except LoadFailed as exc:
        print(f"devicepipe: reload failed: {exc}", file=sys.stderr)
        for e in exc.errors:
            print(_load_error_line(e), file=sys.stderr)
        return EXIT_FAILED
    print(f"{key} loaded")
    return EXIT_OK


def _load_error_line(e: dict[str, Any]) -> str:
    return f"  file {e['file']}  line {e['line']}  column {e['column']}  {e['reason']}"


# ----------------------------------------------------------------------------------------------- cache
def _cache(args: argparse.Namespace) -> int:
    from devicepipe_tools import cache_rebuild

    try:
        if args.local:
            targets = cache_rebuild.local_targets(stack.read_state(args.state_dir), args.region)
        elif not args.region:
            print("devicepipe: cache rebuild needs --local, or --region R (deployed stack)", file=sys.stderr)
            return EXIT_USAGE
        else:
            targets = [
                cache_rebuild.aws_target(r, args.stack_name or _stack_name(r), args.table, args.redis_url)
                for r in args.region
            ]
        reports = []
        for target in targets:
            print(f"rebuilding {target.region}'s cache ({target.where}) from {target.table} ...", file=sys.stderr)
            report = cache_rebuild.rebuild(
                target, args.batch, lambda r: print(f"  {r.devices} devices, {r.rate:,.0f}/s", file=sys.stderr)
            )
            print(report.line())
            reports.append(report.summary())
    except cache_rebuild.RebuildError as exc:
        print(f"devicepipe cache rebuild: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(reports, indent=1))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- read
def _read(args: argparse.Namespace) -> int:
    client = _read_client(args)
    path, params, items = _read_request(args)
    if args.all and items:

        def progress(pages: int, count: int) -> None:
            print(f"page {pages}: {count} {items} so far, fetching the next ...", file=sys.stderr)

        doc = client.get_all(path, params, items, progress)
    else:
        doc = client.get(path, params)
    if args.json:
        print(json.dumps(doc, indent=1))
        return EXIT_OK
    print(_RENDER[args.what](doc, datetime.now(UTC)))
    if doc.get("next_cursor"):
        print("more pages: --all fetches every one", file=sys.stderr)
    return EXIT_OK


def _read_client(args: argparse.Namespace) -> ReadClient:
    """The API chosen by ``--local``, ``--api-url`` or the deployed stack, authorised as it expects: a Bearer
    token when given, nothing on the local machine, SigV4 otherwise."""
    token = args.token or os.environ.get("DEVICEPIPE_API_TOKEN")
    if args.local:
        state = stack.read_state(args.state_dir)
        region = args.region or next(iter(state["regions"]))
        urls = state.get("api_urls", {})
        if region not in urls:
            raise stack.StackError(
                f"the local stack serves no read API in {region} (it serves {', '.join(urls) or 'none'}): "
                "restart it with `devicepipe local down` and `local up`"
            )
        url = urls[region]
    else:
        region = (
            args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or _regions("all")[0]
        )
        url = args.api_url or read_client.deployed_api_url(region, args.stack_name or _stack_name(region))
    if token:
        auth = read_client.bearer(token)
    elif read_client.is_loopback(url):
        auth = read_client.no_auth
    else:
        auth = read_client.sigv4(read_client.url_region(url) or region)
    return ReadClient(url, auth, args.timeout)


def _stack_name(region: str) -> str:
    """samconfig.toml's stack name for the config env that deploys to ``region``, else its default one."""
    for params in _deploy_parameters():
        if params.get("region") == region and "stack_name" in params:
            return str(params["stack_name"])
    name = _samconfig().get("default", {}).get("global", {}).get("parameters", {}).get("stack_name")
    if not name:
        raise NoApi(f"samconfig.toml names no stack for {region}: pass --stack-name or --api-url")
    return str(name)


def _read_request(args: argparse.Namespace) -> tuple[str, dict[str, Any], str | None]:
    """The path, query parameters and (for paged answers) the list's key of a ``read`` command."""
    if args.what == "latest":
        return f"/devices/{quote(args.device, safe='')}/latest", {}, None
    if args.what == "history":
        params = {"from": args.since, "to": args.until, "limit": args.limit}
        return f"/devices/{quote(args.device, safe='')}/readings", params, "readings"
    if args.what == "branch":
        params = {"limit": args.limit, "stale_after": args.stale_after}
        return f"/branches/{quote(args.branch, safe='')}/devices", params, "devices"
    if args.what == "report":
        return f"/branches/{quote(args.branch, safe='')}/report", {"period": args.period}, None
    return "/branches", {}, None


def _day(text: str) -> str:
    try:
        return date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a day YYYY-MM-DD") from None


_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _when(text: str, now: datetime | None = None) -> str:
    """``--since``/``--until``: a duration ago (``90s``, ``30m``, ``1h``, ``2d``) or an RFC 3339 time with a
    zone, as the API's UTC form (``2026-11-02T09:00:00.000000Z``)."""
    if found := re.fullmatch(r"(\d+)([smhd])", text.strip()):
        when = (now or datetime.now(UTC)) - timedelta(seconds=int(found[1]) * _DURATION_S[found[2]])
    else:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a duration (30m, 1h, 2d) or an RFC 3339 time (2026-11-02T09:00:00Z)"
            ) from None
        if when.tzinfo is None:
            raise argparse.ArgumentTypeError(f"{text!r}: an RFC 3339 time needs a zone (Z or +01:00)")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _render_latest(doc: dict[str, Any], now: datetime) -> str:
    r = doc["reading"]
    lines = [
        f"{r['device_id']}  branch {r.get('branch_id')}  {r['ts']} ({_age(r['ts'], now)} ago)  seq {r.get('seq', 0)}",
        f"from the {doc.get('source')} in {doc.get('region')}; written in {r.get('origin_region')}",
    ]
    width = max((len(k) for k in r.get("metrics", {})), default=0)
    return "\n".join(lines + [f"  {k.ljust(width)}  {_value(v)}" for k, v in r.get("metrics", {}).items()])


def _render_history(doc: dict[str, Any], now: datetime) -> str:
    rows = [[r["ts"], str(r.get("seq", 0)), _metrics(r.get("metrics", {}))] for r in doc["readings"]]
    title = f"{doc['device_id']}: {wording.count(len(rows), 'reading')}, newest first ({doc.get('region')})"
    return _table(title, ["ts", "seq", "metrics"], rows)


def _render_branch(doc: dict[str, Any], now: datetime) -> str:
    rows = [
        [
            d["device_id"],
            d["last_seen"],
            _age(d["last_seen"], now),
            "STALE" if d.get("stale") else "",
            _metrics(d.get("reading", {}).get("metrics", {})),
        ]
        for d in doc["devices"]
    ]
    title = (
        f"branch {doc['branch_id']}: {wording.count(len(rows), 'device')}, most recently seen first "
        f"(from the {doc.get('source')} in {doc.get('region')}; stale after {doc.get('stale_after')} s)"
    )
    return _table(title, ["device", "last seen", "age", "stale", "metrics"], rows)


def _render_branches(doc: dict[str, Any], now: datetime) -> str:
    rows = [[b["branch_id"], str(b["devices"]), b["last_seen"], _age(b["last_seen"], now)] for b in doc["branches"]]
    title = f"{wording.count(len(rows), 'branch')} (from the {doc.get('source')} in {doc.get('region')})"
    return _table(title, ["branch", "devices", "last seen", "age"], rows)


def _render_report(doc: dict[str, Any], now: datetime) -> str:
    report, summary = doc["report"], doc["report"]["summary"]
    rows = [
        [
            d["device_id"],
            d.get("kind") or "UNREGISTERED",
            str(d["readings"]),
            d.get("last_seen") or "-",
            str(len(d["gaps"])),
            str(sum(m["out_of_range"] or 0 for m in d["metrics"].values())),
        ]
        for d in report["devices"]
    ]
    title = (
        f"branch {report['branch_id']} ({report['branch_name']}), {report['period']} in {report['time_zone']}"
        f"{'' if report['final'] else ' (not final yet)'}: {wording.count(summary['readings'], 'reading')}, "
        f"{summary['devices_reporting']} of {summary['devices_expected']} expected devices reporting, "
        f"{len(summary['unregistered_devices'])} unregistered, {summary['out_of_range']} out of range "
        f"(from the {doc.get('source')} in {doc.get('region')})"
    )
    return _table(title, ["device", "kind", "readings", "last seen", "gaps", "out of range"], rows)


_RENDER = {
    "report": _render_report,
    "latest": _render_latest,
    "history": _render_history,
    "branch": _render_branch,
    "branches": _render_branches,
}


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A title, then columns padded to their widest cell."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join([title, *lines])


def _age(ts: str, now: datetime) -> str:
    """How long ago, in its two largest units: ``45s``, ``5m12s``, ``3h05m``, ``2d04h``."""
    seconds = max(0, int((now - datetime.fromisoformat(ts)).total_seconds()))
    for unit, size, sub, sub_size in (("d", 86_400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{seconds % size // sub_size:02d}{sub}"
    return f"{seconds}s"


def _metrics(metrics: dict[str, Any], width: int = 80) -> str:
    """``name=value`` pairs on one line, cut at ``width``."""
    text = " ".join(f"{k}={_value(v)}" for k, v in metrics.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------- invoke
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def event_problem(template: dict[str, Any], function: str, path: Path) -> str | None:
    """Why the file cannot be an event the function receives, in one line; None if it can. Checked: JSON, an
    object, and for a stream function a ``Records`` list from its event source (``aws:kinesis`` or
    ``aws:dynamodb``, from its event source mapping), for an HTTP API function a payload 2.0 request."""
    try:
        event = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read the event file {path}: {exc}"
    except json.JSONDecodeError as exc:
        return f"{path} is not JSON: {exc}"
    if not isinstance(event, dict):
        return f"{path} holds a JSON {_JSON_TYPES.get(type(event), 'null')}: an event is a JSON object (see events/)"
    if source := _event_source(template, function):
        records = event.get("Records")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            return f'{path} is not a stream event: {function} takes {{"Records": [...]}} from {source} (see events/)'
        if others := sorted({str(r.get("eventSource")) for r in records} - {source}):
            return f"{path} holds records from {', '.join(others)}: {function} reads {source} (see events/)"
    elif _serves_http(template, function) and not (
        event.get("version") == "2.0" and isinstance(event.get("requestContext"), dict)
    ):
        return f"{path} is not an HTTP API request (payload 2.0) for {function} (see events/read_api/)"
    return None


def _event_source(template: dict[str, Any], function: str) -> str | None:
    """``aws:kinesis`` or ``aws:dynamodb`` for a function an event source mapping invokes, else None."""

    def referenced(node: Any) -> set[str]:
        if isinstance(node, dict):
            ids = {str(v).split(".")[0] if isinstance(v, str) else str(v[0]) for k, v in node.items() if k in _REFS}
            return ids.union(*(referenced(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(referenced(v) for v in node))
        return set()

    resources = template.get("Resources", {})
    for res in resources.values():
        props = res.get("Properties", {})
        if res.get("Type") == "AWS::Lambda::EventSourceMapping" and props.get("FunctionName") == {"Ref": function}:
            types = {resources.get(ref, {}).get("Type", ref) for ref in referenced(props.get("EventSourceArn"))}
            return "aws:kinesis" if "AWS::Kinesis::Stream" in types else "aws:dynamodb"
    return None


_REFS = ("Ref", "Fn::GetAtt")


def _serves_http(template: dict[str, Any], function: str) -> bool:
    events = template.get("Resources", {}).get(function, {}).get("Properties", {}).get("Events", {})
    return any(e.get("Type") == "HttpApi" for e in events.values())


def _invoke(args: argparse.Namespace) -> int:
    from devicepipe_tools.local.resources import template_env
    from devicepipe_tools.template import load_template, resource

    template = load_template()
    try:
        resource(template, args.function)
    except KeyError as exc:
        print(f"devicepipe: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    if not Path(args.event).is_file():
        print(f"devicepipe: no event file {args.event}", file=sys.stderr)
        return EXIT_USAGE
    if problem := event_problem(template, args.function, Path(args.event)):
        print(f"devicepipe: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.local and args.function in _RUN_BY_THE_STACK:
        print(
            f"devicepipe: the local stack runs {args.function}'s logic itself, on DuckDB (its handler needs the "
            f"Redshift Data API): see `{_RUN_BY_THE_STACK[args.function]}`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.local:
        state = stack.read_state(args.state_dir)
        region = args.region or next(iter(state["regions"]))
        res = stack.region_resources(state, region)
        env = {
            **os.environ,
            **stack.lambda_env(
                template,
                args.function,
                state["endpoint"],
                state["redis_urls"][region],
                res,
                state.get("registry_reader_url", ""),
            ),
        }
    else:
        # Like `sam local invoke`: real AWS through the credential chain; names of deployed resources come
        # from --env-vars (SAM's format), parameters and pseudo parameters resolve from the template.
        region = args.region or boto3.session.Session().region_name or "us-east-1"
        overrides = json.loads(Path(args.env_vars).read_text()).get(args.function, {}) if args.env_vars else {}
        resolved, missing = template_env(template, args.function, region)
        missing = [m for m in missing if m not in overrides]
        if missing:
            print(
                f"devicepipe: {args.function} needs values for {', '.join(missing)}: pass them with "
                f'--env-vars FILE ({{"{args.function}": {{"NAME": "value"}}}}) or use --local',
                file=sys.stderr,
            )
            return EXIT_USAGE
        env = {**os.environ, "AWS_REGION": region, "AWS_DEFAULT_REGION": region, **resolved, **overrides}
    done = subprocess.run(
        [sys.executable, "-m", "devicepipe_tools.local.functions", args.function, args.event, region],
        env=env,
        check=False,
    )
    return EXIT_OK if done.returncode == 0 else EXIT_FAILED


# ----------------------------------------------------------------------------------------------- plan
def _plan(args: argparse.Namespace) -> int:
    from devicepipe_tools import plan
    from devicepipe_tools.template import load_template, parameter_default

    try:
        template = load_template()
        regions = (
            _regions(args.regions)
            if args.regions is not None
            else tuple(str(parameter_default(template, p)) for p in ("PrimaryRegion", "SecondaryRegion"))
        )
        fleet = plan.Fleet(
            devices=args.devices,
            interval_s=args.interval,
            branches=args.branches,
            regions=regions,
            reading_bytes=args.reading_bytes,
            reads_per_s=args.reads_per_second,
            cache_hit_ratio=args.cache_hit_ratio,
            headroom=args.headroom,
        )
        result = plan.plan(fleet, template, plan.load_prices(args.prices or plan.PRICES))
    except plan.PlanError as exc:
        print(f"devicepipe plan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result.to_json(), indent=1) if args.json else plan.render(result, detail=args.detail))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
