"""A pipelined load generator: many bidders, one thread, one DEALER per node, one zmq.Poller.

Each bidder is its own client id with at most one write in flight (the cluster's exactly-once
rule needs that), so the number of requests in flight is at most the number of bidders. Replies
are matched by `rid`; every attempt of an operation gets a new rid but keeps the operation's
(client, seq), so an answer to any attempt, even a late one, completes the operation.

Two ways to offer load:
  * open loop (`rate`): bidder i owns the slots t0 + (i + k*bidders)/rate. A bidder still busy
    at its slot sends late, as soon as it is free, and its latency is counted from the slot (the
    intended send time), so queueing shows instead of being hidden (no coordinated omission).
  * closed loop (`concurrency`): that many bidders are busy at every moment; a bidder whose bid
    completes hands over to the next idle one.

Requests go to the believed leader (from `status` polls and not_leader hints). An attempt that
times out, or gets not_leader / unavailable / outcome_unknown / timeout, or whose node's
connection drops, is retried with the same (client, seq) on another node; past the per-op
deadline the op is recorded as "unknown". Latencies go into an HDR histogram (bounded memory).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq
from hdrh.histogram import HdrHistogram

from brokerless.wire import pack
from zauction.client.client import AuctionClient, ClientError, endpoint
from zauction.client.replies import (
    BackOff,
    Done,
    Rejected,
    Retry,
    Verdict,
    backoff_s,
    classify,
)
from zauction.protocol import CLIENT_KIND, ProtocolError, decode_replies, request_frames
from zauction.tools.checker import FinalState, Rules
from zauction.tools.history import OK, REJECTED, UNKNOWN, BidOp, HistoryWriter

ATTEMPT_TIMEOUT_S = 1.0
OP_TIMEOUT_S = 10.0
STATUS_EVERY_S = 0.25  # how often every node is asked who leads
LINK_CHECK_EVERY_S = 0.02  # how often the connections are checked for a dead node
PROGRESS_EVERY_S = 0.25
RETRY_BACKOFF_S = 0.02  # before retrying when no node knows a leader (an election runs)
CONNECT_WAIT_S = 2.0  # at start, how long to wait for the connections to the nodes
AUCTION_MARGIN_S = 120.0  # auctions stay open this long past the run (drain, retries, check)
LATENCY_MAX_US = 600_000_000  # histogram range: 1 us .. 10 min, 3 significant digits


class LoadError(Exception):
    """Bad load parameters, or a cluster the load could not start against."""


class LoadUnavailable(LoadError):
    """The cluster did not let the load start (auctions could not be opened) or be checked."""


@dataclass(frozen=True, slots=True)
class LoadConfig:
    servers: tuple[str, ...]
    bidders: int = 100
    duration_s: float = 30.0
    rate: float | None = None
    concurrency: int | None = None
    auctions: int = 1
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S
    op_timeout_s: float = OP_TIMEOUT_S
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.servers:
            raise LoadError("give at least one server")
        if (self.rate is None) == (self.concurrency is None):
            raise LoadError("give exactly one of rate (open loop) or concurrency (closed loop)")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise LoadError(f"rate must be a positive number, not {self.rate!r}")
        checks = {"bidders": self.bidders, "auctions": self.auctions}
        if self.concurrency is not None:
            checks["concurrency"] = self.concurrency
        for name, value in checks.items():
            if type(value) is not int or value < 1:
                raise LoadError(f"{name} must be a whole number >= 1, not {value!r}")
        if not 0 < self.duration_s <= 86_400 or not 0 < self.attempt_timeout_s <= self.op_timeout_s:
            raise LoadError("need 0 < duration <= 1 day and 0 < attempt timeout <= op timeout")

    @property
    def bidder_count(self) -> int:
        """Closed loop needs a distinct bidder (client id) for every request in flight."""
        return max(self.bidders, self.concurrency or 0)


@dataclass(frozen=True, slots=True)
class LoadProgress:
    elapsed_s: float
    duration_s: float
    acked: int
    rejected: int
    failed: int
    in_flight: int
    rate: float  # operations completed per second over the last progress interval
    p99_ms: float


@dataclass(frozen=True, slots=True)
class LoadResult:
    acked: int
    rejected: int
    failed: int
    throughput: float
    latency_ms: dict[str, float]
    leader_changes: int
    errors: dict[str, int]
    rejected_reasons: dict[str, int]
    duration_s: float
    mode: str  # "offered_rate" or "concurrency"
    mode_value: float
    bidders: int
    auctions: tuple[str, ...]
    lost: int | None = None
    ops: tuple[BidOp, ...] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"acked": self.acked, "rejected": self.rejected, "failed": self.failed,
                "throughput": round(self.throughput, 1), "latency_ms": self.latency_ms,
                "lost": self.lost, "leader_changes": self.leader_changes,
                "errors": dict(self.errors), "rejected_reasons": dict(self.rejected_reasons),
                self.mode: self.mode_value, "duration_s": round(self.duration_s, 3),
                "bidders": self.bidders, "auctions": list(self.auctions)}


def run_load(servers: Sequence[str], *, bidders: int = 100, duration_s: float = 30.0,
             rate: float | None = None, concurrency: int | None = None, auctions: int = 1,
             history_path: str | None = None, keep_ops: bool = False,
             on_progress: Callable[[LoadProgress], None] | None = None,
             attempt_timeout_s: float = ATTEMPT_TIMEOUT_S, op_timeout_s: float = OP_TIMEOUT_S,
             seed: int | None = None, context: zmq.Context | None = None) -> LoadResult:
    """Open the auctions, bid for `duration_s`, wait for what is in flight, and report.
    `keep_ops` keeps every op in the result (for the checker); memory then grows with the run."""
    config = LoadConfig(tuple(servers), bidders, duration_s, rate, concurrency, auctions,
                        attempt_timeout_s, op_timeout_s, seed)
    ctx = context or zmq.Context.instance()
    names = open_auctions(config, ctx)
    sink = _OpSink(history_path, keep_ops)
    try:
        engine = _Engine(config, names, ctx, sink, on_progress)
        try:
            return engine.run()
        finally:
            engine.close()
    finally:
        sink.close()


def open_auctions(config: LoadConfig, ctx: zmq.Context) -> tuple[str, ...]:
    """Open K fresh auctions load-<runid>-<k> that stay open past the end of the run."""
    run_id = uuid.uuid4().hex[:8]
    names = tuple(f"load-{run_id}-{k}" for k in range(config.auctions))
    duration_ms = int((config.duration_s + config.op_timeout_s + AUCTION_MARGIN_S) * 1000)
    client = AuctionClient(list(config.servers), timeout=10.0, attempt_timeout=0.5, context=ctx)
    try:
        for name in names:
            client.open_auction(name, duration_ms=duration_ms, item=f"load test {run_id}")
    except ClientError as exc:
        raise LoadUnavailable(f"cannot open the load auctions: {exc}") from exc
    finally:
        client.close()
    return names


# --- the final state, for the checker ----------------------------------------------------------

FINAL_READ_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class FinalReads:
    states: dict[str, FinalState]  # auction -> the leader's history, rules, every replica's
    unreachable: tuple[str, ...]  # nodes that did not answer (e.g. killed), not compared


def read_final_states(servers: Sequence[str], auctions: Sequence[str],
                      timeout_s: float = 15.0) -> FinalReads:
    """Each auction's history through a linearizable read at the leader, and through a stale
    read at every reachable node, re-read until they all agree (followers apply a moment
    later) or `timeout_s` passes; what still differs then is for the checker to report."""
    deadline = time.monotonic() + timeout_s
    leader = AuctionClient(list(servers), timeout=5.0, attempt_timeout=0.5)
    nodes = {s: AuctionClient([s], timeout=1.0, attempt_timeout=0.5) for s in servers}
    try:
        reachable = [s for s, c in nodes.items() if c.status()[0].get("role") != "unreachable"]
        states = {a: _converged(leader, {s: nodes[s] for s in reachable}, a, deadline)
                  for a in auctions}
    except ClientError as exc:
        raise LoadUnavailable(f"cannot read the final state: {exc}") from exc
    finally:
        for client in (leader, *nodes.values()):
            client.close()
    return FinalReads(states, tuple(s for s in servers if s not in reachable))


def _converged(leader: AuctionClient, nodes: dict[str, AuctionClient], auction: str,
               deadline: float) -> FinalState:
    summary = leader.result(auction)
    rules = Rules(summary.get("reserve", 1), summary.get("increment", 1))
    while True:
        bids = _bids(leader.history(auction))
        replicas = {s: _bids(c.history(auction, stale=True)) for s, c in nodes.items()}
        if all(r == bids for r in replicas.values()) or time.monotonic() >= deadline:
            return FinalState(bids, rules, replicas)
        time.sleep(FINAL_READ_POLL_S)  # a bounded poll until the followers have applied


def _bids(history: Any) -> tuple[tuple[str, int], ...]:
    return tuple((b["bidder"], b["amount"]) for b in history)


# --- bookkeeping ---------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Bidder:
    index: int
    client: str
    name: str
    auction: str
    seq: int = 0
    last_amount: int = 0
    next_slot: int = 0  # open loop: the index k of this bidder's next slot


@dataclass(slots=True, eq=False)
class _Op:
    bidder: _Bidder
    seq: int
    amount: int
    intended_ns: int  # latency is measured from here (the slot, in open loop)
    invoke_ns: int  # the first attempt's send time (for the history)
    deadline_ns: int
    node: str = ""
    attempt_rid: int = 0
    rids: list[int] = field(default_factory=list)
    done: bool = False
    refusals: int = 0  # `busy` answers so far: each doubles the back-off


class _OpSink:
    """Where finished operations go: a JSON-lines file, a list, or nowhere."""

    def __init__(self, path: str | None, keep: bool) -> None:
        self._writer = HistoryWriter(path) if path else None
        self.ops: list[BidOp] | None = [] if keep else None

    def add(self, op: BidOp) -> None:
        if self._writer is not None:
            self._writer.write(op)
        if self.ops is not None:
            self.ops.append(op)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _Stats:
    def __init__(self) -> None:
        self.latency = HdrHistogram(1, LATENCY_MAX_US, 3)
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.in_window = 0  # ops completed (acked or rejected) before the end of the run

    def completed(self, outcome: str, reason: str | None, latency_ns: int | None,
                  in_window: bool) -> None:
        self.outcomes[outcome] += 1
        if outcome == REJECTED:
            self.reasons[reason or "?"] += 1
        if latency_ns is not None:
            self.latency.record_value(min(max(latency_ns // 1000, 1), LATENCY_MAX_US))
            self.in_window += in_window

    def percentiles_ms(self) -> dict[str, float]:
        if self.latency.get_total_count() == 0:
            return {k: 0.0 for k in ("p50", "p90", "p99", "p999", "max")}
        at = self.latency.get_value_at_percentile
        values = {"p50": at(50), "p90": at(90), "p99": at(99), "p999": at(99.9),
                  "max": self.latency.get_max_value()}
        return {k: round(v / 1000, 3) for k, v in values.items()}


class _LeaderView:
    """Who leads, as far as we know; counts leader changes seen in status polls (a new term
    with a leader counts once, the first one seen does not)."""

    def __init__(self, servers: Sequence[str]) -> None:
        self.servers = frozenset(servers)
        self.leader: str | None = None
        self.term = -1
        self.changes = 0

    def observe(self, status: Any) -> None:
        if not isinstance(status, dict):
            return
        term, leader = status.get("term"), status.get("leader")
        if type(term) is not int or leader not in self.servers or term < self.term:
            return
        if term > self.term and self.term >= 0:
            self.changes += 1
        self.term, self.leader = term, leader

    def hint(self, leader: Any) -> None:
        if leader in self.servers:
            self.leader = leader


class _Links:
    """One DEALER per node. IMMEDIATE: a node we are not connected to refuses the send at once
    instead of queueing it, and a dropped connection shows as the socket not being writable."""

    def __init__(self, servers: Sequence[str], ctx: zmq.Context) -> None:
        self.outbox: dict[str, list[bytes]] = {}
        self.poller = zmq.Poller()
        self.sockets: dict[str, zmq.Socket] = {}
        self.node_of: dict[zmq.Socket, str] = {}
        for server in servers:
            sock = ctx.socket(zmq.DEALER)
            for option, value in ((zmq.LINGER, 0), (zmq.IMMEDIATE, 1), (zmq.SNDHWM, 1 << 20),
                                  (zmq.RCVHWM, 1 << 20)):
                sock.setsockopt(option, value)
            sock.connect(endpoint(server))
            self.sockets[server] = sock
            self.node_of[sock] = server
            self.poller.register(sock, zmq.POLLIN)

    def send(self, node: str, payload: bytes) -> bool:
        """Queue a request for `node` (sent by flush(), several to a frame); False at once
        when there is no connection to it."""
        if not self.connected(node):
            return False
        self.outbox.setdefault(node, []).append(payload)
        return True

    def flush(self) -> None:
        """Send what send() queued: one frame per node per MAX_FRAME_REQUESTS requests, so the
        node receives and the kernel moves one message instead of one per bid. A frame the
        socket refuses (the connection dropped meanwhile) is left to the attempt timers."""
        outbox, self.outbox = self.outbox, {}
        for node, payloads in outbox.items():
            sock = self.sockets[node]
            for frame in request_frames(payloads):
                try:
                    sock.send_multipart([CLIENT_KIND, frame], flags=zmq.NOBLOCK)
                except zmq.Again:
                    break

    def await_connections(self, deadline: float) -> None:
        for sock in self.sockets.values():
            sock.poll(max(0, int((deadline - time.monotonic()) * 1000)), zmq.POLLOUT)

    def connected(self, node: str) -> bool:
        return bool(self.sockets[node].get(zmq.EVENTS) & zmq.POLLOUT)

    def receive(self, timeout_ms: int) -> list[tuple[str, bytes]]:
        """Every reply that is waiting (after up to `timeout_ms` for the first)."""
        out = []
        for sock, _ in self.poller.poll(timeout_ms):
            node = self.node_of[sock]
            while True:
                try:
                    frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) == 2 and frames[0] == CLIENT_KIND:
                    out.append((node, frames[1]))
        return out

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(linger=0)


# --- the engine -----------------------------------------------------------------------------------

_ATTEMPT, _RETRY, _SLOT, _BUSY = 0, 1, 2, 3  # timer kinds


class _Engine:
    def __init__(self, config: LoadConfig, auctions: tuple[str, ...], ctx: zmq.Context,
                 sink: _OpSink, on_progress: Callable[[LoadProgress], None] | None) -> None:
        self.config = config
        self.auctions = auctions
        self.sink = sink
        self.on_progress = on_progress
        self.servers = list(config.servers)
        self.links = _Links(self.servers, ctx)
        self.view = _LeaderView(self.servers)
        self.stats = _Stats()
        self.rng = random.Random(config.seed)
        run = uuid.uuid4().hex[:8]
        self.bidders = [_Bidder(i, f"load-{run}-{i}", f"bidder-{i}", auctions[i % len(auctions)])
                        for i in range(config.bidder_count)]
        self.per_auction = math.ceil(len(self.bidders) / len(auctions))
        self.high = dict.fromkeys(auctions, 0)
        self.pending: dict[int, _Op] = {}  # rid -> op, for every attempt of every op in flight
        self.in_flight: set[_Op] = set()
        self.status_rids: set[int] = set()
        self.down: set[str] = set()
        self.idle: deque[_Bidder] = deque(self.bidders)
        self.timers: list[tuple[int, int, int, Any]] = []
        self.rids = itertools.count(1)
        self.ticket = itertools.count()
        self.rotation = itertools.cycle(self.servers)
        self.attempt_ns = int(config.attempt_timeout_s * 1e9)
        self.op_ns = int(config.op_timeout_s * 1e9)
        self.period_ns = 1e9 / config.rate if config.rate else 0.0
        self.start_ns = self.end_ns = 0
        self.stopping = False

    # --- the loop ---

    def run(self) -> LoadResult:
        self._prime_leader()
        self.start_ns = now = time.monotonic_ns()
        self.end_ns = now + int(self.config.duration_s * 1e9)
        self._start_bidders(now)
        periodic = {"status": now, "links": now, "progress": now + _ns(PROGRESS_EVERY_S)}
        last_progress = (now, 0)
        while not (self.stopping and not self.in_flight):
            now = time.monotonic_ns()
            self.stopping = self.stopping or now >= self.end_ns
            last_progress = self._periodic(now, periodic, last_progress)
            self._fire_timers(now)
            wake = min(*periodic.values(), self.timers[0][0] if self.timers else now + _ns(0.1))
            self.links.flush()
            for node, payload in self.links.receive(max(0, (wake - now) // 1_000_000)):
                self._on_frame(node, payload)
        return self._result(time.monotonic_ns())

    def _periodic(self, now: int, due: dict[str, int],
                  last_progress: tuple[int, int]) -> tuple[int, int]:
        if now >= due["status"]:
            self._poll_status()
            due["status"] = now + _ns(STATUS_EVERY_S)
        if now >= due["links"]:
            self._check_links()
            due["links"] = now + _ns(LINK_CHECK_EVERY_S)
        if now >= due["progress"]:
            last_progress = self._report_progress(now, last_progress)
            due["progress"] = now + _ns(PROGRESS_EVERY_S)
        return last_progress

    def _fire_timers(self, now: int) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            when, _, kind, what = heapq.heappop(timers)
            if kind == _ATTEMPT:
                op, rid = what
                if not op.done and op.attempt_rid == rid:
                    self.stats.errors["attempt_timeout"] += 1
                    self._attempt(op, avoid=op.node)
            elif kind == _RETRY:
                if not what.done:
                    self._attempt(what, avoid=what.node)
            elif kind == _BUSY:  # the leader asked us to come back later: same node
                if not what.done:
                    self._attempt(what, avoid=None)
            elif not self.stopping:
                self._launch(what, when)

    def _timer(self, when: int, kind: int, what: Any) -> None:
        heapq.heappush(self.timers, (when, next(self.ticket), kind, what))

    # --- starting bids ---

    def _start_bidders(self, now: int) -> None:
        if self.config.rate is None:
            for _ in range(self.config.concurrency or 0):
                self._launch(self.idle.popleft(), now)
            return
        for bidder in self.bidders:
            self._schedule_slot(bidder, now)

    def _slot_ns(self, bidder: _Bidder) -> int:
        k = bidder.next_slot
        return self.start_ns + int((bidder.index + k * len(self.bidders)) * self.period_ns)

    def _schedule_slot(self, bidder: _Bidder, now: int) -> None:
        """Open loop: send at the bidder's next slot, or now if that slot has passed (late)."""
        slot = self._slot_ns(bidder)
        if slot >= self.end_ns or self.stopping:
            return
        if slot <= now:
            self._launch(bidder, slot)
        else:
            self._timer(slot, _SLOT, bidder)

    def _launch(self, bidder: _Bidder, intended_ns: int) -> None:
        bidder.seq += 1
        bidder.next_slot += 1
        bid_floor = self.high[bidder.auction] + 1 + self.rng.randrange(self.per_auction)
        bidder.last_amount = max(bid_floor, bidder.last_amount + 1)
        now = time.monotonic_ns()
        op = _Op(bidder, bidder.seq, bidder.last_amount, intended_ns, now, now + self.op_ns)
        self.in_flight.add(op)
        self._attempt(op, avoid=None)

    # --- attempts and replies ---

    def _attempt(self, op: _Op, avoid: str | None) -> None:
        now = time.monotonic_ns()
        if now >= op.deadline_ns:
            self._finish(op, UNKNOWN, None, None)
            return
        op.attempt_rid = 0  # the previous attempt is over, whatever happens next
        rid = next(self.rids)
        b = op.bidder
        payload = pack({"op": "bid", "rid": rid, "client": b.client, "seq": op.seq,
                        "auction": b.auction, "bidder": b.name, "amount": op.amount,
                        "stream": True})
        for node in self._candidates(avoid):
            if self.links.send(node, payload):
                op.node, op.attempt_rid = node, rid
                op.rids.append(rid)
                self.pending[rid] = op
                self._timer(min(now + self.attempt_ns, op.deadline_ns), _ATTEMPT, (op, rid))
                return
            self._mark_down(node)
        self.stats.errors["no_node_reachable"] += 1
        self._timer(now + _ns(RETRY_BACKOFF_S), _RETRY, op)

    def _candidates(self, avoid: str | None) -> list[str]:
        """The believed leader first, then the other nodes in turn; `avoid` (the node that just
        failed) last. Nodes known to be down are left out."""
        start = next(self.rotation)
        i = self.servers.index(start)
        order = self.servers[i:] + self.servers[:i]
        leader = self.view.leader
        if leader is not None and leader in order:
            order.remove(leader)
            order.insert(0, leader)
        if avoid is not None and len(order) > 1:
            order.remove(avoid)
            order.append(avoid)
        return [n for n in order if n not in self.down]

    def _on_frame(self, node: str, payload: bytes) -> None:
        try:
            replies = decode_replies(payload)  # several when the bids asked for `stream`
        except ProtocolError:
            self.stats.errors["bad_reply"] += 1
            return
        for reply in replies:
            self._on_reply(node, reply)

    def _on_reply(self, node: str, reply: dict) -> None:
        rid = reply.get("rid")
        if rid in self.status_rids:
            self.status_rids.discard(rid)
            if reply["ok"]:
                self.view.observe(reply.get("result"))
            return
        op = self.pending.get(rid) if type(rid) is int else None
        verdict = classify(reply)
        if op is not None:
            self._on_verdict(op, node, rid, verdict)
        elif rid == 0 and isinstance(verdict, Retry):
            self._on_anonymous_failure(node, verdict)

    def _on_anonymous_failure(self, node: str, verdict: Retry) -> None:
        """A node failed one of the requests it forwarded (its leader changed or timed out)
        but answered with rid 0, so we cannot tell which: retry every op waiting there. A
        retry keeps its seq, so the ops that were fine after all are still applied once."""
        self.stats.errors["unmatched_reply"] += 1
        self.view.hint(verdict.leader)
        for op in [op for op in self.in_flight if op.node == node and op.attempt_rid]:
            self._attempt(op, avoid=node)

    def _on_verdict(self, op: _Op, node: str, rid: int, verdict: Verdict) -> None:
        if isinstance(verdict, Done):
            self._finish(op, OK, None, verdict.result)
        elif isinstance(verdict, Rejected):
            self._finish(op, REJECTED, str(verdict.reason), verdict.result)
        elif isinstance(verdict, BackOff):
            self._back_off(op, rid, verdict)
        elif isinstance(verdict, Retry):
            self._retry(op, node, rid, verdict)
        else:
            # Failed (unknown_auction, bad_request...): final answers that are our bug, not load.
            self.stats.errors[verdict.code] += 1
            self._finish(op, REJECTED, verdict.reason or verdict.code, verdict.result)

    def _back_off(self, op: _Op, rid: int, verdict: BackOff) -> None:
        self.stats.errors["busy"] += 1
        if op.attempt_rid != rid:
            return  # an old attempt's answer: the current attempt is still out
        op.attempt_rid = 0  # the attempt is over: its timer must not fire again
        op.refusals += 1
        pause = backoff_s(verdict.pause_s, op.refusals)
        self._timer(time.monotonic_ns() + _ns(pause), _BUSY, op)

    def _retry(self, op: _Op, node: str, rid: int, verdict: Retry) -> None:
        self.stats.errors[verdict.code] += 1
        self.view.hint(verdict.leader)
        if op.attempt_rid != rid:
            return  # an old attempt's answer: the current attempt is still out
        if verdict.leader in self.view.servers and verdict.leader != node:
            self._attempt(op, avoid=node)
        else:
            op.attempt_rid = 0  # the attempt is over: its timer must not fire again
            self._timer(time.monotonic_ns() + _ns(RETRY_BACKOFF_S), _RETRY, op)

    def _finish(self, op: _Op, outcome: str, reason: str | None, result: Any) -> None:
        now = time.monotonic_ns()
        op.done = True
        self.in_flight.discard(op)
        for rid in op.rids:
            self.pending.pop(rid, None)
        b = op.bidder
        latency = None if outcome == UNKNOWN else now - op.intended_ns
        self.stats.completed(outcome, reason, latency, now <= self.end_ns)
        if outcome == UNKNOWN:
            self.stats.errors["unknown"] += 1
        self._learn_high(b.auction, outcome, op.amount, result)
        self.sink.add(BidOp(b.client, op.seq, b.auction, b.name, op.amount, op.invoke_ns, now,
                            outcome, reason))
        self._next_for(b, now)

    def _learn_high(self, auction: str, outcome: str, amount: int, result: Any) -> None:
        high = result.get("high") if isinstance(result, dict) else None
        if outcome == OK:
            high = max(amount, high or 0)
        if type(high) is int and high > self.high[auction]:
            self.high[auction] = high

    def _next_for(self, bidder: _Bidder, now: int) -> None:
        if self.stopping or now >= self.end_ns:
            return
        if self.config.rate is not None:
            self._schedule_slot(bidder, now)
            return
        self.idle.append(bidder)
        self._launch(self.idle.popleft(), now)

    # --- cluster view ---

    def _prime_leader(self) -> None:
        """Learn the leader and let our connections come up before the clock starts."""
        client = AuctionClient(self.servers, timeout=2.0, attempt_timeout=0.5)
        try:
            statuses = client.status()
        finally:
            client.close()
        for status in statuses:  # untrusted replies: observe() checks each field
            self.view.observe(status)
        self.view.changes = 0
        self.links.await_connections(time.monotonic() + CONNECT_WAIT_S)

    def _poll_status(self) -> None:
        self.status_rids.clear()  # unanswered polls are forgotten: the next one replaces them
        for node in self.servers:
            if node in self.down:
                continue
            rid = next(self.rids)
            if self.links.send(node, pack({"op": "status", "rid": rid})):
                self.status_rids.add(rid)

    def _check_links(self) -> None:
        for node in self.servers:
            up = self.links.connected(node)
            if up:
                self.down.discard(node)
            elif node not in self.down:
                self._mark_down(node)

    def _mark_down(self, node: str) -> None:
        """The connection to `node` is gone (it died, or never came up): what was sent there
        will not be answered, so retry it elsewhere now rather than at the attempt timeout."""
        self.down.add(node)
        if self.view.leader == node:
            self.view.leader = None
        stranded = [op for op in self.in_flight if op.node == node and op.attempt_rid]
        for op in stranded:
            self.stats.errors["node_down"] += 1
            self._attempt(op, avoid=node)

    # --- reporting ---

    def _report_progress(self, now: int, last: tuple[int, int]) -> tuple[int, int]:
        outcomes = self.stats.outcomes
        done = outcomes[OK] + outcomes[REJECTED]
        if self.on_progress is not None:
            rate = (done - last[1]) / max((now - last[0]) / 1e9, 1e-9)
            p99 = self.stats.latency.get_value_at_percentile(99) / 1000
            self.on_progress(LoadProgress(
                (now - self.start_ns) / 1e9, self.config.duration_s, outcomes[OK],
                outcomes[REJECTED], outcomes[UNKNOWN], len(self.in_flight), rate, p99))
        return now, done

    def _result(self, now: int) -> LoadResult:
        cfg, stats = self.config, self.stats
        errors = Counter(stats.errors)
        if cfg.rate is not None:
            errors["not_sent"] = self._not_sent()
        mode, value = (("offered_rate", cfg.rate) if cfg.rate is not None
                       else ("concurrency", cfg.concurrency))
        return LoadResult(
            stats.outcomes[OK], stats.outcomes[REJECTED], stats.outcomes[UNKNOWN],
            stats.in_window / cfg.duration_s, stats.percentiles_ms(), self.view.changes,
            {k: v for k, v in sorted(errors.items()) if v}, dict(stats.reasons),
            cfg.duration_s, mode, value or 0, len(self.bidders), self.auctions,
            ops=tuple(self.sink.ops) if self.sink.ops is not None else None)

    def _not_sent(self) -> int:
        """Open loop: slots before the end that were never sent (their bidders were busy)."""
        slots = (self.end_ns - self.start_ns) / self.period_ns
        total = 0
        for bidder in self.bidders:
            owned = max(0, math.ceil((slots - bidder.index) / len(self.bidders)))
            total += max(0, owned - bidder.next_slot)
        return total

    def close(self) -> None:
        self.links.close()


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
