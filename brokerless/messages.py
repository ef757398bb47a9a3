"""Messages exchanged between consensus cores.

Every message names its sender (`src`) and the term it was sent in. Point-to-point
messages name a destination (`dst`); a Heartbeat is addressed to every node and the
runtime publishes it on PUB/SUB. Messages are frozen dataclasses so that the wire
codec, the simulator and the core can share them without copying.
"""

from __future__ import annotations

from dataclasses import dataclass

from brokerless.types import Entry, NodeId


@dataclass(frozen=True, slots=True)
class VoteRequest:
    term: int
    src: NodeId
    dst: NodeId
    last_index: int
    last_term: int
    pre: bool = False  # a pre-vote: asks "would you vote?" without changing anyone's term
    transfer: bool = False  # sent after TimeoutNow: voters may ignore their leader lease


@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int
    src: NodeId
    dst: NodeId
    granted: bool
    pre: bool = False


@dataclass(frozen=True, slots=True)
class Append:
    term: int
    src: NodeId
    dst: NodeId
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    term: int
    src: NodeId
    dst: NodeId
    success: bool
    # On success: the highest index now known to match the leader's log.
    # On failure: the prev_index that was rejected, plus a hint for fast backtracking:
    # the follower's largest index at or below it whose term is <= the leader's prev_term
    # (hint_index) and that entry's term (hint_term), so a whole divergent term is skipped
    # in one round trip.
    index: int
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Published to every node: the leader is alive, here is its term and commit."""

    term: int
    src: NodeId
    commit: int
    seq: int  # increases with every heartbeat round; acknowledged for read-index and check-quorum


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    src: NodeId
    dst: NodeId
    seq: int
    last_index: int  # lets the leader notice a follower that fell behind


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    term: int
    src: NodeId
    dst: NodeId
    index: int  # last index the snapshot covers
    snap_term: int
    offset: int  # where `chunk` starts in the snapshot's bytes
    chunk: bytes
    done: bool  # the last chunk


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    term: int
    src: NodeId
    dst: NodeId
    index: int  # the snapshot this answers
    next_offset: int  # the next byte the follower expects; resumption point
    done: bool  # the follower installed the snapshot


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the leader tells the target to campaign at once."""

    term: int
    src: NodeId
    dst: NodeId


Message = (
    VoteRequest
    | VoteResponse
    | Append
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
)

MESSAGE_TYPES: tuple[type, ...] = (
    VoteRequest,
    VoteResponse,
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
)


def destination(msg: Message) -> NodeId | None:
    """Where a message goes; None means every other node (heartbeats)."""
    return getattr(msg, "dst", None)
