"""One function in one region of the local stack: its handler behind its event source mappings.

Started by the stack's supervisor with the region's environment and the function's variables already set.
Invocations of the function are serialised (one warm container); each shard is still polled and
checkpointed on its own, as Lambda does. Started again after it died, it resumes from its predecessor's
checkpoints (``files.CHECKPOINTS``), counting on from the counters kept with them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import boto3

from devicepipe_tools.local import files
from devicepipe_tools.local.esm import (
    Checkpoints,
    DynamoDBStreamSource,
    EventSourceMapping,
    KinesisSource,
    MappingSpec,
    WireReads,
)
from devicepipe_tools.local.files import write_json
from devicepipe_tools.local.functions import context_for, function_spec, load_handler
from devicepipe_tools.local.outage import down_regions
from devicepipe_tools.local.resources import Resolver
from devicepipe_tools.local.stack import region_resources
from devicepipe_tools.template import load_template


def mapping_specs(template: dict[str, Any], resolver: Resolver, function: str) -> list[MappingSpec]:
    """The resolved event source mappings of one function."""
    specs = []
    for logical_id, res in template["Resources"].items():
        if res["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        if res["Properties"]["FunctionName"].get("Ref") != function:
            continue
        if "Condition" in res and not resolver.condition(res["Condition"]):
            continue
        specs.append(MappingSpec.from_properties(logical_id, resolver.resolve(res["Properties"])))
    return specs


def source_for(spec: MappingSpec, region: str) -> Any:
    # moto's server, as the stack's environment says: records are read off the wire, without botocore's parser
    wire = WireReads(os.environ["AWS_ENDPOINT_URL"], region) if os.environ.get("AWS_ENDPOINT_URL") else None
    if spec.kind == "kinesis":
        return KinesisSource(boto3.client("kinesis"), spec.source_arn, region, wire)
    if spec.kind == "dynamodb":
        return DynamoDBStreamSource(boto3.client("dynamodbstreams"), spec.source_arn, region, wire)
    raise NotImplementedError(f"{spec.logical_id}: local event source {spec.kind} is not supported yet")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--function", required=True)
    args = parser.parse_args()

    template = load_template()
    state = json.loads((args.state_dir / files.STATE).read_text())
    resolver = Resolver(template, region_resources(state, args.region))
    fn = function_spec(template, args.function)
    handler = load_handler(fn)
    container = threading.Lock()
    sqs = boto3.client("sqs")

    def invoke(event: dict[str, Any]) -> Any:
        with container:
            return handler(event, context_for(fn, args.region))

    def send(destination_arn: str, message: dict[str, Any]) -> None:
        queue = sqs.get_queue_url(QueueName=destination_arn.rsplit(":", maxsplit=1)[-1])["QueueUrl"]
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(message))

    region_down = threading.Event()  # `local outage`: the region's functions stop with it
    (args.state_dir / files.CHECKPOINTS).mkdir(exist_ok=True)
    mappings = [
        EventSourceMapping(
            spec,
            source_for(spec, args.region),
            invoke,
            send,
            paused=region_down.is_set,
            checkpoints=Checkpoints(args.state_dir / files.CHECKPOINTS / f"{args.region}-{spec.logical_id}.json"),
        )
        for spec in mapping_specs(template, resolver, args.function)
    ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for m in mappings:
        m.start()
    out = args.state_dir / f"esm-{args.region}-{args.function}.json"
    while True:
        if args.region in down_regions(args.state_dir):
            region_down.set()
        else:
            region_down.clear()
        write_json(
            out,
            {
                "region": args.region,
                "function": args.function,
                "pid": os.getpid(),  # statistics count once this process wrote them (`stack.settled`)
                "updated_at": time.time(),
                "mappings": {m.spec.logical_id: {**m.stats.snapshot(), "drained": m.drained()} for m in mappings},
            },
        )
        if stop.wait(0.5):
            break
    for m in mappings:
        m.stop()


if __name__ == "__main__":
    main()
