"""`python -m benchmarks`: runs every benchmark and prints a summary of figures against their targets."""

from __future__ import annotations

import os

os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "devicepipe")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from benchmarks import bench_ingest


def main() -> None:
    rows = bench_ingest.main()
    print("\nsummary (figure / target):")
    for name, value, target, ok in rows:
        print(f"  {'met ' if ok else 'MISS'}  {name:40s} {value:8.2f} / {target:.2f}")


if __name__ == "__main__":
    main()
