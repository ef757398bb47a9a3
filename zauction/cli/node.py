"""`zauction node`: run one node in the foreground."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from brokerless.core import DEFAULT_CATCHUP_ENTRIES
from brokerless.runtime import DEFAULT_MAX_PENDING
from brokerless.storage import Durability
from zauction.auction.domain import MAX_CLOSED_AUCTIONS, MAX_RETAINED_BIDS
from zauction.cli.console import errors
from zauction.cli.params import EPILOG, duration_ms, parse_addr, parse_addr_list, timing_from


class LogFormat(str, Enum):
    text = "text"
    json = "json"


class LogLevel(str, Enum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: zauction node --addr localhost:8001 "
                       "--peers localhost:8002,localhost:8003.  " + EPILOG)(node)


def node(
    addr: Annotated[str, typer.Option(parser=parse_addr, help="This node's HOST:PORT.")],
    peers: Annotated[str, typer.Option(help="The other nodes: HOST:PORT,HOST:PORT.")] = "",
    data_dir: Annotated[Path | None, typer.Option(
        help="Where the node keeps its log \\[default: ./data/<host>_<port>].")] = None,
    auction_duration: Annotated[int, typer.Option(
        parser=duration_ms, metavar="DURATION", help="Length of the default auction.")] = "100s",
    heartbeat_interval: Annotated[int, typer.Option(parser=duration_ms,
                                                    metavar="DURATION")] = "30ms",
    election_timeout: Annotated[int, typer.Option(
        parser=duration_ms, metavar="DURATION",
        help="Minimum silence before an election (randomized up to 2x).")] = "150ms",
    tick: Annotated[int, typer.Option(parser=duration_ms, metavar="DURATION")] = "10ms",
    durability: Annotated[Durability, typer.Option(
        help="always: fsync every write; batch: group fsyncs (may lose the last moments on "
             "power loss); off: tests only.")] = Durability.ALWAYS,
    snapshot_every: Annotated[int, typer.Option(min=1, help="Entries between snapshots.")] = 100_000,
    catchup_entries: Annotated[int, typer.Option(
        min=0, help="Log entries kept behind each snapshot, so a follower slightly behind it "
                    "catches up from the log instead of a whole snapshot.")
    ] = DEFAULT_CATCHUP_ENTRIES,
    max_pending: Annotated[int, typer.Option(
        min=1, help="Writes in flight at the leader before it answers `busy` (backpressure).")
    ] = DEFAULT_MAX_PENDING,
    max_retained_bids: Annotated[int, typer.Option(
        min=1, help="Bid records kept for history and the feed, oldest evicted first (the same "
                    "on every node; about 180 bytes of memory each).")] = MAX_RETAINED_BIDS,
    max_closed_auctions: Annotated[int, typer.Option(
        min=1, help="Closed auctions still known, oldest forgotten first (the same on every "
                    "node).")] = MAX_CLOSED_AUCTIONS,
    log_format: Annotated[LogFormat, typer.Option(help="text or json lines.")] = LogFormat.text,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False)] = LogLevel.INFO,
) -> None:
    """Run one node in the foreground until SIGTERM or Ctrl-C."""
    # Imported here: the other commands never load the server (and tests replace AuctionNode).
    from zauction.server import node as server
    from zauction.server.logs import setup_logging

    setup_logging(log_format.value, log_level.value)
    host, port = addr.rsplit(":", 1)
    opts = server.NodeOptions(
        addr=addr, peers=tuple(p for p in parse_addr_list(peers, allow_empty=True) if p != addr),
        data_dir=data_dir or Path("data") / f"{host}_{port}",
        auction_duration_ms=auction_duration,
        timing=timing_from(tick, heartbeat_interval, election_timeout),
        durability=durability, snapshot_every=snapshot_every, catchup_entries=catchup_entries,
        max_pending=max_pending,
        max_retained_bids=max_retained_bids, max_closed_auctions=max_closed_auctions)
    with errors():
        server.AuctionNode(opts).run()
