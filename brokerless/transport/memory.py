"""The transport's in-memory twin: the same interface, no sockets, no threads, no clock.

Alone, a MemoryTransport records what a node sends and hands back what a test `deliver`s
to it. Joined to a MemoryNetwork, several of them reach each other as ZeroMQ nodes would:
`send` arrives at the peer as FromRouter (routing id = the sender's id), `reply` to a peer's
id arrives there as FromPeer, `publish` reaches the peers subscribed to a matching prefix as
FromSub. Delivery waits for the receiver's next `poll`, in order; nothing is lost unless the
receiver is detached (a crashed or partitioned node), which counts as a dropped send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from brokerless.transport.interface import (
    FromPeer,
    FromRouter,
    FromSub,
    Incoming,
    InvalidFrame,
    TransportClosed,
    TransportStats,
    UnknownPeer,
    valid_kind,
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One thing a node sent: on `channel` "send" (to a peer id), "reply" (to a routing
    identity) or "publish" (to a topic, `to` empty)."""

    channel: str
    to: bytes | str
    kind: bytes
    payload: bytes


Observer = Callable[[Outgoing], None]


@dataclass(slots=True)
class MemoryNetwork:
    """The nodes that can reach each other, by id. Detached nodes keep their id but hear
    nothing (a crash or a partition); re-attaching them restores delivery."""

    nodes: dict[str, MemoryTransport] = field(default_factory=dict)
    detached: set[str] = field(default_factory=set)

    def join(self, transport: MemoryTransport) -> None:
        self.nodes[transport.node_id] = transport

    def detach(self, node_id: str) -> None:
        self.detached.add(node_id)

    def attach(self, node_id: str) -> None:
        self.detached.discard(node_id)

    def reachable(self, node_id: str) -> MemoryTransport | None:
        if node_id in self.detached:
            return None
        return self.nodes.get(node_id)


class MemoryTransport:
    """Node `node_id`'s end of a MemoryNetwork (or of nothing: then it only records)."""

    def __init__(self, node_id: str, peers: Iterable[str] = (), *,
                 network: MemoryNetwork | None = None, observe: Observer | None = None) -> None:
        self.node_id = node_id
        self.pub_endpoint = f"memory://{node_id}"
        self.stats = TransportStats()
        self.sent: list[Outgoing] = []
        self._peers = frozenset(p for p in peers if p != node_id)
        self._network = network
        self._observe = observe
        self._topics: list[bytes] = []
        self._inbox: list[Incoming] = []
        self._closed = False
        if network is not None:
            network.join(self)

    # --- the Transport interface ---------------------------------------------------------

    def send(self, dst: str, kind: bytes, payload: bytes) -> bool:
        self._check(kind, payload)
        if self._network is not None and dst not in self._peers:
            raise UnknownPeer(f"{dst!r} is not a peer of {self.node_id}")
        self._record(Outgoing("send", dst, kind, payload))
        return self._deliver(dst, FromRouter(self.node_id.encode(), kind, payload))

    def reply(self, identity: bytes, kind: bytes, payload: bytes) -> bool:
        self._check(kind, payload)
        if not isinstance(identity, bytes) or not identity:
            raise InvalidFrame("identity must be non-empty bytes")
        self._record(Outgoing("reply", identity, kind, payload))
        peer = self.peer_of(identity)
        if self._network is None or peer is None:
            return True  # a client's connection: recorded, as a test reads it from `sent`
        return self._deliver(peer, FromPeer(self.node_id, kind, payload))

    def publish(self, topic: bytes, payload: bytes) -> None:
        self._check_open()
        if not isinstance(topic, bytes) or not isinstance(payload, bytes):
            raise InvalidFrame("topic and payload must be bytes")
        self._record(Outgoing("publish", b"", topic, payload))
        if self._network is None:
            return
        for peer in self._peers:
            node = self._network.reachable(peer)
            if node is not None and node.wants(topic):
                node.deliver(FromSub(self.node_id, topic, payload))

    def subscribe(self, topic_prefix: bytes) -> None:
        self._check_open()
        if not isinstance(topic_prefix, bytes):
            raise InvalidFrame("topic prefix must be bytes")
        self._topics.append(topic_prefix)

    def poll(self, timeout_ms: int) -> list[Incoming]:
        """What arrived since the last poll. Never waits: in memory there is no time, and the
        caller's injected clock decides when ticks happen."""
        self._check_open()
        inbox, self._inbox = self._inbox, []
        return inbox

    def peer_of(self, identity: bytes) -> str | None:
        try:
            peer = identity.decode()
        except UnicodeDecodeError:
            return None
        return peer if peer in self._peers else None

    def close(self) -> None:
        self._closed = True

    # --- for tests and the network -------------------------------------------------------

    def deliver(self, event: Incoming) -> None:
        """Make `event` arrive at this node (its next poll returns it)."""
        self._inbox.append(event)

    def wants(self, topic: bytes) -> bool:
        return any(topic.startswith(prefix) for prefix in self._topics)

    def _deliver(self, node_id: str, event: Incoming) -> bool:
        if self._network is None:
            return True
        node = self._network.reachable(node_id)
        if node is None:
            self.stats.sends_dropped += 1
            return False
        node.deliver(event)
        return True

    def _record(self, out: Outgoing) -> None:
        self.sent.append(out)
        if self._observe is not None:
            self._observe(out)

    def _check(self, kind: bytes, payload: bytes) -> None:
        self._check_open()
        if not valid_kind(kind):
            raise InvalidFrame(f"kind must be 1..16 bytes, got {kind!r}")
        if not isinstance(payload, bytes):
            raise InvalidFrame(f"payload must be bytes, got {type(payload).__name__}")

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"transport {self.node_id} is closed")
