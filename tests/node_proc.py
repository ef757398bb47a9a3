"""Runs ONE auction node in this process, for the real-process cluster tests.

Usage: python tests/node_proc.py --addr 127.0.0.1:P --peers 127.0.0.1:Q,127.0.0.1:R
                                 --data-dir D [--auction-duration-ms N] [--log-level L]
                                 [--snapshot-every N] [--durability always|batch|off]

Logs go to stderr; the node stops cleanly on SIGTERM (AuctionNode.run handles it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# The test harness runs this file by path; make the repository importable even when the
# project is not installed (python puts tests/, not the repository root, on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brokerless.storage import Durability  # noqa: E402
from zauction.server.node import AuctionNode, NodeOptions  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="run one zauction node")
    parser.add_argument("--addr", required=True, help="host:port of this node's ROUTER")
    parser.add_argument("--peers", default="", help="comma-separated host:port of the others")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--auction-duration-ms", type=int, default=100_000)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--snapshot-every", type=int, default=100_000,
                        help="applied entries between snapshots")
    parser.add_argument("--durability", type=Durability, default=Durability.ALWAYS,
                        choices=list(Durability), metavar="{always,batch,off}")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    peers = tuple(p for p in args.peers.split(",") if p)
    opts = NodeOptions(addr=args.addr, peers=peers, data_dir=args.data_dir,
                       auction_duration_ms=args.auction_duration_ms,
                       snapshot_every=args.snapshot_every, durability=args.durability)
    AuctionNode(opts).run()


if __name__ == "__main__":
    main(sys.argv[1:])
