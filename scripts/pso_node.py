"""One PySyncObj node for the side-by-side benchmark, with a tiny request server in front.

PySyncObj replicates method calls between processes but has no client protocol, so each
node also binds a ZeroMQ ROUTER that speaks the subset of zauction's client protocol the
benchmark uses (docs/protocol.md): `bid` and `status`, `[b"C", msgpack(map)]` both ways,
`rid` echoed. A bid calls the replicated `bid(amount, bidder)` with a callback, and the
reply leaves only when PySyncObj reports the command applied after commit, so both
systems answer the same workload with the same promise.

    python scripts/pso_node.py --raft 127.0.0.1:20000 --serve 127.0.0.1:20003 \
        --peers 127.0.0.1:20001=127.0.0.1:20004,127.0.0.1:20002=127.0.0.1:20005 \
        [--data-dir DIR] [--no-batch] [--append-period 0.1] [--tick-period 0.05]
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zauction.protocol import (  # noqa: E402  (the checkout, found through the line above)
    CLIENT_KIND,
    ClientRequest,
    ErrorCode,
    ProtocolError,
    decode_requests,
    error_reply,
    ok_reply,
    rid_of,
)
from zauction.server.service import MAX_REPLIES_PER_FRAME  # noqa: E402  (the same framing)

REPLIES = "inproc://pso-replies"
HWM = 10_000  # the same as a zauction node's ROUTER
MAX_AMOUNT = 10**15

# What a PySyncObj failure means to a client of our protocol: retry elsewhere, or the
# command may or may not have been applied (PySyncObj has no exactly-once sessions).
_FAILURES = {
    FAIL_REASON.QUEUE_FULL: ErrorCode.UNAVAILABLE,
    FAIL_REASON.MISSING_LEADER: ErrorCode.UNAVAILABLE,
    FAIL_REASON.DISCARDED: ErrorCode.OUTCOME_UNKNOWN,
    FAIL_REASON.NOT_LEADER: ErrorCode.NOT_LEADER,
    FAIL_REASON.LEADER_CHANGED: ErrorCode.OUTCOME_UNKNOWN,
    FAIL_REASON.REQUEST_DENIED: ErrorCode.UNAVAILABLE,
    FAIL_REASON.UNKNOWN_OUTCOME: ErrorCode.OUTCOME_UNKNOWN,
}


class BadBid(Exception):
    """A bid request whose fields are missing or invalid; it is answered, never proposed."""


@dataclass(frozen=True, slots=True)
class Options:
    raft: str  # host:port PySyncObj listens on
    serve: str  # host:port of the request ROUTER
    peers: dict[str, str]  # raft address -> serve address of every other node
    data_dir: Path | None
    batch: bool
    append_period: float
    tick_period: float
    compaction_entries: int


class Auction(SyncObj):
    """The replicated state: the highest bid. `bid` is the 'bid if higher' operation."""

    def __init__(self, opts: Options):
        super().__init__(opts.raft, list(opts.peers), _conf(opts))
        self._high = 0
        self._bidder = ""
        self._bids = 0

    @replicated
    def bid(self, amount: int, bidder: str) -> bool:
        if amount <= self._high:
            return False
        self._high, self._bidder = amount, bidder
        self._bids += 1
        return True


def _conf(opts: Options) -> SyncObjConf:
    files: dict[str, Any] = {}
    if opts.data_dir is not None:
        opts.data_dir.mkdir(parents=True, exist_ok=True)
        files = {"journalFile": str(opts.data_dir / "journal"),
                 "fullDumpFile": str(opts.data_dir / "dump")}
    return SyncObjConf(
        appendEntriesUseBatch=opts.batch,
        appendEntriesPeriod=opts.append_period,
        autoTickPeriod=opts.tick_period,
        commandsQueueSize=1_000_000,
        dynamicMembershipChange=False,
        # The same snapshot spacing as a zauction node (snapshot_every=100,000).
        logCompactionMinEntries=opts.compaction_entries,
        **files,
    )


class RequestServer:
    """The ROUTER in the main thread; PySyncObj's tick thread hands replies back over inproc."""

    def __init__(self, node: Auction, opts: Options, ctx: zmq.Context):
        self.node, self.opts, self.ctx = node, opts, ctx
        self.router = ctx.socket(zmq.ROUTER)
        for option, value in ((zmq.LINGER, 0), (zmq.SNDHWM, HWM), (zmq.RCVHWM, HWM)):
            self.router.setsockopt(option, value)
        self.router.bind(f"tcp://{opts.serve}")
        self.replies = ctx.socket(zmq.PULL)
        self.replies.bind(REPLIES)
        self._local = threading.local()  # one PUSH socket per thread that answers
        self.running = True

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.replies, zmq.POLLIN)
        while self.running:
            ready = dict(poller.poll(100))
            if self.router in ready:
                self._drain_requests()
            if self.replies in ready:
                self._drain_replies()

    def _drain_requests(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 3 and frames[1] == CLIENT_KIND:
                self.handle_frame(frames[0], frames[2])

    def _drain_replies(self) -> None:
        """Send the answers PySyncObj produced; those to `stream` requests share a frame per
        client, as a zauction node does (the same framing for both systems)."""
        streamed: dict[bytes, list[bytes]] = {}
        while True:
            try:
                ident, payload, stream = self.replies.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if stream == b"1":
                streamed.setdefault(ident, []).append(payload)
            else:
                self.router.send_multipart([ident, CLIENT_KIND, payload])
        for ident, payloads in streamed.items():
            for start in range(0, len(payloads), MAX_REPLIES_PER_FRAME):
                frame = b"".join(payloads[start:start + MAX_REPLIES_PER_FRAME])
                self.router.send_multipart([ident, CLIENT_KIND, frame])

    def handle_frame(self, ident: bytes, payload: bytes) -> None:
        """One request, or several back to back (docs/protocol.md)."""
        try:
            items = decode_requests(payload)
        except ProtocolError as exc:
            self._reply(ident, error_reply(rid_of(payload), ErrorCode.BAD_REQUEST, str(exc)))
            return
        for req in items:
            if isinstance(req, ProtocolError):
                self._reply(ident, error_reply(req.rid, ErrorCode.BAD_REQUEST, str(req)))
            else:
                self.handle(ident, req)

    def handle(self, ident: bytes, req: ClientRequest) -> None:
        if req.op == "status":
            self._reply(ident, ok_reply(req.rid, self.status()))
        elif req.op == "bid":
            self._bid(ident, req.rid, req.body)
        else:
            self._reply(ident, error_reply(req.rid, ErrorCode.UNKNOWN_OP,
                                           f"unknown op {req.op!r}"))

    def _bid(self, ident: bytes, rid: int, body: dict) -> None:
        try:
            amount, bidder = check_bid(body)
        except BadBid as exc:
            self._reply(ident, error_reply(rid, ErrorCode.BAD_REQUEST, str(exc),
                                           reason="invalid"))
            return

        stream = b"1" if body.get("stream") is True else b""

        def done(accepted: Any, err: int) -> None:
            self._push(ident, bid_reply(rid, amount, bidder, accepted, err), stream)

        self.node.bid(amount, bidder, callback=done)

    def _reply(self, ident: bytes, payload: bytes) -> None:
        self.router.send_multipart([ident, CLIENT_KIND, payload])

    def _push(self, ident: bytes, payload: bytes, stream: bytes) -> None:
        # Called from PySyncObj's tick thread (or ours, for a full queue): ZeroMQ sockets
        # are not thread-safe, so each calling thread gets its own PUSH to our PULL.
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._local.push = self.ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 0)
            push.connect(REPLIES)
        push.send_multipart([ident, payload, stream])

    def status(self) -> dict:
        st = self.node.getStatus()
        leader = st.get("leader")
        leader_raft = getattr(leader, "address", None)
        role = {0: "follower", 1: "candidate", 2: "leader"}.get(st.get("state"), "unknown")
        serve_of = {**self.opts.peers, self.opts.raft: self.opts.serve}
        return {"addr": self.opts.serve, "role": role, "term": st.get("raft_term"),
                "leader": serve_of.get(leader_raft) if leader_raft else None,
                "commit_index": st.get("commit_idx"), "applied_index": st.get("last_applied")}


def check_bid(body: dict) -> tuple[int, str]:
    amount, bidder = body.get("amount"), body.get("bidder")
    if type(amount) is not int or not 1 <= amount <= MAX_AMOUNT:
        raise BadBid("'amount' must be an integer in [1, 10**15]")
    if type(bidder) is not str or not 1 <= len(bidder) <= 64:
        raise BadBid("'bidder' must be a string of 1-64 characters")
    return amount, bidder


def bid_reply(rid: int, amount: int, bidder: str, accepted: Any, err: int) -> bytes:
    if err != FAIL_REASON.SUCCESS:
        code = _FAILURES.get(err, ErrorCode.UNAVAILABLE)
        return error_reply(rid, code, f"pysyncobj failure {err}")
    result = {"ok": bool(accepted), "auction": "default", "bidder": bidder, "amount": amount}
    if accepted:
        return ok_reply(rid, result)
    return error_reply(rid, ErrorCode.REJECTED, "not higher than the current bid",
                       reason="below_increment", result=result)


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--raft", required=True, help="host:port for PySyncObj's own traffic")
    p.add_argument("--serve", required=True, help="host:port of the request ROUTER")
    p.add_argument("--peers", default="", help="RAFT=SERVE,... of the other nodes")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="journal and full dump here (default: in memory only)")
    p.add_argument("--no-batch", dest="batch", action="store_false",
                   help="appendEntriesUseBatch=False: send each command at once")
    p.add_argument("--append-period", type=float, default=0.1, help="appendEntriesPeriod, s")
    p.add_argument("--tick-period", type=float, default=0.05, help="autoTickPeriod, s")
    p.add_argument("--compaction-entries", type=int, default=100_000)
    a = p.parse_args(argv)
    try:
        peers = dict(item.split("=", 1) for item in a.peers.split(",") if item)
    except ValueError:
        p.error("--peers takes RAFT=SERVE pairs separated by commas")
    return Options(a.raft, a.serve, peers, a.data_dir, a.batch, a.append_period,
                   a.tick_period, a.compaction_entries)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    ctx = zmq.Context()
    node = Auction(opts)
    server = RequestServer(node, opts, ctx)

    def stop(signum: int, frame: object) -> None:
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.run()
    finally:
        node.destroy()
        ctx.destroy(linger=0)


if __name__ == "__main__":
    main()
