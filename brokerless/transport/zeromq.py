"""The ZeroMQ sockets of one node: a ROUTER/DEALER mesh for requests, PUB/SUB for broadcasts.

A node is named by one address, "host:port", where its ROUTER listens; the node id is that
string. Every node also binds a PUB socket on an ephemeral port of the same host and connects:

  * one DEALER per peer to the peer's ROUTER, with routing id = our node id, so the peer's
    ROUTER can answer us and knows who we are. A routing id already connected is refused
    (no ROUTER_HANDOVER: libzmq 4.3.5 aborts the process when many connections take over
    one id in turn); a restarted peer gets its id back once ZMTP heartbeats or the closed
    TCP connection retire the old one, within the heartbeat timeout;
  * one SUB per peer to the peer's PUB, once that endpoint is known. One SUB per peer (rather
    than one for all) tells us which peer published each message.

Because users give one address per node, the PUB endpoints are discovered through the ROUTERs
("hello"): each DEALER sends HELLO {id, pub, cluster} until the peer answers HELLO_ACK with its
own fields; either message teaches the receiver the sender's PUB endpoint. docs/protocol-peers.md
specifies the frames.

Everything runs in the caller's thread: `poll` waits on a zmq.Poller, drains what is ready and
sends due HELLO retries. No threads, no asyncio. Untrusted frames never raise out of `poll`:
they are counted in `stats` and dropped.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from brokerless.transport.interface import (
    MAX_KIND_BYTES,
    AddressError,
    ConfigError,
    FromPeer,
    FromRouter,
    FromSub,
    Incoming,
    InvalidFrame,
    TransportClosed,
    TransportError,
    TransportStats,
    UnknownPeer,
    parse_address,
    valid_kind,
)
from brokerless.wire import MAX_MESSAGE_BYTES, MalformedFrame, pack, unpack

log = logging.getLogger("brokerless.transport")

HELLO = b"HELLO"
HELLO_ACK = b"HELLO_ACK"
MAX_ROUTING_ID_BYTES = 255  # a ZeroMQ limit; our node id is our routing id
DEFAULT_MAX_BATCH = 1024
# Bytes read from one socket per poll() (beyond one message). A flood of large client frames
# (each may carry a thousand requests) must not turn one loop iteration into hundreds of ms of
# work: what is not read waits in ZeroMQ and the kernel, and TCP pushes back on the sender.
MAX_BYTES_PER_POLL = 256 * 1024
HELLO_INTERVAL_S = 0.2
# Unanswered HELLOs back off to this interval: a DEALER queues them while its peer is down, and
# a long outage must not fill the queue (the peer's own HELLO rediscovers it at once anyway).
HELLO_INTERVAL_MAX_S = 3.2
# A DEALER whose HELLOs go unanswered this long gets a new socket (a new TCP connection). Without
# ROUTER_HANDOVER, a peer's ROUTER that still held our previous connection when the current one
# arrived (we restarted faster than it noticed, or someone squatted our routing id) never
# identifies the current one, and ZMTP heartbeats would keep that dead link open for ever.
DEALER_RENEW_S = 1.0
DEALER_RENEW_MAX_S = 16.0
# ZMTP heartbeats on every ROUTER/DEALER connection: a connection that went silent (its
# peer froze, or the network dropped it without a FIN) is noticed within
# the timeout and re-established, instead of swallowing messages for ever.
_KEEPALIVE = {zmq.HEARTBEAT_IVL: 200, zmq.HEARTBEAT_TIMEOUT: 600, zmq.HEARTBEAT_TTL: 1200}
# Subscriptions reach a PUB socket as inbound messages: without a bound, 20 subscriptions of
# 1 MB cost a node 1 GB (libzmq keeps each in its topic trie). Our topics are a few hundred
# bytes at most; a longer subscription drops the subscriber's connection.
MAX_SUBSCRIPTION_BYTES = 1024
# A refused HELLO is logged at most this often (each is counted): a hostile sender must not
# be able to flood the log (45,000 lines in 6 s before).
REFUSAL_LOG_INTERVAL_S = 1.0
_MAX_HELLO_BYTES = 4096
_MAX_HELLO_FIELD_CHARS = 256
_ENDPOINT = re.compile(r"tcp://([A-Za-z0-9._-]+):([0-9]{1,5})")


class BindError(TransportError):
    """Could not bind a socket; `errno` is ZeroMQ's (zmq.EADDRINUSE when the port is taken)."""

    def __init__(self, endpoint: str, error: zmq.ZMQError) -> None:
        super().__init__(f"cannot bind {endpoint}: {error}")
        self.endpoint = endpoint
        self.errno = error.errno


@dataclass(frozen=True, slots=True)
class Hello:
    """The payload of HELLO and HELLO_ACK. A client's HELLO has empty fields."""

    id: str
    pub: str
    cluster: str


def is_pub_endpoint(endpoint: str) -> bool:
    match = _ENDPOINT.fullmatch(endpoint)
    return match is not None and 1 <= int(match.group(2)) <= 65535


def parse_hello(payload: bytes) -> Hello:
    """Validate a HELLO/HELLO_ACK payload; raises MalformedFrame. Extra keys are ignored so that
    later versions may add fields."""
    obj = unpack(payload, _MAX_HELLO_BYTES)
    if not isinstance(obj, dict):
        raise MalformedFrame("a HELLO payload is a map")
    values = [obj.get(key) for key in ("id", "pub", "cluster")]
    for key, value in zip(("id", "pub", "cluster"), values, strict=True):
        if type(value) is not str or len(value) > _MAX_HELLO_FIELD_CHARS:
            raise MalformedFrame(f"HELLO field {key!r} must be a string of at most 256 chars")
    hello = Hello(*values)
    if hello.pub and not is_pub_endpoint(hello.pub):
        raise MalformedFrame(f"HELLO pub {hello.pub!r} is not tcp://host:port")
    return hello


@dataclass(slots=True)
class _PeerLink:
    """Our sockets and discovery state for one peer (mutable: it tracks the peer's lifetime)."""

    peer: str
    address: str
    dealer: zmq.Socket
    sub: zmq.Socket
    pub_endpoint: str | None = None
    acked: bool = False
    hello_due: float = 0.0
    hello_interval: float = HELLO_INTERVAL_S
    unanswered_since: float | None = None  # when our first HELLO still unanswered was sent
    renew_after: float = DEALER_RENEW_S


def _recv_frames(sock: zmq.Socket, max_frames: int) -> list[bytes] | None:
    """One multipart message, or None if nothing is waiting. Frames past `max_frames` are read
    and discarded (the result then has max_frames + 1 items, which callers treat as malformed),
    so a sender cannot make us hold an unbounded number of frames."""
    # Frame objects carry the "more" flag, which saves a getsockopt per frame (measured: the
    # receive loop runs about 1.5x faster than with sock.get(zmq.RCVMORE)).
    try:
        frame = sock.recv(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None
    frames = [frame.bytes]
    # The parts of a multipart message arrive together, so these reads never wait.
    while frame.more:
        frame = sock.recv(zmq.NOBLOCK, copy=False)
        if len(frames) <= max_frames:
            frames.append(frame.bytes)
    return frames


class ZmqTransport:
    """The ZeroMQ sockets of node `node_id` ("host:port") and its links to `peers` (id -> address)."""

    def __init__(
        self,
        node_id: str,
        peers: dict[str, str],
        *,
        cluster_id: str = "",
        context: zmq.Context | None = None,
        hwm: int = 10_000,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        reconnect_ivl_ms: int = 100,
        reconnect_ivl_max_ms: int = 1000,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        host, _ = parse_address(node_id)
        addresses = _check_config(node_id, peers, cluster_id, hwm, max_message_bytes, max_batch)
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.stats = TransportStats()
        self._max_message_bytes = max_message_bytes
        self._max_batch = max_batch
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._sockets: list[zmq.Socket] = []
        self._closed = False
        self._topics: list[bytes] = []
        self._last_refusal_log = -math.inf
        try:
            self._router = self._make_router(node_id, hwm, max_message_bytes)
            self._pub = self._make_pub(host, hwm)
            self.pub_endpoint = self._bound_pub_endpoint(host)
            options = (hwm, max_message_bytes, reconnect_ivl_ms, reconnect_ivl_max_ms)
            self._links = {
                peer: self._make_link(peer, address, *options)
                for peer, address in addresses.items()
            }
        except BaseException:
            self.close()
            raise
        self._hello_payload = pack({"id": node_id, "pub": self.pub_endpoint, "cluster": cluster_id})
        self._poller, self._handlers = self._make_poller()
        now = time.monotonic()
        for link in self._links.values():
            self._send_hello(link, now)

    # --- construction ---------------------------------------------------------------------

    def _socket(self, socket_type: int, options: dict[int, Any]) -> zmq.Socket:
        sock = self._context.socket(socket_type)
        self._sockets.append(sock)  # before anything can fail, so close() finds it
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            sock.setsockopt(option, value)
        return sock

    def _bind(self, sock: zmq.Socket, endpoint: str) -> None:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise BindError(endpoint, exc) from exc

    def _make_router(self, node_id: str, hwm: int, max_bytes: int) -> zmq.Socket:
        router = self._socket(
            zmq.ROUTER,
            {
                zmq.SNDHWM: hwm,
                zmq.RCVHWM: hwm,
                zmq.MAXMSGSIZE: max_bytes,
                # Never hand a routing id over to a new connection: libzmq 4.3.5 aborts the
                # whole process (`Assertion failed: !_io_error`) when dozens of connections
                # reusing one id each send a frame. The old connection of a restarted peer is
                # retired by its closed socket or the ZMTP heartbeat, so the id frees itself.
                zmq.ROUTER_HANDOVER: 0,
                zmq.ROUTER_MANDATORY: 1,  # so reply() can tell an unroutable identity (-> False)
                **_KEEPALIVE,
            },
        )
        self._bind(router, f"tcp://{node_id}")
        return router

    def _make_pub(self, host: str, hwm: int) -> zmq.Socket:
        pub = self._socket(zmq.PUB, {zmq.SNDHWM: hwm, zmq.MAXMSGSIZE: MAX_SUBSCRIPTION_BYTES})
        self._bind(pub, f"tcp://{host}:*")
        return pub

    def _bound_pub_endpoint(self, host: str) -> str:
        # LAST_ENDPOINT names the address bound, which may be an IP where the user gave a name;
        # peers reach us through the host they were given, so advertise that with our port.
        last = self._pub.get(zmq.LAST_ENDPOINT).decode()
        return f"tcp://{host}:{last.rsplit(':', 1)[1]}"

    def _make_link(
        self, peer: str, address: str, hwm: int, max_bytes: int, ivl: int, ivl_max: int
    ) -> _PeerLink:
        reconnect = {zmq.RECONNECT_IVL: ivl, zmq.RECONNECT_IVL_MAX: ivl_max}
        self._dealer_options = {
            zmq.SNDHWM: hwm,
            zmq.RCVHWM: hwm,
            zmq.MAXMSGSIZE: max_bytes,
            zmq.ROUTING_ID: self.node_id.encode(),
            **reconnect,
            **_KEEPALIVE,
        }
        sub = self._socket(zmq.SUB, {zmq.RCVHWM: hwm, zmq.MAXMSGSIZE: max_bytes, **reconnect})
        return _PeerLink(peer, address, self._make_dealer(address), sub)

    def _make_dealer(self, address: str) -> zmq.Socket:
        dealer = self._socket(zmq.DEALER, self._dealer_options)
        dealer.connect(f"tcp://{address}")
        return dealer

    def _renew_dealer(self, link: _PeerLink) -> None:
        """Replace `link`'s DEALER by a new one (what was queued in the old one is dropped:
        consensus tolerates lost messages)."""
        old = link.dealer
        self._poller.unregister(old)
        del self._handlers[old]
        self._sockets.remove(old)
        old.close(linger=0)
        link.dealer = self._make_dealer(link.address)
        self._handlers[link.dealer] = _bind_link(self._on_dealer, link)
        self._poller.register(link.dealer, zmq.POLLIN)
        self.stats.dealers_renewed += 1

    def _make_poller(self) -> tuple[zmq.Poller, dict[zmq.Socket, Callable[..., None]]]:
        handlers: dict[zmq.Socket, Callable[..., None]] = {self._router: self._on_router}
        for link in self._links.values():
            handlers[link.dealer] = _bind_link(self._on_dealer, link)
            handlers[link.sub] = _bind_link(self._on_sub, link)
        poller = zmq.Poller()
        for sock in handlers:
            poller.register(sock, zmq.POLLIN)
        return poller, handlers

    # --- sending --------------------------------------------------------------------------

    def send(self, dst: str, kind: bytes, payload: bytes) -> bool:
        """Send [kind, payload] to peer `dst` on our DEALER. False if dropped (high-water mark):
        while the peer is unreachable, up to `hwm` messages wait and flush on reconnection."""
        self._check_open()
        link = self._link(dst)
        self._check_frame(kind, payload)
        return self._send_nowait(link.dealer, [kind, payload])

    def reply(self, identity: bytes, kind: bytes, payload: bytes) -> bool:
        """Send [kind, payload] through our ROUTER to `identity` (a client or a peer's DEALER).
        False if dropped: no such connection (any more), or its queue is full."""
        self._check_open()
        if not isinstance(identity, bytes) or not identity:
            raise InvalidFrame("identity must be non-empty bytes")
        self._check_frame(kind, payload)
        return self._send_nowait(self._router, [identity, kind, payload])

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Publish [topic, payload] to every subscribed peer. Lossy by design: a slow or newly
        joined subscriber may miss it."""
        self._check_open()
        if not isinstance(topic, bytes):
            raise InvalidFrame("topic must be bytes")
        self._check_payload(payload)
        self._send_nowait(self._pub, [topic, payload])

    def _send_nowait(self, sock: zmq.Socket, frames: list[bytes]) -> bool:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:  # ROUTER_MANDATORY: identity not connected
                raise
        self.stats.sends_dropped += 1
        return False

    def _check_frame(self, kind: bytes, payload: bytes) -> None:
        if not isinstance(kind, bytes) or not valid_kind(kind):
            raise InvalidFrame(f"kind must be 1..{MAX_KIND_BYTES} bytes, got {kind!r}")
        if kind in (HELLO, HELLO_ACK):
            raise InvalidFrame(f"{kind!r} is reserved for the transport")
        self._check_payload(payload)

    def _check_payload(self, payload: bytes) -> None:
        if not isinstance(payload, bytes):
            raise InvalidFrame(f"payload must be bytes, got {type(payload).__name__}")
        if len(payload) > self._max_message_bytes:
            raise InvalidFrame(
                f"payload of {len(payload)} bytes exceeds max_message_bytes "
                f"{self._max_message_bytes} (the receiver would drop the connection)"
            )

    # --- subscriptions and discovery ------------------------------------------------------

    def subscribe(self, topic_prefix: bytes) -> None:
        """Receive what peers publish under topics starting with `topic_prefix`."""
        self._check_open()
        if not isinstance(topic_prefix, bytes):
            raise InvalidFrame("topic prefix must be bytes")
        self._topics.append(topic_prefix)
        for link in self._links.values():
            link.sub.setsockopt(zmq.SUBSCRIBE, topic_prefix)

    def rehello(self, peer: str) -> None:
        """Say HELLO to `peer` again now and until it answers (call it when its heartbeats stop:
        it may have restarted elsewhere, or missed our endpoint)."""
        self._check_open()
        link = self._link(peer)
        link.acked = False
        link.hello_interval = HELLO_INTERVAL_S
        self._send_hello(link, time.monotonic())

    def pub_endpoint_of(self, peer: str) -> str | None:
        """The PUB endpoint our SUB uses for `peer`, None until discovered."""
        return self._link(peer).pub_endpoint

    def hello_acked(self, peer: str) -> bool:
        """Whether `peer` answered our latest round of HELLOs."""
        return self._link(peer).acked

    def peer_of(self, identity: bytes) -> str | None:
        """The peer whose DEALER uses this routing identity, if it is one of our peers."""
        try:
            peer = identity.decode()
        except UnicodeDecodeError:
            return None
        return peer if peer in self._links else None

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(self._links)

    def _link(self, peer: str) -> _PeerLink:
        link = self._links.get(peer)
        if link is None:
            raise UnknownPeer(f"{peer!r} is not a peer of {self.node_id}")
        return link

    def _send_hello(self, link: _PeerLink, now: float) -> None:
        if link.unanswered_since is None:
            link.unanswered_since = now
        elif now - link.unanswered_since >= link.renew_after:
            self._renew_dealer(link)
            link.unanswered_since = now
            link.renew_after = min(link.renew_after * 2, DEALER_RENEW_MAX_S)
        if self._send_nowait(link.dealer, [HELLO, self._hello_payload]):
            self.stats.hellos_sent += 1
        link.hello_due = now + link.hello_interval
        link.hello_interval = min(link.hello_interval * 2, HELLO_INTERVAL_MAX_S)

    def _send_due_hellos(self, now: float) -> float:
        """Retry unanswered HELLOs that are due; returns when the next one will be."""
        next_due = math.inf
        for link in self._links.values():
            if link.acked:
                continue
            if now >= link.hello_due:
                self._send_hello(link, now)
            next_due = min(next_due, link.hello_due)
        return next_due

    def _on_hello(self, identity: bytes, payload: bytes) -> None:
        hello = self._parse_hello(payload, identity)
        if hello is None:
            return
        self.stats.hellos_received += 1
        if not hello.id:  # a client asking for our PUB endpoint
            reason = None if hello.cluster in ("", self.cluster_id) else "foreign cluster"
        else:
            reason = self._refusal(hello, identity)
        if reason is not None:
            self._refuse("HELLO", identity, hello, reason)
            return
        if hello.id:
            self._learn_pub(self._links[hello.id], hello.pub)
        self._send_nowait(self._router, [identity, HELLO_ACK, self._hello_payload])

    def _on_hello_ack(self, link: _PeerLink, payload: bytes) -> None:
        hello = self._parse_hello(payload, link.peer)
        if hello is None:
            return
        self.stats.hello_acks_received += 1
        if hello.id != link.peer:
            reason: str | None = f"{link.peer} answered as {hello.id!r}"
        else:
            reason = self._refusal(hello, link.peer.encode())
        if reason is not None:
            self._refuse("HELLO_ACK", link.peer, hello, reason)
            return
        link.acked = True
        link.hello_interval = HELLO_INTERVAL_S
        link.unanswered_since, link.renew_after = None, DEALER_RENEW_S
        self._learn_pub(link, hello.pub)

    def _parse_hello(self, payload: bytes, sender: object) -> Hello | None:
        try:
            return parse_hello(payload)
        except MalformedFrame as exc:
            self.stats.malformed += 1
            log.debug("malformed hello from %r: %s", sender, exc)
            return None

    def _refusal(self, hello: Hello, identity: bytes) -> str | None:
        """Why a peer's HELLO (or HELLO_ACK) must be refused, or None to accept it."""
        if hello.cluster != self.cluster_id:
            return f"foreign cluster {hello.cluster!r} (ours is {self.cluster_id!r})"
        if hello.id not in self._links:
            return f"{hello.id!r} is not one of our peers"
        if identity != hello.id.encode():
            return f"routing id {identity!r} does not match {hello.id!r}"
        if not hello.pub:
            return "no pub endpoint"
        return None

    def _refuse(self, what: str, sender: object, hello: Hello, reason: str) -> None:
        self.stats.hellos_refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log < REFUSAL_LOG_INTERVAL_S:
            return
        self._last_refusal_log = now
        log.warning(
            "%s refused %s from %r (id %r): %s (%d refused so far)", self.node_id, what,
            sender, hello.id, reason, self.stats.hellos_refused,
        )

    def _learn_pub(self, link: _PeerLink, endpoint: str) -> None:
        old = link.pub_endpoint
        if endpoint == old:
            return
        if old is None:
            log.info("%s discovered peer %s: pub %s", self.node_id, link.peer, endpoint)
        else:
            self.stats.endpoint_changes += 1
            log.info(
                "%s: peer %s moved its pub from %s to %s", self.node_id, link.peer, old, endpoint
            )
            try:
                link.sub.disconnect(old)
            except zmq.ZMQError:  # already gone: nothing to undo
                pass
        link.sub.connect(endpoint)
        link.pub_endpoint = endpoint

    # --- receiving ------------------------------------------------------------------------

    def poll(self, timeout_ms: int) -> list[Incoming]:
        """Wait up to `timeout_ms` for messages and return those ready (at most max_batch).

        Returns as soon as there is at least one; returns [] at the deadline. HELLO traffic is
        handled here and never returned; malformed frames are counted and dropped.
        """
        self._check_open()
        if not isinstance(timeout_ms, int) or timeout_ms < 0:
            raise ConfigError(f"timeout_ms must be a non-negative int, got {timeout_ms!r}")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            now = time.monotonic()
            next_hello = self._send_due_hellos(now)
            wait_s = max(0.0, min(deadline, next_hello) - now)
            ready = self._poller.poll(math.ceil(wait_s * 1000))
            incoming = self._drain([sock for sock, _ in ready])
            if incoming or time.monotonic() >= deadline:
                return incoming

    def _drain(self, ready: list[zmq.Socket]) -> list[Incoming]:
        incoming: list[Incoming] = []
        if not ready:
            return incoming
        # Each ready socket gets a share of the batch, so a flood on one (say, clients on the
        # ROUTER) cannot starve the others within a call.
        share = max(1, self._max_batch // len(ready))
        byte_share = max(1, MAX_BYTES_PER_POLL // len(ready))
        for sock in ready:
            handler = self._handlers[sock]
            read = 0
            for _ in range(share):
                frames = _recv_frames(sock, max_frames=3)
                if frames is None:
                    break
                handler(frames, incoming)
                read += sum(map(len, frames))
                if read >= byte_share:
                    break
        return incoming

    def _on_router(self, frames: list[bytes], incoming: list[Incoming]) -> None:
        if len(frames) != 3 or not valid_kind(frames[1]):
            self._malformed("router", frames)
            return
        identity, kind, payload = frames
        if kind == HELLO:
            self._on_hello(identity, payload)
        elif kind == HELLO_ACK:
            self._malformed("router", frames)
        else:
            incoming.append(FromRouter(identity, kind, payload))

    def _on_dealer(self, link: _PeerLink, frames: list[bytes], incoming: list[Incoming]) -> None:
        if len(frames) != 2 or not valid_kind(frames[0]) or frames[0] == HELLO:
            self._malformed(link.peer, frames)
            return
        kind, payload = frames
        if kind == HELLO_ACK:
            self._on_hello_ack(link, payload)
        else:
            incoming.append(FromPeer(link.peer, kind, payload))

    def _on_sub(self, link: _PeerLink, frames: list[bytes], incoming: list[Incoming]) -> None:
        if len(frames) != 2:
            self._malformed(link.peer, frames)
            return
        incoming.append(FromSub(link.peer, frames[0], frames[1]))

    def _malformed(self, source: str, frames: list[bytes]) -> None:
        # debug, not warning: a hostile sender must not be able to flood our logs.
        self.stats.malformed += 1
        log.debug(
            "%s dropped a malformed message from %s (%d frames)", self.node_id, source, len(frames)
        )

    # --- lifetime -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"transport {self.node_id} is closed")

    def close(self) -> None:
        """Close every socket at once (linger 0: unsent messages are dropped) and the context
        if we created it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for sock in self._sockets:
            sock.close(linger=0)
        self._sockets.clear()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> ZmqTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _bind_link(handler: Callable[..., None], link: _PeerLink) -> Callable[..., None]:
    return lambda frames, incoming: handler(link, frames, incoming)


def _check_config(
    node_id: str,
    peers: dict[str, str],
    cluster_id: str,
    hwm: int,
    max_message_bytes: int,
    max_batch: int,
) -> dict[str, str]:
    """Validate constructor arguments; returns the peers other than ourselves."""
    if len(node_id.encode()) > MAX_ROUTING_ID_BYTES:
        raise AddressError(f"node id longer than {MAX_ROUTING_ID_BYTES} bytes")
    if not isinstance(cluster_id, str) or len(cluster_id) > _MAX_HELLO_FIELD_CHARS:
        raise ConfigError("cluster_id must be a string of at most 256 characters")
    for name, value in (
        ("hwm", hwm),
        ("max_message_bytes", max_message_bytes),
        ("max_batch", max_batch),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    others = {}
    for peer, address in peers.items():
        if not isinstance(peer, str) or not 0 < len(peer.encode()) <= MAX_ROUTING_ID_BYTES:
            raise AddressError(f"peer id must be a non-empty string, got {peer!r}")
        parse_address(address)
        if peer != node_id:
            others[peer] = address
    return others
