"""Real processes, real sockets: a 3-node cluster under kill -9, SIGSTOP, garbage and restarts.

Each test starts its own cluster on free ports (tests/harness.py) and the fixture stops every
process by PID afterwards. Waits are conditions with deadlines; a failure shows the node logs.
"""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import msgpack
import pytest
import zmq
from harness import (
    Bidders,
    Cluster,
    HarnessError,
    agreed_history,
    assert_acked_present,
    running_cluster,
    shows_logs,
    wait_until,
)

from brokerless.messages import VoteRequest
from brokerless.wire import MAX_MESSAGE_BYTES, encode_message
from zauction.client.client import AuctionClient, BidRejected, ClusterUnavailable
from zauction.client.feed import FeedWatcher
from zauction.protocol import MAX_REQUEST_BYTES, ErrorCode

pytestmark = pytest.mark.processes

FAILOVER_LIMIT_S = 5.0  # the first write acknowledged after a leader dies must come sooner
ROUTER_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES  # the transport's default max_message_bytes


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, size=3) as nodes:
        yield nodes


# --- the original scenario: kill -9 the leader under load --------------------------------------


@pytest.mark.timeout(60)
@shows_logs
def test_bids_survive_kill_9_of_the_leader(cluster: Cluster, record_property) -> None:
    leader = cluster.leader()
    survivors = cluster.others(leader)
    probe = cluster.client(survivors)
    with Bidders(list(cluster.nodes), count=3) as bidders:
        bidders.wait_acked(30, deadline_s=15)
        cluster.kill(leader, signal.SIGKILL)
        killed_at = time.monotonic()
        new_leader = cluster.wait_for_leader(addrs=survivors)
        elected = time.monotonic() - killed_at
        # A client that knows only the survivors and asks once a leader is known: the cluster's
        # own write gap, without the wait on the dead node that the bidders go through.
        judged = bidders.bid_once(probe, "probe")
        bidders.wait_acked(32, deadline_s=15, after=killed_at)
    first = min(o.done for o in bidders.acked(after=killed_at) if o.bidder != "probe")
    first -= killed_at
    gap = judged.done - killed_at
    record_property("failover_elected_s", round(elected, 3))
    record_property("failover_first_ack_s", round(first, 3))
    record_property("failover_survivor_probe_s", round(gap, 3))
    print(f"FAILOVER after kill -9: leader agreed {elected:.3f}s, first bidder ack {first:.3f}s,"
          f" survivors-only probe ack {gap:.3f}s")
    assert judged.verdict in ("ok", "rejected"), f"the probe bid was not judged: {judged}"
    assert first < FAILOVER_LIMIT_S, f"the first bid after the kill took {first:.2f}s"
    assert new_leader in survivors
    history = agreed_history(cluster, survivors)
    assert_acked_present(history, bidders.outcomes)
    assert len(history) >= 60


# --- a paused leader comes back: it must step down and never serve a stale read ---------------


def raw_request(addr: str, body: dict) -> zmq.Socket:
    """A DEALER that has queued one client request for `addr` (delivered once it answers)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{addr}")
    sock.send_multipart([b"C", msgpack.packb(body)])
    return sock


def await_reply(sock: zmq.Socket, deadline_s: float) -> dict | None:
    if not sock.poll(int(deadline_s * 1000)):
        return None
    kind, payload = sock.recv_multipart()
    assert kind == b"C"
    return msgpack.unpackb(payload)


@pytest.mark.timeout(60)
@shows_logs
def test_sigstopped_leader_steps_down_and_serves_no_stale_read(cluster: Cluster) -> None:
    old = cluster.leader()
    old_term = cluster.status(old)["term"]
    everyone = cluster.client()
    acked = [everyone.bid(amount, "before") for amount in (10, 20, 30)]
    cluster.kill(old, signal.SIGSTOP)
    others = cluster.others(old)
    through_others = cluster.client(others)
    acked += [through_others.bid(amount, "during") for amount in (40, 50, 60)]
    new = cluster.wait_for_leader(addrs=others)
    fresh = through_others.result()
    assert fresh["highest"]["amount"] == 60 and fresh["bids"] == 6
    # Queued while the old leader is frozen: it meets the request and the news of the new term
    # in the same wake-up, the sharpest race for a stale read.
    queued = raw_request(old, {"op": "result", "rid": 7})
    try:
        cluster.kill(old, signal.SIGCONT)
        reply = await_reply(queued, deadline_s=5.0)
    finally:
        queued.close(linger=0)
    assert reply is not None, "the old leader never answered the queued read"
    print(f"OLD-LEADER read after SIGCONT: {reply.get('error') or 'ok'}")
    if reply["ok"]:
        assert reply["result"] == fresh, "the old leader served a stale read"
    else:
        assert reply["error"] in (ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT)
    try:
        assert cluster.client([old], timeout=3.0).result() == fresh
    except ClusterUnavailable:
        pass  # an error is allowed; a stale answer is not
    statuses = wait_until(lambda: _stepped_down(cluster, old, old_term), 10.0,
                          "the old leader to step down", cluster.explain)
    assert statuses[old]["leader"] == new
    history = agreed_history(cluster, list(cluster.nodes))
    assert [(h["bidder"], h["amount"]) for h in history] == [
        (r["bidder"], r["amount"]) for r in acked]


def _stepped_down(cluster: Cluster, old: str, old_term: int) -> dict | None:
    statuses = cluster.statuses(list(cluster.nodes))
    status = statuses[old]
    if status["role"] == "follower" and status["term"] > old_term and status["leader"]:
        return statuses
    return None


# --- the feed: every committed bid exactly once across a leader kill -------------------------

SENTINEL = "sentinel"


class FeedCollector:
    """A thread that runs a FeedWatcher over every node until it sees the sentinel bidder."""

    def __init__(self, servers: list[str]):
        self.servers = servers
        self.events: list[dict] = []
        self.ready = threading.Event()
        self.errors: list[BaseException] = []
        self.filled = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # The client is made and closed in this thread: zmq sockets are not thread-safe.
        client = AuctionClient(self.servers, timeout=5.0)
        try:
            with FeedWatcher(client) as watcher:
                self.ready.set()
                for event in watcher:
                    self.events.append(event)
                    if event.get("bidder") == SENTINEL:
                        self.filled = watcher.filled
                        return
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            self.errors.append(exc)
        finally:
            self.ready.set()
            client.close()


@pytest.mark.timeout(60)
@shows_logs
def test_watcher_sees_every_committed_bid_once_across_a_leader_kill(cluster: Cluster) -> None:
    leader = cluster.leader()
    feed = FeedCollector(list(cluster.nodes))
    feed.thread.start()
    assert feed.ready.wait(10.0) and not feed.errors, f"the watcher did not start: {feed.errors}"
    with Bidders(list(cluster.nodes), count=2) as bidders:
        bidders.wait_acked(20, deadline_s=15)
        cluster.kill(leader, signal.SIGKILL)
        bidders.wait_acked(20, deadline_s=15, after=time.monotonic())
    cluster.client(cluster.others(leader)).bid(bidders.next_amount(), SENTINEL)
    feed.thread.join(15.0)
    assert not feed.thread.is_alive(), "the watcher never delivered the sentinel bid"
    assert not feed.errors, f"the watcher failed: {feed.errors!r}"
    print(f"FEED {len(feed.events)} events, {feed.filled} by gap filling")
    history = agreed_history(cluster, cluster.others(leader))
    assert history[-1]["bidder"] == SENTINEL
    assert_acked_present(history[:-1], bidders.outcomes)
    bids = [e for e in feed.events if e["type"] == "bid_accepted"]
    seen = Counter((e["auction"], e["seq"]) for e in bids)
    assert [key for key, n in seen.items() if n > 1] == [], "events delivered twice"
    assert sorted(seen) == [("default", seq) for seq in range(1, len(history) + 1)]
    for event in bids:
        expected = history[event["seq"] - 1]
        assert (event["bidder"], event["amount"]) == (expected["bidder"], expected["amount"])


# --- a client that only knows a follower ---------------------------------------------------------


@pytest.mark.timeout(60)
@shows_logs
def test_follower_forwards_writes_and_reads(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = cluster.others(leader)[0]
    via = cluster.client([follower])
    assert via.bid(10, "alice")["ok"]
    assert via.bid(25, "bob")["high"] == 25
    with pytest.raises(BidRejected) as rejected:
        via.bid(20, "carol")
    assert rejected.value.reason == "below_increment"
    assert via.result()["highest"] == {"bidder": "bob", "amount": 25}
    assert [(h["bidder"], h["amount"]) for h in via.history()] == [("alice", 10), ("bob", 25)]
    via.open_auction("lamp", duration_ms=60_000, reserve=5)
    assert via.bid(7, "dora", auction="lamp")["ok"]
    assert [a["auction"] for a in via.auctions()] == ["default", "lamp"]
    assert cluster.status(follower)["role"] == "follower"
    agreed_history(cluster, list(cluster.nodes))


# --- garbage on every socket ----------------------------------------------------------------------


class Raw:
    """A bare DEALER to one node's ROUTER, optionally wearing someone's routing id."""

    def __init__(self, addr: str, routing_id: str | None = None):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id.encode())
        self.sock.connect(f"tcp://{addr}")
        self.rids = itertools.count(1000)

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def request(self, body: object, kind: bytes = b"C") -> dict:
        """Send one request and return the decoded reply."""
        self.send(kind, msgpack.packb(body))
        return self.reply()

    def reply(self, deadline_s: float = 5.0) -> dict:
        assert self.sock.poll(int(deadline_s * 1000)), "no reply"
        frames = self.sock.recv_multipart()
        assert len(frames) == 2, frames
        return msgpack.unpackb(frames[1])

    def alive(self) -> dict:
        """A status round trip: answered after everything sent before it (one connection)."""
        rid = next(self.rids)
        reply = self.request({"op": "status", "rid": rid})
        assert reply["ok"] and reply["rid"] == rid, reply
        return reply["result"]

    def close(self) -> None:
        self.sock.close(linger=0)


def bid(rid: int, amount: object, **extra: object) -> dict:
    return {"op": "bid", "rid": rid, "client": "garbage", "seq": rid, "bidder": "mallory",
            "amount": amount, **extra}


# (request, expected error code, expected reason or None)
BAD_REQUESTS: list[tuple[object, str, str | None]] = [
    ([1, 2], ErrorCode.BAD_REQUEST, None),
    ({"op": 5, "rid": 1}, ErrorCode.BAD_REQUEST, None),
    ({"op": "status", "rid": -1}, ErrorCode.BAD_REQUEST, None),
    ({"op": "frobnicate", "rid": 2}, ErrorCode.UNKNOWN_OP, None),
    (bid(3, -5), ErrorCode.BAD_REQUEST, "invalid_amount"),
    (bid(4, 1e30), ErrorCode.BAD_REQUEST, "invalid_amount"),
    (bid(5, "abc"), ErrorCode.BAD_REQUEST, "invalid_amount"),
    (bid(6, True), ErrorCode.BAD_REQUEST, "invalid_amount"),
    (bid(7, 0), ErrorCode.BAD_REQUEST, "invalid_amount"),
    (bid(8, 10**16), ErrorCode.BAD_REQUEST, "invalid_amount"),
    (bid(9, 5, bidder=123), ErrorCode.BAD_REQUEST, "invalid"),
    (bid(10, 5, seq="x"), ErrorCode.BAD_REQUEST, "invalid"),
    (bid(11, 5, auction="a" * 1000), ErrorCode.BAD_REQUEST, "invalid"),
    ({"op": "bid", "rid": 12, "bidder": "m", "amount": 5}, ErrorCode.BAD_REQUEST, None),
    ({"op": "open", "rid": 13, "client": "g", "seq": 1, "auction": "x", "duration_ms": "abc"},
     ErrorCode.BAD_REQUEST, None),
    ({"op": "result", "rid": 14, "auction": 123}, ErrorCode.BAD_REQUEST, None),
    ({"op": "result", "rid": 15, "auction": 123, "stale": True}, ErrorCode.BAD_REQUEST, None),
    ({"op": "events", "rid": 16, "auction": "default", "after_seq": "x"},
     ErrorCode.BAD_REQUEST, None),
    ({"op": "history", "rid": 17, "auction": "nope"}, ErrorCode.UNKNOWN_AUCTION, None),
    (bid(18, 5, auction="nope"), ErrorCode.UNKNOWN_AUCTION, None),
]


def throw_client_garbage(addr: str, rng: random.Random) -> None:
    raw = Raw(addr)
    try:
        for body, code, reason in BAD_REQUESTS:
            reply = raw.request(body)
            assert reply["ok"] is False and reply["error"] == code, (body, reply)
            if reason is not None:
                assert reply.get("reason") == reason, (body, reply)
            if isinstance(body, dict) and type(body.get("rid")) is int and body["rid"] >= 0:
                assert reply["rid"] == body["rid"], (body, reply)
        for payload in (rng.randbytes(64), b"\xc1", b"", b"\x00" * (MAX_REQUEST_BYTES + 1)):
            raw.send(b"C", payload)
            assert raw.reply()["error"] == ErrorCode.BAD_REQUEST
        # Wrong frame counts and unknown kinds: dropped without an answer.
        for frames in ([rng.randbytes(32)], [b"C"], [b"C", b"{}", b"extra"], [b"", b"x"],
                       [b"Z", b"x"], [b"K" * 100, b"x"], [b"HELLO", rng.randbytes(16)],
                       [b"F", rng.randbytes(16)], [b"P", rng.randbytes(16)]):
            raw.send(*frames)
        # A forward from a connection that is not a member's: refused unread, unanswered
        # (the status answered next is the first reply this connection gets).
        bad_before = raw.alive()["bad_requests"]
        raw.send(b"F", msgpack.packb({"fid": 9, "req": msgpack.packb(bid(19, 5))}))
        assert raw.alive()["bad_requests"] == bad_before + 1
    finally:
        raw.close()
    send_past_the_size_limit(addr)


def send_past_the_size_limit(addr: str) -> None:
    """A frame past the ROUTER's MAXMSGSIZE: the node must drop the connection, nothing else."""
    too_big = Raw(addr)
    monitor = too_big.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        too_big.sock.send_multipart([b"C", bytes(ROUTER_MAX_MESSAGE_BYTES + 1)], copy=False)
        assert monitor.poll(5000), f"{addr} kept a connection that sent an oversized frame"
    finally:
        too_big.sock.disable_monitor()
        monitor.close(linger=0)
        too_big.close()


def throw_peer_garbage(cluster: Cluster, addr: str, routing_id: str, claimed: str,
                       rng: random.Random, *, id_in_use: bool = False) -> None:
    """Peer-kind garbage from a DEALER with `routing_id` (a member's id: as if it sent it).

    With `id_in_use` (a member connected with that id), the node's ROUTER holds the
    impostor's connection unidentified and reads nothing from it (no routing id is ever
    handed over), so there is no rejection to count: the caller checks the real link."""
    raw = Raw(addr, routing_id=routing_id)
    rejected_before = cluster.client([addr]).status()[0]["rejected_peer_messages"]
    try:
        forged = VoteRequest(term=10**6, src=claimed, dst=addr, last_index=10**6,
                             last_term=10**6)
        for payload in (rng.randbytes(64), msgpack.packb([99, 1]), msgpack.packb({"a": 1}),
                        encode_message(forged)):
            raw.send(b"P", payload)
        for payload in (rng.randbytes(64), msgpack.packb({"fid": "x", "req": 1}),
                        msgpack.packb({"fid": 1})):
            raw.send(b"F", payload)
        raw.send(b"FR", msgpack.packb({"fid": 1, "reply": b"x"}))
        # The node counts the peer messages it drops (3 malformed + the forged vote, whose
        # claimed sender is not the connection's): proof that these frames arrived and were
        # judged (the socket stays open until then: closing it would discard what is queued).
        assert claimed != routing_id
        if id_in_use:
            return
        wait_until(lambda: cluster.client([addr]).status()[0]["rejected_peer_messages"]
                   >= rejected_before + 4, 5.0, f"{addr} to drop the forged vote request")
    finally:
        raw.close()


def assert_terms_below(cluster: Cluster, limit: int) -> None:
    for addr in cluster.serving():
        raw = Raw(addr)
        try:
            assert raw.alive()["term"] < limit, f"a forged vote request changed {addr}'s term"
        finally:
            raw.close()


@pytest.mark.timeout(60)
@shows_logs
def test_garbage_on_every_socket_changes_nothing(cluster: Cluster) -> None:
    client = cluster.client()
    client.bid(10, "alice")
    client.bid(20, "bob")
    before = client.history()
    rng = random.Random(1234)
    addrs = list(cluster.nodes)
    for i, addr in enumerate(addrs):
        throw_client_garbage(addr, rng)
        throw_peer_garbage(cluster, addr, "127.0.0.1:1", addrs[i - 1], rng)
    assert_terms_below(cluster, 10**6)
    assert client.history() == before
    assert client.bid(30, "carol")["ok"], "a good bid after the garbage"
    history = agreed_history(cluster, addrs)
    assert history[:-1] == before and history[-1]["amount"] == 30


@pytest.mark.timeout(60)
@shows_logs
def test_garbage_from_an_impostor_peer_does_not_cut_the_real_link(cluster: Cluster) -> None:
    client = cluster.client(timeout=5.0)
    client.bid(10, "alice")
    before = client.history()
    leader = cluster.leader()
    near, far = cluster.others(leader)
    rng = random.Random(99)
    # Wear `near`'s id at the leader (cuts near -> leader) and the leader's id at `far`
    # (cuts leader -> far): if the real links do not come back, nothing can commit.
    throw_peer_garbage(cluster, leader, near, far, rng, id_in_use=True)
    throw_peer_garbage(cluster, far, leader, near, rng, id_in_use=True)
    assert_terms_below(cluster, 10**6)
    assert client.history() == before
    assert client.bid(30, "carol")["ok"], "a good bid after the impostor left"
    agreed_history(cluster, list(cluster.nodes))


# --- restart the whole cluster on the same data -------------------------------------------------


@pytest.mark.timeout(60)
@shows_logs
def test_every_acked_bid_survives_a_whole_cluster_kill_9_and_restart(cluster: Cluster) -> None:
    old_term = cluster.statuses()[cluster.leader()]["term"]
    # A short client timeout: bids in flight at the kill give up soon, with outcome unknown.
    with Bidders(list(cluster.nodes), count=3, timeout=1.5) as bidders:
        bidders.wait_acked(40, deadline_s=15)
        for addr in cluster.nodes:
            cluster.kill(addr, signal.SIGKILL)
    for addr in cluster.nodes:
        cluster.restart(addr)
    leader = cluster.wait_for_leader()
    assert cluster.status(leader)["term"] > old_term
    history = agreed_history(cluster, list(cluster.nodes))
    assert_acked_present(history, bidders.outcomes)
    assert cluster.client().result() == cluster.client([leader]).result(stale=True)
    top = history[-1]["amount"]
    with pytest.raises(BidRejected):
        cluster.client().bid(top, "late")
    assert cluster.client().bid(top + 1, "late")["ok"]


@pytest.mark.timeout(30)
def test_harness_reports_a_missing_leader_with_logs(tmp_path) -> None:
    """The harness itself: a wait that cannot succeed fails with statuses and logs."""
    with Cluster(tmp_path, size=1) as lonely:
        lonely.start()
        with pytest.raises(HarnessError, match="statuses"):
            wait_until(lambda: False, 0.2, "nothing", lonely.explain)
    assert all(not node.alive for node in lonely.nodes.values())
