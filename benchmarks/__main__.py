"""`python -m benchmarks`: runs every benchmark and prints a summary of figures against their targets."""

from __future__ import annotations

import os

os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "devicepipe")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Clients built as the functions build them sign with these (nothing leaves the process: benchmarks/aws_stub.py),
# and in pure Python as in Lambda, whose layer ships no awscrt.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("BOTO_DISABLE_CRT", "true")

from benchmarks import bench_coldstart, bench_consumers, bench_ingest, bench_loader, bench_read_api, bench_reports


def main() -> None:
    rows = bench_ingest.main() + bench_consumers.main() + bench_loader.main() + bench_read_api.main()
    rows += bench_reports.main() + bench_coldstart.main()
    print("\nsummary (figure / target):")
    for name, value, target, ok in rows:
        verdict = "info" if not target else "met " if ok else "MISS"
        print(f"  {verdict}  {name:42s} {value:8.2f}" + (f" / {target:.2f}" if target else ""))


if __name__ == "__main__":
    main()
