"""Quotas in AuctionState: at most `max_auctions` auctions known (open or closed) and
`max_open_auctions_per_client` open ones per opening client. An open beyond either is refused
with `quota_exceeded` and changes nothing; nothing is forgotten without a ForgetAuction, which
removes a closed auction and its retained bids. The per-client counts are derived state,
rebuilt from snapshots (version 3 stores each auction's opener; version 2 still restores)."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zauction.auction.commands import (
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
    MAX_AUCTIONS,
    MAX_OPEN_AUCTIONS_PER_CLIENT,
    AuctionOpened,
    AuctionState,
    Reply,
    UnknownAuction,
)

FAR = 10**12


class Driver:
    """Feeds one AuctionState consecutive log indexes; each client's seq counts up."""

    def __init__(self, state: AuctionState | None = None) -> None:
        self.state = state if state is not None else AuctionState()
        self.index = self.state.applied_index
        self.seqs: dict[str, int] = {}

    def send(self, cmd: Any, client: str = "", ts: int = 2_000) -> Reply:
        seq = 0
        if client:
            seq = self.seqs[client] = self.seqs.get(client, 0) + 1
        return self.raw(encode_request(Request(client, seq, ts, cmd)))

    def raw(self, payload: bytes) -> Reply:
        self.index += 1
        return self.state.apply(self.index, 1, payload)

    def open(self, name: str, client: str = "", closes: int = FAR) -> Reply:
        return self.send(OpenAuction(name, name, 1, 1, 0, closes), client)


def content(state: AuctionState) -> list[Any]:
    """The auctions of the snapshot: what a refused command must leave as it was."""
    return msgpack.unpackb(state.snapshot(), raw=False)[2]


def test_the_defaults() -> None:
    state = AuctionState()
    assert (MAX_AUCTIONS, MAX_OPEN_AUCTIONS_PER_CLIENT) == (100_000, 1_000)
    assert (state.max_auctions, state.max_open_auctions_per_client) == (100_000, 1_000)
    assert Reason.QUOTA_EXCEEDED == "quota_exceeded" and Reason.AUCTION_OPEN == "auction_open"


# --- the per-client quota -----------------------------------------------------------------


def test_a_client_beyond_its_open_auctions_is_refused_and_nothing_changes() -> None:
    d = Driver(AuctionState(max_open_auctions_per_client=2))
    assert d.open("a1", "c1").ok and d.open("a2", "c1").ok
    d.state.drain_events()
    before = content(d.state)
    refused = d.open("a3", "c1")
    assert (refused.ok, refused.reason, refused.auction) == (False, Reason.QUOTA_EXCEEDED, "a3")
    assert "c1" in (refused.detail or "") and "2" in (refused.detail or "")
    assert content(d.state) == before and d.state.drain_events() == []
    with pytest.raises(UnknownAuction):
        d.state.result("a3")
    assert d.open("b1", "c2").ok  # another client has its own quota
    assert d.open("x", "").ok and d.open("y", "").ok  # the leader's opens count for no one
    assert (d.state.open_auctions_of("c1"), d.state.open_auctions_of("c2")) == (2, 1)
    assert d.state.open_auctions_of("") == 0


def test_closing_an_auction_frees_its_openers_quota_whoever_closes_it() -> None:
    d = Driver(AuctionState(max_open_auctions_per_client=1))
    assert d.open("a1", "c1").ok
    assert d.open("a2", "c1").reason == Reason.QUOTA_EXCEEDED
    assert d.send(CloseAuction("a1"), "c2").ok  # a client's close (the service's `close`)
    assert d.state.open_auctions_of("c1") == 0
    assert d.open("a2", "c1").ok
    assert d.send(CloseAuction("a2")).ok  # the leader's close at the deadline
    assert d.open("a3", "c1").ok and d.state.open_auctions_of("c1") == 1


def test_a_duplicate_is_reported_as_such_before_any_quota() -> None:
    d = Driver(AuctionState(max_auctions=1, max_open_auctions_per_client=1))
    assert d.open("a", "c1").ok
    assert d.open("a", "c1").reason == Reason.DUPLICATE_AUCTION


def test_a_retried_refused_open_stays_refused() -> None:
    d = Driver(AuctionState(max_open_auctions_per_client=1))
    d.open("a1", "c1")
    payload = encode_request(Request("c1", 7, 2_000, OpenAuction("a2", "x", 1, 1, 0, FAR)))
    first = d.raw(payload)
    d.send(CloseAuction("a1"))  # room now, but a retry gets the stored answer
    retry = d.raw(payload)
    assert retry == first and first.reason == Reason.QUOTA_EXCEEDED
    with pytest.raises(UnknownAuction):
        d.state.result("a2")


# --- the cap on auctions known ------------------------------------------------------------


def test_auctions_that_closed_by_themselves_never_push_a_real_result_out() -> None:
    # The incident: 77k auctions opened and closed by themselves, and the oldest closed
    # result, someone's real one, became unknown_auction. Now the opens are refused.
    d = Driver(AuctionState(max_auctions=50))
    d.open("real", "seller")
    d.send(Bid("real", "alice", 500), "alice")
    d.send(CloseAuction("real"))
    replies = []
    for n in range(100):
        replies.append(d.open(f"idle{n}", f"bot{n % 3}", closes=3_000))
        d.send(CloseAuction(f"idle{n}"), ts=3_000)
    assert [r.ok for r in replies] == [True] * 49 + [False] * 51
    assert {r.reason for r in replies[49:]} == {Reason.QUOTA_EXCEEDED}
    assert d.state.result("real")["winner"] == {"bidder": "alice", "amount": 500}
    assert d.state.auction_count == 50


def test_the_leaders_default_auction_is_refused_too_when_the_cluster_is_full() -> None:
    d = Driver(AuctionState(max_auctions=1))
    d.open("a", "c1")
    refused = d.send(EnsureDefault())
    assert (refused.ok, refused.reason) == (False, Reason.QUOTA_EXCEEDED)
    assert [a["auction"] for a in d.state.auctions()] == ["a"]


# --- ForgetAuction ------------------------------------------------------------------------


def test_forget_removes_a_closed_auction_and_its_bids_and_frees_room() -> None:
    d = Driver(AuctionState(max_auctions=2))
    d.open("a", "c1")
    d.open("b", "c1")
    for amount in (5, 6, 7):
        d.send(Bid("a", "bo", amount))
    d.send(CloseAuction("a"))
    assert d.open("c", "c1").reason == Reason.QUOTA_EXCEEDED
    forgot = d.send(ForgetAuction("a"), "c2")
    assert forgot == Reply(ok=True, auction="a", winner="bo", amount=7)  # the final result
    assert d.state.retained_bid_count == 0 and d.state.closed_auction_count == 0
    assert d.state.auction_count == 1
    for query in (d.state.result, d.state.history, d.state.bid_count):
        with pytest.raises(UnknownAuction):
            query("a")
    assert d.send(Bid("a", "bo", 8)).reason == Reason.UNKNOWN_AUCTION
    assert d.open("c", "c1").ok


def test_forget_refuses_an_open_or_unknown_auction_and_changes_nothing() -> None:
    d = Driver()
    d.open("a", "c1")
    d.send(Bid("a", "bo", 5))
    before = content(d.state)
    still_open = d.send(ForgetAuction("a"), "c1")
    assert (still_open.ok, still_open.reason, still_open.auction) == (
        False, Reason.AUCTION_OPEN, "a")
    unknown = d.send(ForgetAuction("nope"), "c1")
    assert (unknown.ok, unknown.reason) == (False, Reason.UNKNOWN_AUCTION)
    assert content(d.state) == before
    d.send(CloseAuction("a"))
    assert d.send(ForgetAuction("a")).ok
    again = d.send(ForgetAuction("a"))  # forgotten already: unknown, like never opened
    assert again.reason == Reason.UNKNOWN_AUCTION


def test_a_forgotten_name_can_be_opened_again_as_a_new_auction() -> None:
    d = Driver()
    d.open("a", "c1", closes=5_000)
    d.send(Bid("a", "bo", 5))
    d.send(CloseAuction("a"))
    d.send(ForgetAuction("a"))
    d.state.drain_events()
    assert d.open("a", "c2", closes=9_000).ok
    result = d.state.result("a")
    assert (result["bids"], result["highest"], result["closes_at_ms"]) == (0, None, 9_000)
    [opened] = d.state.drain_events()
    assert isinstance(opened, AuctionOpened) and opened.seq == 0
    assert d.state.due_to_close(8_999) == [] and d.state.due_to_close(9_000) == ["a"]


def test_forget_has_a_wire_tag_next_to_the_other_commands() -> None:
    assert encode_command(ForgetAuction("a")) == msgpack.packb(["forget", "a"])
    assert decode_command(msgpack.packb(["forget", "a"])) == ForgetAuction("a")
    for bad in ("", "x" * 65, 5):
        with pytest.raises(InvalidCommand, match="auction"):
            ForgetAuction(bad)  # type: ignore[arg-type]


# --- snapshots ----------------------------------------------------------------------------


def test_quota_counts_are_rebuilt_from_a_snapshot() -> None:
    d = Driver(AuctionState(max_open_auctions_per_client=2))
    d.open("a1", "c1")
    d.open("a2", "c1")
    d.open("b1", "c2")
    d.send(CloseAuction("a1"))
    rows = content(d.state)
    assert {row[0]: row[11] for row in rows} == {"a1": "c1", "a2": "c1", "b1": "c2"}
    resumed = Driver(AuctionState.from_snapshot(d.state.snapshot(),
                                                max_open_auctions_per_client=2))
    resumed.seqs = dict(d.seqs)
    assert (resumed.state.open_auctions_of("c1"), resumed.state.open_auctions_of("c2")) == (1, 1)
    assert resumed.open("a3", "c1").ok
    assert resumed.open("a4", "c1").reason == Reason.QUOTA_EXCEEDED
    assert resumed.open("b2", "c2").ok


def test_restoring_more_auctions_than_the_caps_keeps_them_all_and_refuses_opens() -> None:
    d = Driver()
    for n in range(5):
        d.open(f"a{n}", "c1")
    d.send(CloseAuction("a0"))
    d.send(CloseAuction("a1"))
    small = Driver(AuctionState.from_snapshot(d.state.snapshot(), max_auctions=3,
                                              max_open_auctions_per_client=2))
    small.seqs = dict(d.seqs)
    assert small.state.auction_count == 5 and small.state.open_auctions_of("c1") == 3
    assert small.state.snapshot() == d.state.snapshot()
    assert small.open("x", "c2").reason == Reason.QUOTA_EXCEEDED  # 5 known, cap 3
    for name in ("a0", "a1"):
        assert small.send(ForgetAuction(name)).ok
    assert small.open("x", "c2").reason == Reason.QUOTA_EXCEEDED  # 3 known, cap 3
    small.send(CloseAuction("a2"))
    small.send(ForgetAuction("a2"))
    assert small.open("x", "c1").reason == Reason.QUOTA_EXCEEDED  # c1: 2 open, cap 2
    assert small.open("x", "c2").ok  # 2 known, cap 3


def v2_snapshot(state: AuctionState) -> bytes:
    """`state` as a version 2 snapshot: the rows without their opened_index and opener, the
    sessions without their command tag."""
    version, applied, rows, sessions = msgpack.unpackb(state.snapshot(), raw=False)
    assert version == 3
    return msgpack.packb([2, applied, [row[:10] for row in rows],
                          [session[:4] for session in sessions]])


def test_a_version_2_snapshot_restores_with_openers_unknown() -> None:
    d = Driver(AuctionState(max_open_auctions_per_client=1))
    d.open("a", "c1")
    d.send(Bid("a", "bo", 5))
    d.open("b", "c2")
    d.send(CloseAuction("b"))
    old = Driver(AuctionState.from_snapshot(v2_snapshot(d.state),
                                            max_open_auctions_per_client=1))
    old.seqs = dict(d.seqs)
    assert old.state.result("a") == d.state.result("a")
    assert old.state.open_auctions_of("c1") == 0  # its opener was not kept
    assert old.open("a2", "c1").ok and old.open("a3", "c1").reason == Reason.QUOTA_EXCEEDED
    # Written again as version 3, with what version 2 did not know left empty.
    rows = content(AuctionState.from_snapshot(v2_snapshot(d.state)))
    assert [row[10:] for row in rows] == [[0, ""], [0, ""]]
    events = AuctionState.from_snapshot(v2_snapshot(d.state)).events_after("a", -1)
    assert (events[0]["type"], events[0]["index"]) == ("auction_opened", None)


# --- determinism ----------------------------------------------------------------------------


def quota_stream(seed: int, length: int) -> list[bytes]:
    """Opens by three clients and the leader against small caps, bids, closes and forgets,
    with retries: quota refusals are frequent."""
    rng = random.Random(seed)
    seqs = {"c1": 0, "c2": 0, "c3": 0, "": 0}
    out: list[bytes] = []
    for step in range(length):
        client = rng.choice(list(seqs))
        name = f"x{rng.randrange(12)}"
        roll = rng.random()
        if roll < 0.05 and out:
            out.append(rng.choice(out[-5:]))  # a retry, or a stale seq
            continue
        if roll < 0.35:
            cmd: Any = OpenAuction(name, "t", 1, 1, 0, step + rng.randrange(1, 200))
        elif roll < 0.6:
            cmd = Bid(name, "bo", step + 1)
        elif roll < 0.8:
            cmd = CloseAuction(name)
        else:
            cmd = ForgetAuction(name)
        if client:
            seqs[client] += 1
        out.append(encode_request(Request(client, seqs[client], step, cmd)))
    return out


CAPS = {"max_auctions": 6, "max_open_auctions_per_client": 2, "max_retained_bids": 10}


def test_the_quota_stream_meets_both_caps_and_forgets() -> None:
    state, stream = AuctionState(**CAPS), quota_stream(0, 400)
    replies = [state.apply(n + 1, 1, p) for n, p in enumerate(stream)]
    refused = [r.detail or "" for r in replies if r.reason == Reason.QUOTA_EXCEEDED]
    assert any("auctions are known" in d for d in refused)
    assert any("open auctions" in d for d in refused)
    forgot = [r.ok for p, r in zip(stream, replies, strict=True)
              if isinstance(decode_request(p).cmd, ForgetAuction)]
    assert True in forgot and False in forgot


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 400))
def test_replicas_with_quotas_and_forgets_stay_identical_through_restores(seed: int,
                                                                          cut: int) -> None:
    stream = quota_stream(seed, 400)
    whole, twin, half = (AuctionState(**CAPS) for _ in range(3))
    replies = [whole.apply(n + 1, 1, p) for n, p in enumerate(stream)]
    assert [twin.apply(n + 1, 1, p) for n, p in enumerate(stream)] == replies
    for n, payload in enumerate(stream[:cut]):
        half.apply(n + 1, 1, payload)
    resumed = AuctionState.from_snapshot(half.snapshot(), **CAPS)
    assert resumed.snapshot() == half.snapshot()
    assert [resumed.apply(n + 1, 1, p) for n, p in enumerate(stream) if n >= cut] == replies[cut:]
    assert whole.snapshot() == twin.snapshot() == resumed.snapshot()
    for state in (whole, resumed):
        opened = [a for a in state.auctions() if a["state"] == "open"]
        assert state.auction_count == len(state.auctions()) <= 6
        assert state.open_auction_count == len(opened)
        assert sum(state.open_auctions_of(c) for c in ("c1", "c2", "c3")) <= len(opened)
        assert state.due_to_close(10**9) == [a["auction"] for a in sorted(
            opened, key=lambda a: (a["closes_at_ms"], a["auction"]))]
