"""`zauction node`: run one node in the foreground."""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from brokerless.core import DEFAULT_CATCHUP_ENTRIES
from brokerless.runtime import DEFAULT_MAX_PENDING
from brokerless.storage import Durability
from zauction.auction.domain import (
    MAX_AUCTIONS,
    MAX_OPEN_AUCTIONS_PER_CLIENT,
    MAX_RETAINED_BIDS,
)
from zauction.cli import params
from zauction.cli.console import dir_errors, errors, usable_dir
from zauction.cli.params import EPILOG, MAX_TIMING_MS, describe_ms, parse_addr, timing_from, whole


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


_TIMING_MAX = f"at most {describe_ms(MAX_TIMING_MS)}"


def node(
    addr: Annotated[str, typer.Option(parser=parse_addr, help="This node's HOST:PORT.")],
    peers: Annotated[str, typer.Option(
        help="The other nodes: HOST:PORT,HOST:PORT. This node's own address, if listed, is "
             "ignored (and said so); a list of only this node is refused. No --peers, or "
             "--peers '', runs a one-node cluster.")] = "",
    data_dir: Annotated[Path | None, typer.Option(
        help="Where the node keeps its log \\[default: ./data/<host>_<port>].")] = None,
    auction_duration: Annotated[int, typer.Option(
        parser=params.auction_ms, metavar="DURATION",
        help="Length of the default auction (a bare number is seconds).")] = "100s",
    heartbeat_interval: Annotated[int, typer.Option(
        parser=params.timing_ms, metavar="DURATION",
        help=f"How often the leader sends heartbeats; {_TIMING_MAX}.")] = "30ms",
    election_timeout: Annotated[int, typer.Option(
        parser=params.timing_ms, metavar="DURATION",
        help=f"Minimum silence before an election (randomized up to 2x); {_TIMING_MAX}.")
    ] = "150ms",
    tick: Annotated[int, typer.Option(
        parser=params.timing_ms, metavar="DURATION",
        help=f"The clock step that the two above are rounded to; {_TIMING_MAX}.")] = "10ms",
    durability: Annotated[Durability, typer.Option(
        help="always: fsync every write; batch: group fsyncs (may lose the last moments on "
             "power loss); off: tests only.")] = Durability.ALWAYS,
    snapshot_every: Annotated[int, typer.Option(
        **whole(1), help="Entries between snapshots.")] = 100_000,
    catchup_entries: Annotated[int, typer.Option(
        **whole(0), help="Log entries kept behind each snapshot, so a follower "
                                  "slightly behind it catches up from the log instead of a "
                                  "whole snapshot.")
    ] = DEFAULT_CATCHUP_ENTRIES,
    max_pending: Annotated[int, typer.Option(
        **whole(1),
        help="Writes in flight at the leader before it answers `busy` (backpressure).")
    ] = DEFAULT_MAX_PENDING,
    max_retained_bids: Annotated[int, typer.Option(
        **whole(1),
        help="Bid records kept for history and the feed, oldest evicted first (the same "
             "on every node; about 180 bytes of memory each).")] = MAX_RETAINED_BIDS,
    max_auctions: Annotated[int, typer.Option(
        **whole(1),
        help="Auctions known at once, open or closed: beyond it an open is refused "
             "(quota_exceeded) until closed ones are forgotten (the same on every "
             "node).")] = MAX_AUCTIONS,
    max_open_auctions_per_client: Annotated[int, typer.Option(
        **whole(1),
        help="Open auctions one client id may have opened at once (the same on every "
             "node).")] = MAX_OPEN_AUCTIONS_PER_CLIENT,
    log_format: Annotated[LogFormat, typer.Option(help="text or json lines.")] = LogFormat.text,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False)] = LogLevel.INFO,
) -> None:
    """Run one node in the foreground until SIGTERM or Ctrl-C.

    Exits 2 on a bad option (an address, a duration, --peers naming only this node) and 5 if the data directory cannot be used (not a directory, no permission, another node's, corrupt or in use)."""  # noqa: E501 (typer keeps a paragraph's line breaks)
    # Imported here: the other commands never load the server (and tests replace AuctionNode).
    from zauction.server import node as server
    from zauction.server.logs import setup_logging

    others, named_itself = params.node_peers(addr, peers)
    timing = timing_from(tick, heartbeat_interval, election_timeout)
    host, port = addr.rsplit(":", 1)
    directory = data_dir or Path("data") / f"{host}_{port}"
    setup_logging(log_format.value, log_level.value)
    if named_itself:
        logging.getLogger("zauction.cli.node").warning(
            "--peers names this node's own address %s: ignoring it; the peers are %s",
            addr, ",".join(others))
    opts = server.NodeOptions(
        addr=addr, peers=others, data_dir=directory,
        auction_duration_ms=auction_duration, timing=timing,
        durability=durability, snapshot_every=snapshot_every, catchup_entries=catchup_entries,
        max_pending=max_pending,
        max_retained_bids=max_retained_bids, max_auctions=max_auctions,
        max_open_auctions_per_client=max_open_auctions_per_client)
    with errors(), dir_errors(directory):
        usable_dir(directory)
        server.AuctionNode(opts).run()
