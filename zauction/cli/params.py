"""What the commands share: parsers for durations, addresses, amounts and names, the
election timing, the default servers, and the options every command group uses.

Options with a `parser` take their defaults as text ("5s"), so --help shows what a user types;
click runs the default through the parser like any other value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from brokerless.runtime import Timing
from zauction.auction.commands import MAX_ITEM_LEN, InvalidCommand, check_amount, check_name
from zauction.cli import console

DEFAULT_SERVERS = "localhost:8001,localhost:8002,localhost:8003"
EPILOG = console.EXIT_CODES_HELP
T = TypeVar("T")

# --- durations --------------------------------------------------------------------------------

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


def duration_ms(text: str) -> int:
    """A duration option in milliseconds ("250ms", "2m"); a bare number is refused."""
    try:
        return parse_duration_ms(text)
    except DurationError as exc:
        raise typer.BadParameter(str(exc)) from None


def duration_s(text: str) -> float:
    """A duration option in seconds ("30s", "2m"); a bare number is refused."""
    return duration_ms(text) / 1000


def timeout_s(text: str) -> float:
    """A timeout option in seconds: "5s", "500ms", or a bare number of seconds."""
    try:
        return parse_duration_ms(text, default_unit="s") / 1000
    except DurationError as exc:
        raise typer.BadParameter(str(exc)) from None


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


# --- addresses ----------------------------------------------------------------------------------


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


# --- amounts and names: the domain's own rules, so bad input fails here and sends nothing -------


def _checked(check: Callable[[object, str], None], value: T, field: str) -> T:
    try:
        check(value, field)
    except InvalidCommand as exc:
        raise typer.BadParameter(exc.problem) from None
    return value


def amount(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a whole number") from None
    return _checked(check_amount, value, "amount")


def name(text: str) -> str:
    return _checked(check_name, text, "name")


def item(text: str) -> str:
    return _checked(lambda v, f: check_name(v, f, MAX_ITEM_LEN), text, "item")


# --- shared options ------------------------------------------------------------------------------

Servers = Annotated[str, typer.Option(
    "--servers", "-s", envvar="ZAUCTION_SERVERS",
    help="Comma-separated HOST:PORT of the cluster's nodes (env ZAUCTION_SERVERS).")]
Timeout = Annotated[float, typer.Option(
    "--timeout", parser=timeout_s, metavar="DURATION",
    help="How long to wait for the cluster: 5s, 500ms (a bare number is seconds).")]
AuctionId = Annotated[str, typer.Option("--auction", "-a", parser=name, help="Auction id.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Stale = Annotated[bool, typer.Option(
    "--stale", help="Read the answering node's local state (faster, possibly behind).")]
DataRoot = Annotated[Path, typer.Option(
    "--data-dir", help="Root of the nodes' data dirs, logs and cluster.json.")]
