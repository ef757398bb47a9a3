"""The `zauction` command line: parse arguments, call the library, print through console.

Every command runs inside `console.errors()`, the one place where our exceptions become a
message and an exit code (0 ok, 1 refused, 2 usage, 3 unavailable, 4 unknown auction,
5 data directory refused).
"""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from brokerless.runtime import DEFAULT_MAX_PENDING, Timing
from brokerless.storage import Durability
from zauction.auction.commands import (
    DEFAULT_AUCTION,
    MAX_ITEM_LEN,
    InvalidCommand,
    check_amount,
    check_name,
)
from zauction.auction.domain import MAX_CLOSED_AUCTIONS, MAX_RETAINED_BIDS
from zauction.cli import console
from zauction.cli.console import CliError, ExitCode, emit_json, errors, note, out
from zauction.client.client import AuctionClient, BidRejected, ClusterUnavailable
from zauction.tools import cluster as local

DEFAULT_SERVERS = "localhost:8001,localhost:8002,localhost:8003"
T = TypeVar("T")
EPILOG = console.EXIT_CODES_HELP

app = typer.Typer(
    name="zauction",
    help="A brokerless, replicated auction cluster on ZeroMQ.",
    epilog=EPILOG + "  Start with: zauction demo",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
cluster_app = typer.Typer(help="Run a local cluster of node processes.", no_args_is_help=True)
auction_app = typer.Typer(help="Open, list and close auctions.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(auction_app, name="auction")


# --- parsing ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


class DurationError(ValueError):
    """Text that is not a duration such as 100s, 1.5s, 250ms or 2m."""


def parse_duration_ms(text: str, default_unit: str | None = None) -> int:
    """"100s", "1.5s", "250ms", "2m", "1h" -> milliseconds (rounded; must be > 0).

    A bare number is refused unless `default_unit` says what it counts."""
    found = _DURATION.match(text)
    unit = found and (found.group(2) or default_unit)
    if not found or unit is None:
        raise DurationError(f"{text!r} is not a duration: use a number and a unit, "
                            "like 100s, 1.5s, 250ms or 2m")
    ms = round(float(found.group(1)) * _UNIT_MS[unit])
    if ms <= 0:
        raise DurationError(f"{text!r} is too short: a duration must be at least 1ms")
    return ms


def parse_addr(text: str) -> str:
    """"host:port" with a non-empty host and a port in 1..65535, returned stripped."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise typer.BadParameter(f"{text!r} is not HOST:PORT (port 1..65535)")
    return f"{host}:{int(port)}"


def parse_addr_list(text: str, allow_empty: bool = False) -> list[str]:
    addrs = [parse_addr(part) for part in text.split(",") if part.strip()]
    if not addrs and not allow_empty:
        raise typer.BadParameter("give at least one HOST:PORT")
    return addrs


def _duration(text: str) -> int:
    try:
        return parse_duration_ms(text)
    except DurationError as exc:
        raise typer.BadParameter(str(exc)) from None


def _timeout(text: str) -> float:
    try:
        return parse_duration_ms(text, default_unit="s") / 1000
    except DurationError as exc:
        raise typer.BadParameter(str(exc)) from None


def _checked(check: Callable[[object, str], None], value: T, field: str) -> T:
    """Validate with the domain's own rules, so bad input fails here and sends nothing."""
    try:
        check(value, field)
    except InvalidCommand as exc:
        raise typer.BadParameter(exc.problem) from None
    return value


def _amount(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a whole number") from None
    return _checked(check_amount, value, "amount")


def _name(text: str) -> str:
    return _checked(check_name, text, "name")


def _item(text: str) -> str:
    return _checked(lambda v, f: check_name(v, f, MAX_ITEM_LEN), text, "item")


def timing_from(tick_ms: int, heartbeat_ms: int, election_ms: int) -> Timing:
    """Durations to ticks (rounded); an election timeout must span at least 2 heartbeats."""
    heartbeat_ticks = round(heartbeat_ms / tick_ms)
    election_ticks = round(election_ms / tick_ms)
    if heartbeat_ticks < 1:
        raise typer.BadParameter(f"the heartbeat interval ({heartbeat_ms}ms) is shorter "
                                 f"than a tick ({tick_ms}ms)", param_hint="'--heartbeat-interval'")
    if election_ticks < 2 * heartbeat_ticks:
        raise typer.BadParameter(
            f"the election timeout ({election_ms}ms = {election_ticks} ticks) must be at least "
            f"2 heartbeat intervals ({2 * heartbeat_ticks} ticks)",
            param_hint="'--election-timeout'")
    return Timing(tick_ms=tick_ms, heartbeat_ticks=heartbeat_ticks,
                  election_ticks=election_ticks)


# --- shared options -----------------------------------------------------------------------------
# Options with a `parser` take their defaults as text ("5s"), so --help shows what a user types;
# click runs the default through the parser like any other value.

Servers = Annotated[str, typer.Option(
    "--servers", "-s", envvar="ZAUCTION_SERVERS",
    help="Comma-separated HOST:PORT of the cluster's nodes (env ZAUCTION_SERVERS).")]
Timeout = Annotated[float, typer.Option(
    "--timeout", parser=_timeout, metavar="DURATION",
    help="How long to wait for the cluster: 5s, 500ms (a bare number is seconds).")]
AuctionId = Annotated[str, typer.Option("--auction", "-a", parser=_name,
                                        help="Auction id.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _client(servers: str, timeout: float) -> AuctionClient:
    return local.open_client(parse_addr_list(servers), timeout=timeout)


# --- node -------------------------------------------------------------------------------------------


class LogFormat(str, Enum):
    text = "text"
    json = "json"


class LogLevel(str, Enum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


@app.command(epilog="Example: zauction node --addr localhost:8001 "
                    "--peers localhost:8002,localhost:8003.  " + EPILOG)
def node(
    addr: Annotated[str, typer.Option(parser=parse_addr, help="This node's HOST:PORT.")],
    peers: Annotated[str, typer.Option(help="The other nodes: HOST:PORT,HOST:PORT.")] = "",
    data_dir: Annotated[Path | None, typer.Option(
        help="Where the node keeps its log \\[default: ./data/<host>_<port>].")] = None,
    auction_duration: Annotated[int, typer.Option(
        parser=_duration, metavar="DURATION", help="Length of the default auction.")] = "100s",
    heartbeat_interval: Annotated[int, typer.Option(parser=_duration, metavar="DURATION")] = "30ms",
    election_timeout: Annotated[int, typer.Option(
        parser=_duration, metavar="DURATION",
        help="Minimum silence before an election (randomized up to 2x).")] = "150ms",
    tick: Annotated[int, typer.Option(parser=_duration, metavar="DURATION")] = "10ms",
    durability: Annotated[Durability, typer.Option(
        help="always: fsync every write; batch: group fsyncs (may lose the last moments on "
             "power loss); off: tests only.")] = Durability.ALWAYS,
    snapshot_every: Annotated[int, typer.Option(min=1, help="Entries between snapshots.")] = 100_000,
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
    from zauction.server.logs import setup_logging
    from zauction.server.node import AuctionNode, NodeOptions

    setup_logging(log_format.value, log_level.value)
    host, port = addr.rsplit(":", 1)
    opts = NodeOptions(
        addr=addr, peers=tuple(p for p in parse_addr_list(peers, allow_empty=True) if p != addr),
        data_dir=data_dir or Path("data") / f"{host}_{port}",
        auction_duration_ms=auction_duration,
        timing=timing_from(tick, heartbeat_interval, election_timeout),
        durability=durability, snapshot_every=snapshot_every, max_pending=max_pending,
        max_retained_bids=max_retained_bids, max_closed_auctions=max_closed_auctions)
    with errors():
        AuctionNode(opts).run()


# --- writes -------------------------------------------------------------------------------------


@app.command(epilog="Example: zauction bid --amount 120 --bidder alice.  " + EPILOG)
def bid(
    amount: Annotated[int, typer.Option(parser=_amount, help="Whole number, 1..10**15.")],
    bidder: Annotated[str, typer.Option(parser=_name, help="Who bids.")],
    auction: AuctionId = DEFAULT_AUCTION,
    as_json: Json = False,
    servers: Servers = DEFAULT_SERVERS,
    timeout: Timeout = "5s",
) -> None:
    """Place a bid; exits 1 if the auction rejects it."""
    doc = {"accepted": True, "auction": auction, "bidder": bidder, "amount": amount,
           "reason": None}
    with errors(), _client(servers, timeout) as client:
        try:
            reply = client.bid(amount, bidder, auction)
        except BidRejected as exc:
            if not as_json:
                raise
            emit_json({**doc, "accepted": False, "reason": exc.reason})
            raise typer.Exit(ExitCode.REFUSED) from None
    if as_json:
        emit_json(doc)
        return
    nxt = reply.get("min_next") if isinstance(reply, dict) else None
    note(f"[green]accepted:[/] {bidder} bids {amount} on {auction}"
         + (f" (next bid must be at least {nxt})" if nxt else ""))


@auction_app.command("open", epilog="Example: zauction auction open lamp --duration 60s "
                                    "--reserve 10.  " + EPILOG)
def auction_open(
    auction: Annotated[str, typer.Argument(parser=_name, help="The new auction's id.")],
    duration: Annotated[int, typer.Option(parser=_duration, metavar="DURATION",
                                          help="How long it stays open: 60s, 5m.")],
    item: Annotated[str | None, typer.Option(parser=_item, help="What is sold.")] = None,
    reserve: Annotated[int, typer.Option(parser=_amount, help="Lowest acceptable bid.")] = "1",
    increment: Annotated[int, typer.Option(parser=_amount, help="Minimum raise.")] = "1",
    servers: Servers = DEFAULT_SERVERS,
    timeout: Timeout = "5s",
) -> None:
    """Open a new auction."""
    with errors(), _client(servers, timeout) as client:
        client.open_auction(auction, duration_ms=duration, item=item, reserve=reserve,
                            increment=increment)
    note(f"[green]opened[/] {auction} for {duration / 1000:g}s")


@auction_app.command("close", epilog=EPILOG)
def auction_close(
    auction: Annotated[str, typer.Argument(parser=_name, help="The auction to close now.")],
    servers: Servers = DEFAULT_SERVERS,
    timeout: Timeout = "5s",
) -> None:
    """Close an auction now; the highest bid wins."""
    with errors(), _client(servers, timeout) as client:
        reply = client.close_auction(auction)
    winner = reply.get("winner") if isinstance(reply, dict) else None
    note(f"closed {auction}: " + (f"{winner} wins at {reply.get('amount')}" if winner
                                  else "no winner"))


# --- reads --------------------------------------------------------------------------------------

Stale = Annotated[bool, typer.Option(
    "--stale", help="Read the answering node's local state (faster, possibly behind).")]


@auction_app.command("list", epilog=EPILOG)
def auction_list(stale: Stale = False, as_json: Json = False, servers: Servers = DEFAULT_SERVERS,
                 timeout: Timeout = "5s") -> None:
    """List every auction."""
    with errors(), _client(servers, timeout) as client:
        auctions = client.auctions(stale=stale)
    if as_json:
        emit_json(auctions)
    else:
        out.print(console.auctions_table(auctions))


@app.command(epilog="Example: zauction result --auction lamp --json.  " + EPILOG)
def result(auction: AuctionId = DEFAULT_AUCTION, stale: Stale = False, as_json: Json = False,
           servers: Servers = DEFAULT_SERVERS, timeout: Timeout = "5s") -> None:
    """Show an auction's state, highest bid and winner."""
    with errors(), _client(servers, timeout) as client:
        doc = client.result(auction, stale=stale)
    if as_json:
        emit_json(doc)
    else:
        out.print(console.result_table(doc))


@app.command(epilog=EPILOG)
def history(auction: AuctionId = DEFAULT_AUCTION, stale: Stale = False, as_json: Json = False,
            servers: Servers = DEFAULT_SERVERS, timeout: Timeout = "5s") -> None:
    """List an auction's accepted bids in order."""
    with errors(), _client(servers, timeout) as client:
        bids = client.history(auction, stale=stale)
    if as_json:
        emit_json({"auction": auction, "bids": bids})
    else:
        out.print(console.history_table(auction, bids))


def status_document(statuses: list[dict]) -> dict:
    return {"leader": local.leader_of(statuses), "nodes": statuses}


def _show_status(servers: list[str], timeout: float, as_json: bool) -> None:
    with errors(), local.open_client(servers, timeout=timeout, attempt_timeout=timeout) as client:
        statuses = client.status()
        if all(s.get("role") == "unreachable" for s in statuses):
            raise ClusterUnavailable(f"no node answered ({', '.join(servers)})")
    if as_json:
        emit_json(status_document(statuses))
    else:
        out.print(console.nodes_table(statuses))


@app.command(epilog=EPILOG)
def status(as_json: Json = False, servers: Servers = DEFAULT_SERVERS,
           timeout: Timeout = "1s") -> None:
    """Show every node: role, term, commit and applied index, last heartbeat."""
    _show_status(parse_addr_list(servers), timeout, as_json)


@app.command(epilog="Example: zauction watch --json | jq .amount.  " + EPILOG)
def watch(auction: Annotated[str | None, typer.Option(
              "--auction", "-a", parser=_name, help="Only this auction \\[default: all].")] = None,
          as_json: Json = False, servers: Servers = DEFAULT_SERVERS,
          timeout: Timeout = "2s") -> None:
    """Follow the live feed of committed events until Ctrl-C."""
    addrs = parse_addr_list(servers)
    with errors(), local.open_client(addrs, timeout=timeout, attempt_timeout=timeout) as client:
        if all(s.get("role") == "unreachable" for s in client.status()):
            raise ClusterUnavailable(f"no node answered ({', '.join(addrs)})")
        try:
            for event in client.watch(auction):
                if as_json:
                    emit_json(event)
                else:
                    out.print(console.event_text(event))
        except KeyboardInterrupt:
            return


# --- local clusters -----------------------------------------------------------------------------

DataRoot = Annotated[Path, typer.Option(
    "--data-dir", help="Root of the nodes' data dirs, logs and cluster.json.")]


@cluster_app.command("up", epilog="Example: zauction cluster up --nodes 3 --detach.  " + EPILOG)
def cluster_up(
    nodes: Annotated[int, typer.Option(min=1, max=15, help="How many nodes.")] = 3,
    base_port: Annotated[int, typer.Option(min=1, max=65535, help="First node's port.")] = 8001,
    host: Annotated[str, typer.Option(help="Host the nodes listen on.")] = "localhost",
    data_dir: DataRoot = Path("data"),
    auction_duration: Annotated[int, typer.Option(parser=_duration, metavar="DURATION",
                                                  help="Default auction length.")] = "100s",
    durability: Annotated[Durability, typer.Option()] = Durability.ALWAYS,
    max_retained_bids: Annotated[int, typer.Option(
        min=1, help="Bid records each node keeps (see `zauction node --help`).")
    ] = MAX_RETAINED_BIDS,
    detach: Annotated[bool, typer.Option(
        "--detach", help="Return once a leader is elected, leaving the nodes running.")] = False,
) -> None:
    """Start a local cluster and show its nodes live; Ctrl-C stops them all."""
    with errors(), local.sigterm_as_interrupt():
        handle = local.start_cluster(data_dir.resolve(), nodes=nodes, base_port=base_port,
                                     host=host, auction_duration_ms=auction_duration,
                                     durability=durability.value,
                                     node_args=[f"--max-retained-bids={max_retained_bids}"])
        try:
            _run_cluster(handle, detach)
        except BaseException:
            _stop_and_report(handle)
            raise
        if not detach:
            _stop_and_report(handle)


def _run_cluster(handle: local.ClusterHandle, detach: bool) -> None:
    note(f"started {len(handle.nodes)} nodes (pids "
         f"{' '.join(str(n.pid) for n in handle.nodes)}); logs in {handle.root}")
    local.wait_for_leader(handle.servers, time.monotonic() + 15, handle)
    client = local.open_client(handle.servers, timeout=1.0, attempt_timeout=0.3)
    if detach:
        out.print(console.nodes_table(client.status()))
        note(f"running; stop with: zauction cluster down --data-dir {handle.root}")
        return
    try:
        console.live_nodes(client.status, "nodes (Ctrl-C stops them)")
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


def _stop_and_report(handle: local.ClusterHandle) -> None:
    for report in local.stop_cluster(handle):
        note(f"{report.addr} (pid {report.pid}): {report.outcome}")
    (handle.root / local.CLUSTER_FILE).unlink(missing_ok=True)


@cluster_app.command("down", epilog=EPILOG)
def cluster_down(data_dir: DataRoot = Path("data")) -> None:
    """Stop the cluster recorded in DATA_DIR/cluster.json (SIGTERM, then SIGKILL)."""
    with errors():
        handle = local.load_cluster(data_dir.resolve())
        _stop_and_report(handle)


@cluster_app.command("status", epilog=EPILOG)
def cluster_status(data_dir: DataRoot = Path("data"), as_json: Json = False,
                   timeout: Timeout = "1s") -> None:
    """Status of the nodes recorded in DATA_DIR/cluster.json."""
    with errors():
        handle = local.load_cluster(data_dir.resolve())
    _show_status(handle.servers, timeout, as_json)


# --- the demo -------------------------------------------------------------------------------------


@app.command(epilog="Example: zauction demo --bids 40.  " + EPILOG)
def demo(
    nodes: Annotated[int, typer.Option(min=3, max=9, help="Cluster size (3 or more).")] = 3,
    base_port: Annotated[int, typer.Option(min=1, max=65535, help="First node's port.")] = 8001,
    bids: Annotated[int, typer.Option(min=2, max=10_000, help="Bids to place in all.")] = 30,
) -> None:
    """Start a local cluster, bid, kill the leader, keep bidding, check every node agrees."""
    root = Path(tempfile.mkdtemp(prefix="zauction-demo-"))
    started = time.monotonic()
    handle: local.ClusterHandle | None = None
    with errors(), local.sigterm_as_interrupt():
        try:
            handle = local.start_cluster(root, nodes=nodes, base_port=base_port,
                                         auction_duration_ms=DEMO_AUCTION_MS)
            report = _demo_steps(handle, bids)
            _print_demo(report, time.monotonic() - started)
        finally:
            if handle is not None:
                _stop_and_report(handle)
            shutil.rmtree(root, ignore_errors=True)
        if not report.agree:
            raise CliError("the surviving nodes do not agree on the result", ExitCode.REFUSED)


DEMO_AUCTION_MS = 600_000  # the default auction must outlive the demo
BIDDERS = ("alice", "bob", "carol")


@dataclass(frozen=True, slots=True)
class DemoReport:
    servers: tuple[str, ...]
    pids: tuple[int, ...]
    outcomes: tuple[local.BidOutcome, ...]
    killed: str
    failover_s: float
    new_leader: str | None
    expected: dict
    results: dict[str, dict | None]

    @property
    def agree(self) -> bool:
        return all(r == self.expected for r in self.results.values())


def _demo_steps(handle: local.ClusterHandle, total: int) -> DemoReport:
    note(f"started {len(handle.nodes)} nodes: " + ", ".join(
        f"{n.addr} (pid {n.pid})" for n in handle.nodes))
    leader = local.wait_for_leader(handle.servers, time.monotonic() + 15, handle)
    note(f"leader elected: [bold]{leader}[/]")
    amounts = itertools.count(100, 5)
    with local.open_client(handle.servers, timeout=10.0, attempt_timeout=0.3) as client:
        local.wait_for_auction(client, DEFAULT_AUCTION, time.monotonic() + 10)
        before = _bid_phase(client, "bidding", total // 2, amounts)
        killed = local.wait_for_leader(handle.servers, time.monotonic() + 5, handle)
        local.kill_node(handle, killed)
        killed_at = time.monotonic()
        note(f"[red]killed the leader {killed} with SIGKILL[/]; bidding on")
        first = local.place_bid(client, DEFAULT_AUCTION, BIDDERS[0], next(amounts))
        failover_s = time.monotonic() - killed_at
        note(f"next bid acknowledged {failover_s * 1000:.0f} ms after the kill")
        after = _bid_phase(client, "after failover", total - total // 2 - 1, amounts)
        expected = client.result(DEFAULT_AUCTION)
        survivors = [s for s in handle.servers if s != killed]
        results = local.read_everywhere(survivors, DEFAULT_AUCTION, expected,
                                        time.monotonic() + 5)
        new_leader = local.leader_of(client.status())
    return DemoReport(tuple(handle.servers), tuple(n.pid for n in handle.nodes),
                      (*before, first, *after), killed, failover_s, new_leader, expected,
                      results)


def _bid_phase(client: AuctionClient, label: str, count: int,
               amounts: Iterator[int]) -> list[local.BidOutcome]:
    with console.bid_progress() as progress:
        task = progress.add_task(label, total=count)
        return local.place_bids(client, DEFAULT_AUCTION, BIDDERS, count, lambda: next(amounts),
                                lambda _: progress.advance(task))


def _print_demo(report: DemoReport, elapsed_s: float) -> None:
    accepted = sum(o.accepted for o in report.outcomes)
    highest = report.expected.get("highest") or {}
    rows = [
        ("nodes", ", ".join(report.servers)),
        ("node pids", " ".join(str(p) for p in report.pids)),
        ("bids", f"{len(report.outcomes)} placed, {accepted} accepted, "
                 f"{len(report.outcomes) - accepted} rejected"),
        ("slowest bid", f"{max(o.seconds for o in report.outcomes) * 1000:.0f} ms"),
        ("leader killed", report.killed),
        ("new leader", report.new_leader or "unknown"),
        ("failover", f"{report.failover_s * 1000:.0f} ms from SIGKILL to the next accepted bid"),
        ("result", f"{highest.get('amount')} by {highest.get('bidder')} "
                   f"({report.expected.get('bids')} bids)"),
    ]
    for server, seen in report.results.items():
        same = seen == report.expected
        rows.append((f"read from {server}", ("[green]agrees[/]" if same else
                                              f"[red]DIFFERS[/]: {seen}")))
    rows.append(("total time", f"{elapsed_s:.1f} s"))
    out.print(console.summary_table("demo summary", rows))


# Commands that live in their own modules (each adds itself to the app).
def _register_extensions() -> None:
    from zauction.cli import data, load

    load.register(app)
    data.register(app)


_register_extensions()
