"""The in-memory transport keeps the same contract as the ZeroMQ one: the same scenario runs
against both, and then what only the in-memory twin does (detach, deliver, record)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from test_transport import Cluster, free_address, poll_until

from brokerless.transport import (
    FromPeer,
    FromRouter,
    FromSub,
    InvalidFrame,
    MemoryNetwork,
    MemoryTransport,
    Outgoing,
    Transport,
    TransportClosed,
    UnknownPeer,
)

Pair = tuple[Transport, Transport]


@pytest.fixture(params=["memory", "zeromq"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    if request.param == "memory":
        network = MemoryNetwork()
        ids = ("127.0.0.1:1", "127.0.0.1:2")
        yield tuple(MemoryTransport(i, ids, network=network) for i in ids)  # type: ignore[misc]
        return
    cluster = Cluster()
    ids = [free_address(), free_address()]
    try:
        yield cluster.node(ids[0], ids), cluster.node(ids[1], ids)
    finally:
        cluster.close()


def arrives(transports: list[Transport], node: Transport, wanted: object,
            tick: Callable[[], None] = lambda: None) -> list:
    inbox = poll_until(transports, lambda box: wanted in box[node.node_id], tick)
    return inbox[node.node_id]


def test_send_arrives_from_the_router_with_the_senders_id_and_reply_comes_back(pair: Pair):
    x, y = pair
    x.send(y.node_id, b"K", b"request")
    request = FromRouter(x.node_id.encode(), b"K", b"request")
    arrives([x, y], y, request)
    assert y.peer_of(request.identity) == x.node_id
    assert y.peer_of(b"someone else") is None
    assert y.reply(request.identity, b"R", b"answer")
    arrives([x, y], x, FromPeer(y.node_id, b"R", b"answer"))


def test_publish_reaches_subscribers_of_a_matching_prefix_only(pair: Pair):
    x, y = pair
    y.subscribe(b"hb")

    def tick() -> None:  # a new subscriber may miss the first messages: keep publishing
        x.publish(b"other", b"not for y")
        x.publish(b"hb/1", b"beat")

    heard = arrives([x, y], y, FromSub(x.node_id, b"hb/1", b"beat"), tick)
    assert all(event.topic.startswith(b"hb") for event in heard)


def test_misuse_is_refused_with_typed_errors(pair: Pair):
    x, y = pair
    with pytest.raises(UnknownPeer):
        x.send("127.0.0.9:9", b"K", b"")
    with pytest.raises(InvalidFrame):
        x.send(y.node_id, b"", b"payload")
    with pytest.raises(InvalidFrame):
        x.reply(b"", b"K", b"payload")
    x.close()
    with pytest.raises(TransportClosed):
        x.send(y.node_id, b"K", b"")
    x.close()  # twice is fine


def test_a_detached_node_hears_nothing_and_its_senders_count_the_drop():
    network = MemoryNetwork()
    ids = ("a", "b", "c")
    a, b, c = (MemoryTransport(i, ids, network=network) for i in ids)
    b.subscribe(b"")
    network.detach("b")
    assert a.send("b", b"K", b"lost") is False and a.stats.sends_dropped == 1
    a.publish(b"hb", b"lost too")
    assert b.poll(0) == []
    network.attach("b")
    assert a.send("b", b"K", b"kept")
    assert b.poll(0) == [FromRouter(b"a", b"K", b"kept")]
    assert c.poll(0) == []


def test_alone_it_records_what_was_sent_and_returns_what_a_test_delivers():
    seen: list[Outgoing] = []
    t = MemoryTransport("a", observe=seen.append)
    t.reply(b"client-1", b"C", b"answer")
    t.publish(b"feed/x", b"event")
    assert t.sent == seen == [Outgoing("reply", b"client-1", b"C", b"answer"),
                              Outgoing("publish", b"", b"feed/x", b"event")]
    t.deliver(FromRouter(b"client-1", b"C", b"request"))
    assert t.poll(0) == [FromRouter(b"client-1", b"C", b"request")]
    assert t.poll(0) == []
