"""FeedWatcher's wiring: a SUB socket fed by an in-process PUB, its requests to a fake client;
and the client package's import graph (the watcher no longer imports the request client)."""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from zauction.client.client import AuctionClient
from zauction.client.feed import FeedWatcher
from zauction.protocol import CLUSTER_TOPIC, FEED_PREFIX, feed_topic

CLIENT_PACKAGE = Path(__file__).resolve().parent.parent / "zauction" / "client"
_pub_names = itertools.count()


def bid(seq: int, auction: str = "a", term: int | None = 1) -> dict[str, Any]:
    event = {"index": 10 + seq, "type": "bid_accepted", "auction": auction, "seq": seq,
             "bidder": "bo", "amount": 100 + seq}
    if term is not None:
        event["term"] = term
    return event


class FakeCluster:
    """Stands in for AuctionClient: one node whose PUB is an inproc socket, and whose
    `auctions` / `events` answers follow `bids`, the accepted bids of auction "a"."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.context = ctx
        self.servers = ["n1"]
        self.address = f"inproc://feed-test-{next(_pub_names)}"
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(self.address)
        self.bids = 0
        self.fetches: list[tuple[str, int]] = []

    def pub_endpoint(self, server: str, timeout: float = 1.0) -> str | None:
        return self.address

    def auctions(self, stale: bool = False) -> list[dict]:
        return [{"auction": "a", "bids": self.bids, "state": "open"}]

    def events_after(self, auction: str, after_seq: int) -> list[dict]:
        self.fetches.append((auction, after_seq))
        return [bid(seq, term=None) for seq in range(after_seq + 1, self.bids + 1)]

    def publish(self, topic: bytes, *events: dict) -> None:
        self.pub.send_multipart([topic, msgpack.packb(list(events))])


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    ctx = zmq.Context()
    fake = FakeCluster(ctx)
    yield fake
    fake.pub.close(linger=0)
    ctx.term()


def take(events: Iterator[dict], count: int) -> list[tuple[str, int]]:
    return [(e["auction"], e["seq"]) for e in itertools.islice(events, count)]


@pytest.mark.timeout(30)
def test_the_watcher_delivers_live_or_fetched_events_once_each(cluster: FakeCluster) -> None:
    # Whether PUB delivers an event or drops it (a slow joiner), the watcher delivers it:
    # live, or fetched when the gap or the quiet check shows it missing.
    cluster.bids = 2
    with FeedWatcher(cluster, "a", idle_s=0.05) as watcher:
        assert dict(watcher.seen) == {"a": 2}  # the baseline: earlier bids are history
        events = iter(watcher)
        cluster.bids = 3
        cluster.publish(feed_topic("a"), bid(3))
        assert take(events, 1) == [("a", 3)]
        cluster.bids = 6
        cluster.publish(feed_topic("a"), bid(6))  # 4 and 5 never published: a gap
        assert take(events, 3) == [("a", 4), ("a", 5), ("a", 6)]
        assert ("a", 3) in cluster.fetches
        cluster.bids = 7
        cluster.publish(feed_topic("ab"), bid(1, "ab"))  # another auction
        cluster.publish(feed_topic("a"), bid(6), bid(5), bid(7))  # duplicates from another node
        assert take(events, 1) == [("a", 7)]
        assert watcher.filled >= 2 and watcher.seen["a"] == 7


def test_the_client_lends_its_context_for_the_feed() -> None:
    ctx = zmq.Context()
    try:
        with AuctionClient(["localhost:1"], context=ctx) as client:
            assert client.context is ctx
    finally:
        ctx.term()


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """The zauction modules a file imports, and those it imports inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module)
        elif isinstance(node, ast.Import):
            top.update(alias.name for alias in node.names)
    nested = [n.module or "" for f in ast.walk(tree)
              if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return {m for m in top if m.startswith("zauction")}, nested


def test_client_modules_import_no_circle_and_nothing_lazily() -> None:
    graph = {}
    for path in sorted(CLIENT_PACKAGE.glob("*.py")):
        top, nested = _imports(path)
        assert nested == [], f"{path.name} imports inside a function: {nested}"
        graph[f"zauction.client.{path.stem}"] = {m for m in top if m.startswith("zauction.client")}
    assert "zauction.client.client" not in graph["zauction.client.feed"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module not in done:
            for imported in graph.get(module, ()):
                visit(imported, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


def test_one_auctions_topic_is_never_a_prefix_of_anothers() -> None:
    # ZeroMQ matches subscriptions by prefix: without a terminator, a subscriber to "a"
    # would also hear "ab", and an auction named "~cluster" the leader changes.
    names = ["a", "ab", "a/b", "~cluster", "default", "défault"]
    topics = [feed_topic(n) for n in names] + [CLUSTER_TOPIC]
    for one in topics:
        assert one.startswith(FEED_PREFIX)
        for other in topics:
            assert one == other or not other.startswith(one), (one, other)


def test_a_subscriber_to_one_auction_hears_only_its_topic_over_real_pub_sub() -> None:
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.setsockopt(zmq.SUBSCRIBE, feed_topic("a"))
        sub.connect(f"tcp://127.0.0.1:{port}")
        heard: list[bytes] = []
        for _ in range(500):  # until the subscription has reached the PUB
            pub.send_multipart([feed_topic("ab"), b"other"])
            pub.send_multipart([feed_topic("a"), b"mine"])
            if sub.poll(10):
                heard.append(sub.recv_multipart()[0])
                break
        assert heard == [feed_topic("a")]
        while sub.poll(50):
            heard.append(sub.recv_multipart()[0])
        assert set(heard) == {feed_topic("a")}
    finally:
        pub.close(linger=0)
        sub.close(linger=0)
        ctx.term()
