"""CPU cost of the consensus core per committed entry: 3 cores in one process, no I/O.

Messages go straight from one core's Ready to the others' step(); nothing is persisted.
What is left is the core's own work (proposals, appends, acknowledgements, commit), which
is what it adds to a leader's CPU at a given bid rate.

    python scripts/bench_core.py [--entries 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from brokerless.core import Config, Core
from brokerless.messages import destination
from brokerless.types import Role

IDS = ("a", "b", "c")


def make_cluster() -> dict[str, Core]:
    cores = {i: Core(Config(i, IDS), random.Random(k)) for k, i in enumerate(IDS)}
    cores["a"].campaign()
    pump(cores)
    assert cores["a"].role == Role.LEADER
    return cores


def pump(cores: dict[str, Core]) -> int:
    """Deliver every message until the cluster is quiet; returns entries applied on the leader."""
    applied = 0
    busy = True
    while busy:
        busy = False
        for cid, core in cores.items():
            rd = core.ready()
            if rd.is_empty():
                continue
            busy = True
            if cid == "a":
                applied += len(rd.committed)
            core.advance(rd)
            for msg in rd.messages:
                dst = destination(msg)
                for target in IDS if dst is None else (dst,):
                    if target != msg.src:
                        cores[target].step(msg)
    return applied


def run(entries: int, batch: int) -> float:
    cores = make_cluster()
    leader = cores["a"]
    payload = b"x" * 64
    started = time.process_time()
    for _ in range(entries // batch):
        for _ in range(batch):
            leader.propose(payload)
        pump(cores)
    return (time.process_time() - started) / entries


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"{'batch':>6} {'us/entry (3 cores)':>20} {'entries/s':>12}  (median of {args.runs})")
    for batch in (1, 100):
        n = args.entries if batch > 1 else args.entries // 10
        cost = statistics.median(run(n, batch) for _ in range(args.runs))
        print(f"{batch:>6} {cost * 1e6:>20.2f} {1 / cost:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
