"""Client requests at a node: writes go to the leader's log, reads wait for a read index,
and a node that is not the leader forwards either to the leader and relays the answer.

Everything here runs in the node's single loop thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any, Protocol

from brokerless.application import Inbound, PeerReply
from brokerless.core import NotLeader
from brokerless.runtime import Callback, Overloaded, ProposalLost
from brokerless.types import Role
from brokerless.wire import WireError, pack, unpack
from zauction.auction.commands import (
    DEFAULT_AUCTION,
    MAX_DURATION_MS,
    MAX_TIMESTAMP_MS,
    Bid,
    CloseAuction,
    ForgetAuction,
    InvalidCommand,
    OpenAuction,
    Reason,
    Request,
    check_int,
    encode_request,
    identity_of,
)
from zauction.auction.domain import AuctionState, Reply, UnknownAuction, reply_to_dict
from zauction.protocol import (
    CLIENT_KIND,
    FORWARD_KIND,
    FORWARD_REPLY_KIND,
    MAX_REPLY_BYTES,
    MAX_REQUEST_BYTES,
    READ_OPS,
    WRITE_OPS,
    ClientRequest,
    ErrorCode,
    ProtocolError,
    decode_request,
    decode_requests,
    error_reply,
    ok_reply,
    page_reply,
    rid_of,
)
from zauction.server import reads
from zauction.server.backlog import FairBacklog

log = logging.getLogger("zauction.server.service")

Respond = Callable[[bytes], None]
FORWARD_TIMEOUT_S = 3.0
MAX_FORWARDS_IN_FLIGHT = 512  # beyond this a follower answers not_leader (with the leader)
MAX_REPLIES_PER_FRAME = 512  # keeps a gathered reply frame well under clients' limits
# One answer must fit a frame even when a follower wraps it to relay it (forwarding adds a
# few bytes of envelope), so reads are capped a little below the frame limit.
MAX_ANSWER_BYTES = MAX_REPLY_BYTES - 4096
# Client requests served per loop iteration. Measured: a Ready of 1,024 bids kept the leader's
# loop busy 80-155 ms, close to the 150 ms election timeout; 256 keep it well under.
REQUESTS_PER_ITERATION = 256
# A write that waited longer than this to be served is answered `busy` instead: queueing
# beyond it would outlast clients' attempt timeouts (0.5-1 s), and their retries would then
# arrive as duplicates on top of the flood (measured: collapse to 15% of peak at 1.5x load).
MAX_QUEUE_WAIT_S = 0.25
BUSY_RETRY_AFTER_MS = 20  # the hint sent with a `busy` reply: roughly one batch's commit time
MAX_WRITES_PER_CLIENT = 64  # writes of one client id in flight at the leader before `busy`
MAX_FORWARD_BYTES = MAX_REQUEST_BYTES + 64  # one request and the forward's small envelope


def reply_frames(replies: list[bytes]) -> list[bytes]:
    """Replies joined into frames of at most MAX_REPLIES_PER_FRAME replies and
    MAX_REPLY_BYTES bytes (each reply alone is within MAX_ANSWER_BYTES)."""
    frames: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for reply in replies:
        if batch and (len(batch) == MAX_REPLIES_PER_FRAME or size + len(reply) > MAX_REPLY_BYTES):
            frames.append(b"".join(batch))
            batch, size = [], 0
        batch.append(reply)
        size += len(reply)
    if batch:
        frames.append(b"".join(batch))
    return frames


def now_ms() -> int:
    return int(time.time() * 1000)


class Replicator(Protocol):
    """What the service needs of the runtime (brokerless.runtime.Runtime is one)."""

    max_pending: int

    @property
    def role(self) -> Role: ...

    @property
    def leader(self) -> str | None: ...

    @property
    def saturated(self) -> bool: ...

    def propose(self, data: bytes, callback: Callback, *, proposed: Any = None) -> int: ...

    def read(self, callback: Callback) -> None: ...

    def reply(self, origin: bytes, kind: bytes, payload: bytes) -> bool: ...

    def send(self, peer: str, kind: bytes, payload: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Waiting:
    """A request read but not served yet."""

    arrival: float
    request: ClientRequest
    frame: bytes | None  # the request's own frame, if it came alone (forwarded as it is)
    respond: Respond
    forwarded: bool  # forwarded to us by another node (never forwarded again)


@dataclass(frozen=True, slots=True)
class InFlight:
    """A write proposed here and not applied yet, and who waits for its reply."""

    request: Request
    waiters: list[tuple[int, Respond]]  # (rid, respond) of the original and its retries


@dataclass(frozen=True, slots=True)
class Forward:
    """A request this node forwarded to the leader and still waits to hear about."""

    respond: Respond
    deadline: float
    leader: str  # the node it went to
    rid: int  # the client's request id


class Service:
    def __init__(self, runtime: Replicator, state: AuctionState, status: Callable[[], dict],
                 clock: Callable[[], float] = time.monotonic,
                 backlog: FairBacklog[Waiting] | None = None):
        self.runtime = runtime
        self.state = state
        self.status = status
        self.clock = clock
        self._forwards: dict[int, Forward] = {}  # by forward id
        self._fids = count(1)
        self.bad_requests = 0
        self.busy_replies = 0
        self.client_requests = 0
        self.internal_errors = 0  # requests we failed on (bugs): answered `internal`
        self._last_internal_log = -1e9
        # (client, seq) of each write proposed here and not yet applied -> who awaits it
        self._pending_writes: dict[tuple[str, int], InFlight] = {}
        self._writes_by_client: dict[str, int] = {}  # how many of them each client id has
        self._reply_box: dict[bytes, list[bytes]] = {}  # client identity -> replies to send
        # Keyed by the connection a request came on (a follower's forwards share its one).
        self._backlog: FairBacklog[Waiting] = FairBacklog() if backlog is None else backlog

    @property
    def pending_writes(self) -> int:
        """Writes proposed here and not yet applied (each may have several waiters)."""
        return len(self._pending_writes)

    # --- entry points from the loop ----------------------------------------------------

    def on_inbound(self, event: Inbound) -> None:
        try:
            if event.kind == CLIENT_KIND:
                self._on_client(event.origin, event.payload)
            elif event.kind == FORWARD_KIND:
                self._on_forwarded(event)
            else:
                self.bad_requests += 1
        except Exception:  # noqa: BLE001 - one frame must never end the node's loop
            self._internal_error("a frame")
            if event.kind == CLIENT_KIND:
                self._reply_now(event.origin, error_reply(
                    rid_of(event.payload), ErrorCode.INTERNAL, "the node failed on this frame"))

    def _internal_error(self, what: str) -> None:
        """Count a failure of ours while handling `what`; log it (with its traceback) at most
        once a second, so input that triggers it cannot flood the log."""
        self.internal_errors += 1
        now = self.clock()
        if now - self._last_internal_log >= 1.0:
            self._last_internal_log = now
            log.exception("failed handling %s (%d failures so far)", what, self.internal_errors)

    def on_peer_reply(self, event: PeerReply) -> None:
        if event.kind != FORWARD_REPLY_KIND:
            return
        try:
            body = unpack(event.payload)
            fid, reply = body["fid"], body["reply"]
        except (WireError, KeyError, TypeError):
            log.warning("malformed forwarded reply from %s", event.peer)
            return
        pending = self._forwards.pop(fid, None) if type(fid) is int else None
        if pending is not None and type(reply) is bytes:
            pending.respond(reply)

    def expire_forwards(self) -> None:
        now = self.clock()
        for fid, fwd in list(self._forwards.items()):
            if fwd.deadline <= now:
                del self._forwards[fid]
                fwd.respond(error_reply(fwd.rid, ErrorCode.TIMEOUT,
                                        "the leader did not answer in time"))

    def leader_changed(self, leader: str | None) -> None:
        """Requests forwarded to a former leader will likely never be answered: tell their
        clients now (outcome unknown), so they retry at once instead of timing out."""
        for fid, fwd in list(self._forwards.items()):
            if fwd.leader != leader:
                del self._forwards[fid]
                fwd.respond(error_reply(fwd.rid, ErrorCode.OUTCOME_UNKNOWN,
                                        f"leader changed from {fwd.leader} while forwarding",
                                        leader=leader))

    # --- one request -----------------------------------------------------------------------

    def _decode_or_refuse(self, payload: bytes, respond: Respond) -> ClientRequest | None:
        """The single request in `payload`, or None after answering bad_request."""
        try:
            return decode_request(payload)
        except ProtocolError as exc:
            self.bad_requests += 1
            respond(error_reply(rid_of(payload), ErrorCode.BAD_REQUEST, str(exc)))
            return None

    def _on_client(self, ident: bytes, payload: bytes) -> None:
        """A client's frame: one request, or several back to back (docs/protocol.md)."""
        try:
            items = decode_requests(payload)
        except ProtocolError as exc:
            self.bad_requests += 1
            self._reply_now(ident, error_reply(rid_of(payload), ErrorCode.BAD_REQUEST, str(exc)))
            return
        single = payload if len(items) == 1 else None
        self.client_requests += len(items)
        arrival = self.clock()  # one reading for the whole frame
        for item in items:
            if isinstance(item, ProtocolError):
                self.bad_requests += 1
                self._reply_now(ident, error_reply(item.rid, ErrorCode.BAD_REQUEST, str(item)))
            else:
                self._enqueue(ident, item, single, self._replier(ident, item), False, arrival)

    def _enqueue(self, source: bytes, req: ClientRequest, payload: bytes | None,
                 respond: Respond, forwarded: bool, arrival: float | None = None) -> None:
        when = self.clock() if arrival is None else arrival
        if not self._backlog.push(source, Waiting(when, req, payload, respond, forwarded)):
            # Any op: the backlog stays bounded, and one connection cannot take all of it.
            self._busy(req.rid, respond, "too many requests already waiting; retry shortly")

    @property
    def has_backlog(self) -> bool:
        return bool(self._backlog)

    def serve_backlog(self) -> None:
        """Serve up to REQUESTS_PER_ITERATION waiting client requests, oldest first.

        Called once per loop iteration, before the Ready: however many requests arrive at
        once (a frame may hold 1,024), one iteration does a bounded amount of work, so the
        leader's heartbeats keep their rhythm under any load."""
        backlog = self._backlog
        stale_before = self.clock() - MAX_QUEUE_WAIT_S
        served, popped = 0, 0
        # Refusing a stale write is cheap but not free: at most 4x the budget per iteration.
        while backlog and served < REQUESTS_PER_ITERATION and popped < 4 * REQUESTS_PER_ITERATION:
            popped += 1
            job = backlog.pop()
            if job.arrival < stale_before and job.request.op in WRITE_OPS:
                self._busy(job.request.rid, job.respond, f"waited over "
                           f"{MAX_QUEUE_WAIT_S * 1000:.0f} ms to be served; retry shortly")
            else:
                self._serve_guarded(job)
                served += 1

    def _serve_guarded(self, job: Waiting) -> None:
        try:
            self._serve(job.request, job.frame, job.respond, job.forwarded)
        except Exception:  # noqa: BLE001 - answer this request, keep serving the others
            self._internal_error(f"a {job.request.op!r} request")
            job.respond(error_reply(job.request.rid, ErrorCode.INTERNAL,
                                    "the node failed on this request"))

    def _serve(self, req: ClientRequest, payload: bytes | None, respond: Respond,
               forwarded: bool) -> None:
        if req.op == "status":
            respond(ok_reply(req.rid, self.status()))
        elif req.op in WRITE_OPS:
            self._route(req, payload, respond, forwarded, self._write)
        elif req.op in READ_OPS:
            if req.body.get("stale", False):  # a bool: the decoder refuses anything else
                self._answer_read(req, respond)
            else:
                self._route(req, payload, respond, forwarded, self._read)
        else:
            self.bad_requests += 1
            respond(error_reply(req.rid, ErrorCode.UNKNOWN_OP, f"unknown op {req.op!r}"))

    # --- replies to clients ----------------------------------------------------------------

    def _replier(self, ident: bytes, req: ClientRequest) -> Respond:
        if req.body.get("stream") is not True:
            return lambda data: self._reply_now(ident, data)
        # The client reads reply frames as msgpack streams: its replies wait for the end of
        # the loop iteration in which they are made and leave together, one frame (one send)
        # for many. The box is looked up at reply time: a write answers iterations later,
        # after flush_replies() has swapped in a new box.
        return lambda data: self._reply_box.setdefault(ident, []).append(data)

    def _reply_now(self, ident: bytes, data: bytes) -> None:
        self.runtime.reply(ident, CLIENT_KIND, data)

    def flush_replies(self) -> None:
        """Send the replies gathered for `stream` clients (once per loop iteration)."""
        if not self._reply_box:
            return
        box, self._reply_box = self._reply_box, {}
        for ident, replies in box.items():
            for frame in reply_frames(replies):
                self._reply_now(ident, frame)

    def _route(self, req: ClientRequest, payload: bytes | None, respond: Respond, forwarded: bool,
               serve: Callable[[ClientRequest, Respond], None]) -> None:
        if self.runtime.role == Role.LEADER:
            serve(req, respond)
            return
        leader = self.runtime.leader
        if leader is None or forwarded:
            # A forwarded request is never forwarded again: no loops between stale views.
            code = ErrorCode.NOT_LEADER if leader else ErrorCode.UNAVAILABLE
            respond(error_reply(req.rid, code, "no leader known here", leader=leader))
            return
        if len(self._forwards) >= MAX_FORWARDS_IN_FLIGHT:
            # Forwarding costs a message each way per request: a client sending this much
            # should talk to the leader itself (it retries there with the same seq).
            respond(error_reply(req.rid, ErrorCode.NOT_LEADER, "too many requests forwarded "
                                "already: send to the leader", leader=leader))
            return
        # A request that shared its frame with others is forwarded on its own.
        self._forward(leader, payload if payload is not None else pack(req.body), respond, req.rid)

    # --- forwarding ------------------------------------------------------------------------

    def _forward(self, leader: str, payload: bytes, respond: Respond, rid: int) -> None:
        fid = next(self._fids)
        self._forwards[fid] = Forward(respond, self.clock() + FORWARD_TIMEOUT_S, leader, rid)
        sent = self.runtime.send(leader, FORWARD_KIND, pack({"fid": fid, "req": payload}))
        if not sent:
            del self._forwards[fid]
            respond(error_reply(rid, ErrorCode.UNAVAILABLE, "leader unreachable"))

    def _on_forwarded(self, event: Inbound) -> None:
        if event.sender is None or len(event.payload) > MAX_FORWARD_BYTES:
            # Only members forward, and a forward holds one request: anything else is refused
            # before it is decoded (a 64 MiB map from an outsider stalled the loop 26 s).
            self.bad_requests += 1
            return
        try:
            body = unpack(event.payload, MAX_FORWARD_BYTES)
            fid, inner = body["fid"], body["req"]
            if type(fid) is not int or type(inner) is not bytes:
                raise TypeError
        except (WireError, KeyError, TypeError):
            self.bad_requests += 1
            return
        runtime, origin = self.runtime, event.origin

        def respond(data: bytes) -> None:
            runtime.reply(origin, FORWARD_REPLY_KIND, pack({"fid": fid, "reply": data}))

        req = self._decode_or_refuse(inner, respond)
        if req is not None:  # queued like a client's own: the same bound on work per iteration
            self._enqueue(origin, req, inner, respond, forwarded=True)

    # --- writes ----------------------------------------------------------------------------

    def _write(self, req: ClientRequest, respond: Respond) -> None:
        client, seq = req.body.get("client"), req.body.get("seq")
        # Only well-typed keys are looked up: a list or map here must not raise (unhashable).
        in_flight = (self._pending_writes.get((client, seq))
                     if type(client) is str and type(seq) is int else None)
        if in_flight is None and self.runtime.saturated:
            # Refuse before any work: this path must stay cheap.
            self._busy(req.rid, respond, str(Overloaded(self.runtime.max_pending)))
            return
        try:
            request = Request(*self._envelope(req.body), self._command(req))
        except InvalidCommand as exc:
            respond(error_reply(req.rid, ErrorCode.BAD_REQUEST, str(exc), reason=exc.reason))
            return
        except (KeyError, TypeError) as exc:
            respond(error_reply(req.rid, ErrorCode.BAD_REQUEST, f"missing or bad field: {exc}"))
            return
        if in_flight is not None:
            self._join(in_flight, request, req.rid, respond)
            return
        self._propose(request, req.rid, respond)

    @staticmethod
    def _join(in_flight: InFlight, request: Request, rid: int, respond: Respond) -> None:
        if identity_of(in_flight.request.cmd) != identity_of(request.cmd):
            # The same seq for a different request: never answer it with the other's reply.
            respond(error_reply(rid, ErrorCode.REJECTED, "this seq was used for a different "
                                "request", reason=Reason.SEQ_REUSED))
            return
        # A retry of a write still in flight here (the client timed out, or reached us twice):
        # answer it with the original's outcome instead of logging it again, so retries under
        # load do not multiply the work.
        in_flight.waiters.append((rid, respond))

    def _propose(self, request: Request, rid: int, respond: Respond) -> None:
        client = request.client_id
        in_flight = self._writes_by_client.get(client, 0)
        if in_flight >= MAX_WRITES_PER_CLIENT:
            # One client id cannot take the whole admission window (max_pending) from the
            # others: the protocol asks for one write in flight per id; a few more are fine.
            self._busy(rid, respond, f"client {client!r} already has {in_flight} writes in "
                       "flight; wait for their replies")
            return
        key = (client, request.seq)
        waiters = [(rid, respond)]
        data = encode_request(request)

        def done(result: Any, error: BaseException | None) -> None:
            self._pending_writes.pop(key, None)
            self._count_write(client, -1)
            for waiter_rid, reply_to in waiters:
                reply_to(self._write_reply(waiter_rid, result, error))

        try:
            # The request itself rides along: apply() gets it back instead of decoding `data`.
            self.runtime.propose(data, done, proposed=request)
        except NotLeader as exc:
            respond(error_reply(rid, ErrorCode.NOT_LEADER, str(exc), leader=exc.leader))
            return
        except Overloaded as exc:
            self._busy(rid, respond, str(exc))
            return
        self._pending_writes[key] = InFlight(request, waiters)
        self._count_write(client, +1)

    def _count_write(self, client: str, delta: int) -> None:
        count = self._writes_by_client.get(client, 0) + delta
        if count > 0:
            self._writes_by_client[client] = count
        else:
            self._writes_by_client.pop(client, None)

    def _busy(self, rid: int, respond: Respond, why: str) -> None:
        self.busy_replies += 1
        respond(error_reply(rid, ErrorCode.BUSY, why, retry_after_ms=BUSY_RETRY_AFTER_MS))

    @staticmethod
    def _envelope(body: dict) -> tuple[str, int, int]:
        client, seq = body["client"], body["seq"]
        if type(client) is not str or not client:
            raise InvalidCommand("client", "a non-empty client id is required for writes")
        return client, seq, now_ms()

    @staticmethod
    def _command(req: ClientRequest) -> Bid | OpenAuction | CloseAuction | ForgetAuction:
        b = req.body
        if req.op == "bid":
            return Bid(b.get("auction", DEFAULT_AUCTION), b["bidder"], b["amount"])
        if req.op == "close":
            return CloseAuction(b["auction"])
        if req.op == "forget":
            return ForgetAuction(b["auction"])
        # Only an absent field takes its default: null, [], "" or false is a wrong type, and
        # the constructors (or check_int) refuse it, never read it as "not given".
        opens = b["opens_at_ms"] if "opens_at_ms" in b else now_ms()
        if ("closes_at_ms" in b) == ("duration_ms" in b):
            raise InvalidCommand("closes_at_ms", "give exactly one of closes_at_ms and duration_ms")
        if "closes_at_ms" in b:
            closes = b["closes_at_ms"]
        else:
            check_int(b["duration_ms"], "duration_ms", 1, MAX_DURATION_MS)
            check_int(opens, "opens_at_ms", 0, MAX_TIMESTAMP_MS)
            closes = opens + b["duration_ms"]
        return OpenAuction(b["auction"], b.get("item", b["auction"]), b.get("reserve", 1),
                           b.get("increment", 1), opens, closes)

    @staticmethod
    def _write_reply(rid: int, result: Any, error: BaseException | None) -> bytes:
        if isinstance(error, ProposalLost):
            return error_reply(rid, ErrorCode.OUTCOME_UNKNOWN, str(error))
        if error is not None:
            return error_reply(rid, ErrorCode.UNAVAILABLE, str(error))
        assert isinstance(result, Reply)
        data = reply_to_dict(result)
        if result.ok:
            return ok_reply(rid, data)
        code = ErrorCode.UNKNOWN_AUCTION if result.reason == "unknown_auction" else ErrorCode.REJECTED
        return error_reply(rid, code, result.detail or result.reason or "rejected",
                           reason=result.reason, result=data)

    # --- reads -----------------------------------------------------------------------------

    def _read(self, req: ClientRequest, respond: Respond) -> None:
        def done(_: Any, error: BaseException | None) -> None:
            if error is not None:
                leader = getattr(error, "leader", None)
                respond(error_reply(req.rid, ErrorCode.NOT_LEADER, str(error), leader=leader))
            else:
                self._answer_read(req, respond)

        try:
            self.runtime.read(done)
        except NotLeader as exc:
            respond(error_reply(req.rid, ErrorCode.NOT_LEADER, str(exc), leader=exc.leader))

    def _answer_read(self, req: ClientRequest, respond: Respond) -> None:
        try:
            found = reads.answer(self.state, req.op, req.body)
            if found.paged:
                data = page_reply(req.rid, found.result, found.next)
            else:
                data = ok_reply(req.rid, found.result)
            if len(data) > MAX_ANSWER_BYTES:
                # Pages keep answers far below this; should one still exceed it, sending it
                # would be refused downstream: refuse it here instead, typed and counted.
                self.bad_requests += 1
                raise ProtocolError(f"the answer is {len(data)} bytes, over the "
                                    f"{MAX_ANSWER_BYTES}-byte reply limit: ask for a smaller "
                                    f"'limit'")
            respond(data)
        except UnknownAuction as exc:
            respond(error_reply(req.rid, ErrorCode.UNKNOWN_AUCTION, str(exc)))
        except ProtocolError as exc:
            respond(error_reply(req.rid, ErrorCode.BAD_REQUEST, str(exc)))
