"""`zauction node` with a memory probe, for benchmarks.

This wrapper runs the ordinary command line (retention caps are the node's own options,
`--max-retained-bids` and `--max-auctions`). With `--mem-report FILE`, a thread appends every
`--mem-every` seconds: RSS, gc counts and the length of every container along a request's
path (runtime, core, service, node, state); with `--trace`, also the tracemalloc diff by
traceback against the previous report (slows the node 2-3x).

    python scripts/probed_node.py --mem-report m.txt -- \\
        node --addr 127.0.0.1:7001 --data-dir /tmp/n1 --max-retained-bids 100000
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import zauction.server.node  # noqa: E402
from zauction.cli.app import app  # noqa: E402


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def container_sizes(node: Any) -> dict[str, int]:
    """len() of what could pile up per request (private attributes: this is a probe)."""
    runtime, state = node.runtime, node.state
    core = runtime._core
    retention = state._retention
    return {
        "applied": core.applied, "log_entries": len(core.log.entries),
        "snapshot_bytes": len(core.snapshot.data) if core.snapshot else 0,
        "proposals": len(runtime._proposals), "reads": len(runtime._reads),
        "confirmed_reads": len(runtime._confirmed_reads), "core_msgs": len(core.msgs),
        "pending_reads": len(core.pending_reads), "forwards": len(node.service._forwards),
        "closing": len(node._closing), "outbox": len(node._outbox),
        "auctions": len(state._auctions), "sessions": len(state._sessions),
        "events": len(state._events), "retained": retention.retained,
        "open_order": len(retention.open_order), "closed": state.closed_auction_count,
    }


class Probe(threading.Thread):
    """Reports the node's memory to a file at intervals (reads lengths only: no locking
    needed under the GIL, and nothing in the node is changed)."""

    def __init__(self, node: Any, path: Path, every_s: float, top: int) -> None:
        super().__init__(daemon=True)
        self.node, self.path, self.every_s, self.top = node, path, every_s, top
        self.previous: tracemalloc.Snapshot | None = None

    def run(self) -> None:
        started = time.monotonic()
        while True:
            time.sleep(self.every_s)  # a sampling period, not synchronization
            lines = [f"t={time.monotonic() - started:.0f}s RSS {vm_rss_mb():.1f} MB "
                     f"gc {gc.get_count()} {container_sizes(self.node)}"]
            lines += self._trace_diff()
            with self.path.open("a") as out:
                out.write("\n".join(lines) + "\n")

    def _trace_diff(self) -> list[str]:
        if not tracemalloc.is_tracing():
            return []
        lines = [f"  traced {tracemalloc.get_traced_memory()[0] / 2**20:.1f} MB"]
        snap = tracemalloc.take_snapshot()
        if self.previous is not None:
            for stat in snap.compare_to(self.previous, "traceback")[:self.top]:
                where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}"
                                    for f in reversed(stat.traceback[-4:]))
                lines.append(f"  {stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+9d} "
                             f"blocks {where}")
        self.previous = snap
        return lines


def install(args: argparse.Namespace) -> None:
    if args.mem_report is None:
        return
    if args.trace:
        tracemalloc.start(6)
    base = zauction.server.node.AuctionNode

    class ProbedNode(base):  # type: ignore[misc, valid-type]
        def __init__(self, opts: Any) -> None:
            super().__init__(opts)
            Probe(self, args.mem_report, args.mem_every, args.top).start()

    zauction.server.node.AuctionNode = ProbedNode  # type: ignore[misc]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mem-report", type=Path, default=None)
    parser.add_argument("--mem-every", type=float, default=10.0)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- then zauction's arguments")
    args = parser.parse_args(argv)
    install(args)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    app(args=rest, prog_name="zauction")


if __name__ == "__main__":
    main(sys.argv[1:])
