"""What the runtime needs from a transport, whatever carries the bytes.

A node is named by one address, "host:port"; the node id is that string. Three channels:

  * requests to a node arrive on its ROUTER as `FromRouter` (answer with `reply(identity)`);
  * a node talks to a peer with `send(peer)` and hears the peer's answers as `FromPeer`;
  * a node `publish`es broadcasts; the peers that `subscribe`d to a topic prefix hear them as
    `FromSub`, lossy by design (safety never depends on one arriving).

`brokerless.transport.zeromq` is the production implementation; `brokerless.transport.memory`
is its in-memory twin for tests. Neither raises out of `poll` on what the network sends: bad
frames are counted in `stats` and dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

MAX_KIND_BYTES = 16
_ADDRESS = re.compile(r"([A-Za-z0-9._-]+):([0-9]{1,5})")


class TransportError(Exception):
    """Base of the transport's errors: the caller misused the API or the network refused us."""


class ConfigError(TransportError, ValueError):
    """A bad argument: constructor setting, timeout."""


class AddressError(ConfigError):
    """A node address that is not "host:port"."""


class UnknownPeer(TransportError, LookupError):
    """A peer id that was not in the `peers` given to the constructor."""


class InvalidFrame(TransportError, ValueError):
    """A kind, topic or payload we refuse to send (wrong type, empty, too long, reserved)."""


class TransportClosed(TransportError):
    """The transport was used after close()."""


@dataclass(frozen=True, slots=True)
class FromRouter:
    """A request to us, on our ROUTER; answer it with `reply(identity, ...)`."""

    identity: bytes
    kind: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class FromPeer:
    """A reply from `peer` on the DEALER we keep to it."""

    peer: str
    kind: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class FromSub:
    """A message `peer` published (its SUB socket tells us which peer it was)."""

    peer: str
    topic: bytes
    payload: bytes


Incoming = FromRouter | FromPeer | FromSub


@dataclass(slots=True)
class TransportStats:
    """Counters (mutable on purpose: the transport bumps them as frames come and go)."""

    malformed: int = 0  # frames dropped for their shape, kind or HELLO payload
    sends_dropped: int = 0  # send/reply/HELLO that hit a high-water mark or no route
    hellos_sent: int = 0
    hellos_received: int = 0
    hello_acks_received: int = 0
    hellos_refused: int = 0  # HELLO or HELLO_ACK refused: foreign cluster, unknown id, ...
    endpoint_changes: int = 0  # a peer's PUB endpoint moved (the peer restarted)
    dealers_renewed: int = 0  # DEALERs replaced after their HELLOs went unanswered


class Transport(Protocol):
    """The sockets of one node, as the runtime uses them (one thread, no callbacks)."""

    node_id: str
    stats: TransportStats

    @property
    def pub_endpoint(self) -> str:
        """Where this node publishes (clients subscribe here for the live feed)."""

    def send(self, dst: str, kind: bytes, payload: bytes) -> bool:
        """[kind, payload] to peer `dst`; False if it was dropped."""

    def reply(self, identity: bytes, kind: bytes, payload: bytes) -> bool:
        """[kind, payload] to whoever sent us a FromRouter with this identity; False if dropped."""

    def publish(self, topic: bytes, payload: bytes) -> None:
        """[topic, payload] to every subscribed peer, lossy."""

    def subscribe(self, topic_prefix: bytes) -> None:
        """Hear what peers publish under topics starting with `topic_prefix`."""

    def poll(self, timeout_ms: int) -> list[Incoming]:
        """What arrived, waiting up to `timeout_ms` for the first message."""

    def peer_of(self, identity: bytes) -> str | None:
        """The peer whose connection uses this routing identity, if it is one of our peers."""

    def close(self) -> None:
        """Release everything; safe to call twice."""


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" into its parts; raises AddressError."""
    match = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise AddressError(f"a node address is 'host:port' (IPv4 or name), got {address!r}")
    return match.group(1), int(match.group(2))


def valid_kind(kind: object) -> bool:
    return isinstance(kind, bytes) and 0 < len(kind) <= MAX_KIND_BYTES
