"""Memory of AuctionState.apply alone: no network, no storage, one process.

Applies bid commands the way a node does (payloads encoded by zauction.auction.commands, a window of
client ids with increasing seqs, auctions that close every `--auction-bids` bids), with a small
retention cap so that it is reached early, and prints at intervals: RSS (VmRSS), the traced
Python heap, the sizes of the state's structures, gc counts, and optionally the tracemalloc
diff by traceback against the previous interval.

    python scripts/mem_domain.py --bids 3000000 --max-retained-bids 100000 --every 500000

`--snapshot-out FILE` writes the final state's snapshot; `--restore FILE` instead restores one
in this fresh process and prints RSS (what a restarted node pays), and the time it took.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from zauction.auction.commands import Bid, CloseAuction, OpenAuction, Request, encode_request  # noqa: E402
from zauction.auction.domain import AuctionState  # noqa: E402

FAR = 10**12


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def internal(cmd: object, ts: int) -> bytes:
    return encode_request(Request("", 0, ts, cmd))


def structure_sizes(state: AuctionState) -> dict[str, int]:
    """Lengths of every container the state keeps (private on purpose: this is a probe)."""
    retention = state._retention
    return {
        "auctions": len(state._auctions), "open": state.open_auction_count,
        "sessions": len(state._sessions), "events": len(state._events),
        "retained": retention.retained, "open_order": len(retention.open_order),
        "closed": state.closed_auction_count, "deadlines": len(state._deadlines),
        "closed_with_bids": len(retention.closed_with_bids),
    }


class Driver:
    """Feeds one AuctionState consecutive indexes, like the runtime applying committed entries."""

    def __init__(self, state: AuctionState, window: int, auction_bids: int) -> None:
        self.state, self.window, self.auction_bids = state, window, auction_bids
        self.index, self.auction_no, self.amount, self.in_auction = 0, 0, 0, 0
        self.seqs = [0] * window
        self.ts = 1_000

    def apply(self, payload: bytes) -> None:
        self.index += 1
        self.ts += 1
        self.state.apply(self.index, 1, payload)
        self.state.drain_events()  # the node drains after every entry

    def open_next(self) -> None:
        if self.auction_no:
            self.apply(internal(CloseAuction(f"bench-{self.auction_no}"), self.ts))
        self.auction_no += 1
        self.in_auction = 0
        name = f"bench-{self.auction_no}"
        self.apply(internal(OpenAuction(name, name, 1, 1, 0, FAR), self.ts))

    def bid(self, n: int) -> None:
        if self.auction_no == 0 or self.in_auction >= self.auction_bids:
            self.open_next()
        client = n % self.window
        self.seqs[client] += 1
        self.amount += 1
        self.in_auction += 1
        name = f"c-{client}"
        cmd = Bid(f"bench-{self.auction_no}", name, self.amount)
        self.apply(encode_request(Request(name, self.seqs[client], self.ts, cmd)))


def report(driver: Driver, done: int, previous: tracemalloc.Snapshot | None,
           top: int) -> tracemalloc.Snapshot | None:
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else 0.0
    print(f"{done:>10,} bids: RSS {vm_rss_mb():7.1f} MB, traced {traced:7.1f} MB, "
          f"gc counts {gc.get_count()}, objects {len(gc.get_objects()):,}, "
          f"{structure_sizes(driver.state)}", flush=True)
    if not tracemalloc.is_tracing() or top == 0:
        return None
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    if previous is not None:
        for stat in snap.compare_to(previous, "traceback")[:top]:
            print(f"    {stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks  "
                  f"{stat.traceback.format(limit=3)[-2:]}")
    return snap


def restore(path: Path, max_retained_bids: int) -> None:
    data = path.read_bytes()
    print(f"read {len(data) / 1e6:.1f} MB: RSS {vm_rss_mb():.1f} MB", flush=True)
    started = time.perf_counter()
    state = AuctionState.from_snapshot(data, max_retained_bids=max_retained_bids)
    took = time.perf_counter() - started
    print(f"restored in {took:.2f} s: RSS {vm_rss_mb():.1f} MB, "
          f"peak (VmHWM) {vm_hwm_mb():.1f} MB, {structure_sizes(state)}")
    del data
    gc.collect()
    print(f"snapshot bytes dropped: RSS {vm_rss_mb():.1f} MB")
    started = time.perf_counter()
    again = state.snapshot()
    print(f"snapshot() again in {time.perf_counter() - started:.2f} s "
          f"({len(again) / 1e6:.1f} MB): peak (VmHWM) {vm_hwm_mb():.1f} MB")


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bids", type=int, default=3_000_000)
    parser.add_argument("--every", type=int, default=500_000, help="report interval (bids)")
    parser.add_argument("--max-retained-bids", type=int, default=100_000)
    parser.add_argument("--auction-bids", type=int, default=100_000,
                        help="bids per auction before it closes (20 s at 5k bids/s)")
    parser.add_argument("--window", type=int, default=256, help="client ids")
    parser.add_argument("--trace", action="store_true", help="tracemalloc (slow)")
    parser.add_argument("--top", type=int, default=8, help="tracemalloc diff lines per report")
    parser.add_argument("--snapshot-out", type=Path, default=None)
    parser.add_argument("--restore", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.restore is not None:
        restore(args.restore, args.max_retained_bids)
        return
    if args.trace:
        tracemalloc.start(8)
    driver = Driver(AuctionState(max_retained_bids=args.max_retained_bids),
                    args.window, args.auction_bids)
    previous = report(driver, 0, None, args.top)
    for n in range(1, args.bids + 1):
        driver.bid(n)
        if n % args.every == 0:
            previous = report(driver, n, previous, args.top)
    if args.snapshot_out is not None:
        args.snapshot_out.write_bytes(driver.state.snapshot())


if __name__ == "__main__":
    main(sys.argv[1:])
