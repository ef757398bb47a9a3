"""FeedLog, the feed's delivery rules without a socket or a clock: duplicates, reordering,
gaps and their filling, snapshot resets, several auctions, leader changes, quiet periods."""

from __future__ import annotations

from typing import Any

from zauction.client.feedlog import FeedLog, Gap


def opened(auction: str = "a") -> dict[str, Any]:
    return {"index": 1, "term": 1, "type": "auction_opened", "auction": auction, "seq": 0}


def bid(seq: int, auction: str = "a", term: int | None = 1) -> dict[str, Any]:
    event = {"index": 10 + seq, "type": "bid_accepted", "auction": auction, "seq": seq,
             "bidder": "bo", "amount": 100 + seq}
    if term is not None:
        event["term"] = term
    return event


def closed(seq: int, auction: str = "a") -> dict[str, Any]:
    return {"index": 99, "term": 1, "type": "auction_closed", "auction": auction, "seq": seq,
            "winner": "bo", "amount": 100 + seq - 1}


def leader(index: int) -> dict[str, Any]:
    return {"type": "leader_changed", "index": index, "term": 2, "auction": None}


def summary(auction: str, bids: int, state: str = "open") -> dict[str, Any]:
    return {"auction": auction, "bids": bids, "state": state}


def offer_all(log: FeedLog, events: list[Any]) -> list[dict]:
    out: list[dict] = []
    for event in events:
        out += log.offer(event)
    return out


def seqs(events: list[dict]) -> list[tuple[str, int]]:
    return [(e["auction"], e["seq"]) for e in events]


# --- in order, duplicates, reordering --------------------------------------------------------


def test_events_in_order_are_delivered_once_each() -> None:
    log = FeedLog()
    events = [opened(), bid(1), bid(2), closed(3)]
    assert offer_all(log, events) == events
    assert log.seen == {"a": 3} and log.gaps() == [] and log.filled == 0


def test_the_same_event_from_every_node_is_delivered_once() -> None:
    log = FeedLog()
    out = offer_all(log, [opened(), opened(), bid(1), bid(1), bid(1), bid(2), bid(1)])
    assert seqs(out) == [("a", 0), ("a", 1), ("a", 2)]


def test_an_event_that_arrives_after_a_later_one_was_filled_is_dropped() -> None:
    log = FeedLog()
    offer_all(log, [opened(), bid(1)])
    assert log.offer(bid(3)) == []  # 2 is missing: held
    assert log.fill("a", [bid(2, term=None), bid(3, term=None)]) != []
    assert log.offer(bid(2)) == [] and log.offer(bid(3)) == []


def test_an_auction_first_heard_at_its_opening_or_first_bid_needs_no_fetch() -> None:
    log = FeedLog()
    assert seqs(log.offer(opened("a"))) == [("a", 0)]
    assert seqs(log.offer(bid(1, "b"))) == [("b", 1)]  # its opening was missed: not fetched
    assert log.gaps() == []


# --- gaps -----------------------------------------------------------------------------------


def test_a_gap_holds_the_event_until_the_missed_ones_are_filled() -> None:
    log = FeedLog()
    offer_all(log, [opened(), bid(1)])
    assert log.offer(bid(4)) == []
    assert log.gaps() == [Gap("a", 1)]
    out = log.fill("a", [bid(2, term=None), bid(3, term=None)])
    assert seqs(out) == [("a", 2), ("a", 3), ("a", 4)]
    assert out[2] == bid(4)  # the held event as heard, with its term
    assert log.gaps() == [] and log.seen["a"] == 4 and log.filled == 2


def test_filled_events_get_a_null_term_and_are_copies() -> None:
    log = FeedLog()
    log.offer(opened())
    log.offer(bid(3))
    fetched = [bid(1, term=None), bid(2, term=None), bid(3, term=None)]
    out = log.fill("a", fetched)
    assert [e["term"] for e in out] == [None, None, None]
    assert list(out[0])[-1] == "term"  # added at the end, as setdefault would
    assert "term" not in fetched[0]
    assert log.filled == 3  # the held copy of 3 was not needed


def test_a_fetch_that_brings_more_than_the_gap_delivers_it_all_once() -> None:
    log = FeedLog()
    offer_all(log, [opened(), bid(1), bid(3)])
    out = log.fill("a", [bid(2, term=None), bid(3, term=None), bid(4, term=None)])
    assert seqs(out) == [("a", 2), ("a", 3), ("a", 4)]
    assert log.offer(bid(4)) == []


def test_a_gap_before_any_event_fetches_from_the_opening() -> None:
    log = FeedLog()
    assert log.offer(bid(3)) == []
    assert log.gaps() == [Gap("a", -1)]  # events after -1 start with the auction's opening
    out = log.fill("a", [opened(), bid(1, term=None), bid(2, term=None)])
    assert seqs(out) == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]


def test_events_heard_while_a_gap_is_open_wait_behind_it_in_seq_order() -> None:
    log = FeedLog()
    offer_all(log, [opened(), bid(1)])
    assert offer_all(log, [bid(5), bid(3), bid(6), bid(5)]) == []
    assert log.gaps() == [Gap("a", 1)]
    out = log.fill("a", [bid(2, term=None)])
    assert seqs(out) == [("a", 2), ("a", 3), ("a", 5), ("a", 6)]  # 4 is not fetched twice


def test_a_gap_that_cannot_be_fetched_is_skipped() -> None:
    log = FeedLog()
    offer_all(log, [opened(), bid(1), bid(4)])
    assert seqs(log.skip_gap("a")) == [("a", 4)]
    assert log.gaps() == [] and log.seen["a"] == 4 and log.filled == 0
    assert seqs(log.offer(bid(5))) == [("a", 5)]


def test_malformed_fetched_events_are_ignored() -> None:
    log = FeedLog()
    offer_all(log, [opened(), bid(3)])
    out = log.fill("a", ["junk", {"seq": "2"}, {"type": "bid_accepted"}, bid(1, term=None)])
    assert seqs(out) == [("a", 1), ("a", 3)]


# --- snapshot resets ------------------------------------------------------------------------


def test_a_snapshot_event_resets_the_auction_then_the_retained_events_follow() -> None:
    log = FeedLog()
    offer_all(log, [opened(), bid(1)])
    log.offer(bid(9))
    state = {"auction": "a", "state": "open", "bids": 9}
    snapshot = {"type": "snapshot", "auction": "a", "seq": 6, "state": state}
    out = log.fill("a", [snapshot, bid(7, term=None), bid(8, term=None), bid(9, term=None)])
    assert [(e["type"], e["seq"]) for e in out] == [
        ("snapshot", 6), ("bid_accepted", 7), ("bid_accepted", 8), ("bid_accepted", 9)]
    assert out[0]["state"] == state and out[0]["term"] is None
    assert log.offer(bid(5)) == [] and log.seen["a"] == 9


# --- several auctions -----------------------------------------------------------------------


def test_auctions_are_numbered_and_filled_independently() -> None:
    log = FeedLog()
    out = offer_all(log, [opened("a"), opened("b"), bid(1, "a"), bid(1, "b"), bid(1, "a"),
                          bid(3, "b"), bid(2, "a")])
    assert seqs(out) == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]
    assert log.gaps() == [Gap("b", 1)]
    assert seqs(log.offer(bid(3, "a"))) == [("a", 3)]  # b's gap does not hold a back
    assert seqs(log.fill("b", [bid(2, "b", term=None)])) == [("b", 2), ("b", 3)]


def test_watching_one_auction_ignores_the_others() -> None:
    log = FeedLog("a")
    # PUB topics match by prefix: a subscriber to feed/a also hears feed/ab.
    out = offer_all(log, [opened("ab"), opened("a"), bid(1, "ab"), bid(1, "a")])
    assert seqs(out) == [("a", 0), ("a", 1)]
    log.baseline([summary("a", 1), summary("ab", 5)])
    assert log.resync([summary("a", 1), summary("ab", 9)]) == []
    assert dict(log.seen) == {"a": 1}


# --- the cluster's counts: baseline and resync ---------------------------------------------


def test_the_baseline_makes_earlier_events_history() -> None:
    log = FeedLog()
    log.baseline([summary("a", 4), summary("c", 2, "closed"), "junk", {"auction": "x"}])
    assert dict(log.seen) == {"a": 4, "c": 3}
    assert log.offer(bid(4)) == [] and log.offer(closed(3, "c")) == []
    assert seqs(log.offer(bid(5))) == [("a", 5)]


def test_resync_asks_for_what_the_cluster_has_beyond_the_delivered() -> None:
    log = FeedLog()
    offer_all(log, [opened("a"), bid(1, "a"), opened("b")])
    gaps = log.resync([summary("a", 3), summary("b", 0), summary("c", 2, "closed")])
    assert gaps == [Gap("a", 1), Gap("c", 0)]
    assert seqs(log.fill("a", [bid(2, term=None), bid(3, term=None)])) == [("a", 2), ("a", 3)]
    assert seqs(log.fill("c", [bid(1, "c", None), bid(2, "c", None), closed(3, "c")])) == [
        ("c", 1), ("c", 2), ("c", 3)]
    assert log.resync([summary("a", 3), summary("c", 2, "closed")]) == []


def test_resync_keeps_an_open_gaps_start() -> None:
    log = FeedLog()
    offer_all(log, [opened(), bid(1), bid(4)])
    assert log.resync([summary("a", 6)]) == [Gap("a", 1)]


# --- leader changes -------------------------------------------------------------------------


def test_leader_changes_are_delivered_once_in_index_order() -> None:
    log = FeedLog("a")  # whatever auction is watched
    out = offer_all(log, [leader(5), leader(5), leader(3), leader(8), leader(7)])
    assert [e["index"] for e in out] == [5, 8]
    assert log.leader_index == 8


def test_malformed_events_are_dropped() -> None:
    log = FeedLog()
    junk = [None, 5, [], "x", {}, {"type": "bid_accepted", "auction": "a"},
            {"auction": 5, "seq": 1}, {"auction": "a", "seq": "1"}, {"auction": "a", "seq": 1.0},
            {"type": "leader_changed"}, {"type": "leader_changed", "index": "9"},
            {"type": "leader_changed", "index": 9.0}]
    assert offer_all(log, junk) == []
    assert log.seen == {} and log.gaps() == [] and log.leader_index == 0


# --- quiet periods --------------------------------------------------------------------------


def test_resync_is_due_once_per_quiet_period() -> None:
    log = FeedLog(idle_s=1.0)
    log.heard(100.0)
    assert not log.resync_due(100.5)
    assert not log.resync_due(101.0)
    assert log.resync_due(101.1)
    assert not log.resync_due(101.5)  # the check itself restarts the period
    assert log.resync_due(102.2)
    log.heard(102.5)
    assert not log.resync_due(103.4)


def test_nothing_is_due_before_the_first_heard() -> None:
    log = FeedLog(idle_s=1.0)
    assert not log.resync_due(50.0)
    assert log.resync_due(51.5)
