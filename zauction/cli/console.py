"""Everything the CLI prints goes through here: two consoles, table builders, one error path.

Commands never print an exception themselves: they run inside `errors()`, which maps our
exception classes to one message on stderr and one exit code (see ExitCode); with --json,
`errors(as_json=True)` prints the failure as one JSON object on stdout instead (error_doc).
Usage errors of a command line with --json become the same object in zauction.cli.app.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from brokerless.storage import StorageError
from brokerless.transport.zeromq import BindError
from zauction.auction.commands import InvalidCommand
from zauction.client.client import (
    BadRequest,
    BidRejected,
    ClusterUnavailable,
    RequestTimeout,
    UnknownAuctionError,
)
from zauction.tools.cluster import ClusterError

out = Console()
err = Console(stderr=True)


class ExitCode(IntEnum):
    OK = 0
    REFUSED = 1  # a rejected bid or another domain refusal
    USAGE = 2  # bad arguments (typer/click's own code) or input the cluster called malformed
    UNAVAILABLE = 3  # no node answered, or the request did not complete in time
    UNKNOWN_AUCTION = 4
    DATA_DIR = 5  # the node refused its data directory (another node's, corrupt, locked)


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 bid rejected or request refused (also: port in use, nodes disagree); "
    "2 usage error or bad input; 3 cluster unavailable or timed out; 4 unknown auction; "
    "5 data directory refused or unusable (another node's, corrupt, in use, not a directory, "
    "no permission).  With --json a failure prints one JSON object on stdout: "
    '{"ok": false, "error": KIND, "code": EXIT CODE, "message": TEXT}.'
)


class CliError(Exception):
    """A failure the CLI itself detected, with the exit code it deserves (and, for --json, a
    kind more precise than the code's name)."""

    def __init__(self, message: str, code: ExitCode, kind: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind or code.name.lower()


def classify(exc: BaseException) -> tuple[ExitCode, str] | None:
    """The exit code and message for one of our exceptions; None for anything else."""
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, BidRejected):
        return ExitCode.REFUSED, f"rejected: {exc.reason} ({_detail(exc)})"
    if isinstance(exc, UnknownAuctionError):
        return ExitCode.UNKNOWN_AUCTION, f"unknown auction: {exc}"
    if isinstance(exc, RequestTimeout):
        return ExitCode.UNAVAILABLE, f"timed out, outcome unknown: {exc}"
    if isinstance(exc, ClusterUnavailable):
        return ExitCode.UNAVAILABLE, f"cluster unavailable: {exc}"
    if isinstance(exc, (BadRequest, InvalidCommand)):
        return ExitCode.USAGE, f"bad request: {exc}"
    if isinstance(exc, StorageError):
        return ExitCode.DATA_DIR, f"data directory refused: {exc}"
    if isinstance(exc, BindError):
        return ExitCode.REFUSED, f"cannot listen: {exc}"
    if isinstance(exc, ClusterError):
        return ExitCode.REFUSED, str(exc)
    return None


def error_kind(exc: BaseException, code: ExitCode) -> str:
    """The "error" of a --json failure: what went wrong, finer than the exit code."""
    if isinstance(exc, CliError):
        return exc.kind
    for kinds, kind in ((BidRejected, "rejected"), (RequestTimeout, "timeout"),
                        ((BadRequest, InvalidCommand), "bad_request"),
                        (BindError, "cannot_listen"), (ClusterError, "cluster")):
        if isinstance(exc, kinds):
            return kind
    return code.name.lower()


def error_doc(code: int, kind: str, message: str) -> dict:
    """A failure as --json prints it."""
    return {"ok": False, "error": kind, "code": int(code), "message": message}


def _detail(exc: BidRejected) -> str:
    """The server's explanation when it has one, else what the reply says about the auction."""
    text = str(exc)
    prefix = f"{exc.reason}: "
    message = text[len(prefix):] if text.startswith(prefix) else text
    facts = []
    if message and message != exc.reason:
        facts.append(message)
    if exc.result.get("high") is not None:
        facts.append(f"highest bid {exc.result['high']}")
    if exc.result.get("min_next") is not None:
        facts.append(f"next bid must be at least {exc.result['min_next']}")
    return "; ".join(facts) or "no details"


def fail(code: ExitCode, message: str, *, as_json: bool = False,
         kind: str | None = None) -> NoReturn:
    """Print one failure (a line on stderr, or with `as_json` one JSON object on stdout) and
    exit with `code`."""
    if as_json:
        emit_json(error_doc(code, kind or code.name.lower(), message))
    else:
        # Text, not markup: a message quoting "[...]" from the user prints as it is.
        err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False,
                  soft_wrap=True)
    raise typer.Exit(int(code))


@contextmanager
def errors(as_json: bool = False) -> Iterator[None]:
    """Turn our exceptions into a message and an exit code; let anything else propagate."""
    try:
        yield
    except Exception as exc:
        mapped = classify(exc)
        if mapped is None:
            raise
        fail(*mapped, as_json=as_json, kind=error_kind(exc, mapped[0]))


def usable_dir(path: Path, what: str = "data directory") -> Path:
    """Create `path` (and its parents) if need be and check it is a directory this process can
    write; CliError (exit 5) naming the reason otherwise, before anything starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CliError(f"cannot use {path} as the {what}: it exists and is not a directory",
                       ExitCode.DATA_DIR, "data_dir") from None
    except OSError as exc:
        raise CliError(f"cannot use {path} as the {what}: {_reason(exc)}",
                       ExitCode.DATA_DIR, "data_dir") from None
    if not path.is_dir():
        raise CliError(f"cannot use {path} as the {what}: not a directory",
                       ExitCode.DATA_DIR, "data_dir")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise CliError(f"cannot use {path} as the {what}: no permission to write there",
                       ExitCode.DATA_DIR, "data_dir")
    return path


@contextmanager
def dir_errors(path: Path, what: str = "data directory") -> Iterator[None]:
    """An OSError about a file (not a socket) while working in `path`: exit 5 with its reason."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise
        raise CliError(f"cannot use {path} as the {what}: {_reason(exc)}",
                       ExitCode.DATA_DIR, "data_dir") from None


def _reason(exc: OSError) -> str:
    """"Permission denied: /x/y" from an OSError, without the errno and the traceback."""
    reason = exc.strerror or str(exc)
    return f"{reason.lower()}: {exc.filename}" if exc.filename else reason.lower()


def emit_json(obj: Any) -> None:
    """One compact JSON document on its own line: for scripts, never styled or wrapped."""
    typer.echo(json.dumps(obj, separators=(", ", ": "), sort_keys=False))


def note(message: str) -> None:
    out.print(message, highlight=False)


# --- tables --------------------------------------------------------------------------------

ROLE_STYLE = {"leader": "bold green", "follower": "cyan", "candidate": "yellow",
              "precandidate": "yellow", "unreachable": "red"}


def nodes_table(nodes: Sequence[dict], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  padding=(0, 1, 0, 0))
    for name, justify in (("node", "left"), ("role", "left"), ("term", "right"),
                          ("commit", "right"), ("applied", "right"), ("last hb", "right"),
                          ("leader", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for node in nodes:
        table.add_row(*_node_row(node))
    return table


def _node_row(node: dict) -> list[str | Text]:
    role = str(node.get("role", "?"))
    role_text = Text(role, style=ROLE_STYLE.get(role, ""))
    if role == "unreachable":
        return [node.get("addr", "?"), role_text, "-", "-", "-", "-", "-"]
    age = node.get("heartbeat_age_ms")
    heartbeat = "self" if role == "leader" else (f"{age:.0f} ms" if age is not None else "?")
    return [str(node.get("addr")), role_text, str(node.get("term", "?")),
            str(node.get("commit_index", "?")), str(node.get("applied_index", "?")),
            heartbeat, str(node.get("leader") or "-")]


def history_table(auction: str, bids: Sequence[dict]) -> Table:
    table = Table(title=f"bids on {auction}", title_justify="left")
    for name in ("#", "bidder", "amount", "time", "log index"):
        table.add_column(name, justify="left" if name == "bidder" else "right")
    for n, bid in enumerate(bids, start=1):
        table.add_row(str(n), str(bid["bidder"]), str(bid["amount"]),
                      _clock(bid.get("ts_ms")), str(bid.get("index", "")))
    return table


def auctions_table(auctions: Sequence[dict]) -> Table:
    table = Table(title="auctions", title_justify="left")
    for name in ("auction", "item", "state", "bids", "highest", "closes"):
        table.add_column(name, justify="right" if name in ("bids", "highest") else "left")
    for a in auctions:
        table.add_row(str(a["auction"]), str(a.get("item", "")), _state_text(a["state"]),
                      str(a.get("bids", 0)), _bid_text(a.get("highest")),
                      _clock(a.get("closes_at_ms")))
    return table


def result_table(result: dict) -> Table:
    table = Table(show_header=False, title=f"auction {result['auction']}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("state", _state_text(result["state"]))
    table.add_row("item", str(result.get("item", "")))
    table.add_row("highest", _bid_text(result.get("highest")))
    table.add_row("winner", _bid_text(result.get("winner")))
    table.add_row("bids", str(result.get("bids", "")))
    table.add_row("reserve / increment", f"{result.get('reserve')} / {result.get('increment')}")
    table.add_row("closes at", _clock(result.get("closes_at_ms")))
    return table


def live_nodes(poll: Callable[[], list[dict]], title: str, interval: float = 0.5) -> None:
    """Redraw the nodes table from `poll()` every `interval` seconds until Ctrl-C."""
    with Live(nodes_table(poll(), title), console=out, auto_refresh=False) as live:
        while True:
            time.sleep(interval)  # the refresh period of a display, not a synchronization
            live.update(nodes_table(poll(), title), refresh=True)


def summary_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(show_header=False, title=title, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for what, value in rows:
        table.add_row(what, value)
    return table


def _state_text(state: str) -> Text:
    return Text(state, style="green" if state == "open" else "dim")


def _bid_text(bid: dict | None) -> str:
    return "-" if not bid else f"{bid['amount']} by {bid['bidder']}"


def _clock(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ts_ms / 1000))


# --- the live feed and progress ----------------------------------------------------------------


def event_text(event: dict) -> Text:
    """One feed event as a line: `[index] type auction details`."""
    kind = str(event.get("type"))
    text = Text(f"[{event.get('index', '?')}] ", style="dim")
    text.append(kind, style={"bid_accepted": "green", "auction_closed": "bold magenta",
                             "auction_opened": "cyan", "leader_changed": "yellow"}.get(kind, ""))
    if event.get("auction"):
        text.append(f" {event['auction']}")
    if kind == "bid_accepted":
        text.append(f" {event.get('bidder')} bids {event.get('amount')}")
    elif kind == "auction_closed":
        winner = event.get("winner")
        text.append(f" winner {winner} at {event.get('amount')}" if winner else " no winner")
    text.append(f" (term {event.get('term', '?')})", style="dim")
    return text


def bid_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=out, transient=False)
