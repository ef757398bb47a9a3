"""Strict values on the command line: whole numbers are ASCII digits only, durations take a
unit or a bare number of seconds and are bounded, hosts are names a node can listen on.

Every command that would start something (a cluster, the demo, a node, a load) has its
library call replaced by a sentinel, so a value that is wrongly accepted fails the test at
once instead of starting processes."""

from __future__ import annotations

import pytest
import typer
from test_cli import NODE, FakeClient, run

from zauction.cli import cluster as cli_cluster
from zauction.cli import demo as cli_demo
from zauction.cli import load as cli_load
from zauction.cli import params
from zauction.server import logs

# Text that int() or float() accepts but a user did not mean as a plain number.
NOT_ASCII_DIGITS = [" 7", "7 ", "1_000", "\u0663", "\uff17", "+5", "\u00b2", "7.0", "0x7", ""]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    """test_cli's client double in place of every AuctionClient the CLI opens."""
    FakeClient.instances, FakeClient.next_raise, FakeClient.events = [], None, []
    FakeClient.statuses = [NODE]
    monkeypatch.setattr(cli_cluster.local, "open_client", FakeClient)
    monkeypatch.delenv("ZAUCTION_SERVERS", raising=False)
    return FakeClient


class Started(Exception):
    """A command got past its arguments and tried to start something."""


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import zauction.server.node

    def refuse(*args, **kwargs):
        raise Started

    monkeypatch.setattr(cli_cluster.local, "start_cluster", refuse)
    monkeypatch.setattr(cli_demo, "run_demo", refuse)
    monkeypatch.setattr(cli_load, "run_load", refuse)
    monkeypatch.setattr(zauction.server.node, "AuctionNode", refuse)
    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)


# Every integer option and argument, as (command line before the value, option).
INTEGER_OPTIONS = [
    (["bid", "--bidder", "al"], "--amount"),
    (["auction", "open", "lamp", "--duration", "1m"], "--reserve"),
    (["auction", "open", "lamp", "--duration", "1m"], "--increment"),
    (["cluster", "up"], "--nodes"),
    (["cluster", "up"], "--base-port"),
    (["cluster", "up"], "--max-retained-bids"),
    (["demo"], "--nodes"),
    (["demo"], "--base-port"),
    (["demo"], "--bids"),
    (["node", "--addr", "localhost:1"], "--snapshot-every"),
    (["node", "--addr", "localhost:1"], "--catchup-entries"),
    (["node", "--addr", "localhost:1"], "--max-pending"),
    (["node", "--addr", "localhost:1"], "--max-retained-bids"),
    (["load"], "--bidders"),
    (["load"], "--concurrency"),
    (["load"], "--auctions"),
]


@pytest.mark.parametrize("before, option", INTEGER_OPTIONS,
                         ids=[f"{b[0]} {o}" for b, o in INTEGER_OPTIONS])
@pytest.mark.parametrize("value", NOT_ASCII_DIGITS)
def test_integers_must_be_ascii_digits(fake, nothing_starts, before, option, value) -> None:
    res = run(*before, option, value)
    assert res.exit_code == 2, (res.output, res.exception)
    assert option in res.output
    assert all(not c.calls for c in fake.instances)


@pytest.mark.parametrize("before, option", INTEGER_OPTIONS[:3] + INTEGER_OPTIONS[-3:])
def test_plain_digits_are_still_accepted(fake, nothing_starts, monkeypatch, before, option):
    monkeypatch.setattr(FakeClient, "open_auction", lambda self, auction, **kw: {},
                        raising=False)
    res = run(*before, option, "7", "--servers", "h:1")
    assert res.exception is None or isinstance(res.exception, (Started, SystemExit)), res.output
    assert res.exit_code != 2, res.output


@pytest.mark.parametrize("value", ["\u0663", "1_0", " 7", "+7", "7.0", "0", "65536", "9" * 5000])
def test_ports_in_addresses_are_ascii_digits(fake, value) -> None:
    res = run("result", "--servers", f"h:{value}")
    assert res.exit_code == 2 and "HOST:PORT" in res.output
    assert all(not c.calls for c in fake.instances)


def test_whole_number_messages_say_what_is_allowed() -> None:
    with pytest.raises(ValueError, match=r"digits 0-9 only"):
        params.whole_number("1_000", 1, 10)
    with pytest.raises(ValueError, match=r"out of range \(allowed: 1\.\.10\)"):
        params.whole_number("11", 1, 10)
    with pytest.raises(ValueError, match=r"out of range \(allowed: 1\.\.10\)"):
        params.whole_number("-3", 1, 10)
    with pytest.raises(ValueError, match=r"without its '\+'"):
        params.whole_number("+3", 1, 10)
    with pytest.raises(ValueError, match="out of range"):
        params.whole_number("9" * 5000, 1, 10)  # refused, and not slowly
    assert params.whole_number("007", 1, 10) == 7


@pytest.mark.parametrize("rate", ["nan", "inf", "1e3", " 5", "1_0", "-1", "0"])
def test_the_load_rate_is_a_plain_positive_decimal(nothing_starts, rate) -> None:
    res = run("load", "--rate", rate)
    assert res.exit_code == 2 and "--rate" in res.output


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, ms", [("5", 5000), ("1.5", 1500), ("0.25", 250),
                                      ("10s", 10_000), ("500ms", 500), ("2m", 120_000),
                                      ("1h", 3_600_000)])
def test_a_bare_number_is_seconds(text, ms) -> None:
    assert params.parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["1e20s", "1e3", "inf", "nan", "infs", "-1s", "\u0663s",
                                  "1_000s", "5 s", " 5s", "5s ", "0x10s", "1.s", ".5s"])
def test_exponents_infinities_and_other_spellings_are_refused(text) -> None:
    with pytest.raises(params.DurationError, match="not a duration"):
        params.parse_duration_ms(text)


def test_durations_are_bounded_exactly() -> None:
    week = params.MAX_TIMEOUT_MS
    assert params.parse_duration_ms("7d", max_ms=week) == week
    assert params.parse_duration_ms("168h", max_ms=week) == week
    for too_long in ("169h", "604800.001s", "100000000000000000000s", "9" * 25):
        with pytest.raises(params.DurationError, match=r"too long: at most 7 days \(168h\)"):
            params.parse_duration_ms(too_long, max_ms=week)
    with pytest.raises(params.DurationError, match="too many digits"):
        params.parse_duration_ms("9" * 5000, max_ms=week)  # no float overflow, no traceback


def test_timeout_takes_a_bare_number_of_seconds(fake) -> None:
    assert run("result", "--timeout", "5").exit_code == 0
    assert run("result", "--timeout", "0.5").exit_code == 0
    assert [c.timeout for c in fake.instances] == [5.0, 0.5]


@pytest.mark.parametrize("timeout", ["100000000000000000000s", "8d", "169h", "1e20s", "inf"])
def test_a_timeout_past_seven_days_is_a_usage_error(fake, timeout) -> None:
    res = run("status", "--timeout", timeout)
    assert res.exit_code == 2
    assert "--timeout" in res.output
    assert not fake.instances


def test_an_auction_duration_takes_a_bare_number_of_seconds(fake, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(FakeClient, "open_auction", lambda self, auction, **kw: seen.append(kw),
                        raising=False)
    res = run("auction", "open", "lamp", "--duration", "90")
    assert res.exit_code == 0, res.output
    assert seen[0]["duration_ms"] == 90_000


def test_node_durations_are_bounded_and_bare_numbers_are_seconds(nothing_starts) -> None:
    res = run("node", "--addr", "localhost:1", "--tick", "2m")
    assert res.exit_code == 2 and "at most 1m" in res.output
    # --tick 1 is one second: longer than the 30ms heartbeat, which says so.
    res = run("node", "--addr", "localhost:1", "--tick", "1")
    assert res.exit_code == 2 and "shorter than a tick" in res.output


def test_load_durations_are_bounded(nothing_starts) -> None:
    res = run("load", "--duration", "2d")
    assert res.exit_code == 2 and "at most 1 day" in res.output
    res = run("load", "--op-timeout", "8d")
    assert res.exit_code == 2 and "at most 7 days" in res.output


@pytest.mark.parametrize("command", [["status"], ["bid"], ["node"], ["auction", "open"],
                                     ["load"], ["cluster", "up"]])
def test_help_says_a_bare_number_is_seconds(command) -> None:
    res = run(*command, "--help", env={"COLUMNS": "300"})
    assert res.exit_code == 0
    assert "bare number is seconds" in res.output


# --- hosts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("host, problem", [
    ("a" * 300, "300 characters long"),
    ("b" * 70, "between dots is 70 characters"),
    ("bad host", "only ASCII letters"),
    ("h\u00e9te", "only ASCII letters"),
    ("a..b", "only ASCII letters"),
])
def test_bad_hosts_are_usage_errors_with_a_short_message(fake, nothing_starts, host, problem):
    for args in (["node", "--addr", f"{host}:8001"], ["result", "--servers", f"{host}:8001"],
                 ["cluster", "up", "--host", host]):
        res = run(*args, env={"COLUMNS": "300"})
        assert res.exit_code == 2, (args, res.output)
        assert problem in res.output
        assert "Traceback" not in res.output and "a" * 60 not in res.output
    assert all(not c.calls for c in fake.instances)


def test_the_longest_valid_host_is_accepted() -> None:
    host = ".".join(["a" * 63] * 3) + "." + "b" * 57  # 249 characters
    assert params.parse_addr(f"{host}:65535") == f"{host}:65535"
    with pytest.raises(typer.BadParameter, match="at most 255"):
        params.parse_addr(f"{host}xxxx:65535")


def test_ports_past_65535_are_refused_before_anything_starts(nothing_starts) -> None:
    for command in (["cluster", "up"], ["demo"]):
        res = run(*command, "--base-port", "65534", "--nodes", "3")
        assert res.exit_code == 2 and "past port 65535" in res.output
