"""Measure the wire codec: encodes and decodes per second of an Append.

Usage: python scripts/bench_wire.py [--seconds 1.0]

Reports, for an Append carrying 1 and 100 entries of 64-byte data, the best of five runs of
encode, decode and encode+decode (messages per second, and entries per second).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brokerless.messages import Append  # noqa: E402
from brokerless.types import Entry  # noqa: E402
from brokerless.wire import decode_message, encode_message  # noqa: E402


def make_append(n_entries: int) -> Append:
    entries = tuple(Entry(7, 1000 + i, bytes(range(64))) for i in range(n_entries))
    return Append(7, "10.0.0.1:7001", "10.0.0.2:7001", 999, 7, entries, 990)


def rate(operation: Callable[[], object], seconds: float) -> float:
    """Operations per second: best of five runs of about `seconds / 5` each."""
    best = 0.0
    for _ in range(5):
        count, start = 0, time.perf_counter()
        deadline = start + seconds / 5
        while (now := time.perf_counter()) < deadline:
            for _ in range(50):
                operation()
            count += 50
        best = max(best, count / (now - start))
    return best


def bench(n_entries: int, seconds: float) -> None:
    msg = make_append(n_entries)
    data = encode_message(msg)
    assert decode_message(data) == msg
    results = {
        "encode": rate(lambda: encode_message(msg), seconds),
        "decode": rate(lambda: decode_message(data), seconds),
        "encode+decode": rate(lambda: decode_message(encode_message(msg)), seconds),
    }
    for name, per_second in results.items():
        print(f"Append x{n_entries:<3} ({len(data):>5} B)  {name:<14} {per_second:>11,.0f} msg/s"
              f"  {per_second * n_entries:>12,.0f} entries/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}")
    for n_entries in (1, 100):
        bench(n_entries, args.seconds)


if __name__ == "__main__":
    main()
