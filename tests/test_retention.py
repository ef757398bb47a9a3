"""Bounded retention in AuctionState: bid records are capped and evicted in a deterministic
order, auctions are bounded by a quota and removed only by ForgetAuction (tests/test_quotas.py
has the quotas themselves), and snapshots round-trip the decisions; the feed's gap filling
hands a subscriber the current state when the bids it missed are no longer retained."""

from __future__ import annotations

import random
import tracemalloc
from collections import Counter, deque
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zauction.auction.commands import (
    Bid,
    CloseAuction,
    ForgetAuction,
    OpenAuction,
    Reason,
    Request,
    encode_request,
)
from zauction.auction.domain import (
    AuctionState,
    InvalidLimit,
    InvalidSnapshot,
    Reply,
    UnknownAuction,
)

FAR = 10**12  # a deadline no test reaches


def internal(cmd: Any, ts: int = 2_000) -> bytes:
    return encode_request(Request("", 0, ts, cmd))


def opening(name: str, reserve: int = 1, increment: int = 1, client: str = "",
            seq: int = 0) -> bytes:
    return encode_request(Request(client, seq, 2_000,
                                  OpenAuction(name, name, reserve, increment, 0, FAR)))


def bidding(auction: str, amount: int, bidder: str = "bo", client: str = "",
            seq: int = 0) -> bytes:
    return encode_request(Request(client, seq, 2_000, Bid(auction, bidder, amount)))


class Replica:
    """One AuctionState fed consecutive log indexes."""

    def __init__(self, state: AuctionState) -> None:
        self.state = state
        self.index = state.applied_index

    def feed(self, payloads: list[bytes]) -> list[Reply]:
        replies = []
        for payload in payloads:
            self.index += 1
            replies.append(self.state.apply(self.index, 1, payload))
        return replies


def small(**caps: int) -> Replica:
    return Replica(AuctionState(max_pending_events=1, **caps))


def restarted(replica: Replica, **caps: int) -> Replica:
    """The replica after a restart from its own snapshot."""
    return Replica(AuctionState.from_snapshot(replica.state.snapshot(), **caps))


def bids(auction: str, first: int, count: int) -> list[bytes]:
    return [bidding(auction, amount) for amount in range(first, first + count)]


def amounts(state: AuctionState, auction: str) -> list[int]:
    return [bid["amount"] for bid in state.history(auction)]


def churn(seed: int, steps: int, turnover: float = 0.005, keep_closed: int = 5) -> list[bytes]:
    """Auctions opening (by the leader or a client), taking bids (mostly accepted, some
    refused, some from sessions with retries), closing, and forgotten beyond the
    `keep_closed` last closed, a few open at a time: the long-running shape retention is
    for. `turnover` is the chance of an opening, and of a close, at each step. At most
    4 + keep_closed auctions are known at once, if every open succeeds."""
    rng = random.Random(seed)
    opened, open_now, closed_now, out = 0, [], deque[str](), []
    amount = 1
    for step in range(steps):
        roll = rng.random()
        if not open_now or roll < turnover and len(open_now) < 4:
            opened += 1
            open_now.append(f"x{opened}")
            out.append(opening(f"x{opened}", client=rng.choice(("", "c1", "c2")), seq=step))
        elif turnover <= roll < 2 * turnover and len(open_now) > 1:
            if len(closed_now) == keep_closed:  # first, so that keep_closed is never passed
                out.append(internal(ForgetAuction(closed_now.popleft())))
            closed_now.append(open_now.pop(rng.randrange(len(open_now))))
            out.append(internal(CloseAuction(closed_now[-1])))
        else:
            amount += rng.choice((1, 1, 1, 0))  # 0: refused below the increment, mostly
            client = rng.choice(("", "", "c1", "c2"))
            payload = bidding(rng.choice(open_now), amount, f"b{step % 7}", client, step)
            out.append(payload)
            if client and rng.random() < 0.05:
                out.append(payload)  # a retry: the stored reply, not a second bid
    return out


# --- caps ---------------------------------------------------------------------------------


def test_retained_bids_and_known_auctions_never_exceed_their_caps() -> None:
    # Closed auctions are bounded by the churn's own ForgetAuction now (it keeps the last 5
    # closed): the state never forgets one by itself, and no open was refused.
    replica = small(max_retained_bids=1_000, max_auctions=9)
    state, accepted, at_cap, previous = replica.state, Counter[str](), 0, b""
    for payload in churn(1, 200_000):
        reply = replica.feed([payload])[0]
        if reply.ok and reply.bidder is not None and payload != previous:  # not a retry
            accepted[reply.auction or ""] += 1
        assert reply.reason != Reason.QUOTA_EXCEEDED
        previous = payload
        assert state.retained_bid_count <= 1_000 and state.closed_auction_count <= 5
        assert state.auction_count <= 9
        at_cap += state.retained_bid_count == 1_000
    known = state.auctions()
    assert at_cap > 100_000  # the caps were really reached, and then held exactly
    assert len(known) - sum(a["state"] == "open" for a in known) == 5
    assert sum(a["retained_bids"] for a in known) == 1_000
    assert {a["auction"]: a["bids"] for a in known} == {a["auction"]: accepted[a["auction"]]
                                                         for a in known}
    assert sum(accepted.values()) > 150_000


def test_bid_count_keeps_counting_every_bid() -> None:
    replica = small(max_retained_bids=4)
    replica.feed([opening("a"), *bids("a", 1, 30)])
    state = replica.state
    assert state.bid_count("a") == state.result("a")["bids"] == 30
    assert state.result("a")["retained_bids"] == 4 and amounts(state, "a") == [27, 28, 29, 30]


def test_memory_stops_growing_once_the_caps_are_reached() -> None:
    # Each auction takes 400 bids and closes, so eviction always finds a closed history:
    # bookkeeping of the open auctions' bids must not pile up meanwhile. The auction closed
    # five before is forgotten each time.
    payloads = []
    for n in range(100):
        payloads += [opening(f"a{n}"), *bids(f"a{n}", 1, 400), internal(CloseAuction(f"a{n}"))]
        if n >= 5:
            payloads.append(internal(ForgetAuction(f"a{n - 5}")))
    replica = small(max_retained_bids=1_000, max_auctions=6)
    replica.feed(payloads[:10_000])  # caps reached, every structure at its working size
    tracemalloc.start()
    try:
        replica.feed(payloads[10_000:20_000])
        middle = tracemalloc.get_traced_memory()[0]
        replica.feed(payloads[20_000:])
        growth = tracemalloc.get_traced_memory()[0] - middle
    finally:
        tracemalloc.stop()
    assert replica.state.retained_bid_count == 1_000 and replica.state.auction_count == 5
    assert growth < 32 * 1024, f"grew {growth} bytes over 20,000 more bids"


def test_snapshot_size_stays_bounded_once_the_caps_are_reached() -> None:
    replica = small(max_retained_bids=500, max_auctions=9)
    payloads = churn(2, 60_000)
    sizes = []
    for start in range(0, len(payloads), 5_000):
        replica.feed(payloads[start:start + 5_000])
        sizes.append(len(replica.state.snapshot()))
    steady = sizes[2:]  # after the first 10,000 entries the caps hold
    assert max(steady) < 1.25 * min(steady), sizes
    assert max(steady) < 60_000  # 500 records of ~30 bytes plus a few auction summaries


def _many_retained_bids() -> AuctionState:
    """20,000 retained records over six auctions (five closed), 50 sessions."""
    payloads, amount = [], 0
    for n in range(6):
        payloads.append(opening(f"m{n}"))
        for k in range(5_000):
            amount += 1
            payloads.append(bidding(f"m{n}", amount, f"b{k % 7}", f"c{k % 50}", amount))
        payloads.append(internal(CloseAuction(f"m{n}")))
    replica = small(max_retained_bids=20_000)
    replica.feed(payloads[:-1])  # the last auction stays open
    return replica.state


def test_restore_builds_the_state_without_a_second_copy_of_it() -> None:
    # Unpacking the whole snapshot first made every bid row twice (a list, then the record)
    # and left a restored node with about twice the RSS of a live one holding the same state.
    data = _many_retained_bids().snapshot()
    tracemalloc.start()
    try:
        restored = AuctionState.from_snapshot(data, max_retained_bids=20_000)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert restored.retained_bid_count == 20_000 and restored.snapshot() == data
    assert peak < 1.4 * kept, f"peak {peak:,} bytes for a state of {kept:,}"


def test_snapshot_allocates_little_beyond_its_bytes() -> None:
    # It runs in the forked child, where every allocation is memory the node pays twice.
    state = _many_retained_bids()
    tracemalloc.start()
    try:
        data = state.snapshot()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(data), f"peak {peak:,} bytes for a snapshot of {len(data):,}"


def test_snapshot_bytes_are_plain_msgpack_of_the_documented_rows() -> None:
    # Packed piece by piece, but exactly what msgpack.packb of the nested lists gives.
    data = _many_retained_bids().snapshot()
    rows = msgpack.unpackb(data, raw=False)
    assert msgpack.packb(rows) == data
    version, applied, auctions, sessions = rows
    # Version 3: each row ends with the open's log index and the opener ("": the leader).
    assert (version, applied, len(auctions), len(sessions)) == (3, 30_011, 6, 50)
    assert [len(row) for row in auctions] == [12] * 6
    assert sum(len(row[9]) for row in auctions) == 20_000
    assert [row[10:] for row in auctions] == [[1 + 5_002 * n, ""] for n in range(6)]


@pytest.mark.parametrize("data", [None, "text", msgpack.packb([2, 0, [], []]) + b"\x00",
                                  msgpack.packb([2, 0, [], [], []]), msgpack.packb([2, 0, []])])
def test_snapshots_of_the_wrong_type_or_shape_are_refused(data: Any) -> None:
    state = AuctionState()
    with pytest.raises(InvalidSnapshot):
        state.restore(data)
    assert state.snapshot() == msgpack.packb([3, 0, [], []])


@pytest.mark.parametrize("caps", [{"max_retained_bids": 0}, {"max_auctions": -1},
                                  {"max_retained_bids": 1.5}, {"max_sessions": True},
                                  {"max_open_auctions_per_client": 0}])
def test_limits_must_be_positive_ints(caps: dict[str, Any]) -> None:
    with pytest.raises(InvalidLimit):
        AuctionState(**caps)


# --- what is evicted, in which order ----------------------------------------------------------


def test_the_high_bid_survives_eviction_and_later_bids_are_judged_against_it() -> None:
    replica = small(max_retained_bids=3)
    replica.feed([opening("a", reserve=50, increment=10), opening("b"), bidding("a", 100)])
    replica.feed(bids("b", 1, 5))  # evicts a's only record, its high
    state = replica.state
    assert state.result("a")["retained_bids"] == 0 and state.history("a") == []
    assert state.result("a")["highest"] == {"bidder": "bo", "amount": 100}
    low, ok = replica.feed([bidding("a", 105), bidding("a", 110, "al")])
    assert (low.ok, low.reason, low.high, low.min_next) == (False, Reason.BELOW_INCREMENT,
                                                            100, 110)
    assert (ok.ok, ok.high, ok.min_next) == (True, 110, 120)
    replica.feed([*bids("b", 10, 5), internal(CloseAuction("a"))])  # a's records evicted again
    assert state.result("a")["winner"] == {"bidder": "al", "amount": 110}
    assert state.bid_count("a") == 2 and state.history("a") == []


@pytest.mark.parametrize("restart", [False, True])
def test_open_auctions_lose_their_oldest_bids_by_log_index(restart: bool) -> None:
    replica = small(max_retained_bids=4)
    replica.feed([opening("a"), opening("b"), bidding("a", 1), bidding("b", 1),
                  bidding("b", 2), bidding("a", 2)])
    if restart:
        replica = restarted(replica, max_retained_bids=4)
    replica.feed([bidding("a", 3)])
    state = replica.state
    assert (amounts(state, "a"), amounts(state, "b")) == ([2, 3], [1, 2])  # a's 1 went first
    replica.feed([bidding("a", 4), bidding("a", 5)])
    assert (amounts(state, "a"), amounts(state, "b")) == ([2, 3, 4, 5], [])


@pytest.mark.parametrize("restart", [False, True])
def test_closed_histories_go_first_oldest_closed_first(restart: bool) -> None:
    replica = small(max_retained_bids=6)
    replica.feed([opening("a"), opening("b"), opening("c"), *bids("a", 1, 2), *bids("b", 1, 2),
                  *bids("c", 1, 2), internal(CloseAuction("b")), internal(CloseAuction("a"))])
    if restart:  # the close order, not the name order, must survive the snapshot
        replica = restarted(replica, max_retained_bids=6)
    state = replica.state
    replica.feed(bids("c", 3, 3))  # closed b lost both, then closed a one; open c nothing
    assert (amounts(state, "a"), amounts(state, "b")) == ([2], [])
    assert amounts(state, "c") == [1, 2, 3, 4, 5]
    replica.feed(bids("c", 6, 2))  # closed histories gone: c's own oldest now
    assert (amounts(state, "a"), amounts(state, "c")) == ([], [2, 3, 4, 5, 6, 7])
    assert state.result("b")["winner"] == {"bidder": "bo", "amount": 2}  # summary kept


@pytest.mark.parametrize("restart", [False, True])
def test_closed_auctions_are_kept_until_forgotten_and_opens_beyond_the_cap_refused(
        restart: bool) -> None:
    # Formerly the oldest closed auction was forgotten beyond max_closed_auctions: a real
    # result could be pushed out by auctions nobody cared about. Now the open is refused.
    replica = small(max_auctions=3)
    replica.feed([opening("a"), opening("b"), opening("c"), *bids("c", 1, 3), *bids("a", 1, 2),
                  internal(CloseAuction("c")), internal(CloseAuction("a"))])
    if restart:
        replica = restarted(replica, max_auctions=3)
    state = replica.state
    assert state.retained_bid_count == 5
    [closing] = replica.feed([internal(CloseAuction("b"))])
    assert closing.ok and state.closed_auction_count == 3 and state.retained_bid_count == 5
    assert state.result("c")["winner"] == {"bidder": "bo", "amount": 3}
    assert [a["auction"] for a in state.auctions()] == ["a", "b", "c"]
    [refused] = replica.feed([opening("d")])
    assert (refused.ok, refused.reason) == (False, Reason.QUOTA_EXCEEDED)
    with pytest.raises(UnknownAuction):
        state.result("d")
    [forgot, reopened] = replica.feed([internal(ForgetAuction("c")), opening("d")])
    assert forgot.ok and reopened.ok and state.retained_bid_count == 2
    with pytest.raises(UnknownAuction):
        state.result("c")
    late = replica.feed([bidding("c", 9)])[0]
    assert (late.ok, late.reason) == (False, Reason.UNKNOWN_AUCTION)


@pytest.mark.parametrize("restart", [False, True])
def test_eviction_skips_the_records_of_forgotten_auctions(restart: bool) -> None:
    replica = small(max_retained_bids=6)
    replica.feed([opening("a"), opening("b"), opening("c"), *bids("a", 1, 2), *bids("b", 1, 2),
                  *bids("c", 1, 2), internal(CloseAuction("b")), internal(CloseAuction("a")),
                  internal(ForgetAuction("b"))])  # b, the oldest closed, goes with its records
    if restart:
        replica = restarted(replica, max_retained_bids=6)
    state = replica.state
    assert state.retained_bid_count == 4
    replica.feed(bids("c", 3, 3))  # room for two, then closed a loses one
    assert (amounts(state, "a"), amounts(state, "c")) == ([2], [1, 2, 3, 4, 5])
    replica.feed(bids("c", 6, 2))
    assert (amounts(state, "a"), amounts(state, "c")) == ([], [2, 3, 4, 5, 6, 7])
    assert state.retained_bid_count == 6


def test_forgotten_auctions_do_not_pile_up_in_the_eviction_order() -> None:
    # Forgotten auctions leave their place in the closed order lazily: with few bids no
    # eviction ever reaches them, so the order must be compacted as they accumulate.
    replica = small(max_retained_bids=1_000_000)
    for n in range(6_000):
        replica.feed([opening(f"f{n}"), bidding(f"f{n}", 1), internal(CloseAuction(f"f{n}")),
                      internal(ForgetAuction(f"f{n}"))])
    retention = replica.state._retention
    assert replica.state.retained_bid_count == 0 and replica.state.auction_count == 0
    assert len(retention.closed_with_bids) <= 2 * 1_024 + 1


# --- history and the feed's gap filling --------------------------------------------------------


def test_history_is_the_retained_tail_with_its_feed_seq() -> None:
    replica = small(max_retained_bids=5)
    replica.feed([opening("a"), *bids("a", 101, 12)])
    state = replica.state
    assert state.history_start_seq("a") == 8
    assert [(b["index"], b["amount"]) for b in state.history("a")] == [
        (9, 108), (10, 109), (11, 110), (12, 111), (13, 112)]  # seq n is log index n + 1 here
    assert amounts(state, "a") == [100 + seq for seq in range(8, 13)]
    assert [b["amount"] for b in state.history("a", after_seq=10)] == [111, 112]
    assert state.history("a", after_seq=12) == [] and len(state.history("a", -3)) == 5


def test_events_after_gives_the_current_state_when_missed_bids_are_gone() -> None:
    replica = small(max_retained_bids=5)
    replica.feed([opening("a"), *bids("a", 101, 12)])
    state = replica.state
    reset, *rest = state.events_after("a", 2)
    # state_seq: the state includes every event up to the auction's last seq (bid 12).
    assert reset == {"type": "snapshot", "auction": "a", "seq": 7, "state_seq": 12,
                     "state": state.result("a")}
    assert [(e["type"], e["seq"], e["amount"]) for e in rest] == [
        ("bid_accepted", seq, 100 + seq) for seq in range(8, 13)]
    assert [e["seq"] for e in state.events_after("a", 7)] == [8, 9, 10, 11, 12]
    assert [e["seq"] for e in state.events_after("a", 10)] == [11, 12]
    replica.feed([internal(CloseAuction("a")), opening("b"), *bids("b", 1, 5)])
    reset, closed = state.events_after("a", 0)  # a kept no record: state, then the close
    assert (reset["type"], reset["seq"], reset["state"]["state"]) == ("snapshot", 12, "closed")
    assert reset["state_seq"] == 13  # the close is in the state already
    assert (closed["type"], closed["seq"], closed["amount"]) == ("auction_closed", 13, 112)
    assert state.events_after("a", 13) == []


class Subscriber:
    """A feed subscriber's view of one auction, kept by the documented rule: a "snapshot"
    event resets the view to its `state`, and an event with seq <= the last `state_seq`
    is already in it."""

    def __init__(self, naive: bool = False) -> None:
        self.naive = naive  # applies every event: the double counting the rule prevents
        self.state_seq = -1
        self.view: dict[str, Any] = {"bids": 0, "highest": None, "state": "open",
                                     "winner": None}

    def apply(self, event: dict[str, Any]) -> None:
        if event["type"] == "snapshot":
            self.view = {k: event["state"][k] for k in self.view}
            self.state_seq = event["state_seq"]
            return
        if event["seq"] <= self.state_seq and not self.naive:
            return
        if event["type"] == "bid_accepted":
            self.view["bids"] += 1
            self.view["highest"] = {"bidder": event["bidder"], "amount": event["amount"]}
        elif event["type"] == "auction_closed":
            self.view["state"] = "closed"
            self.view["winner"] = self.view["highest"]

    def agrees_with(self, result: dict[str, Any]) -> bool:
        return self.view == {k: result[k] for k in self.view}


@pytest.mark.parametrize("close", [False, True])
def test_a_subscriber_applying_the_state_seq_rule_converges_to_the_result(close: bool) -> None:
    replica = small(max_retained_bids=5)
    replica.feed([opening("a"), *bids("a", 101, 12)])
    if close:
        replica.feed([internal(CloseAuction("a"))])
    state = replica.state
    for after in range(-1, 15):
        careful, naive = Subscriber(), Subscriber(naive=True)
        for event in state.events_after("a", after):
            careful.apply(event)
            naive.apply(event)
        if after < 7:  # the bids after `after` are gone: a snapshot event comes first
            assert careful.agrees_with(state.result("a")), after
            assert naive.view["bids"] == 12 + 5  # the retained bids counted twice
    # Live events after the fetch carry on from state_seq.
    careful = Subscriber()
    for event in state.events_after("a", 0):
        careful.apply(event)
    if not close:
        [reply] = replica.feed([bidding("a", 200, "al")])
        careful.apply({"type": "bid_accepted", "seq": 13, "bidder": "al", "amount": 200})
        assert reply.ok
    assert careful.agrees_with(state.result("a"))


# --- determinism and snapshots -----------------------------------------------------------------


# Small enough that opens are refused now and then: 4 open + 3 closed may exceed 6 known,
# and one client may not have more than 2 open.
CAPS = {"max_retained_bids": 40, "max_auctions": 6, "max_sessions": 2,
        "max_open_auctions_per_client": 2}


def fresh() -> Replica:
    return Replica(AuctionState(**CAPS))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.integers(0, 1_500), min_size=1, max_size=3))
def test_replicas_and_restored_replicas_make_identical_decisions(seed: int,
                                                                 cuts: list[int]) -> None:
    payloads = churn(seed, 1_500, turnover=0.03, keep_closed=3)
    whole = fresh()
    replies = whole.feed(payloads)
    resumed, done = fresh(), 0
    for cut in sorted(cuts):  # restart from a snapshot at every cut, as a node would
        assert resumed.feed(payloads[done:cut]) == replies[done:cut]
        snap = resumed.state.snapshot()
        resumed = Replica(AuctionState.from_snapshot(snap, **CAPS))
        assert resumed.state.snapshot() == snap
        done = cut
    assert resumed.feed(payloads[done:]) == replies[done:]
    twin = fresh()
    twin.feed(payloads)
    assert whole.state.snapshot() == resumed.state.snapshot() == twin.state.snapshot()
    assert whole.state.auctions() == resumed.state.auctions()


def test_restoring_with_smaller_caps_evicts_bids_but_keeps_every_auction() -> None:
    replica = small()
    replica.feed([opening("a"), opening("b"), opening("c"), *bids("a", 1, 4), *bids("b", 1, 4),
                  internal(CloseAuction("a")), internal(CloseAuction("b"))])
    snap = replica.state.snapshot()
    shrunk = Replica(AuctionState.from_snapshot(snap, max_retained_bids=3, max_auctions=1))
    # Formerly the oldest closed auction (a) was dropped here: now all are kept, and
    # opens are refused instead.
    assert [a["auction"] for a in shrunk.state.auctions()] == ["a", "b", "c"]
    assert shrunk.state.retained_bid_count == 3 and amounts(shrunk.state, "b") == [2, 3, 4]
    assert shrunk.feed([opening("d")])[0].reason == Reason.QUOTA_EXCEEDED


def retention_corruptions() -> list[bytes]:
    replica = small()
    replica.feed([opening("a"), opening("b"), *bids("a", 1, 3), internal(CloseAuction("a")),
                  internal(CloseAuction("b"))])
    edits = {
        "bids_total below the retained": lambda rows: rows[0].__setitem__(7, 2),
        "high is not the last bid": lambda rows: rows[0][8].__setitem__(2, 99),
        "no high but bids": lambda rows: rows[0].__setitem__(8, None),
        "a high without bids": lambda rows: rows[1].__setitem__(8, [3, "bo", 1, 2_000]),
        "bid indexes repeat": lambda rows: rows[0][9][0].__setitem__(0, rows[0][9][1][0]),
        "two auctions closed at one index": lambda rows: rows[1].__setitem__(6, rows[0][6]),
        "closed after the applied index": lambda rows: rows[1].__setitem__(6, 10**6),
        "closed_index not an int": lambda rows: rows[1].__setitem__(6, True),
        "old row shape": lambda rows: rows[0].pop(7),
        "version 2 row shape in version 3": lambda rows: [row.__delitem__(slice(10, None))
                                                         for row in rows],
        "opened after its first bid": lambda rows: rows[0].__setitem__(10, 4),
        "opened after its close": lambda rows: rows[1].__setitem__(10, rows[1][6]),
        "opened after the applied index": lambda rows: rows[1].__setitem__(10, 10**6),
        "opener not a name": lambda rows: rows[0].__setitem__(11, 5),
    }
    out = []
    for edit in edits.values():
        wire = msgpack.unpackb(replica.state.snapshot(), raw=False)
        edit(wire[2])
        out.append(msgpack.packb(wire))
    return out


@pytest.mark.parametrize("data", retention_corruptions())
def test_inconsistent_retention_in_a_snapshot_is_refused_and_changes_nothing(
        data: bytes) -> None:
    replica = small(max_retained_bids=2)
    replica.feed([opening("z"), *bids("z", 1, 5)])
    before = replica.state.snapshot()
    with pytest.raises(InvalidSnapshot):
        replica.state.restore(data)
    assert replica.state.snapshot() == before
