"""The local stack's throughput floor: how many reading items per second moto's server stores by BatchWriteItem.

Every reading the pipeline moves is written to DynamoDB by BatchWriteItem (the ingest), so the rate at which
moto's server takes such writes, with nothing else asked of it, bounds what the local stack can move; the demo
prints its readings/s as a ratio to this floor, measured against the same server in the same run. The items are
the demo's own readings as the ingest stores them, written 25 to a call from a few threads (moto's server then
runs flat out on its one interpreter) into a scratch table without a stream, so no mapping sees them; the table
is deleted afterwards. On shared cores one short run is noisy: the floor is the best of a few.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

from devicepipe.models import parse_reading
from devicepipe_tools.producer import simulate

_BATCH = 25  # BatchWriteItem's limit


def floor_items(count: int) -> list[dict[str, Any]]:
    """``count`` reading items as the ingest writes them (the reading's attributes, origin, arrival, expiry)."""
    items = []
    for doc in simulate(200, 12, count=count, seed=3):
        item = dict(parse_reading(doc).attributes)
        item |= {"origin_region": {"S": "us-east-1"}, "ingested_at": {"N": "1793610000000"}}
        items.append(item | {"expires_at": {"N": "1796202000"}})
    return items


def batch_write_floor(
    endpoint: str, region: str, items: int = 2000, threads: int = 4, rounds: int = 3
) -> dict[str, Any]:
    """Reading items per second that moto's server at ``endpoint`` stores by BatchWriteItem (``items`` of them,
    from ``threads`` threads, the best of ``rounds``), with the figures behind it."""
    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        # the server's cost is measured, not the client's: no validation, connections for every thread
        config=Config(parameter_validation=False, max_pool_connections=threads, retries={"max_attempts": 10}),
    )
    table = f"devicepipe-floor-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in ("pk", "sk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        BillingMode="PAY_PER_REQUEST",
    )

    def batches(round_: int) -> list[list[dict[str, Any]]]:
        # new items each round, as the ingest writes (replacing an item costs moto less than adding one)
        requests = [{"PutRequest": {"Item": item | {"sk": {"S": f"{item['sk']['S']}#{round_}"}}}} for item in base]
        return [requests[i : i + _BATCH] for i in range(0, len(requests), _BATCH)]

    def write(batch: list[dict[str, Any]]) -> None:
        left: Any = batch
        while left:
            left = client.batch_write_item(RequestItems={table: left}).get("UnprocessedItems", {}).get(table)

    base, times, written = floor_items(items), [], 0
    try:
        write(batches(0)[0])  # connection and table warm
        with ThreadPoolExecutor(threads) as pool:
            for round_ in range(1, rounds + 1):
                work = batches(round_)
                t0 = time.perf_counter()
                list(pool.map(write, work))
                times.append(time.perf_counter() - t0)
                written = sum(len(b) for b in work)
    finally:
        client.delete_table(TableName=table)
    return {
        "items_per_s": round(written / min(times)),
        "items": written,
        "seconds": [round(t, 2) for t in times],
        "threads": threads,
    }
