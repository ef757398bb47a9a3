"""The ZeroMQ transport against hostile connections: routing ids reused by many connections,
oversized subscriptions, floods of refused HELLOs. Real sockets on 127.0.0.1; every wait is a
condition with a deadline.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
import zmq
from test_transport import Cluster, free_address, poll_until

from brokerless.transport.zeromq import HELLO, MAX_SUBSCRIPTION_BYTES
from brokerless.wire import pack

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(name="cluster")
def cluster_fixture() -> Iterator[Cluster]:
    made = Cluster()
    try:
        yield made
    finally:
        made.close()

# A node polling its transport in its own process, so an abort inside libzmq shows as the
# process's exit status instead of taking pytest down. It replies to the peer's routing id
# all the while (the reply path is where libzmq 4.3.5 aborted under handover).
_NODE = textwrap.dedent("""
    import sys, time
    from brokerless.transport.zeromq import ZmqTransport
    a, b, c, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    t = ZmqTransport(a, {b: b, c: c})
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t.poll(5)
        t.reply(b.encode(), b"FR", b"x" * 1000)
    print("survived", t.stats.hellos_received, flush=True)
""")


def test_many_connections_reusing_a_members_routing_id_cannot_abort_the_node() -> None:
    a, b, c, fake_pub = (free_address() for _ in range(4))
    node = subprocess.Popen([sys.executable, "-c", _NODE, a, b, c, "6"],
                            stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    try:
        assert node.stdout is not None and node.stdout.readline().strip() == "ready"
        hello = pack({"id": b, "pub": f"tcp://{fake_pub}", "cluster": ""})
        rounds = 0
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and node.poll() is None:
            socks = []
            for _ in range(72):  # each connection claims member b's routing id
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.ROUTING_ID, b.encode())
                sock.connect(f"tcp://{a}")
                sock.send_multipart([HELLO, hello])
                sock.send_multipart([b"junk"])
                socks.append(sock)
            # Let the node take the connections in (and reply to them) before they close.
            socks[-1].poll(50)
            for sock in socks:
                sock.close()
            rounds += 1
        out, _ = node.communicate(timeout=20)
        assert node.returncode == 0, f"node exited with {node.returncode} after {rounds} rounds"
        assert out.startswith("survived")
        assert rounds >= 3
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        ctx.destroy(linger=0)


def test_an_oversized_subscription_is_refused_and_others_are_served(cluster: Cluster) -> None:
    (pub_node,) = cluster.mesh(1)
    endpoint = pub_node.pub_endpoint
    big = cluster.context.socket(zmq.SUB)
    big.setsockopt(zmq.LINGER, 0)
    big_topic = b"t" * (MAX_SUBSCRIPTION_BYTES + 1)
    big.setsockopt(zmq.SUBSCRIBE, big_topic)
    big.connect(endpoint)
    small = cluster.context.socket(zmq.SUB)
    small.setsockopt(zmq.LINGER, 0)
    small.setsockopt(zmq.SUBSCRIBE, b"t")
    small.connect(endpoint)
    received = 0
    deadline = time.monotonic() + 5
    while received < 50:
        assert time.monotonic() < deadline, "the small subscriber heard nothing"
        pub_node.publish(big_topic + b"x", b"payload")
        if small.poll(10):
            small.recv_multipart()
            received += 1
    # The big subscriber's connection was dropped at its subscription: it heard nothing of
    # the 50+ messages published under its topic.
    assert big.poll(100) == 0


def test_refused_hellos_are_all_counted_but_logged_at_most_once_a_second(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a_id, b_id = free_address(), free_address()
    a = cluster.node(a_id, [b_id], cluster_id="blue")
    intruder = cluster.raw(zmq.DEALER, a.node_id, routing_id=b_id.encode())
    foreign = pack({"id": b_id, "pub": "tcp://127.0.0.1:9", "cluster": "red"})
    with caplog.at_level(logging.WARNING, logger="brokerless.transport"):
        started = time.monotonic()
        for _ in range(500):
            intruder.send_multipart([HELLO, foreign])
        poll_until([a], lambda _: a.stats.hellos_refused == 500)
        elapsed = time.monotonic() - started
    refusals = [r for r in caplog.records if "refused HELLO" in r.getMessage()]
    assert 1 <= len(refusals) <= 1 + int(elapsed)
    assert "500 refused" in refusals[-1].getMessage() or len(refusals) == 1


def test_a_node_whose_id_is_squatted_gets_it_back_after_the_squatter_leaves(
    cluster: Cluster,
) -> None:
    # Without handover, a connection holding our peer's routing id keeps it, and the ROUTER
    # never identifies the peer's own connection made meanwhile (a peer that restarted
    # before its old connection was retired meets the same). Once the squatter has gone,
    # the peer's unanswered HELLOs make it renew its DEALER, and its messages flow.
    a_id, b_id = free_address(), free_address()
    a = cluster.node(a_id, [b_id])
    squatter = cluster.raw(zmq.DEALER, a_id, routing_id=b_id.encode())
    squatter.send_multipart([b"P", b"squat"])
    poll_until([a], lambda inbox: any(m.payload == b"squat" for m in inbox[a_id]))
    b = cluster.node(b_id, [a_id])
    poll_until([a, b], lambda _: b.stats.hellos_sent >= 2)  # b's connection is there, unread
    squatter.close()

    def heard(inbox: dict) -> bool:
        b.send(a_id, b"P", b"from-b")
        return b.hello_acked(a_id) and any(
            getattr(m, "payload", None) == b"from-b" and m.identity == b_id.encode()
            for m in inbox[a_id])

    poll_until([a, b], heard)
    assert b.stats.dealers_renewed >= 1
