"""The pure auction domain: commands, codec, rules, sessions, events, snapshots."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zauction.auction import domain
from zauction.auction.commands import (
    MAX_AMOUNT,
    MAX_DURATION_MS,
    MAX_TIMESTAMP_MS,
    REASONS,
    Bid,
    CloseAuction,
    EnsureDefault,
    ForgetAuction,
    InvalidCommand,
    OpenAuction,
    Reason,
    Request,
    decode_command,
    decode_request,
    encode_command,
    encode_request,
)
from zauction.auction.domain import (
    MAX_DUE_PER_CALL,
    SNAPSHOT_VERSION,
    ApplyOrderError,
    AuctionClosed,
    AuctionOpened,
    AuctionState,
    BidAccepted,
    InvalidEvent,
    InvalidReply,
    InvalidSnapshot,
    Reply,
    UnknownAuction,
    event_from_dict,
    last_feed_seq,
    reply_from_dict,
    reply_to_dict,
)

OPEN_A = OpenAuction("a", "a lamp", reserve=100, increment=10, opens_at_ms=1_000,
                     closes_at_ms=5_000)


class Driver:
    """Feeds one AuctionState with consecutive log indexes, as the runtime would."""

    def __init__(self, state: AuctionState | None = None) -> None:
        self.state = state if state is not None else AuctionState()
        self.index = self.state.applied_index

    def raw(self, payload: Any, term: int = 1) -> Reply:
        self.index += 1
        return self.state.apply(self.index, term, payload)

    def send(self, cmd: Any, client: str = "", seq: int = 0, ts: int = 2_000) -> Reply:
        return self.raw(encode_request(Request(client, seq, ts, cmd)))

    def bid(self, bidder: str, amount: int, ts: int = 2_000, auction: str = "a",
            client: str = "", seq: int = 0) -> Reply:
        return self.send(Bid(auction, bidder, amount), client, seq, ts)


def content(state: AuctionState) -> list[Any]:
    """The snapshot without its applied index: what 'no state change' must preserve."""
    return msgpack.unpackb(state.snapshot(), raw=False)[2:]


def bid_payload(amount: Any) -> bytes:
    """A hand-made wire request, to smuggle values the constructors would refuse."""
    return msgpack.packb([1, "client", 1, 2_000, ["bid", "a", "alice", amount]])


@pytest.fixture
def driver() -> Driver:
    d = Driver()
    assert d.send(OPEN_A, ts=500).ok
    return d


# --- commands and codec -------------------------------------------------------------


names = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs", "Cf", "Co",
                                                    "Cn")), min_size=1, max_size=64)
# Auction names starting with "~" are reserved: OpenAuction refuses them.
auction_names = names.filter(lambda name: not name.startswith("~"))
amounts = st.integers(1, MAX_AMOUNT)
# Biased towards both ends of the clock, where deadline arithmetic could overflow.
times = st.integers(0, 10**6) | st.integers(MAX_TIMESTAMP_MS - 10**6, MAX_TIMESTAMP_MS)
commands = st.one_of(
    st.builds(Bid, names, names, amounts),
    st.builds(CloseAuction, names),
    st.builds(ForgetAuction, names),
    st.builds(EnsureDefault, names, st.integers(1, MAX_DURATION_MS), names, amounts, amounts),
    st.integers(0, MAX_TIMESTAMP_MS - 1).flatmap(
        lambda t: st.builds(OpenAuction, auction_names, names, amounts, amounts, st.just(t),
                            st.integers(t + 1, MAX_TIMESTAMP_MS))),
)


@given(commands, st.one_of(st.just(""), names), st.integers(0, 2**63 - 1), times)
def test_codec_round_trips_every_valid_command(cmd: Any, client: str, seq: int,
                                               ts: int) -> None:
    assert decode_command(encode_command(cmd)) == cmd
    request = Request(client, seq, ts, cmd)
    assert decode_request(encode_request(request)) == request


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(commands, st.sampled_from(["", "c1", "c2"]), st.integers(0, 3),
                          times), max_size=30))
def test_any_valid_request_stream_applies_without_raising(
        stream: list[tuple[Any, str, int, int]]) -> None:
    d = Driver()
    for cmd, client, seq, ts in stream:
        reply = d.send(cmd, client, seq, ts)
        assert reply.ok or reply.reason in REASONS


@pytest.mark.parametrize("amount", [-5, 0, 1e30, 10**30, "abc", True, False, None, 1.0,
                                    MAX_AMOUNT + 1, [100]])
def test_bid_refuses_bad_amounts_with_a_typed_error(amount: Any) -> None:
    with pytest.raises(InvalidCommand) as caught:
        Bid("a", "alice", amount)
    assert caught.value.field == "amount"
    assert caught.value.reason == Reason.INVALID_AMOUNT


def test_amount_bounds_are_inclusive() -> None:
    assert Bid("a", "alice", 1).amount == 1
    assert Bid("a", "alice", MAX_AMOUNT).amount == MAX_AMOUNT


@pytest.mark.parametrize("name", ["", "x" * 65, "a\nb", "tab\there", "\x00", 5, None, b"a"])
def test_ids_and_names_must_be_short_printable_strings(name: Any) -> None:
    with pytest.raises(InvalidCommand, match="bidder"):
        Bid("a", name, 100)
    with pytest.raises(InvalidCommand, match="auction"):
        CloseAuction(name)


def test_a_64_character_printable_name_is_accepted() -> None:
    assert Bid("é" * 64, "Zoë O'Neil", 5).auction == "é" * 64


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"reserve": 0}, "reserve"),
        ({"reserve": True}, "reserve"),
        ({"increment": 0}, "increment"),
        ({"increment": 2.5}, "increment"),
        ({"opens_at_ms": -1}, "opens_at_ms"),
        ({"closes_at_ms": 1_000}, "closes_at_ms"),
        ({"closes_at_ms": 999}, "closes_at_ms"),
        ({"item": ""}, "item"),
    ],
)
def test_open_auction_validates_every_field(kwargs: dict[str, Any], field: str) -> None:
    fields = {"auction": "a", "item": "lamp", "reserve": 1, "increment": 1,
              "opens_at_ms": 1_000, "closes_at_ms": 2_000, **kwargs}
    with pytest.raises(InvalidCommand) as caught:
        OpenAuction(**fields)
    assert caught.value.field == field
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("client", "seq", "ts", "cmd", "field"),
    [
        ("c\n", 1, 0, CloseAuction("a"), "client_id"),
        ("c", -1, 0, CloseAuction("a"), "seq"),
        ("c", True, 0, CloseAuction("a"), "seq"),
        ("c", 1, 1.5, CloseAuction("a"), "ts_ms"),
        ("c", 1, 0, "close a", "cmd"),
    ],
)
def test_request_envelope_is_validated(client: Any, seq: Any, ts: Any, cmd: Any,
                                       field: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        Request(client, seq, ts, cmd)
    assert caught.value.field == field


def test_ensure_default_duration_must_be_positive() -> None:
    with pytest.raises(InvalidCommand, match="duration_ms"):
        EnsureDefault(duration_ms=0)


@pytest.mark.parametrize("name", ["~cluster", "~", "~a lamp"])
def test_auction_names_starting_with_a_tilde_are_reserved(name: str) -> None:
    # "feed/~cluster" is the leader-change topic: no auction may publish there.
    with pytest.raises(InvalidCommand) as caught:
        OpenAuction(name, "lamp", 1, 1, 0, 1_000)
    assert (caught.value.field, caught.value.reason) == ("auction", Reason.INVALID)
    assert "reserved" in str(caught.value)
    assert OpenAuction("a~" + name, "lamp", 1, 1, 0, 1_000).auction == "a~" + name


def test_a_reserved_name_is_refused_on_the_wire_and_by_ensure_default() -> None:
    d = Driver()
    wire = msgpack.packb([1, "c", 1, 2_000, ["open", "~cluster", "x", 1, 1, 0, 9_000]])
    reply = d.raw(wire)
    assert (reply.ok, reply.reason) == (False, Reason.INVALID) and "auction" in reply.detail
    late = d.send(EnsureDefault(auction="~cluster"))
    assert (late.ok, late.reason) == (False, Reason.INVALID)
    assert d.state.auctions() == [] and d.state.drain_events() == []


def test_an_auction_with_a_reserved_name_from_an_older_snapshot_still_restores() -> None:
    # Opened before the rule existed: the node must still restart from its snapshot.
    d = Driver()
    d.send(OpenAuction("tilde", "lamp", 1, 1, 0, 9_000))
    wire = msgpack.unpackb(d.state.snapshot(), raw=False)
    wire[2][0][0] = "~tilde"
    restored = AuctionState.from_snapshot(msgpack.packb(wire))
    assert restored.result("~tilde")["state"] == "open"


# --- invalid payloads: a reply, never an exception, never a change ----------------------


@pytest.mark.parametrize("amount", [-5, 0, 1e30, "abc", True, 2**64 - 1, None, 10**15 + 1])
def test_applied_bad_amounts_are_rejected_and_change_nothing(driver: Driver,
                                                             amount: Any) -> None:
    driver.bid("bob", 200)
    before = content(driver.state)
    reply = driver.raw(bid_payload(amount))
    assert (reply.ok, reply.reason) == (False, Reason.INVALID_AMOUNT)
    assert "amount" in (reply.detail or "")
    assert content(driver.state) == before
    assert driver.state.result("a")["highest"] == {"bidder": "bob", "amount": 200}


def good_wire() -> list[Any]:
    return [1, "client", 1, 2_000, ["bid", "a", "alice", 500]]


MALFORMED: list[Any] = [
    b"",
    b"\xc1",  # a msgpack byte that is never valid
    b"not msgpack at all",
    msgpack.packb(good_wire())[:-1],  # truncated
    msgpack.packb(good_wire()) + b"\x00",  # trailing garbage
    msgpack.packb({"cmd": "bid"}),
    msgpack.packb([2, *good_wire()[1:]]),  # unknown wire version
    msgpack.packb([True, *good_wire()[1:]]),  # True is not version 1
    msgpack.packb(good_wire()[:4]),
    msgpack.packb([1, "client", 1, 2_000, ["bid", "a", "alice"]]),  # missing a field
    msgpack.packb([1, "client", 1, 2_000, ["bid", "a", "alice", 500, 1]]),  # one too many
    msgpack.packb([1, "client", 1, 2_000, ["steal", "a"]]),
    msgpack.packb([1, "client", 1, 2_000, []]),
    msgpack.packb([1, "client", 1, 2_000, [7, "a"]]),
    msgpack.packb([1, "client", 1, 2_000, "bid"]),
    msgpack.packb([1, "client", 1, -3, ["bid", "a", "alice", 500]]),
    msgpack.packb([1, "client", "1", 2_000, ["bid", "a", "alice", 500]]),
    msgpack.packb([1, b"client", 1, 2_000, ["bid", "a", "alice", 500]]),
    msgpack.packb([1, "client", 1, 2_000, ["bid", "a", "x" * 65, 500]]),
    msgpack.packb([1, "client", 1, 2_000, ["bid", "a", "alice", 500]] + [0] * 20),
    msgpack.packb([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
    msgpack.packb([1, "client", 1, 2_000, ["close", "a" * 2000]]),
    b"\x95\x01\xa6client\x01\xcd\x07\xd0\x94\xa3bid\xa1a\xa2\xff\xfe\x01",  # bad utf-8
    b"\x00" * 5000,  # over the size limit
    "a str, not bytes",
    None,
]


@pytest.mark.parametrize("payload", MALFORMED)
def test_malformed_payloads_get_invalid_reply_and_change_nothing(driver: Driver,
                                                                 payload: Any) -> None:
    driver.bid("bob", 200, client="client", seq=1)
    before = content(driver.state)
    reply = driver.raw(payload)
    assert (reply.ok, reply.reason) == (False, Reason.INVALID)
    assert reply.detail
    assert content(driver.state) == before
    assert driver.state.drain_events()[-1] == BidAccepted(2, 1, "a", "bob", 200, seq=1)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_and_change_nothing(driver: Driver, payload: bytes) -> None:
    before = content(driver.state)
    reply = driver.raw(payload)
    assert not reply.ok and reply.reason in (Reason.INVALID, Reason.INVALID_AMOUNT)
    assert content(driver.state) == before


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=70) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgpack_values, st.integers(0, 3), st.integers(0, 4))
def test_random_structures_never_raise(driver: Driver, value: Any, where: int,
                                       field: int) -> None:
    """Plant an arbitrary value inside an otherwise valid request, or send it alone."""
    wire: list[Any] = good_wire()
    if where == 0:
        payload = msgpack.packb(value)
    elif where == 1:
        wire[field] = value
        payload = msgpack.packb(wire)
    else:
        wire[4][min(field, 3)] = value
        payload = msgpack.packb(wire)
    reply = driver.raw(payload)
    assert reply.ok or reply.reason in REASONS


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 200), st.integers(0, 255))
def test_corrupted_valid_payloads_never_raise(driver: Driver, position: int,
                                              byte: int) -> None:
    payload = bytearray(encode_request(Request("client", 1, 2_000, Bid("a", "alice", 500))))
    payload[position % len(payload)] = byte
    reply = driver.raw(bytes(payload))
    assert reply.ok or reply.reason in REASONS


def test_applying_an_index_twice_or_backwards_raises_and_changes_nothing(
        driver: Driver) -> None:
    before = driver.state.snapshot()
    payload = encode_request(Request("", 0, 2_000, Bid("a", "eve", 500)))
    for index in (driver.index, driver.index - 1, "7"):
        with pytest.raises(ApplyOrderError):
            driver.state.apply(index, 1, payload)  # type: ignore[arg-type]
    assert driver.state.snapshot() == before


# --- bidding rules ----------------------------------------------------------------------


def test_bid_on_unknown_auction(driver: Driver) -> None:
    reply = driver.bid("alice", 500, auction="nope")
    assert (reply.ok, reply.reason, reply.auction) == (False, Reason.UNKNOWN_AUCTION, "nope")


def test_first_bid_must_reach_the_reserve(driver: Driver) -> None:
    low = driver.bid("alice", 99)
    assert (low.ok, low.reason, low.high, low.min_next) == (False, Reason.BELOW_RESERVE,
                                                            None, 100)
    ok = driver.bid("alice", 100)
    assert (ok.ok, ok.reason, ok.high, ok.min_next) == (True, None, 100, 110)


def test_later_bids_must_beat_the_high_by_the_increment(driver: Driver) -> None:
    driver.bid("alice", 150)
    short = driver.bid("bob", 159)
    assert (short.ok, short.reason, short.high, short.min_next) == (
        False, Reason.BELOW_INCREMENT, 150, 160)
    assert driver.bid("bob", 160).ok
    assert driver.bid("alice", 10**15).ok
    assert driver.state.result("a")["highest"] == {"bidder": "alice", "amount": 10**15}


def test_bids_before_the_opening_time_are_refused(driver: Driver) -> None:
    early = driver.bid("alice", 500, ts=999)
    assert (early.ok, early.reason) == (False, Reason.NOT_OPEN_YET)
    assert driver.bid("alice", 500, ts=1_000).ok


def test_timestamps_at_or_after_the_deadline_are_refused_even_before_close(
        driver: Driver) -> None:
    assert driver.bid("alice", 500, ts=4_999).ok
    for ts in (5_000, 5_001, 10**9):
        late = driver.bid("bob", 10_000, ts=ts)
        assert (late.ok, late.reason, late.min_next) == (False, Reason.AUCTION_CLOSED, None)
    assert driver.state.result("a")["state"] == "open"  # closing is the leader's entry
    assert driver.state.result("a")["bids"] == 1


def test_bids_after_close_are_refused_whatever_their_timestamp(driver: Driver) -> None:
    driver.bid("alice", 500)
    assert driver.send(CloseAuction("a")).ok
    reply = driver.bid("bob", 900, ts=2_000)
    assert (reply.ok, reply.reason, reply.high) == (False, Reason.AUCTION_CLOSED, 500)
    assert driver.state.result("a")["winner"] == {"bidder": "alice", "amount": 500}


# --- opening and closing ----------------------------------------------------------------


def test_duplicate_open_is_refused_and_keeps_the_original(driver: Driver) -> None:
    other = OpenAuction("a", "a car", 1, 1, 0, 99_999)
    reply = driver.send(other)
    assert (reply.ok, reply.reason) == (False, Reason.DUPLICATE_AUCTION)
    assert driver.state.result("a")["item"] == "a lamp"
    driver.send(CloseAuction("a"))
    assert driver.send(other).reason == Reason.DUPLICATE_AUCTION


def test_close_names_the_winner_and_is_idempotent(driver: Driver) -> None:
    driver.bid("alice", 100)
    driver.bid("bob", 300)
    driver.state.drain_events()
    first = driver.send(CloseAuction("a"))
    again = driver.send(CloseAuction("a"))
    assert (first.ok, first.winner, first.amount) == (True, "bob", 300)
    assert (again.ok, again.winner, again.amount, again.detail) == (True, "bob", 300,
                                                                    "already closed")
    closes = [e for e in driver.state.drain_events() if isinstance(e, AuctionClosed)]
    assert closes == [AuctionClosed(driver.index - 1, 1, "a", "bob", 300, seq=3)]
    assert driver.state.due_to_close(10**9) == []


def test_close_without_bids_has_no_winner(driver: Driver) -> None:
    reply = driver.send(CloseAuction("a"))
    assert (reply.ok, reply.winner, reply.amount) == (True, None, None)
    assert driver.state.result("a")["winner"] is None
    assert driver.state.result("a")["state"] == "closed"


def test_close_of_unknown_auction(driver: Driver) -> None:
    assert driver.send(CloseAuction("zzz")).reason == Reason.UNKNOWN_AUCTION


def test_ensure_default_opens_once_from_the_request_time() -> None:
    d = Driver()
    first = d.send(EnsureDefault(duration_ms=60_000), ts=7_000)
    again = d.send(EnsureDefault(duration_ms=1), ts=9_000)
    assert first.ok and again.ok and again.detail == "already exists"
    result = d.state.result("default")
    assert (result["opens_at_ms"], result["closes_at_ms"]) == (7_000, 67_000)
    assert [type(e) for e in d.state.drain_events()] == [AuctionOpened]


def test_ensure_default_does_not_reopen_a_closed_default() -> None:
    d = Driver()
    d.send(EnsureDefault(duration_ms=1_000), ts=0)
    d.send(CloseAuction("default"), ts=1_000)
    assert d.send(EnsureDefault(duration_ms=1_000), ts=5_000).ok
    assert d.state.result("default")["state"] == "closed"
    assert d.state.due_to_close(10**9) == []


def test_ensure_default_whose_deadline_would_overflow_is_refused_not_raised() -> None:
    d = Driver()
    reply = d.send(EnsureDefault(duration_ms=10**12), ts=MAX_TIMESTAMP_MS)
    assert (reply.ok, reply.reason) == (False, Reason.INVALID)
    assert "closes_at_ms" in (reply.detail or "")
    assert d.state.auctions() == []


# --- exactly-once sessions ----------------------------------------------------------------


def test_a_retry_returns_the_stored_reply_and_does_not_bid_twice(driver: Driver) -> None:
    first = driver.bid("alice", 150, client="c1", seq=1)
    driver.bid("bob", 400, client="c2", seq=1)  # the world moves on meanwhile
    driver.state.drain_events()
    retry = driver.bid("alice", 150, client="c1", seq=1)
    assert retry == first and retry.ok and retry.high == 150
    assert driver.state.result("a")["bids"] == 2
    assert driver.state.drain_events() == []


def test_a_retry_of_a_refused_request_stays_refused(driver: Driver) -> None:
    early = driver.bid("alice", 500, ts=10, client="c1", seq=1)
    retry = driver.bid("alice", 500, ts=2_000, client="c1", seq=1)
    assert retry == early and early.reason == Reason.NOT_OPEN_YET
    assert driver.state.result("a")["bids"] == 0


def test_an_older_seq_is_stale_and_changes_nothing(driver: Driver) -> None:
    driver.bid("alice", 150, client="c1", seq=5)
    before = content(driver.state)
    stale = driver.bid("alice", 900, client="c1", seq=4)
    assert (stale.ok, stale.reason) == (False, Reason.STALE_REQUEST)
    assert content(driver.state) == before


def test_seq_may_skip_ahead_and_clients_are_independent(driver: Driver) -> None:
    assert driver.bid("alice", 150, client="c1", seq=1).ok
    assert driver.bid("alice", 160, client="c1", seq=9).ok
    assert driver.bid("bob", 170, client="c2", seq=1).ok
    assert driver.state.result("a")["bids"] == 3


def test_internal_requests_are_never_deduplicated(driver: Driver) -> None:
    assert driver.bid("alice", 150).ok
    again = driver.bid("alice", 150)
    assert again.reason == Reason.BELOW_INCREMENT
    assert driver.state.session_count == 0


def test_sessions_evict_the_least_recently_active_client() -> None:
    d = Driver(AuctionState(max_sessions=3))
    d.send(OPEN_A)
    for n, client in enumerate(["c1", "c2", "c3"]):
        d.bid(client, 100 + 10 * n, client=client, seq=1)
    d.bid("c1", 100, client="c1", seq=1)  # a retry counts as activity
    d.bid("c4", 500, client="c4", seq=1)  # evicts c2, the least recently active
    assert d.state.session_count == 3
    assert d.bid("c1", 100, client="c1", seq=1).ok  # still known: the stored reply
    replay = d.bid("c2", 110, client="c2", seq=1)  # forgotten: executed as new
    assert (replay.ok, replay.reason) == (False, Reason.BELOW_INCREMENT)


def test_session_eviction_is_deterministic_and_survives_snapshots() -> None:
    rng = random.Random(7)
    stream = [encode_request(Request(f"c{rng.randrange(12)}", n, 2_000,
                                     Bid("a", "x", 100 + n))) for n in range(1, 400)]
    a, b = Driver(AuctionState(max_sessions=5)), Driver(AuctionState(max_sessions=5))
    for d in (a, b):
        d.send(OPEN_A)
    for payload in stream[:200]:
        assert a.raw(payload) == b.raw(payload)
    c = Driver(AuctionState.from_snapshot(b.state.snapshot(), max_sessions=5))
    for payload in stream[200:]:
        assert a.raw(payload) == b.raw(payload) == c.raw(payload)
    assert a.state.snapshot() == b.state.snapshot() == c.state.snapshot()
    assert a.state.session_count == 5


# --- events ---------------------------------------------------------------------------------


def test_events_record_committed_changes_with_index_and_term() -> None:
    d = Driver()
    d.send(OPEN_A, ts=0)
    d.bid("alice", 50)  # refused: no event
    d.bid("alice", 120)
    d.raw(encode_request(Request("", 0, 6_000, CloseAuction("a"))), term=3)
    events = d.state.drain_events()
    assert [e.to_dict() for e in events] == [
        {"index": 1, "term": 1, "type": "auction_opened", "auction": "a", "item": "a lamp",
         "reserve": 100, "increment": 10, "opens_at_ms": 1_000, "closes_at_ms": 5_000,
         "seq": 0},
        {"index": 3, "term": 1, "type": "bid_accepted", "auction": "a", "bidder": "alice",
         "amount": 120, "seq": 1},
        {"index": 4, "term": 3, "type": "auction_closed", "auction": "a", "winner": "alice",
         "amount": 120, "seq": 2},
    ]
    assert [event_from_dict(e.to_dict()) for e in events] == events
    assert d.state.drain_events() == []


def test_pending_events_are_bounded_oldest_dropped() -> None:
    d = Driver(AuctionState(max_pending_events=2))
    d.send(OPEN_A)
    d.bid("alice", 100)
    d.bid("alice", 110)
    assert [e.index for e in d.state.drain_events()] == [2, 3]


# --- the feed's per-auction seq, and gap filling ----------------------------------------------

FAR_MS = 10**12


def open_far(name: str) -> OpenAuction:
    return OpenAuction(name, name, reserve=1, increment=1, opens_at_ms=0, closes_at_ms=FAR_MS)


def test_events_carry_their_feed_seq_per_auction() -> None:
    d = Driver()
    d.send(open_far("a"))
    d.bid("bo", 5)
    d.send(open_far("b"))
    d.bid("bo", 6, auction="b")
    d.bid("bo", 7)
    d.bid("bo", 1)  # refused: no event, no seq
    d.send(CloseAuction("a"))
    d.send(CloseAuction("a"))  # already closed: no second close event
    d.send(CloseAuction("b"))
    seqs = [(e.auction, type(e).__name__, e.seq) for e in d.state.drain_events()]
    assert seqs == [("a", "AuctionOpened", 0), ("a", "BidAccepted", 1),
                    ("b", "AuctionOpened", 0), ("b", "BidAccepted", 1),
                    ("a", "BidAccepted", 2), ("a", "AuctionClosed", 3),
                    ("b", "AuctionClosed", 2)]


def test_seq_continues_after_a_restore_though_the_snapshot_does_not_store_it() -> None:
    d = Driver()
    d.send(open_far("a"))
    d.bid("bo", 5)
    d.bid("bo", 6)
    snap = d.state.snapshot()
    resumed = Driver(AuctionState.from_snapshot(snap))
    resumed.bid("bo", 7)
    resumed.send(CloseAuction("a"))
    assert [e.seq for e in resumed.state.drain_events()] == [3, 4]
    # Version 3 added each auction's opener and open index; still no seq is stored.
    assert msgpack.unpackb(snap, raw=False)[0] == SNAPSHOT_VERSION == 3


def test_last_feed_seq_counts_the_close() -> None:
    d = Driver()
    d.send(open_far("a"))
    assert last_feed_seq(d.state.result("a")) == 0
    d.bid("bo", 5)
    d.bid("bo", 6)
    assert last_feed_seq(d.state.result("a")) == 2
    d.send(CloseAuction("a"))
    assert last_feed_seq(d.state.result("a")) == 3


def retaining_five() -> Driver:
    """Auction "a" with 12 accepted bids (amounts 101..112, seq n = amount - 100, log index
    n + 1) of which only the last 5 are retained."""
    d = Driver(AuctionState(max_pending_events=1, max_retained_bids=5))
    d.send(open_far("a"))
    for amount in range(101, 113):
        d.bid("bo", amount)
    return d


def test_events_after_rebuilds_bids_and_close_in_the_documented_shape() -> None:
    # The live events' keys: term None (not kept), index the entry that made the event.
    d = retaining_five()
    assert d.state.events_after("a", 11) == [
        {"type": "bid_accepted", "auction": "a", "seq": 12, "index": 13, "bidder": "bo",
         "amount": 112, "term": None}]
    d.send(CloseAuction("a"))
    assert d.state.events_after("a", 12) == [
        {"type": "auction_closed", "auction": "a", "seq": 13, "winner": "bo", "amount": 112,
         "index": 14, "term": None}]
    d.send(open_far("empty"))
    d.send(CloseAuction("empty"))
    assert d.state.events_after("empty", 0) == [
        {"type": "auction_closed", "auction": "empty", "seq": 1, "winner": None,
         "amount": None, "index": 16, "term": None}]
    assert d.state.events_after("empty", 1) == []
    assert d.state.events_after("empty", -1) == [
        {"type": "auction_opened", "auction": "empty", "seq": 0, "item": "empty", "reserve": 1,
         "increment": 1, "opens_at_ms": 0, "closes_at_ms": FAR_MS, "index": 15, "term": None},
        {"type": "auction_closed", "auction": "empty", "seq": 1, "winner": None,
         "amount": None, "index": 16, "term": None}]
    assert [list(e) for e in d.state.events_after("empty", -1)] == [  # the live key order
        list(AuctionOpened(15, 1, "empty", "empty", 1, 1, 0, FAR_MS, 0).to_dict()),
        list(AuctionClosed(16, 1, "empty", None, None, 1).to_dict())]


def test_the_opening_is_rebuilt_only_when_after_seq_is_below_its_seq() -> None:
    # seq 0 is the opening: after_seq 0 means "I have it", so only -1 (nothing delivered
    # yet) brings it, before the snapshot event when the bids are no longer all retained.
    d = retaining_five()
    assert [e["type"] for e in d.state.events_after("a", 0)][:2] == ["snapshot",
                                                                     "bid_accepted"]
    assert [(e["type"], e["seq"]) for e in d.state.events_after("a", -1)][:3] == [
        ("auction_opened", 0), ("snapshot", 7), ("bid_accepted", 8)]
    assert d.state.events_after("a", -5) == d.state.events_after("a", -1)
    assert [e["seq"] for e in d.state.events_after("a", 11)] == [12]


def test_events_after_of_an_unknown_auction_raises() -> None:
    with pytest.raises(UnknownAuction):
        AuctionState().events_after("nope", 0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32))
def test_rebuilt_events_agree_with_the_live_ones(seed: int) -> None:
    """With every bid retained, events_after(a, 0) is the live feed of `a` after its opening,
    without the term; each auction's live seqs count up by one from 0. events_after(a, -1)
    is the whole live feed, every event with the same keys and values but term None."""
    state = AuctionState()
    feed(state, random_stream(seed, 300))
    live: dict[str, list[dict[str, Any]]] = {}
    for event in state.drain_events():
        live.setdefault(event.auction, []).append(event.to_dict())
    for auction, events in live.items():
        if auction not in {a["auction"] for a in state.auctions()}:
            continue
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert last_feed_seq(state.result(auction)) == events[-1]["seq"]
        rebuilt = state.events_after(auction, 0)
        kept = ("type", "auction", "seq", "bidder", "amount", "winner")
        assert ([{k: e[k] for k in kept if k in e} for e in rebuilt]
                == [{k: e[k] for k in kept if k in e} for e in events[1:]])
        assert ([e["index"] for e in rebuilt if e["type"] == "bid_accepted"]
                == [e["index"] for e in events if e["type"] == "bid_accepted"])
        assert state.events_after(auction, -1) == [{**e, "term": None} for e in events]
        assert state.events_after(auction, 0) == [{**e, "term": None} for e in events[1:]]


@pytest.mark.parametrize("bad", [
    [], {"type": "bid_accepted"}, {"type": "nope"}, {"type": ["x"]},
    {"index": 1, "term": 1, "type": "bid_accepted", "auction": "a", "bidder": "b",
     "amount": "1", "seq": 1},
    {"index": 1, "term": 1, "type": "bid_accepted", "auction": "a", "bidder": None,
     "amount": 1, "seq": 1},
    {"index": 1, "term": 1, "type": "auction_closed", "auction": "a", "winner": None,
     "amount": None, "seq": 1, "extra": 1},
])
def test_event_from_dict_rejects_malformed_events(bad: Any) -> None:
    with pytest.raises(InvalidEvent):
        event_from_dict(bad)


# --- replies --------------------------------------------------------------------------------


def test_reply_dict_round_trip_through_msgpack() -> None:
    for reply in (Reply(ok=True, auction="a", bidder="b", amount=5, high=5, min_next=6),
                  Reply(ok=False, reason=Reason.INVALID, detail="amount: bad"),
                  Reply(ok=True, auction="a", winner="b", amount=9)):
        wire = msgpack.unpackb(msgpack.packb(reply_to_dict(reply)), raw=False)
        assert reply_from_dict(wire) == reply
    assert reply_to_dict(Reply(ok=True)) == {"ok": True}


@pytest.mark.parametrize("bad", [
    None, {}, {"ok": 1}, {"ok": True, "color": "red"}, {"ok": False, "reason": "bored"},
    {"ok": True, "amount": "5"}, {"ok": True, "amount": True}, {"ok": True, "bidder": 5},
])
def test_reply_from_dict_rejects_malformed_replies(bad: Any) -> None:
    with pytest.raises(InvalidReply):
        reply_from_dict(bad)


# --- queries ----------------------------------------------------------------------------------


def test_result_history_and_auctions(driver: Driver) -> None:
    driver.send(OpenAuction("b", "a bike", 1, 1, 0, 3_000))
    driver.bid("alice", 100, ts=1_500)
    driver.bid("bob", 110, ts=1_600)
    assert driver.state.result("a") == {
        "auction": "a", "state": "open", "highest": {"bidder": "bob", "amount": 110},
        "winner": None, "item": "a lamp", "reserve": 100, "increment": 10,
        "opens_at_ms": 1_000, "closes_at_ms": 5_000, "bids": 2, "retained_bids": 2,
    }
    assert driver.state.history("a") == [
        {"index": 3, "bidder": "alice", "amount": 100, "ts_ms": 1_500, "seq": 1},
        {"index": 4, "bidder": "bob", "amount": 110, "ts_ms": 1_600, "seq": 2},
    ]
    assert [a["auction"] for a in driver.state.auctions()] == ["a", "b"]
    assert driver.state.due_to_close(2_999) == []
    assert driver.state.due_to_close(3_000) == ["b"]
    assert driver.state.due_to_close(5_000) == ["b", "a"]  # earliest deadline first


def test_queries_on_unknown_auctions_raise() -> None:
    state = AuctionState()
    with pytest.raises(UnknownAuction):
        state.result("ghost")
    with pytest.raises(UnknownAuction):
        state.history("ghost")
    assert state.auctions() == [] and state.due_to_close(10**12) == []


# --- deadlines: the queue due_to_close reads -------------------------------------------------


class LineBudgetExceeded(Exception):
    pass


def domain_lines_run(work: Callable[[], object], budget: int) -> int:
    """How many lines of zauction/auction/domain.py work() executes: a count of operations
    that does not depend on the machine's speed or load. Stops work() once over `budget`."""
    count = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
            if count > budget:
                raise LineBudgetExceeded
        return local

    def calls(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == domain.__file__ else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        work()
    except LineBudgetExceeded:
        pass
    finally:
        sys.settrace(previous)
    return count


def opened(count: int, first_deadline: int = 10_000) -> AuctionState:
    """`count` open auctions: a{n} closes at first_deadline + n (so the name order, a0 a1
    a10 a100..., is not the deadline order)."""
    state = AuctionState(max_pending_events=1)
    for n in range(count):
        state.apply_request(n + 1, 1, Request("", 0, 0, OpenAuction(
            f"a{n}", "x", 1, 1, 0, first_deadline + n)))
    return state


@pytest.fixture(scope="module")
def idle_100k() -> AuctionState:
    return opened(100_000)  # read only: the tests using it must not change it


def test_due_to_close_costs_o1_per_call_while_nothing_is_due(idle_100k: AuctionState) -> None:
    # A scan looks at every open auction: 100,000 lines of domain code per call at least.
    lines = domain_lines_run(lambda: [idle_100k.due_to_close(9_999) for _ in range(1_000)],
                             budget=20 * 1_000)
    assert lines <= 20 * 1_000, "due_to_close scanned the open auctions"
    assert idle_100k.due_to_close(9_999) == [] and idle_100k.open_auction_count == 100_000


def test_due_to_close_costs_in_proportion_to_the_due(idle_100k: AuctionState) -> None:
    due: list[str] = []
    lines = domain_lines_run(lambda: due.extend(idle_100k.due_to_close(10_009)), budget=600)
    assert lines <= 600, "due_to_close looked at more than the due auctions"
    assert due == [f"a{n}" for n in range(10)]  # earliest deadline first


def test_due_to_close_returns_at_most_its_limit_earliest_first_and_only_peeks() -> None:
    d = Driver(opened(2_500))
    due = d.state.due_to_close(10**9)
    assert due == [f"a{n}" for n in range(MAX_DUE_PER_CALL)]
    assert d.state.due_to_close(10**9) == due  # not taken off: a failed close is asked again
    assert d.state.due_to_close(10**9, limit=3) == ["a0", "a1", "a2"]
    for name in due:
        d.send(CloseAuction(name))
    assert d.state.due_to_close(10**9) == [f"a{n}" for n in range(1_000, 2_000)]


def test_due_to_close_orders_by_deadline_then_name_and_never_returns_a_closed_one() -> None:
    d = Driver()
    for name, closes in [("late", 900), ("b", 500), ("a", 500), ("early", 100), ("x", 300)]:
        d.send(OpenAuction(name, "t", 1, 1, 0, closes))
    assert d.state.due_to_close(500) == ["early", "x", "a", "b"]
    d.send(CloseAuction("x"))  # at its deadline
    d.send(CloseAuction("late"))  # early, before its deadline
    assert d.state.due_to_close(10**9) == ["early", "a", "b"]
    d.send(CloseAuction("a"))
    d.send(ForgetAuction("a"))
    d.send(OpenAuction("a", "again", 1, 1, 0, 700))  # the name reopened, a later deadline
    assert d.state.due_to_close(600) == ["early", "b"]
    assert d.state.due_to_close(700) == ["early", "b", "a"]


def test_due_to_close_survives_snapshots_including_version_2() -> None:
    d = Driver()
    for name, closes in [("c", 300), ("a", 200), ("b", 100), ("d", 400)]:
        d.send(OpenAuction(name, "t", 1, 1, 0, closes))
    d.send(CloseAuction("a"))
    snap = d.state.snapshot()
    restored = AuctionState.from_snapshot(snap)
    assert restored.due_to_close(350) == d.state.due_to_close(350) == ["b", "c"]
    wire = msgpack.unpackb(snap, raw=False)  # the same state as a version 2 snapshot
    old = msgpack.packb([2, wire[1], [row[:10] for row in wire[2]], wire[3]])
    assert AuctionState.from_snapshot(old).due_to_close(10**9) == ["b", "c", "d"]


def test_due_to_close_agrees_with_a_scan_through_opens_closes_forgets_and_restores() -> None:
    rng = random.Random(11)
    d = Driver()
    for _ in range(4_000):
        roll, name = rng.random(), f"x{rng.randrange(200)}"
        if roll < 0.45:
            d.send(OpenAuction(name, "t", 1, 1, 0, rng.randrange(1, 400)))
        elif roll < 0.75:
            d.send(CloseAuction(name))
        elif roll < 0.97:
            d.send(ForgetAuction(name))
        else:
            d = Driver(AuctionState.from_snapshot(d.state.snapshot()))
        now, limit = rng.randrange(400), rng.choice((1, 5, 1_000))
        scan = sorted((a["closes_at_ms"], a["auction"]) for a in d.state.auctions()
                      if a["state"] == "open" and a["closes_at_ms"] <= now)
        assert d.state.due_to_close(now, limit) == [name for _, name in scan[:limit]]


def test_the_deadline_queue_does_not_keep_what_closed_early() -> None:
    # Entries of closed auctions are dropped lazily: they must not pile up when auctions
    # close long before their deadline (closed by a client) or are forgotten and reopened.
    d = Driver()
    for n in range(5_000):
        d.send(open_far(f"e{n}"))
        d.send(CloseAuction(f"e{n}"))
        d.send(ForgetAuction(f"e{n}"))
        d.send(open_far("same"))
        d.send(CloseAuction("same"))
        d.send(ForgetAuction("same"))
    d.send(open_far("kept"))
    assert len(d.state._deadlines) <= 2 * d.state.open_auction_count + 1_024 + 1
    assert d.state.due_to_close(FAR_MS) == ["kept"]


class FakeRuntime:
    """What AuctionNode._leader_duties uses of the brokerless Runtime."""

    term = 1

    def __init__(self) -> None:
        self.proposals: list[tuple[Any, Callable[[Any, BaseException | None], None]]] = []

    def propose(self, data: bytes, callback: Any, admit_always: bool = False) -> int:
        self.proposals.append((decode_request(data).cmd, callback))
        return len(self.proposals)


def test_the_leader_proposes_each_due_close_once_and_again_if_it_failed() -> None:
    from zauction.server.node import AuctionNode

    state = opened(1_500, first_deadline=1_000)  # all due: now_ms() is the real clock
    node = AuctionNode.__new__(AuctionNode)  # just what the leader's duties use
    node.state, node.runtime, node._closing = state, FakeRuntime(), set()
    node._default_proposed_term = FakeRuntime.term  # the default auction is not the point
    proposals = node.runtime.proposals
    node._leader_duties()
    assert [cmd for cmd, _ in proposals] == [CloseAuction(f"a{n}")
                                             for n in range(MAX_DUE_PER_CALL)]
    node._leader_duties()  # all in flight: nothing proposed twice
    assert len(proposals) == MAX_DUE_PER_CALL
    proposals[0][1](None, RuntimeError("lost in a leader change"))  # a0's proposal failed
    closed = state.apply_request(2_000, 1, Request("", 0, 5_000, proposals[1][0]))
    proposals[1][1](closed, None)  # a1 closed
    node._leader_duties()
    assert [cmd for cmd, _ in proposals[MAX_DUE_PER_CALL:]] == [CloseAuction("a0"),
                                                                CloseAuction("a1000")]


# --- determinism and snapshots ---------------------------------------------------------------


def random_stream(seed: int, length: int) -> list[bytes]:
    """A realistic mix: opens, bids, leader closes, retries, stale seqs and garbage."""
    rng = random.Random(seed)
    sent: dict[str, list[bytes]] = {f"c{i}": [] for i in range(6)}  # each client's requests
    opened = 0
    out: list[bytes] = []
    ts = 0
    for _ in range(length):
        ts += rng.randrange(30)
        client = rng.choice(list(sent))
        recent = f"x{max(0, opened - rng.randrange(4))}"  # mostly one of the newest ids
        roll = rng.random()
        if roll < 0.05:
            out.append(rng.randbytes(rng.randrange(30)))
        elif roll < 0.12 and sent[client]:
            out.append(rng.choice(sent[client][-3:]))  # a retry, or a stale older seq
        elif roll < 0.17:
            out.append(encode_request(Request("", 0, ts, CloseAuction(recent))))
        elif roll < 0.19:
            out.append(encode_request(Request("", 0, ts, EnsureDefault(duration_ms=3_000))))
        else:
            if roll < 0.27:
                opened += rng.random() < 0.8  # sometimes a duplicate id
                cmd: Any = OpenAuction(f"x{opened}", "thing", rng.randint(1, 50),
                                       rng.randint(1, 20), max(0, ts + rng.randrange(-50, 100)),
                                       ts + rng.randint(200, 3_000))
            else:
                auction = "default" if roll > 0.95 else recent
                cmd = Bid(auction, rng.choice(["ann", "bo", "cy"]), rng.randint(1, 60) + ts // 4)
            sent[client].append(encode_request(Request(client, len(sent[client]) + 1, ts, cmd)))
            out.append(sent[client][-1])
    return out


def feed(state: AuctionState, stream: list[bytes], start: int = 1) -> list[Reply]:
    return [state.apply(start + n, 1 + n // 50, p) for n, p in enumerate(stream)]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32))
def test_two_replicas_fed_the_same_stream_are_byte_identical(seed: int) -> None:
    stream = random_stream(seed, 300)
    one, two = AuctionState(), AuctionState()
    assert feed(one, stream) == feed(two, stream)
    assert one.snapshot() == two.snapshot()
    assert one.drain_events() == two.drain_events()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 300))
def test_restoring_a_snapshot_mid_stream_then_continuing_is_identical(seed: int,
                                                                      cut: int) -> None:
    stream = random_stream(seed, 300)
    whole = AuctionState()
    replies = feed(whole, stream)
    half = AuctionState()
    feed(half, stream[:cut])
    resumed = AuctionState.from_snapshot(half.snapshot())
    assert resumed.snapshot() == half.snapshot()
    assert feed(resumed, stream[cut:], start=cut + 1) == replies[cut:]
    assert resumed.snapshot() == whole.snapshot()
    assert resumed.auctions() == whole.auctions()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32))
def test_auction_invariants_hold_on_random_streams(seed: int) -> None:
    state = AuctionState()
    feed(state, random_stream(seed, 400))
    closed_at = {e.auction: e for e in state.drain_events() if isinstance(e, AuctionClosed)}
    for summary in state.auctions():
        bids = state.history(summary["auction"])
        if bids:
            assert bids[0]["amount"] >= summary["reserve"]
        for prev, nxt in zip(bids, bids[1:], strict=False):
            assert nxt["amount"] >= prev["amount"] + summary["increment"]
            assert nxt["index"] > prev["index"]
        for b in bids:
            assert summary["opens_at_ms"] <= b["ts_ms"] < summary["closes_at_ms"]
        close = closed_at.get(summary["auction"])
        if close is not None:
            assert all(b["index"] < close.index for b in bids)
            high = bids[-1] if bids else None
            assert close.winner == (high["bidder"] if high else None)


def test_restore_replaces_state_and_clears_pending_events(driver: Driver) -> None:
    snap = driver.state.snapshot()
    driver.bid("alice", 500)
    driver.state.restore(snap)
    assert driver.state.snapshot() == snap
    assert driver.state.drain_events() == []
    assert driver.state.applied_index == 1


def corrupt_snapshots() -> list[Any]:
    good = Driver()
    good.send(OPEN_A)
    good.bid("alice", 100, client="c1", seq=1)
    good.bid("bob", 110, client="c2", seq=1)
    wire = msgpack.unpackb(good.state.snapshot(), raw=False)
    swapped = [*wire[:3], wire[3][::-1]]  # sessions out of eviction order
    bad_bid = msgpack.unpackb(good.state.snapshot(), raw=False)
    bad_bid[2][0][9][0][2] = -1  # the auction row's bid list is its 10th field
    bad_reply = msgpack.unpackb(good.state.snapshot(), raw=False)
    bad_reply[3][0][3]["reason"] = "nope"
    return [b"", b"\xc1", good.state.snapshot()[:-3], msgpack.packb([9, *wire[1:]]),
            msgpack.packb(swapped), msgpack.packb(bad_bid), msgpack.packb(bad_reply),
            msgpack.packb([1, 5, [["a"]], []]), msgpack.packb({"v": 1}), None]


@pytest.mark.parametrize("data", corrupt_snapshots())
def test_invalid_snapshots_raise_and_leave_state_untouched(driver: Driver, data: Any) -> None:
    driver.bid("carol", 300, client="c9", seq=3)
    before = driver.state.snapshot()
    with pytest.raises(InvalidSnapshot):
        driver.state.restore(data)
    assert driver.state.snapshot() == before


def test_history_and_events_after_take_any_after_seq_without_raising():
    state = AuctionState()
    state.apply_request(1, 1, Request("c", 1, 0, OpenAuction("a", "a", 1, 1, 0, 10**12)))
    state.apply_request(2, 1, Request("c", 2, 0, Bid("a", "ann", 5)))
    for huge in (2**63 - 1, 2**64 - 1, 2**100):
        assert state.history("a", huge) == []
        assert state.events_after("a", huge) == []
    assert [b["amount"] for b in state.history("a", 0)] == [5]


def test_history_events_and_auctions_page_by_cursor_and_limit(driver: Driver) -> None:
    for name in ("c", "b", "d"):
        driver.send(OpenAuction(name, "thing", 1, 1, 0, 3_000))
    for n in range(7):
        driver.bid(f"bidder{n}", 100 + 10 * n, ts=1_500 + n)
    state = driver.state
    whole = state.history("a")
    pages, after = [], 0
    while True:
        page = state.history("a", after, limit=3)
        assert len(page) <= 3
        if not page:
            break
        pages.extend(page)
        after = page[-1]["seq"]
    assert pages == whole and [h["seq"] for h in whole] == list(range(1, 8))
    assert state.history("a", 2**63 - 1, limit=3) == []
    events = state.events_after("a", -1)
    paged, after = [], -1
    while page := state.events_after("a", after, limit=2):
        assert len(page) <= 2
        paged.extend(page)
        after = page[-1]["seq"]
    assert paged == events
    names = [a["auction"] for a in state.auctions()]
    assert names == ["a", "b", "c", "d"]
    assert [a["auction"] for a in state.auctions(limit=2)] == ["a", "b"]
    assert [a["auction"] for a in state.auctions("b", limit=2)] == ["c", "d"]
    assert state.auctions("d", limit=2) == []


def test_a_used_seq_answers_a_retry_but_refuses_a_different_request(driver: Driver) -> None:
    first = driver.send(OpenAuction("b", "bike", 1, 1, 0, 3_000), client="c", seq=1)
    assert first.ok
    retry = driver.send(OpenAuction("b", "bike", 1, 1, 10, 3_010), client="c", seq=1)
    assert retry == first  # a retry (new times from the node that served it): same answer
    before = content(driver.state)
    for other in (OpenAuction("z", "zz", 1, 1, 0, 3_000), Bid("b", "bob", 5),
                  CloseAuction("b")):
        refused = driver.send(other, client="c", seq=1)
        assert (refused.ok, refused.reason) == (False, "seq_reused"), other
    assert content(driver.state) == before
    placed = driver.bid("bob", 5, auction="b", client="d", seq=1)
    assert driver.bid("bob", 5, auction="b", client="d", seq=1) == placed
    assert driver.bid("bob", 6, auction="b", client="d", seq=1).reason == "seq_reused"
