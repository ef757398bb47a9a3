"""The node's request handling against a scripted runtime: how writes are proposed, joined
when retried while in flight, and refused with `busy` when the leader is saturated."""

from __future__ import annotations

from typing import Any

import pytest

from brokerless.application import Inbound
from brokerless.runtime import Overloaded, ProposalLost
from brokerless.transport import MemoryTransport, Outgoing
from brokerless.types import Role
from brokerless.wire import pack, unpack
from zauction.auction.commands import decode_request_fields
from zauction.auction.domain import AuctionState
from zauction.protocol import decode_replies, decode_requests, request_frames
from zauction.server.backlog import FairBacklog
from zauction.server.service import BUSY_RETRY_AFTER_MS, Service


def receive(service: Service, ident: bytes, frame: bytes) -> None:
    """A client frame arrives, and the loop serves the requests it queued (one iteration)."""
    service.on_inbound(Inbound(ident, None, b"C", frame))
    service.serve_backlog()


def replies_sent(transport: MemoryTransport) -> list[tuple[bytes, bytes]]:
    """(identity, payload) of every reply the node sent, in order."""
    return [(out.to, out.payload) for out in transport.sent if out.channel == "reply"]


class ScriptedRuntime:
    """Leader that logs proposals and applies them to a real AuctionState when told."""

    role = Role.LEADER
    leader = "a"

    def __init__(self, state: AuctionState, max_pending: int = 100):
        self.state = state
        self.max_pending = max_pending
        self.log: list[tuple[bytes, Any]] = []
        self.proposed: list[Any] = []  # what the service handed along with each payload
        self.applied = 0
        self.sinks: dict[bytes, list] = {}  # replies to these identities are decoded here
        self.transport = MemoryTransport("a", observe=self._to_sink)

    def _to_sink(self, out: Outgoing) -> None:
        if out.channel == "reply" and out.to in self.sinks:
            self.sinks[out.to].append(unpack(out.payload))

    def reply(self, origin: bytes, kind: bytes, payload: bytes) -> bool:
        return self.transport.reply(origin, kind, payload)

    def send(self, peer: str, kind: bytes, payload: bytes) -> bool:
        return self.transport.send(peer, kind, payload)

    @property
    def saturated(self) -> bool:
        return len(self.log) - self.applied >= self.max_pending

    def propose(self, data: bytes, callback, *, proposed: Any = None) -> int:
        if self.saturated:
            raise Overloaded(self.max_pending)
        self.log.append((data, callback))
        self.proposed.append(proposed)
        return len(self.log)

    def apply_all(self) -> None:
        while self.applied < len(self.log):
            data, callback = self.log[self.applied]
            self.applied += 1
            callback(self.state.apply(self.applied, 1, data), None)

    def lose_leadership(self) -> None:
        for _, callback in self.log[self.applied:]:
            callback(None, ProposalLost("leadership lost"))
        self.applied = len(self.log)


def make(max_pending: int = 100) -> tuple[Service, ScriptedRuntime]:
    state = AuctionState()
    runtime = ScriptedRuntime(state, max_pending)
    service = Service(runtime, state, lambda: {})
    receive(service, b"admin", pack({"op": "open", "rid": 1, "client": "admin", "seq": 1,
                                     "auction": "x", "duration_ms": 60_000}))
    runtime.apply_all()
    runtime.transport.sent.clear()  # the tests look at what comes after the open
    return service, runtime


def bid(service: Service, rid: int, seq: int, amount: int, replies: list) -> None:
    """Client c1's bid, from a connection of its own whose replies land in `replies`."""
    ident = b"conn%d" % rid
    service.runtime.sinks[ident] = replies
    receive(service, ident, pack({"op": "bid", "rid": rid, "client": "c1", "seq": seq,
                                  "auction": "x", "bidder": "ann", "amount": amount}))


def test_a_retry_of_a_write_in_flight_is_answered_with_it_and_not_logged_twice():
    service, runtime = make()
    replies: list = []
    bid(service, rid=10, seq=1, amount=5, replies=replies)
    bid(service, rid=11, seq=1, amount=5, replies=replies)  # the client's retry, same seq
    assert len(runtime.log) == 2 and service.pending_writes == 1
    runtime.apply_all()
    assert sorted(r["rid"] for r in replies) == [10, 11]
    assert all(r["ok"] and r["result"]["high"] == 5 for r in replies)
    assert service.pending_writes == 0
    bid(service, rid=12, seq=1, amount=5, replies=replies)  # applied: a new entry, deduplicated
    runtime.apply_all()
    assert len(runtime.log) == 3 and replies[-1]["rid"] == 12 and replies[-1]["ok"]
    assert service.state.result("x")["bids"] == 1


def test_joined_waiters_all_learn_that_the_outcome_is_unknown_when_leadership_is_lost():
    service, runtime = make()
    replies: list = []
    bid(service, rid=20, seq=1, amount=5, replies=replies)
    bid(service, rid=21, seq=1, amount=5, replies=replies)
    runtime.lose_leadership()
    assert [(r["rid"], r["error"]) for r in replies] == [(20, "outcome_unknown"),
                                                          (21, "outcome_unknown")]
    assert service.pending_writes == 0


def test_a_saturated_leader_answers_busy_with_a_retry_hint_and_logs_nothing():
    service, runtime = make(max_pending=2)
    replies: list = []
    for seq in (1, 2, 3):
        bid(service, rid=30 + seq, seq=seq, amount=seq * 10, replies=replies)
    assert len(runtime.log) == 3  # the open, then two bids: the third was refused
    assert [r["rid"] for r in replies] == [33]
    assert replies[0]["error"] == "busy" and replies[0]["retry_after_ms"] == BUSY_RETRY_AFTER_MS
    assert service.busy_replies == 1 and service.pending_writes == 2
    runtime.apply_all()
    bid(service, rid=43, seq=3, amount=30, replies=replies)  # the retry is accepted now
    runtime.apply_all()
    assert replies[-1]["rid"] == 43 and replies[-1]["ok"]
    assert service.state.result("x")["highest"] == {"bidder": "ann", "amount": 30}


def test_a_refused_retry_does_not_drop_the_original_waiter():
    service, runtime = make(max_pending=1)
    replies: list = []
    bid(service, rid=50, seq=1, amount=5, replies=replies)
    bid(service, rid=51, seq=1, amount=5, replies=replies)  # joined, not refused
    assert replies == []
    runtime.apply_all()
    assert sorted(r["rid"] for r in replies) == [50, 51] and all(r["ok"] for r in replies)



def test_the_client_backs_off_on_busy_and_retries_the_same_node_with_the_same_seq():
    import threading

    import zmq

    from zauction.client.client import AuctionClient
    from zauction.protocol import CLIENT_KIND, ErrorCode, error_reply, ok_reply

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    seen: list[dict] = []

    def serve() -> None:  # busy twice, then the answer
        for n in range(3):
            if not router.poll(5000):
                return
            ident, _, payload = router.recv_multipart()
            body = unpack(payload)
            seen.append(body)
            reply = (error_reply(body["rid"], ErrorCode.BUSY, "busy", retry_after_ms=1) if n < 2
                     else ok_reply(body["rid"], {"ok": True, "high": body["amount"]}))
            router.send_multipart([ident, CLIENT_KIND, reply])

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    other = "127.0.0.1:1"  # nobody listens there: a busy answer must not send us there
    try:
        with AuctionClient([f"127.0.0.1:{port}", other], timeout=5.0) as client:
            assert client.bid(9, "ann", "x")["high"] == 9
    finally:
        server.join(timeout=5)
        router.close(linger=0)
    assert len(seen) == 3
    assert len({(b["client"], b["seq"]) for b in seen}) == 1  # the same write, three times
    assert len({b["rid"] for b in seen}) == 3


def test_unhashable_client_fields_get_a_typed_error_not_an_exception():
    service, runtime = make()
    replies: list = []
    runtime.sinks[b"cli"] = replies
    for client, seq in (([1, 2], 1), ("c1", {"a": 1}), ({"x": 1}, [3])):
        receive(service, b"cli", pack({"op": "bid", "rid": 70, "client": client, "seq": seq,
                                       "auction": "x", "bidder": "ann", "amount": 5}))
    assert [r["error"] for r in replies] == ["bad_request"] * 3
    assert len(runtime.log) == 1  # only the open


def with_transport(max_pending: int = 100) -> tuple[Service, ScriptedRuntime, MemoryTransport]:
    service, runtime = make(max_pending)
    return service, runtime, runtime.transport


def bid_body(rid: int, seq: int, amount: int, **extra: Any) -> dict:
    return {"op": "bid", "rid": rid, "client": f"c{rid}", "seq": seq, "auction": "x",
            "bidder": "ann", "amount": amount, **extra}


def test_several_requests_in_one_frame_are_each_served_and_stream_replies_share_a_frame():
    service, runtime, transport = with_transport()
    frame = b"".join(pack(b) for b in (bid_body(1, 1, 10, stream=True), bid_body(2, 1, 20),
                                       bid_body(3, 1, 30, stream=True)))
    receive(service, b"cli", frame)
    assert len(runtime.log) == 4  # the open and three bids
    runtime.apply_all()
    assert [unpack(p)["rid"] for _, p in replies_sent(transport)] == [2]  # not a stream client: at once
    service.flush_replies()
    ident, payload = replies_sent(transport)[-1]
    replies = decode_replies(payload)
    assert ident == b"cli" and [r["rid"] for r in replies] == [1, 3]
    assert [r["result"]["amount"] for r in replies] == [10, 30]
    service.flush_replies()
    assert len(replies_sent(transport)) == 2  # nothing is sent twice


def test_a_bad_request_inside_a_frame_is_answered_alone_and_the_others_are_served():
    service, runtime, transport = with_transport()
    frame = b"".join(pack(b) for b in (bid_body(1, 1, 10), [1, 2], {"rid": 7, "op": 5},
                                       bid_body(2, 1, 20)))
    receive(service, b"cli", frame)
    runtime.apply_all()
    answers = {(r["rid"], r.get("error")) for r in (unpack(p) for _, p in replies_sent(transport))}
    assert answers == {(0, "bad_request"), (7, "bad_request"), (1, None), (2, None)}
    assert service.bad_requests == 2


def test_a_truncated_frame_is_refused_whole_and_logs_nothing():
    service, runtime, transport = with_transport()
    frame = pack(bid_body(1, 1, 10)) + pack(bid_body(2, 1, 20))[:-3]
    receive(service, b"cli", frame)
    assert len(runtime.log) == 1
    assert [unpack(p)["error"] for _, p in replies_sent(transport)] == ["bad_request"]


def test_request_frames_respect_the_count_and_byte_limits():
    from zauction.protocol import MAX_REQUEST_BYTES, MAX_REQUESTS_PER_FRAME, request_frames

    small = [pack(bid_body(n, 1, n + 1)) for n in range(MAX_REQUESTS_PER_FRAME + 5)]
    frames = list(request_frames(small))
    assert [len(decode_requests(f)) for f in frames] == [MAX_REQUESTS_PER_FRAME, 5]
    big = [pack({"op": "bid", "rid": n, "pad": "x" * 20_000}) for n in range(7)]
    frames = list(request_frames(big))
    assert all(len(f) <= MAX_REQUEST_BYTES for f in frames)
    assert [r.rid for f in frames for r in decode_requests(f)] == list(range(7))
    assert list(request_frames([])) == []


def test_the_leader_hands_its_decoded_request_along_with_the_payload_it_proposes():
    # The runtime gives it back to apply() for this very payload (tests/test_runtime.py),
    # which spares the leader decoding its own bytes again.
    service, runtime = make()
    bid(service, rid=82, seq=2, amount=9, replies=[])
    data, _ = runtime.log[-1]
    request = runtime.proposed[-1]
    assert (request.client_id, request.seq, request.cmd.amount) == ("c1", 2, 9)
    assert decode_request_fields(data)[:2] == ("c1", 2)
    assert decode_request_fields(data)[3] == request.cmd


def test_a_stream_reply_made_after_an_earlier_flush_is_still_sent():
    # A write is answered iterations after it arrived; other replies flushed meanwhile must
    # not strand it in a box that was already sent.
    service, runtime, transport = with_transport()
    receive(service, b"slow", pack(bid_body(1, 1, 10, stream=True)))
    receive(service, b"fast", pack({"op": "status", "rid": 2, "stream": True}))
    service.flush_replies()  # the status reply leaves; the bid is not applied yet
    assert [ident for ident, _ in replies_sent(transport)] == [b"fast"]
    runtime.apply_all()
    service.flush_replies()
    assert [ident for ident, _ in replies_sent(transport)] == [b"fast", b"slow"]
    assert decode_replies(replies_sent(transport)[-1][1])[0]["rid"] == 1


def test_one_iteration_serves_a_bounded_share_of_a_flood_and_the_rest_in_order_after():
    from zauction.server.service import REQUESTS_PER_ITERATION

    service, runtime, transport = with_transport(max_pending=10_000)
    count = REQUESTS_PER_ITERATION + 100
    frames = request_frames([pack(bid_body(n, 1, n)) for n in range(1, count + 1)])
    for frame in frames:
        service.on_inbound(Inbound(b"cli", None, b"C", frame))
    assert len(runtime.log) == 1 and service.has_backlog  # read, not served yet
    service.serve_backlog()
    assert len(runtime.log) == 1 + REQUESTS_PER_ITERATION and service.has_backlog
    service.serve_backlog()
    assert len(runtime.log) == 1 + count and not service.has_backlog
    amounts = [decode_request_fields(data)[3].amount for data, _ in runtime.log[1:]]
    assert amounts == list(range(1, count + 1))  # first come, first served


def service_with_backlog(backlog: FairBacklog) -> tuple[Service, ScriptedRuntime, MemoryTransport]:
    state = AuctionState()
    runtime = ScriptedRuntime(state)
    service = Service(runtime, state, lambda: {}, backlog=backlog)
    receive(service, b"admin", pack({"op": "open", "rid": 1, "client": "admin", "seq": 1,
                                     "auction": "x", "duration_ms": 60_000}))
    runtime.apply_all()
    runtime.transport.sent.clear()
    return service, runtime, runtime.transport


def test_writes_beyond_the_backlog_limit_are_answered_busy_at_once():
    service, runtime, transport = service_with_backlog(FairBacklog(max_total=3))
    frame = b"".join(pack(bid_body(n, 1, n)) for n in range(1, 6))
    service.on_inbound(Inbound(b"cli", None, b"C", frame))
    assert [(unpack(p)["rid"], unpack(p)["error"]) for _, p in replies_sent(transport)] == [
        (4, "busy"), (5, "busy")]
    service.serve_backlog()
    assert len(runtime.log) == 1 + 3


def test_one_connection_cannot_fill_the_backlog_and_connections_are_served_in_turn(
        monkeypatch):
    import zauction.server.service

    monkeypatch.setattr(zauction.server.service, "REQUESTS_PER_ITERATION", 2)
    service, runtime, transport = service_with_backlog(FairBacklog(max_total=10,
                                                                   max_per_source=4))
    flood = b"".join(pack(bid_body(n, 1, n)) for n in range(1, 9))  # 8 from one connection
    service.on_inbound(Inbound(b"flooder", None, b"C", flood))
    refused = [unpack(p)["rid"] for to, p in replies_sent(transport) if to == b"flooder"]
    assert refused == [5, 6, 7, 8]  # beyond its own share, refused at once
    service.on_inbound(Inbound(b"polite", None, b"C", pack(bid_body(100, 1, 50))))
    assert not [p for to, p in replies_sent(transport) if to == b"polite"]  # room for it
    service.serve_backlog()  # two requests: one per connection in turn, not the first two
    served = [decode_request_fields(data)[0] for data, _ in runtime.log[1:]]
    assert served == ["c1", "c100"]


def test_writes_that_waited_too_long_are_answered_busy_and_reads_are_still_served():
    from zauction.server.service import MAX_QUEUE_WAIT_S

    service, runtime, transport = with_transport()
    now = [100.0]
    service.clock = lambda: now[0]
    frame = pack(bid_body(1, 1, 5)) + pack({"op": "result", "rid": 2, "auction": "x",
                                            "stale": True})
    service.on_inbound(Inbound(b"cli", None, b"C", frame))
    now[0] += MAX_QUEUE_WAIT_S + 0.01  # the loop was too busy to get to them in time
    service.on_inbound(Inbound(b"cli", None, b"C", pack(bid_body(3, 1, 7))))
    service.serve_backlog()
    answers = [(r["rid"], r.get("error")) for r in (unpack(p) for _, p in replies_sent(transport))]
    assert answers == [(1, "busy"), (2, None)]  # the fresh bid 3 is proposed, not refused
    assert len(runtime.log) == 2 and service.busy_replies == 1


def test_a_forwarded_request_waits_in_the_same_backlog_and_is_answered_to_its_node():
    from zauction.protocol import FORWARD_KIND

    service, runtime, transport = with_transport()
    inner = pack(bid_body(1, 1, 5))
    service.on_inbound(Inbound(b"follower", "b:1", FORWARD_KIND, pack({"fid": 9, "req": inner})))
    assert len(runtime.log) == 1 and service.has_backlog  # queued, not served at once
    service.serve_backlog()
    runtime.apply_all()
    (ident, payload), = replies_sent(transport)
    body = unpack(payload)
    assert ident == b"follower" and body["fid"] == 9 and unpack(body["reply"])["ok"]


def test_a_follower_forwards_a_bounded_number_and_points_the_rest_to_the_leader(monkeypatch):
    import zauction.server.service

    monkeypatch.setattr(zauction.server.service, "MAX_FORWARDS_IN_FLIGHT", 2)
    service, runtime, transport = with_transport()
    runtime.role, runtime.leader = Role.FOLLOWER, "b:1"
    forwarded = []
    transport.send = lambda dst, kind, payload: forwarded.append((dst, kind)) or True
    frame = b"".join(pack(bid_body(n, 1, n)) for n in range(1, 4))
    receive(service, b"cli", frame)
    assert forwarded == [("b:1", b"F"), ("b:1", b"F")]
    (_, payload), = replies_sent(transport)
    assert unpack(payload)["rid"] == 3 and unpack(payload)["error"] == "not_leader"
    assert unpack(payload)["leader"] == "b:1"


def test_a_flood_of_reads_cannot_grow_the_backlog_without_bound():
    backlog = FairBacklog(max_total=2)
    service, runtime, transport = service_with_backlog(backlog)
    frame = b"".join(pack({"op": "result", "rid": n, "auction": "x"}) for n in range(1, 6))
    service.on_inbound(Inbound(b"cli", None, b"C", frame))
    assert [unpack(p)["error"] for _, p in replies_sent(transport)] == ["busy"] * 3
    assert len(backlog) == 2


def read_replies(service: Service, runtime: ScriptedRuntime, body: dict) -> list:
    replies: list = []
    runtime.sinks[b"reader"] = replies
    receive(service, b"reader", pack(body))
    return replies


def test_an_after_seq_beyond_any_seq_is_a_bad_request_and_the_loop_goes_on():
    # Once it raised in the node loop (islice refuses ints past sys.maxsize): the node died.
    service, runtime = make()
    for after in (2**64 - 1, -2, 2**63, True, "1"):  # -1 asks for the opening too
        (reply,) = read_replies(service, runtime, {"op": "events", "rid": 5, "auction": "x",
                                                   "after_seq": after, "stale": True})
        assert reply["error"] == "bad_request" and "after_seq" in reply["message"]
    (reply,) = read_replies(service, runtime, {"op": "events", "rid": 6, "auction": "x",
                                               "after_seq": 2**63 - 1, "stale": True})
    assert reply["ok"] and reply["result"] == []


def test_an_answer_over_the_reply_limit_is_refused_not_sent(monkeypatch):
    import zauction.server.service

    service, runtime = make()
    bid(service, rid=1, seq=1, amount=5, replies=[])
    runtime.apply_all()
    monkeypatch.setattr(zauction.server.service, "MAX_ANSWER_BYTES", 40)
    before = service.bad_requests
    (reply,) = read_replies(service, runtime, {"op": "history", "rid": 7, "auction": "x",
                                               "stale": True})
    assert reply["error"] == "bad_request" and "reply limit" in reply["message"]
    assert service.bad_requests == before + 1


def test_gathered_replies_are_split_by_count_and_by_bytes(monkeypatch):
    import zauction.server.service as service_module

    monkeypatch.setattr(service_module, "MAX_REPLY_BYTES", 10)
    frames = service_module.reply_frames([b"aaaa", b"bbbb", b"cccc", b"d"])
    assert frames == [b"aaaabbbb", b"ccccd"]
    monkeypatch.setattr(service_module, "MAX_REPLIES_PER_FRAME", 2)
    monkeypatch.setattr(service_module, "MAX_REPLY_BYTES", 1000)
    assert service_module.reply_frames([b"1", b"2", b"3"]) == [b"12", b"3"]
    assert service_module.reply_frames([]) == []


# --- input validation at the edge --------------------------------------------------------


def test_a_forward_from_a_non_member_is_refused_before_it_is_decoded(monkeypatch):
    import zauction.server.service
    from zauction.protocol import FORWARD_KIND

    decoded = []
    real_unpack = zauction.server.service.unpack
    monkeypatch.setattr(zauction.server.service, "unpack",
                        lambda data, *a: decoded.append(len(data)) or real_unpack(data, *a))
    service, runtime, transport = with_transport()
    inner = pack(bid_body(1, 1, 5))
    service.on_inbound(Inbound(b"outsider", None, FORWARD_KIND, pack({"fid": 1, "req": inner})))
    huge = pack({"fid": 2, "req": b"x" * 200_000})
    service.on_inbound(Inbound(b"member", "b:1", FORWARD_KIND, huge))
    service.serve_backlog()
    assert decoded == [] and service.bad_requests == 2
    assert len(runtime.log) == 1 and replies_sent(transport) == []


@pytest.mark.parametrize("fields", [
    {"opens_at_ms": []}, {"opens_at_ms": {}}, {"opens_at_ms": ""}, {"opens_at_ms": False},
    {"opens_at_ms": None}, {"closes_at_ms": []}, {"closes_at_ms": None, "duration_ms": 5000},
    {"closes_at_ms": False}, {"duration_ms": True}, {"duration_ms": None}, {"duration_ms": "5"},
    {"duration_ms": 0}, {"duration_ms": 2**63 - 1}, {},  # neither closes_at_ms nor duration_ms
    {"closes_at_ms": 2**40, "duration_ms": 5000},  # both
])
def test_open_refuses_every_wrong_typed_time_field(fields):
    service, runtime, transport = with_transport()
    body = {"op": "open", "rid": 7, "client": "admin", "seq": 2, "auction": "y", **fields}
    if not any(k in fields for k in ("closes_at_ms", "duration_ms")) and fields:
        body["duration_ms"] = 60_000
    receive(service, b"admin", pack(body))
    (reply,) = [unpack(p) for _, p in replies_sent(transport)]
    assert (reply["rid"], reply["ok"], reply["error"]) == (7, False, "bad_request"), reply
    assert len(runtime.log) == 1  # nothing proposed


def test_open_with_well_typed_times_is_proposed():
    service, runtime, transport = with_transport()
    receive(service, b"admin", pack({"op": "open", "rid": 7, "client": "admin", "seq": 2,
                                     "auction": "y", "opens_at_ms": 1000, "duration_ms": 5}))
    assert len(runtime.log) == 2
    assert decode_request_fields(runtime.log[1][0])[3].closes_at_ms == 1005


@pytest.mark.parametrize("body", [
    {"op": "result", "auction": "x"},  # no rid
    {"op": "result", "rid": None, "auction": "x"},
    {"op": "result", "rid": 1, "auction": "x", "stale": "yes"},
    {"op": "result", "rid": 1, "auction": "x", "stale": 1},
    {"op": "bid", "rid": 1, "client": "c", "seq": 1, "auction": "x", "bidder": "b",
     "amount": 5, "stream": "true"},
])
def test_a_missing_rid_or_a_non_boolean_flag_is_a_bad_request(body):
    service, runtime, transport = with_transport()
    receive(service, b"cli", pack(body))
    (reply,) = [unpack(p) for _, p in replies_sent(transport)]
    assert reply["error"] == "bad_request" and len(runtime.log) == 1


def test_a_failure_handling_one_request_answers_it_and_the_service_goes_on(monkeypatch):
    service, runtime, transport = with_transport()

    def broken_query(*args):
        raise RuntimeError("a bug in a read")

    import zauction.server.reads

    monkeypatch.setattr(zauction.server.reads, "answer", broken_query)
    frame = pack({"op": "result", "rid": 5, "auction": "x", "stale": True}) + pack(
        {"op": "status", "rid": 6})
    service.on_inbound(Inbound(b"cli", None, b"C", frame))
    service.serve_backlog()
    answers = [(r["rid"], r["ok"], r.get("error")) for r in
               (unpack(p) for _, p in replies_sent(transport))]
    assert answers == [(5, False, "internal"), (6, True, None)]
    assert service.internal_errors == 1
    receive(service, b"cli", pack(bid_body(7, 1, 5)))  # and writes still work
    assert len(runtime.log) == 2


def test_a_failure_reading_a_frame_answers_it_and_is_counted(monkeypatch):
    import zauction.server.service

    def broken_decode(payload):
        raise RuntimeError("a bug in the decoder")

    service, runtime, transport = with_transport()
    monkeypatch.setattr(zauction.server.service, "decode_requests", broken_decode)
    service.on_inbound(Inbound(b"cli", None, b"C", pack({"op": "status", "rid": 9})))
    ((to, payload),) = replies_sent(transport)
    assert to == b"cli" and unpack(payload)["error"] == "internal" and unpack(payload)["rid"] == 9
    assert service.internal_errors == 1


def test_paged_reads_return_a_cursor_and_every_item_once(monkeypatch):
    service, runtime = make()
    for n in range(1, 8):
        bid(service, rid=n, seq=n, amount=5 * n, replies=[])
    runtime.apply_all()
    items, after, pages = [], 0, 0
    while True:
        (reply,) = read_replies(service, runtime, {"op": "history", "rid": 9, "auction": "x",
                                                   "after_seq": after, "limit": 3,
                                                   "stale": True})
        assert reply["ok"] and len(reply["result"]) <= 3
        items.extend(reply["result"])
        pages += 1
        if reply["next"] is None:
            break
        after = reply["next"]
    assert [i["amount"] for i in items] == [5 * n for n in range(1, 8)] and pages == 3
    (opened, *rest), = [r["result"] for r in read_replies(
        service, runtime, {"op": "events", "rid": 10, "auction": "x", "after_seq": -1,
                           "stale": True})]
    assert opened["type"] == "auction_opened" and len(rest) == 7
    (reply,) = read_replies(service, runtime, {"op": "auctions", "rid": 11, "limit": 1,
                                               "stale": True})
    assert [a["auction"] for a in reply["result"]] == ["x"] and reply["next"] is None
    for bad in ({"limit": 0}, {"limit": 10**6}, {"limit": True}, {"after": 5},
                {"after": "a" * 65}):
        (reply,) = read_replies(service, runtime, {"op": "auctions", "rid": 12,
                                                   "stale": True, **bad})
        assert reply["error"] == "bad_request", bad


def test_a_seq_reused_for_a_different_request_is_refused_not_answered_with_the_other():
    service, runtime = make()
    first, retry, other = [], [], []
    bid(service, rid=1, seq=1, amount=5, replies=first)
    bid(service, rid=2, seq=1, amount=5, replies=retry)  # the same bid: joins it
    bid(service, rid=3, seq=1, amount=9, replies=other)  # the same seq, another amount
    assert [r["reason"] for r in other] == ["seq_reused"] and not other[0]["ok"]
    runtime.apply_all()
    assert [r["ok"] for r in first + retry] == [True, True] and len(runtime.log) == 2
    # Once applied, the state machine tells them apart the same way.
    late = []
    bid(service, rid=4, seq=1, amount=9, replies=late)
    runtime.apply_all()
    assert late[0]["reason"] == "seq_reused"
    assert runtime.state.result("x")["highest"]["amount"] == 5
    again = []
    bid(service, rid=5, seq=1, amount=5, replies=again)  # a true retry still gets its reply
    runtime.apply_all()
    assert again[0]["ok"] and again[0]["result"]["amount"] == 5


def test_one_client_id_cannot_take_the_whole_admission_window(monkeypatch):
    import zauction.server.service

    monkeypatch.setattr(zauction.server.service, "MAX_WRITES_PER_CLIENT", 3)
    service, runtime, transport = with_transport()
    frame = b"".join(pack({**bid_body(n, n, n), "client": "greedy"}) for n in range(1, 6))
    receive(service, b"cli", frame)
    errors = [unpack(p).get("error") for _, p in replies_sent(transport)]
    assert errors == ["busy", "busy"] and len(runtime.log) == 1 + 3
    receive(service, b"other", pack(bid_body(9, 1, 50)))  # another client id is admitted
    assert len(runtime.log) == 1 + 4
    runtime.apply_all()  # replies free the window again
    receive(service, b"cli", pack({**bid_body(6, 6, 60), "client": "greedy"}))
    assert len(runtime.log) == 1 + 5
