"""AuctionClient: talks to any node of a cluster, finds the leader, retries safely.

Writes carry (client id, seq); a retry after a timeout reuses the seq, so the cluster
applies a bid at most once whichever node the retry reaches (the state machine answers a
repeated seq from its session cache). Lazy Pirate: a server that does not answer in time
gets its socket closed and reopened, and the next server is tried.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import zmq

from brokerless.wire import WireError, pack, unpack
from zauction.client.errors import (
    BadRequest,
    BidRejected,
    ClientError,
    ClusterUnavailable,
    RequestTimeout,
    UnknownAuctionError,
    error_for,
)
from zauction.client.feed import FeedWatcher
from zauction.client.replies import (
    RETRY_PAUSE_S,
    BackOff,
    Done,
    Failed,
    Rejected,
    Verdict,
    backoff_s,
    busy_pause_s,
    classify,
)
from zauction.protocol import CLIENT_KIND, ProtocolError, decode_reply

# Importable from here, where callers have always found them.
__all__ = ["AuctionClient", "BadRequest", "BidRejected", "ClientError", "ClusterUnavailable",
           "RequestTimeout", "UnknownAuctionError", "busy_pause_s", "endpoint"]

DEFAULT_SERVERS = ("localhost:8001", "localhost:8002", "localhost:8003")
CONNECT_WAIT_S = 0.2  # how long a request waits for a TCP connection to a node
DISCONNECT_CHECK_S = 0.02  # while waiting for a reply, how often to check the node is still there


def endpoint(server: str) -> str:
    return server if server.startswith("tcp://") else f"tcp://{server}"


class AuctionClient:
    def __init__(self, servers: list[str] | tuple[str, ...] = DEFAULT_SERVERS, *,
                 timeout: float = 5.0, attempt_timeout: float = 0.5,
                 client_id: str | None = None, context: zmq.Context | None = None):
        if not servers:
            raise ValueError("at least one server address is needed")
        self.servers = list(servers)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.client_id = client_id or uuid.uuid4().hex
        self._ctx = context or zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}
        self._rids = itertools.count(1)
        self._seq = 0
        self._preferred = self.servers[0]

    # --- the API -------------------------------------------------------------------------

    def bid(self, amount: int, bidder: str, auction: str = "default") -> dict:
        return self._write("bid", auction=auction, bidder=bidder, amount=amount)

    def open_auction(self, auction: str, *, duration_ms: int, item: str | None = None,
                     reserve: int = 1, increment: int = 1) -> dict:
        return self._write("open", auction=auction, duration_ms=duration_ms,
                           item=item or auction, reserve=reserve, increment=increment)

    def close_auction(self, auction: str) -> dict:
        return self._write("close", auction=auction)

    def result(self, auction: str = "default", stale: bool = False) -> dict:
        return self.call("result", auction=auction, stale=stale)

    def history(self, auction: str = "default", stale: bool = False) -> list[dict]:
        """Every retained bid, oldest first (fetched page by page)."""
        return self._all_pages("history", "after_seq", auction=auction, stale=stale)

    def auctions(self, stale: bool = False) -> list[dict]:
        """Every auction known, by id (fetched page by page)."""
        return self._all_pages("auctions", "after", stale=stale)

    def events_after(self, auction: str, after_seq: int) -> list[dict]:
        """The auction's events after `after_seq` (-1 includes its opening), every page."""
        return self._all_pages("events", "after_seq", auction=auction, after_seq=after_seq)

    def _all_pages(self, op: str, cursor_field: str, **fields: Any) -> list:
        items: list = []
        while True:
            done = self._complete(op, **fields)
            page = done.result if type(done.result) is list else []
            items.extend(page)
            if done.next is None or not page:
                return items
            fields[cursor_field] = done.next

    def status(self) -> list[dict]:
        """One entry per server: its status, or {"addr", "role": "unreachable"} when it gave
        none (no answer, or too busy to serve it)."""
        return [self._status_of(server) for server in self.servers]

    def _status_of(self, server: str) -> dict:
        try:
            verdict = self._attempt(server, {"op": "status"}, self.attempt_timeout)
        except _NoAnswer:
            return {"addr": server, "role": "unreachable"}
        if isinstance(verdict, Done):
            return verdict.result
        if isinstance(verdict, (Rejected, Failed)):
            raise error_for(verdict)
        return {"addr": server, "role": "unreachable"}  # too busy to say, for now

    def watch(self, auction: str | None = None) -> Iterator[dict]:
        with FeedWatcher(self, auction) as watcher:
            yield from watcher

    @property
    def context(self) -> zmq.Context:
        """The ZeroMQ context of this client's sockets (a FeedWatcher makes its SUB here)."""
        return self._ctx

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()

    def __enter__(self) -> AuctionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ------------------------------------------------------------------------

    def _write(self, op: str, **fields: Any) -> Any:
        self._seq += 1
        return self.call(op, client=self.client_id, seq=self._seq, **fields)

    def call(self, op: str, **fields: Any) -> Any:
        """Send one request until some node completes it or the deadline passes; its result."""
        return self._complete(op, **fields).result

    def _complete(self, op: str, **fields: Any) -> Done:
        """Send one request until some node completes it or the deadline passes."""
        deadline = time.monotonic() + self.timeout
        body = {"op": op, **fields}
        answered, refusals = False, 0
        while True:
            for server in self._order():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise (RequestTimeout if answered else ClusterUnavailable)(
                        f"{op} did not complete within {self.timeout:.1f}s "
                        f"(servers: {', '.join(self.servers)})")
                try:
                    verdict = self._attempt(server, body, min(left, self.attempt_timeout))
                except _NoAnswer:
                    continue
                if isinstance(verdict, Done):
                    return verdict
                if isinstance(verdict, (Rejected, Failed)):
                    raise error_for(verdict)
                answered = True
                if isinstance(verdict, BackOff):  # the leader is saturated: wait, ask it again
                    refusals += 1
                    self._pause_until(deadline, backoff_s(verdict.pause_s, refusals))
                    break  # _attempt made the busy node the preferred one
                if verdict.leader in self.servers:
                    self._preferred = verdict.leader
            else:  # nobody completed it this round: pause before the next
                self._pause_until(deadline, RETRY_PAUSE_S)

    def _order(self) -> list[str]:
        rest = [s for s in self.servers if s != self._preferred]
        return [self._preferred, *rest]

    def _attempt(self, server: str, body: dict, timeout: float) -> Verdict:
        """Ask `server` once: its verdict on the request, or _NoAnswer."""
        rid = next(self._rids)
        sock = self._socket(server)
        # With IMMEDIATE the socket is writable only while connected: a node that is down
        # is skipped after a short wait for the connection instead of queueing the request.
        if not sock.poll(int(min(timeout, CONNECT_WAIT_S) * 1000), zmq.POLLOUT):
            self._drop_socket(server)
            raise _NoAnswer
        try:
            sock.send_multipart([CLIENT_KIND, pack({**body, "rid": rid})], flags=zmq.NOBLOCK)
        except zmq.Again:
            raise _NoAnswer from None
        reply = self._await(sock, rid, timeout)
        if reply is None:
            self._drop_socket(server)  # Lazy Pirate: a late answer must not be read later
            raise _NoAnswer
        self._preferred = server
        return classify(reply)

    def _await(self, sock: zmq.Socket, rid: int, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(min(left, DISCONNECT_CHECK_S) * 1000) + 1):
                # With IMMEDIATE, a socket that lost its only connection is not writable:
                # the node died (kill -9 resets the TCP connection); stop waiting for it.
                if not sock.get(zmq.EVENTS) & zmq.POLLOUT:
                    return None
                continue
            frames = sock.recv_multipart()
            if len(frames) != 2 or frames[0] != CLIENT_KIND:
                continue
            try:
                reply = decode_reply(frames[1])
            except ProtocolError:
                continue
            if reply.get("rid") in (rid, 0):
                return reply
        return None

    def _socket(self, server: str) -> zmq.Socket:
        sock = self._sockets.get(server)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # do not queue requests for a node that is down
            sock.connect(endpoint(server))
            self._sockets[server] = sock
        return sock

    def _drop_socket(self, server: str) -> None:
        sock = self._sockets.pop(server, None)
        if sock is not None:
            sock.close(linger=0)

    def _pause_until(self, deadline: float, seconds: float) -> None:
        # A retry back-off between rounds, not a synchronization: nothing is awaited here.
        time.sleep(min(seconds, max(0.0, deadline - time.monotonic())))

    def pub_endpoint(self, server: str, timeout: float = 1.0) -> str | None:
        """Ask a node where its PUB socket listens (the HELLO of docs/protocol.md)."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(endpoint(server))
            sock.send_multipart([b"HELLO", pack({"id": "", "pub": "", "cluster": ""})])
            if not sock.poll(int(timeout * 1000)):
                return None
            frames = sock.recv_multipart()
            body = unpack(frames[1]) if len(frames) == 2 and frames[0] == b"HELLO_ACK" else None
            pub = body.get("pub") if type(body) is dict else None
            return pub if type(pub) is str else None
        except WireError:
            return None
        finally:
            sock.close(linger=0)


class _NoAnswer(Exception):
    """The node did not answer this attempt (down, unreachable, or too slow)."""
