"""What an application hands brokerless, and what the runtime hands it back.

An application is a replicated state machine (apply, snapshot, restore) plus a few loop
hooks. It never sees a socket: requests reach it as `Inbound` frames with an opaque origin
to reply to, and it talks back only through the runtime's public methods (propose, read,
reply, send, publish, status).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from brokerless.core import SoftState
from brokerless.types import Entry


@dataclass(frozen=True, slots=True)
class Inbound:
    """A frame sent to this node. Answer it with `Runtime.reply(origin, ...)`.

    `sender` is the cluster member it came from, when it came over a member's own connection
    (a forwarded request), and None for anyone else (a client)."""

    origin: bytes
    sender: str | None
    kind: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class PeerReply:
    """A member's answer to something this node sent it with `Runtime.send`."""

    peer: str
    kind: bytes
    payload: bytes


class StateMachine(Protocol):
    """The replicated state: every replica applies the same entries in the same order."""

    def apply(self, entry: Entry, proposed: Any = None) -> Any:
        """Apply a committed entry (commands and the NOOP that opens each term); the result
        goes to the proposer's callback. `proposed` is what this node passed to propose()
        as `proposed` for this very entry (spares decoding its own payload), else None."""

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class Application(StateMachine, Protocol):
    """The state machine plus the hooks the runtime calls from its loop, in this order per
    iteration: on_inbound / on_peer_reply for each frame, before_ready, (the Ready executes:
    apply, then on_role_change if the role changed), after_iteration."""

    def on_inbound(self, frame: Inbound) -> None: ...

    def on_peer_reply(self, reply: PeerReply) -> None: ...

    def on_role_change(self, soft: SoftState) -> None: ...

    def before_ready(self, now: float) -> bool:
        """Do a bounded share of queued work and any time-driven duties (what is proposed
        here goes into this iteration's Ready). True while work is left: the loop then
        does not wait for the network."""

    def after_iteration(self) -> None:
        """Flush what was gathered during the iteration (replies, broadcasts)."""
