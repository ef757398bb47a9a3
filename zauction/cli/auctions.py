"""Writes and reads of auctions: `bid`, `auction open/close/list`, `result`, `history`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from rich.table import Table

from zauction.auction.commands import DEFAULT_AUCTION
from zauction.cli import console, params
from zauction.cli.console import ExitCode, emit_json, errors, note, out
from zauction.cli.params import DEFAULT_SERVERS, EPILOG, AuctionId, Json, Servers, Stale, Timeout
from zauction.client.client import AuctionClient, BidRejected
from zauction.tools import cluster


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: zauction bid --amount 120 --bidder alice.  " + EPILOG)(bid)
    app.command(epilog="Example: zauction result --auction lamp --json.  " + EPILOG)(result)
    app.command(epilog=EPILOG)(history)
    auction_app = typer.Typer(help="Open, list and close auctions.", no_args_is_help=True)
    auction_app.command("open", epilog="Example: zauction auction open lamp --duration 60s "
                                       "--reserve 10.  " + EPILOG)(auction_open)
    auction_app.command("close", epilog=EPILOG)(auction_close)
    auction_app.command("list", epilog=EPILOG)(auction_list)
    app.add_typer(auction_app, name="auction")


def _client(servers: str, timeout: float) -> AuctionClient:
    return cluster.open_client(params.parse_addr_list(servers), timeout=timeout)


# --- writes -------------------------------------------------------------------------------------


def bid(
    amount: Annotated[int, typer.Option(parser=params.amount, metavar="AMOUNT",
                                        help="Whole number, 1..10**15, in ASCII digits.")],
    bidder: Annotated[str, typer.Option(parser=params.name, help="Who bids.")],
    auction: AuctionId = DEFAULT_AUCTION,
    as_json: Json = False,
    servers: Servers = DEFAULT_SERVERS,
    timeout: Timeout = "5s",
) -> None:
    """Place a bid; exits 1 if the auction rejects it."""
    doc = {"accepted": True, "auction": auction, "bidder": bidder, "amount": amount,
           "reason": None}
    with errors(as_json), _client(servers, timeout) as client:
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


def auction_open(
    auction: Annotated[str, typer.Argument(parser=params.name, help="The new auction's id.")],
    duration: Annotated[int, typer.Option(
        parser=params.auction_ms, metavar="DURATION",
        help="How long it stays open: 60s, 5m, 2h (a bare number is seconds).")],
    item: Annotated[str | None, typer.Option(parser=params.item, help="What is sold.")] = None,
    reserve: Annotated[int, typer.Option(
        parser=params.amount, metavar="AMOUNT", help="Lowest acceptable bid, 1..10**15.")] = "1",
    increment: Annotated[int, typer.Option(
        parser=params.amount, metavar="AMOUNT", help="Minimum raise, 1..10**15.")] = "1",
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the opened auction as JSON (failures too).")] = False,
    servers: Servers = DEFAULT_SERVERS,
    timeout: Timeout = "5s",
) -> None:
    """Open a new auction."""
    with errors(as_json), _client(servers, timeout) as client:
        client.open_auction(auction, duration_ms=duration, item=item, reserve=reserve,
                            increment=increment)
    if as_json:
        emit_json({"opened": True, "auction": auction, "item": item or auction,
                   "duration_ms": duration, "reserve": reserve, "increment": increment})
        return
    note(f"[green]opened[/] {auction} for {duration / 1000:g}s")


def auction_close(
    auction: Annotated[str, typer.Argument(parser=params.name, help="The auction to close now.")],
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the outcome as JSON (failures too).")] = False,
    servers: Servers = DEFAULT_SERVERS,
    timeout: Timeout = "5s",
) -> None:
    """Close an auction now; the highest bid wins."""
    with errors(as_json), _client(servers, timeout) as client:
        reply = client.close_auction(auction)
    winner = reply.get("winner") if isinstance(reply, dict) else None
    if as_json:
        emit_json({"closed": True, "auction": auction, "winner": winner,
                   "amount": reply.get("amount") if winner else None})
        return
    note(f"closed {auction}: " + (f"{winner} wins at {reply.get('amount')}" if winner
                                  else "no winner"))


# --- reads --------------------------------------------------------------------------------------


def auction_list(stale: Stale = False, as_json: Json = False, servers: Servers = DEFAULT_SERVERS,
                 timeout: Timeout = "5s") -> None:
    """List every auction."""
    with errors(as_json), _client(servers, timeout) as client:
        auctions = client.auctions(stale=stale)
    _show(auctions, as_json, lambda: console.auctions_table(auctions))


def result(auction: AuctionId = DEFAULT_AUCTION, stale: Stale = False, as_json: Json = False,
           servers: Servers = DEFAULT_SERVERS, timeout: Timeout = "5s") -> None:
    """Show an auction's state, highest bid and winner."""
    with errors(as_json), _client(servers, timeout) as client:
        doc = client.result(auction, stale=stale)
    _show(doc, as_json, lambda: console.result_table(doc))


def history(auction: AuctionId = DEFAULT_AUCTION, stale: Stale = False, as_json: Json = False,
            servers: Servers = DEFAULT_SERVERS, timeout: Timeout = "5s") -> None:
    """List an auction's accepted bids in order."""
    with errors(as_json), _client(servers, timeout) as client:
        bids = client.history(auction, stale=stale)
    _show({"auction": auction, "bids": bids}, as_json,
          lambda: console.history_table(auction, bids))


def _show(doc: object, as_json: bool, table: Callable[[], Table]) -> None:
    """A read's answer: the JSON document, or the table made from it."""
    if as_json:
        emit_json(doc)
    else:
        out.print(table())
