"""The demo's steps, as `zauction demo` runs them: start a local cluster, bid, kill the leader
with SIGKILL, keep bidding, measure the failover, and read the result from every survivor.

Nothing here prints: `run_demo` tells a DemoObserver what happens (the CLI shows it) and
returns a DemoReport. The cluster lives in a temporary directory that is removed afterwards,
and every node is stopped by PID however the demo ends.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from zauction.auction.commands import DEFAULT_AUCTION
from zauction.client.client import AuctionClient, BidRejected, ClientError
from zauction.tools import cluster

DEMO_AUCTION_MS = 600_000  # the default auction must outlive the demo
BIDDERS = ("alice", "bob", "carol")
LEADER_DEADLINE_S = 15.0
POLL_S = 0.1  # how often the waits below re-check their condition


@dataclass(frozen=True, slots=True)
class BidOutcome:
    bidder: str
    amount: int
    accepted: bool
    reason: str | None
    seconds: float  # from sending to the cluster's answer


@dataclass(frozen=True, slots=True)
class DemoReport:
    servers: tuple[str, ...]
    pids: tuple[int, ...]
    outcomes: tuple[BidOutcome, ...]
    killed: str
    failover_s: float
    new_leader: str | None
    expected: dict
    results: dict[str, dict | None]
    elapsed_s: float

    @property
    def agree(self) -> bool:
        return all(r == self.expected for r in self.results.values())


class DemoObserver(Protocol):
    """What the demo tells its audience, step by step."""

    def started(self, handle: cluster.ClusterHandle) -> None: ...

    def leader_elected(self, leader: str) -> None: ...

    def bidding(self, label: str, count: int) -> AbstractContextManager[
            Callable[[BidOutcome], None]]:
        """A phase of `count` bids: the context gives the callback called after each bid."""
        ...

    def leader_killed(self, addr: str) -> None: ...

    def failed_over(self, seconds: float) -> None: ...

    def stopped(self, reports: list[cluster.StopReport]) -> None: ...


def run_demo(observer: DemoObserver, *, nodes: int = 3, base_port: int = 8001,
             bids: int = 30) -> DemoReport:
    """The whole demo on `nodes` local nodes from `base_port`, with `bids` bids in all."""
    root = Path(tempfile.mkdtemp(prefix="zauction-demo-"))
    started = time.monotonic()
    handle: cluster.ClusterHandle | None = None
    try:
        # A signal while the nodes start waits until their PIDs are in `handle`, so the
        # `finally` below can stop them.
        with cluster.deferred_interrupts():
            handle = cluster.start_cluster(root, nodes=nodes, base_port=base_port,
                                           auction_duration_ms=DEMO_AUCTION_MS)
        observer.started(handle)
        return demo_steps(handle, bids, observer, started)
    finally:
        if handle is not None:
            observer.stopped(cluster.stop_cluster(handle))
        shutil.rmtree(root, ignore_errors=True)


def demo_steps(handle: cluster.ClusterHandle, total: int, observer: DemoObserver,
               started: float) -> DemoReport:
    """Bid on a running cluster, kill its leader, bid on, and read every survivor."""
    leader = cluster.wait_for_leader(handle.servers, time.monotonic() + LEADER_DEADLINE_S,
                                     handle)
    observer.leader_elected(leader)
    amounts = itertools.count(100, 5)
    with cluster.open_client(handle.servers, timeout=10.0, attempt_timeout=0.3) as client:
        wait_for_auction(client, DEFAULT_AUCTION, time.monotonic() + 10)
        before = _phase(client, observer, "bidding", total // 2, amounts)
        killed = cluster.wait_for_leader(handle.servers, time.monotonic() + 5, handle)
        cluster.kill_node(handle, killed)
        killed_at = time.monotonic()
        observer.leader_killed(killed)
        first = place_bid(client, DEFAULT_AUCTION, BIDDERS[0], next(amounts))
        failover_s = time.monotonic() - killed_at
        observer.failed_over(failover_s)
        after = _phase(client, observer, "after failover", total - total // 2 - 1, amounts)
        expected = client.result(DEFAULT_AUCTION)
        survivors = [s for s in handle.servers if s != killed]
        results = read_everywhere(survivors, DEFAULT_AUCTION, expected, time.monotonic() + 5)
        new_leader = cluster.leader_of(client.status())
    return DemoReport(tuple(handle.servers), tuple(n.pid for n in handle.nodes),
                      (*before, first, *after), killed, failover_s, new_leader, expected,
                      results, time.monotonic() - started)


def _phase(client: AuctionClient, observer: DemoObserver, label: str, count: int,
           amounts: Iterator[int]) -> list[BidOutcome]:
    with observer.bidding(label, count) as on_bid:
        return place_bids(client, DEFAULT_AUCTION, BIDDERS, count, lambda: next(amounts),
                          on_bid)


# --- the steps ------------------------------------------------------------------------------------


def wait_for_auction(client: AuctionClient, auction: str, deadline: float) -> dict:
    """Wait until `auction` exists (a new leader opens the default one) and return its result."""
    while True:
        try:
            return client.result(auction)
        except ClientError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(POLL_S)  # a bounded poll of remote state


def place_bid(client: AuctionClient, auction: str, bidder: str, amount: int) -> BidOutcome:
    started = time.monotonic()
    try:
        client.bid(amount, bidder, auction)
        accepted, reason = True, None
    except BidRejected as exc:
        accepted, reason = False, exc.reason
    return BidOutcome(bidder, amount, accepted, reason, time.monotonic() - started)


def place_bids(client: AuctionClient, auction: str, bidders: Sequence[str], count: int,
               next_amount: Callable[[], int],
               on_bid: Callable[[BidOutcome], None] = lambda _: None) -> list[BidOutcome]:
    """`count` bids, bidders in turn, each for `next_amount()`."""
    outcomes = []
    for i in range(count):
        outcome = place_bid(client, auction, bidders[i % len(bidders)], next_amount())
        outcomes.append(outcome)
        on_bid(outcome)
    return outcomes


def read_everywhere(servers: Sequence[str], auction: str, expected: dict,
                    deadline: float) -> dict[str, dict | None]:
    """Each node's own (stale, local) result, re-read until it matches `expected` or the
    deadline passes: a follower may apply the last entries a moment after the leader."""
    results: dict[str, dict | None] = {}
    for server in servers:
        client = cluster.open_client([server], timeout=1.0, attempt_timeout=0.5)
        try:
            results[server] = _read_until(client, auction, expected, deadline)
        finally:
            client.close()
    return results


def _read_until(client: AuctionClient, auction: str, expected: dict,
                deadline: float) -> dict | None:
    seen = None
    while True:
        try:
            seen = client.result(auction, stale=True)
        except ClientError:
            seen = None
        if seen == expected or time.monotonic() >= deadline:
            return seen
        time.sleep(POLL_S)  # bounded poll until the follower has applied as far
