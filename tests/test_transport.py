"""The ZeroMQ transport over real sockets on 127.0.0.1.

Every wait is a poll loop with a deadline; nothing sleeps. Transports and raw sockets are
closed by the fixtures even when a test fails.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from brokerless.transport.zeromq import (
    HELLO,
    HELLO_ACK,
    AddressError,
    BindError,
    ConfigError,
    FromPeer,
    FromRouter,
    FromSub,
    Incoming,
    InvalidFrame,
    TransportClosed,
    UnknownPeer,
    ZmqTransport,
    parse_hello,
)
from brokerless.wire import pack, unpack

DEADLINE_S = 5.0


def free_address() -> str:
    """An address whose port was free a moment ago (the kernel picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


class Cluster:
    """Creates transports and raw sockets, and closes them all at teardown."""

    def __init__(self) -> None:
        self.transports: list[ZmqTransport] = []
        self.context = zmq.Context()

    def node(self, node_id: str, peers: list[str], **options: object) -> ZmqTransport:
        # The port may be taken again by the time we bind, or still held by a closed
        # transport's socket: retry binding until the deadline.
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                transport = ZmqTransport(node_id, {p: p for p in peers}, **options)
                break
            except BindError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
        self.transports.append(transport)
        return transport

    def mesh(self, n: int, **options: object) -> list[ZmqTransport]:
        ids = [free_address() for _ in range(n)]
        return [self.node(node_id, ids, **options) for node_id in ids]

    def raw(self, socket_type: int, connect: str, routing_id: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.connect(f"tcp://{connect}")
        return sock

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        self.context.destroy(linger=0)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    made = Cluster()
    try:
        yield made
    finally:
        made.close()


Inbox = dict[str, list[Incoming]]


def poll_until(
    transports: list[ZmqTransport],
    done: Callable[[Inbox], bool],
    tick: Callable[[], None] = lambda: None,
) -> Inbox:
    """Poll every transport (which also drives their HELLOs) until `done(inbox)` holds."""
    inbox: Inbox = {t.node_id: [] for t in transports}
    deadline = time.monotonic() + DEADLINE_S
    while not done(inbox):
        assert time.monotonic() < deadline, f"condition not met in {DEADLINE_S}s: {inbox}"
        tick()
        for transport in transports:
            inbox[transport.node_id].extend(transport.poll(5))
    return inbox


def heard_from(inbox: Inbox, node: str, peer: str, payload: bytes) -> bool:
    return FromSub(peer, b"hb", payload) in inbox[node]


def publish_heartbeats(transports: list[ZmqTransport]) -> Callable[[], None]:
    def tick() -> None:
        for transport in transports:
            transport.publish(b"hb", transport.node_id.encode())
    return tick


def all_hear_all(transports: list[ZmqTransport]) -> Callable[[Inbox], bool]:
    def done(inbox: Inbox) -> bool:
        return all(heard_from(inbox, a.node_id, b.node_id, b.node_id.encode())
                   and a.hello_acked(b.node_id)
                   for a in transports for b in transports if a is not b)
    return done


def recv_reply(sock: zmq.Socket) -> list[bytes] | None:
    """One message from a raw socket if it arrives before the deadline."""
    if sock.poll(int(DEADLINE_S * 1000)):
        return sock.recv_multipart()
    return None


# --- discovery and heartbeats ------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3])
def test_nodes_discover_each_others_pub_and_hear_heartbeats(cluster: Cluster, n: int) -> None:
    nodes = cluster.mesh(n, cluster_id="auction")
    for node in nodes:
        node.subscribe(b"hb")
    poll_until(nodes, all_hear_all(nodes), publish_heartbeats(nodes))
    for a in nodes:
        for b in nodes:
            if a is not b:
                assert a.pub_endpoint_of(b.node_id) == b.pub_endpoint
                assert a.hello_acked(b.node_id)
        assert a.stats.malformed == 0 and a.stats.hellos_refused == 0


def test_unsubscribed_topics_are_not_delivered(cluster: Cluster) -> None:
    a, b = cluster.mesh(2)
    a.subscribe(b"hb")
    poll_until([a, b], lambda inbox: heard_from(inbox, a.node_id, b.node_id, b"hb-payload"),
               lambda: (b.publish(b"other", b"x"), b.publish(b"hb", b"hb-payload")))
    assert all(msg.topic == b"hb" for msg in a.poll(0) if isinstance(msg, FromSub))


def test_a_restarted_peer_is_rediscovered_on_its_new_pub_endpoint(cluster: Cluster) -> None:
    a, b = cluster.mesh(2)
    a.subscribe(b"hb")
    poll_until([a, b], lambda inbox: heard_from(inbox, a.node_id, b.node_id, b"first"),
               lambda: b.publish(b"hb", b"first"))
    old_endpoint = b.pub_endpoint
    b.close()
    b2 = cluster.node(b.node_id, [a.node_id])
    b2.subscribe(b"hb")

    def done(inbox: Inbox) -> bool:
        return (heard_from(inbox, a.node_id, b2.node_id, b"second")
                and heard_from(inbox, b2.node_id, a.node_id, b"from-a"))

    poll_until([a, b2], done, lambda: (b2.publish(b"hb", b"second"), a.publish(b"hb", b"from-a")))
    assert a.pub_endpoint_of(b2.node_id) == b2.pub_endpoint
    if b2.pub_endpoint != old_endpoint:  # the kernel may, rarely, hand out the same port
        assert a.stats.endpoint_changes == 1
    # A's DEALER reconnected to the new incarnation too.
    assert a.send(b2.node_id, b"P", b"after restart")
    poll_until([a, b2], lambda inbox: FromRouter(a.node_id.encode(), b"P", b"after restart")
               in inbox[b2.node_id])


def test_rehello_asks_again_until_answered(cluster: Cluster) -> None:
    a, b = cluster.mesh(2)
    poll_until([a, b], lambda _: a.hello_acked(b.node_id))
    sent = a.stats.hellos_sent
    a.rehello(b.node_id)
    assert not a.hello_acked(b.node_id)
    assert a.stats.hellos_sent == sent + 1
    poll_until([a, b], lambda _: a.hello_acked(b.node_id))
    with pytest.raises(UnknownPeer):
        a.rehello("127.0.0.1:1")


# --- request and reply -------------------------------------------------------------------


def test_send_and_reply_round_trip(cluster: Cluster) -> None:
    a, b = cluster.mesh(2)
    assert a.send(b.node_id, b"C", b"ping")
    inbox = poll_until([a, b], lambda inbox: bool(inbox[b.node_id]))
    request = inbox[b.node_id][0]
    assert request == FromRouter(a.node_id.encode(), b"C", b"ping")
    assert b.peer_of(request.identity) == a.node_id
    assert b.reply(request.identity, b"R", b"pong")
    inbox = poll_until([a, b], lambda inbox: bool(inbox[a.node_id]))
    assert inbox[a.node_id] == [FromPeer(b.node_id, b"R", b"pong")]


def test_reply_to_an_unknown_identity_is_dropped_and_counted(cluster: Cluster) -> None:
    (a,) = cluster.mesh(1)
    assert a.reply(b"nobody", b"R", b"lost") is False
    assert a.stats.sends_dropped == 1


def test_bad_sends_raise_typed_errors(cluster: Cluster) -> None:
    a, b = cluster.mesh(2, max_message_bytes=1000)
    with pytest.raises(UnknownPeer):
        a.send("127.0.0.1:1", b"P", b"")
    for kind in (b"", b"k" * 17, HELLO, HELLO_ACK, "P"):
        with pytest.raises(InvalidFrame):
            a.send(b.node_id, kind, b"x")  # type: ignore[arg-type]
    with pytest.raises(InvalidFrame):
        a.send(b.node_id, b"P", b"x" * 1001)
    with pytest.raises(InvalidFrame):
        a.publish("hb", b"")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        a.poll(-1)
    a.close()
    with pytest.raises(TransportClosed):
        a.send(b.node_id, b"P", b"x")


def test_max_batch_bounds_one_poll(cluster: Cluster) -> None:
    (a,) = cluster.mesh(1, max_batch=10)
    client = cluster.raw(zmq.DEALER, a.node_id)
    for i in range(25):
        client.send_multipart([b"C", b"%d" % i])
    inbox = poll_until([a], lambda inbox: len(inbox[a.node_id]) == 25)
    assert [m.payload for m in inbox[a.node_id]] == [b"%d" % i for i in range(25)]
    assert len(a.poll(0)) == 0


def test_one_poll_reads_a_bounded_number_of_bytes_and_the_rest_later(cluster: Cluster) -> None:
    from brokerless.transport.zeromq import MAX_BYTES_PER_POLL

    class Frame:
        def __init__(self, data: bytes, more: bool):
            self.bytes, self.more = data, more

    class QueuedSocket:  # a ROUTER with messages already waiting: deterministic
        def __init__(self, messages: list[list[bytes]]):
            self.frames = [Frame(f, i < len(m) - 1) for m in messages for i, f in enumerate(m)]

        def recv(self, flags: int = 0, copy: bool = True) -> Frame:
            if not self.frames:
                raise zmq.Again()
            return self.frames.pop(0)

    (a,) = cluster.mesh(1)
    size = MAX_BYTES_PER_POLL // 4
    sock = QueuedSocket([[b"client", b"C", bytes([i]) * size] for i in range(12)])
    a._handlers[sock] = a._on_router
    batches = []
    while batch := a._drain([sock]):
        batches.append([m.payload[0] for m in batch])
    assert [len(b) for b in batches] == [4, 4, 4]  # the byte budget, not the 1,024 messages
    assert sum(batches, []) == list(range(12))  # nothing lost, in order


# --- hostile input -----------------------------------------------------------------------


def test_garbage_and_oversized_frames_are_dropped_and_service_continues(cluster: Cluster) -> None:
    (a,) = cluster.mesh(1, max_message_bytes=1024)
    garbage = [
        [b"only-one-frame"],
        [b"C", b"p", b"extra"],
        [b"C", b"p", b"e", b"f", b"g"],
        [b"", b"empty kind"],
        [b"k" * 17, b"kind too long"],
        [HELLO, b"\xc1\x00 not msgpack"],
        [HELLO, pack({"id": 5, "pub": "", "cluster": ""})],
        [HELLO, pack({"id": "", "pub": "udp://x:1", "cluster": ""})],
        [HELLO_ACK, pack({"id": "", "pub": "", "cluster": ""})],  # acks never go to a ROUTER
    ]
    attacker = cluster.raw(zmq.DEALER, a.node_id)
    for frames in garbage:
        attacker.send_multipart(frames)
    oversized = cluster.raw(zmq.DEALER, a.node_id)
    oversized.send_multipart([b"C", b"x" * 2048])  # over MAXMSGSIZE: libzmq drops the connection
    poll_until([a], lambda _: a.stats.malformed == len(garbage))

    good = cluster.raw(zmq.DEALER, a.node_id)
    good.send_multipart([b"C", b"good request"])
    inbox = poll_until([a], lambda inbox: bool(inbox[a.node_id]))
    assert inbox[a.node_id] == [FromRouter(inbox[a.node_id][0].identity, b"C", b"good request")]
    assert a.reply(inbox[a.node_id][0].identity, b"R", b"served")
    assert recv_reply(good) == [b"R", b"served"]
    assert a.stats.malformed == len(garbage)
    assert a.stats.hellos_received == 0


def test_the_dropped_connection_of_an_oversized_sender_can_reconnect(cluster: Cluster) -> None:
    (a,) = cluster.mesh(1, max_message_bytes=1024)
    client = cluster.raw(zmq.DEALER, a.node_id, routing_id=b"client-1")
    client.send_multipart([b"C", b"x" * 4096])

    def retry() -> None:  # the Lazy Pirate way: resend until the server answers
        client.send_multipart([b"C", b"retry"])

    inbox = poll_until([a], lambda inbox: bool(inbox[a.node_id]), retry)
    assert inbox[a.node_id][0] == FromRouter(b"client-1", b"C", b"retry")
    assert a.reply(b"client-1", b"R", b"served")
    assert recv_reply(client) == [b"R", b"served"]


def test_a_hello_from_a_foreign_cluster_is_refused(cluster: Cluster) -> None:
    a_id, b_id = free_address(), free_address()
    a = cluster.node(a_id, [a_id, b_id], cluster_id="blue")
    intruder = cluster.raw(zmq.DEALER, a.node_id, routing_id=b_id.encode())
    foreign = {"id": b_id, "pub": "tcp://127.0.0.1:9", "cluster": "red"}
    intruder.send_multipart([HELLO, pack(foreign)])
    # Messages on one connection stay in order: once the client HELLO sent next is answered,
    # the foreign one has been handled, and it got no answer.
    intruder.send_multipart([HELLO, pack({"id": "", "pub": "", "cluster": ""})])
    poll_until([a], lambda _: a.stats.hellos_received == 2)
    reply = recv_reply(intruder)
    assert reply is not None and reply[0] == HELLO_ACK
    assert intruder.poll(0) == 0  # nothing else: no ack for the foreign HELLO
    assert a.stats.hellos_refused == 1
    assert a.pub_endpoint_of(b_id) is None


def test_transports_of_different_clusters_never_pair(cluster: Cluster) -> None:
    a_id, b_id = free_address(), free_address()
    a = cluster.node(a_id, [b_id], cluster_id="blue")
    b = cluster.node(b_id, [a_id], cluster_id="red")
    poll_until([a, b], lambda _: a.stats.hellos_refused >= 1 and b.stats.hellos_refused >= 1)
    assert a.pub_endpoint_of(b_id) is None and b.pub_endpoint_of(a_id) is None
    assert not a.hello_acked(b_id) and not b.hello_acked(a_id)


def test_a_hello_with_a_spoofed_routing_id_is_refused(cluster: Cluster) -> None:
    a_id, b_id = free_address(), free_address()
    a = cluster.node(a_id, [b_id])
    impostor = cluster.raw(zmq.DEALER, a.node_id, routing_id=b"someone-else")
    impostor.send_multipart([HELLO, pack({"id": b_id, "pub": "tcp://127.0.0.1:9", "cluster": ""})])
    poll_until([a], lambda _: a.stats.hellos_refused == 1)
    assert a.pub_endpoint_of(b_id) is None


def test_a_client_hello_learns_the_pub_endpoint_without_creating_a_subscription(
    cluster: Cluster,
) -> None:
    (a,) = cluster.mesh(1, cluster_id="auction")
    client = cluster.raw(zmq.DEALER, a.node_id)
    client.send_multipart([HELLO, pack({"id": "", "pub": "", "cluster": ""})])
    poll_until([a], lambda _: a.stats.hellos_received == 1)
    reply = recv_reply(client)
    assert reply is not None and reply[0] == HELLO_ACK
    hello = parse_hello(reply[1])
    assert (hello.id, hello.pub, hello.cluster) == (a.node_id, a.pub_endpoint, "auction")
    assert unpack(reply[1]) == {"id": a.node_id, "pub": a.pub_endpoint, "cluster": "auction"}
    assert a.peers == ()


# --- construction ------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000",
                                     "tcp://127.0.0.1:5000", "[::1]:5000", "a b:1"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(AddressError):
        ZmqTransport(address, {})
    with pytest.raises(AddressError):
        ZmqTransport("127.0.0.1:5000", {"peer": address})


def test_binding_a_taken_port_raises_bind_error_and_leaks_nothing(cluster: Cluster) -> None:
    (a,) = cluster.mesh(1)
    context = zmq.Context()
    try:
        with pytest.raises(BindError) as info:
            ZmqTransport(a.node_id, {}, context=context)
        assert info.value.errno == zmq.EADDRINUSE
    finally:
        context.term()  # would block forever if the failed transport had left a socket open
