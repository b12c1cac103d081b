"""In-memory stand-ins and fault injectors behind the runtime library's client interfaces.

Unit tests and benchmarks use ``FakeDynamo`` / ``FakeS3``; integration tests wrap a real (moto) client in
``FaultyDynamo`` to inject throttling and ``UnprocessedItems``, which moto never returns by itself.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from devicepipe.dynamo import LATEST_CONDITION, DynamoClient, Item


def client_error(code: str, operation: str, status: int = 400, message: str = "injected") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},  # type: ignore[typeddict-item]
        operation,
    )


class FakeDynamo:
    """A one-table DynamoDB: BatchWriteItem and PutItem (with the LATEST condition), call counts, latency.

    ``latency_s`` sleeps per call (to measure concurrency); ``reject`` names items DynamoDB would refuse
    (with ``reject_code``, failing the whole BatchWriteItem call as DynamoDB does).
    """

    def __init__(
        self,
        latency_s: float = 0.0,
        reject: Callable[[Item], bool] | None = None,
        reject_code: str = "ValidationException",
    ) -> None:
        self.items: dict[tuple[str, str], Item] = {}
        self.calls: Counter[str] = Counter()
        self.latency_s = latency_s
        self.reject = reject
        self.reject_code = reject_code
        self._lock = threading.Lock()

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        ((_table, requests),) = kwargs["RequestItems"].items()
        self._call("BatchWriteItem")
        if len(requests) > 25:
            raise client_error("ValidationException", "BatchWriteItem", message="more than 25 requests")
        by_key = {(i["pk"]["S"], i["sk"]["S"]): i for i in [r["PutRequest"]["Item"] for r in requests]}
        if len(by_key) != len(requests):
            raise client_error("ValidationException", "BatchWriteItem", message="duplicate keys in one batch")
        if self.reject and any(self.reject(i) for i in by_key.values()):
            raise client_error(self.reject_code, "BatchWriteItem", message="item refused")
        with self._lock:
            self.items.update(by_key)
        return {"UnprocessedItems": {}}

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        self._call("PutItem")
        item = kwargs["Item"]
        if self.reject and self.reject(item):
            raise client_error(self.reject_code, "PutItem", message="item refused")
        key = (item["pk"]["S"], item["sk"]["S"])
        with self._lock:
            if kwargs.get("ConditionExpression") == LATEST_CONDITION:
                current = self.items.get(key)
                if (
                    current is not None
                    and current["latest_at"]["S"] >= kwargs["ExpressionAttributeValues"][":version"]["S"]
                ):
                    raise client_error("ConditionalCheckFailedException", "PutItem")
            elif "ConditionExpression" in kwargs:
                raise NotImplementedError(kwargs["ConditionExpression"])
            self.items[key] = item
        return {}

    def _call(self, operation: str) -> None:
        with self._lock:
            self.calls[operation] += 1
        if self.latency_s:
            time.sleep(self.latency_s)


class FaultyDynamo:
    """Wraps a DynamoDB client and injects faults into its first calls.

    Parameters
    ----------
    inner
        The client that does the real work (moto's or ``FakeDynamo``).
    unprocessed_calls
        How many BatchWriteItem calls return half their items as ``UnprocessedItems`` (unwritten).
    throttled_calls
        How many calls (any operation) raise ``ProvisionedThroughputExceededException`` before reaching ``inner``.
    """

    def __init__(self, inner: DynamoClient, unprocessed_calls: int = 0, throttled_calls: int = 0) -> None:
        self.inner = inner
        self.unprocessed_calls = unprocessed_calls
        self.throttled_calls = throttled_calls
        self.injected: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _take(self, budget: str) -> bool:
        with self._lock:
            if getattr(self, budget) > 0:
                setattr(self, budget, getattr(self, budget) - 1)
                self.injected[budget] += 1
                return True
            return False

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        if self._take("throttled_calls"):
            raise client_error("ProvisionedThroughputExceededException", "BatchWriteItem")
        ((table, requests),) = kwargs["RequestItems"].items()
        if len(requests) > 1 and self._take("unprocessed_calls"):
            half = len(requests) // 2
            self.inner.batch_write_item(RequestItems={table: requests[:half]})
            return {"UnprocessedItems": {table: requests[half:]}}
        response: dict[str, Any] = self.inner.batch_write_item(**kwargs)
        return response

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        if self._take("throttled_calls"):
            raise client_error("ThrottlingException", "PutItem")
        response: dict[str, Any] = self.inner.put_item(**kwargs)
        return response


class FakeS3:
    """put_object into a dict, with optional injected failures."""

    def __init__(self, fail_calls: int = 0, latency_s: float = 0.0) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.fail_calls = fail_calls
        self.latency_s = latency_s
        self.calls = 0
        self._lock = threading.Lock()

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            fail = self.fail_calls > 0
            self.fail_calls -= fail
        if self.latency_s:
            time.sleep(self.latency_s)
        if fail:
            raise client_error("ServiceUnavailable", "PutObject", status=503)
        with self._lock:
            self.objects[(kwargs["Bucket"], kwargs["Key"])] = kwargs["Body"]
        return {}


class FaultyKinesis:
    """Wraps a Kinesis client; its first ``partial_calls`` PutRecords calls fail every other record
    (``ProvisionedThroughputExceededException``, not forwarded), as Kinesis does under load.
    ``always_fail`` fails every record of every call."""

    def __init__(self, inner: Any, partial_calls: int = 0, always_fail: bool = False) -> None:
        self.inner = inner
        self.partial_calls = partial_calls
        self.always_fail = always_fail
        self.failed_entries = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_records(self, **kwargs: Any) -> dict[str, Any]:
        with self._lock:
            inject = self.always_fail or self.partial_calls > 0
            self.partial_calls -= inject and not self.always_fail
        if not inject:
            response: dict[str, Any] = self.inner.put_records(**kwargs)
            return response
        records = kwargs["Records"]
        keep = [] if self.always_fail else records[::2]
        forwarded = iter(self.inner.put_records(**{**kwargs, "Records": keep})["Records"] if keep else [])
        out = []
        for i, _ in enumerate(records):
            if not self.always_fail and i % 2 == 0:
                out.append(next(forwarded))
            else:
                out.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"})
        failed = sum("ErrorCode" in r for r in out)
        with self._lock:
            self.failed_entries += failed
        return {"FailedRecordCount": failed, "Records": out}
