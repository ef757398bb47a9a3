"""What the commands share: parsers for whole numbers, durations, addresses, amounts and names,
the election timing, the default servers, and the options every command group uses.

Every number on the command line is strict: ASCII digits only (no sign, space, `_` or other
scripts' digits), so what a user typed is what the cluster gets. Options with a `parser` take
their defaults as text ("5s"), so --help shows what a user types; click runs the default through
the parser like any other value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from brokerless.runtime import Timing
from zauction.auction.commands import (
    MAX_DURATION_MS,
    MAX_ITEM_LEN,
    InvalidCommand,
    check_amount,
    check_name,
)
from zauction.cli import console

DEFAULT_SERVERS = "localhost:8001,localhost:8002,localhost:8003"
DURATIONS_HELP = "Durations: 250ms, 1.5s, 2m, 1h, 1d; a bare number is seconds."
EPILOG = DURATIONS_HELP + "  " + console.EXIT_CODES_HELP
T = TypeVar("T")

# --- whole numbers -----------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")  # fullmatch: ASCII digits only (\d would take "٣" and "³")
_SIGNED = re.compile(r"[+-][0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_MAX_DIGITS = 30  # longer digit strings are out of every range here


def _short(text: str, limit: int = 40) -> str:
    """repr(text), cut to `limit` characters: an error message stays one readable line."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit - 4] + "...'"


def whole_number(text: str, low: int | None = None, high: int | None = None) -> int:
    """ASCII digits -> int, within [low, high]; ValueError with the reason otherwise."""
    if _SIGNED.fullmatch(text):
        if text.startswith("-"):
            raise ValueError(f"{_short(text)} is out of range" + _bounds(low, high))
        raise ValueError(f"{_short(text)}: write the number without its '+'")
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"{_short(text)} is not a whole number: use the digits 0-9 only (no "
                         "spaces, signs, '_' or other digits)")
    if len(text) > _MAX_DIGITS:  # int() of thousands of digits is slow, then refused
        raise ValueError(f"{_short(text)} is out of range" + _bounds(low, high))
    value = int(text)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{value} is out of range" + _bounds(low, high))
    return value


def _bounds(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" (allowed: {low}..{high})"
    if low is not None:
        return f" (allowed: {low} or more)"
    return "" if high is None else f" (allowed: at most {high})"


def whole(low: int | None = None, high: int | None = None) -> dict[str, Any]:
    """The settings of an integer option, strict about its text (ASCII digits only) and its
    range: `typer.Option(**whole(1, 15), help=...)`. `min`/`max` are there for --help, which
    shows the range; the parser is what enforces it (typer's own int takes " 7", "1_0", "+5")."""

    def integer(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value  # a default, from the code
        try:
            return whole_number(str(value), low, high)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return {"parser": integer, "min": low, "max": high}


def decimal(low: float, high: float) -> dict[str, Any]:
    """The settings of a decimal option ("2", "0.5"; no exponent, inf, nan, sign or space),
    like whole()."""

    def number(value: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        text = str(value)
        if not _DECIMAL.fullmatch(text) or len(text) > _MAX_DIGITS:
            raise typer.BadParameter(f"{_short(text)} is not a decimal number: use the digits "
                                     "0-9 and an optional '.', like 50 or 0.5")
        number_ = float(text)
        if not low <= number_ <= high:
            raise typer.BadParameter(f"{text} is out of range (allowed: {low:g}..{high:g})")
        return number_

    return {"parser": number, "min": low, "max": high}


# --- durations --------------------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)?")  # fullmatch, ASCII only
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
SECOND_MS, MINUTE_MS, HOUR_MS, DAY_MS = 1000, 60_000, 3_600_000, 86_400_000
MAX_TIMEOUT_MS = 7 * DAY_MS  # --timeout, --op-timeout
MAX_TIMING_MS = MINUTE_MS  # --tick, --heartbeat-interval, --election-timeout
MAX_LOAD_MS = DAY_MS  # zauction load --duration (the load generator's own limit)
MAX_AUCTION_MS = MAX_DURATION_MS  # what the cluster accepts for an auction (about 31 years)


class DurationError(ValueError):
    """Text that is not a duration such as 100s, 1.5s, 250ms, 2m or 5 (seconds)."""


def parse_duration_ms(text: str, default_unit: str = "s",
                      max_ms: int | None = None) -> int:
    """"100s", "1.5s", "250ms", "2m", "1h", "1d", or a bare number of `default_unit` (seconds) ->
    milliseconds, rounded; at least 1ms and, with `max_ms`, at most that. Exact (no float):
    no exponent, inf, nan, sign or space is accepted, and a huge number is only "too long"."""
    found = _DURATION.fullmatch(text)
    if not found:
        raise DurationError(f"{_short(text)} is not a duration: use a number and a unit, like "
                            "100s, 1.5s, 250ms or 2m (a bare number is seconds)")
    if len(found.group(1)) > _MAX_DIGITS:
        raise DurationError(f"{_short(text)} has too many digits for a duration")
    ms = round(Fraction(found.group(1)) * _UNIT_MS[found.group(2) or default_unit])
    if ms <= 0:
        raise DurationError(f"{_short(text)} is too short: a duration must be at least 1ms")
    if max_ms is not None and ms > max_ms:
        raise DurationError(f"{_short(text)} is too long: at most {describe_ms(max_ms)}")
    return ms


def describe_ms(ms: int) -> str:
    """1000 -> "1s", 604800000 -> "7 days (168h)": how limits read in messages and help."""
    if ms >= DAY_MS and ms % DAY_MS == 0:
        days = ms // DAY_MS
        return f"{days} day{'s' if days > 1 else ''} ({ms // HOUR_MS}h)"
    for unit, size in (("h", HOUR_MS), ("m", MINUTE_MS), ("s", SECOND_MS)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _duration_parser(max_ms: int) -> Callable[[str], int]:
    """An option's parser: a duration in milliseconds, at most `max_ms`."""

    def duration(text: str) -> int:
        try:
            return parse_duration_ms(text, max_ms=max_ms)
        except DurationError as exc:
            raise typer.BadParameter(str(exc)) from None

    return duration


timing_ms = _duration_parser(MAX_TIMING_MS)
"""--tick, --heartbeat-interval, --election-timeout, in milliseconds (at most a minute)."""
auction_ms = _duration_parser(MAX_AUCTION_MS)
"""An auction's length in milliseconds (at most what the cluster accepts, about 31 years)."""
_load_ms = _duration_parser(MAX_LOAD_MS)
_timeout_ms = _duration_parser(MAX_TIMEOUT_MS)


def load_duration_s(text: str) -> float:
    """zauction load --duration, in seconds (at most a day)."""
    return _load_ms(text) / 1000


def timeout_s(text: str) -> float:
    """A timeout option in seconds: "5s", "500ms", or a bare number of seconds; at most 7 days."""
    return _timeout_ms(text) / 1000


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

# What a node's ZeroMQ endpoints accept (tcp://HOST:PORT), and DNS's limits: a longer host, or
# a part of it between dots over 63 characters, fails deep in the resolver or the transport.
_HOST = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
MAX_HOST_LEN = 253
MAX_LABEL_LEN = 63
MAX_ADDR_LEN = 255  # a node's address is its id on the wire, at most 255 bytes


def host_problem(host: str) -> str | None:
    """Why `host` is not a host name or IPv4 address a node can listen on; None if it is."""
    if not host:
        return "the host is empty"
    if len(host) > MAX_HOST_LEN:
        return f"the host is {len(host)} characters long (at most {MAX_HOST_LEN})"
    if not _HOST.fullmatch(host):
        return "a host may contain only ASCII letters, digits, '-', '_' and dots between them"
    longest = max(len(label) for label in host.split("."))
    if longest > MAX_LABEL_LEN:
        return (f"a part of the host between dots is {longest} characters long "
                f"(at most {MAX_LABEL_LEN})")
    return None


def parse_host(text: str) -> str:
    """--host: a host name or IPv4 address (see host_problem)."""
    problem = host_problem(text)
    if problem:
        raise typer.BadParameter(f"{_short(text)} is not a host: {problem}")
    return text


def parse_addr(text: str) -> str:
    """"host:port": a host name or IPv4 address and a port 1..65535 in ASCII digits; returned
    stripped of surrounding spaces."""
    host, sep, port_text = text.strip().rpartition(":")
    if (not sep or not _DIGITS.fullmatch(port_text) or len(port_text) > 5
            or not 1 <= int(port_text) <= 65535):
        raise typer.BadParameter(f"{_short(text)} is not HOST:PORT (port 1..65535)")
    problem = host_problem(host)
    if problem:
        raise typer.BadParameter(f"{_short(text)} is not HOST:PORT: {problem}")
    addr = f"{host}:{int(port_text)}"
    if len(addr) > MAX_ADDR_LEN:
        raise typer.BadParameter(f"{_short(text)} is too long: an address is at most "
                                 f"{MAX_ADDR_LEN} characters")
    return addr


def parse_addr_list(text: str, allow_empty: bool = False,
                    option: str = "--servers") -> list[str]:
    """Comma-separated HOST:PORT, duplicates dropped (first one kept). Called in a command's
    body, so its errors name `option` themselves."""
    try:
        addrs = list(dict.fromkeys(parse_addr(part) for part in text.split(",")
                                   if part.strip()))
    except typer.BadParameter as exc:
        exc.param_hint = f"'{option}'"
        raise
    if not addrs and not allow_empty:
        raise typer.BadParameter("give at least one HOST:PORT", param_hint=f"'{option}'")
    return addrs


def node_peers(addr: str, peers_text: str) -> tuple[tuple[str, ...], bool]:
    """`zauction node --peers`: the other members, and whether the node's own address was
    named (and dropped). A list that names only the node itself is refused: a one-node cluster
    is asked for with --peers '' (or no --peers), never by accident."""
    given = parse_addr_list(peers_text, allow_empty=True, option="--peers")
    others = tuple(p for p in given if p != addr)
    if given and not others:
        raise typer.BadParameter(
            f"--peers names only this node ({addr}): list the other nodes of the cluster, or "
            "give --peers '' (or no --peers) to run a one-node cluster on purpose",
            param_hint="'--peers'")
    return others, len(others) < len(given)


# --- amounts and names: the domain's own rules, so bad input fails here and sends nothing -------


def _checked(check: Callable[[object, str], None], value: T, field: str) -> T:
    try:
        check(value, field)
    except InvalidCommand as exc:
        raise typer.BadParameter(exc.problem) from None
    return value


def amount(text: str) -> int:
    """An amount: ASCII digits, 1..10**15."""
    if not _DIGITS.fullmatch(text):
        raise typer.BadParameter(f"{_short(text)} is not a whole number in [1, 10**15]: use "
                                 "the digits 0-9 only (no spaces, signs, '_' or other digits)")
    if len(text) > _MAX_DIGITS:
        raise typer.BadParameter(f"{_short(text)} is too large: must be in [1, 10**15]")
    return _checked(check_amount, int(text), "amount")


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
    help=f"How long to wait for the cluster: 5s, 500ms, 2m; a bare number is seconds; at most "
         f"{describe_ms(MAX_TIMEOUT_MS)}.")]
AuctionId = Annotated[str, typer.Option("--auction", "-a", parser=name, help="Auction id.")]
Json = Annotated[bool, typer.Option(
    "--json", help="Print JSON instead of a table; a failure prints one JSON object too: "
                   "{\"ok\": false, \"error\", \"code\", \"message\"}.")]
Stale = Annotated[bool, typer.Option(
    "--stale", help="Read the answering node's local state (faster, possibly behind).")]
DataRoot = Annotated[Path, typer.Option(
    "--data-dir", help="Root of the nodes' data dirs, logs and cluster.json.")]
