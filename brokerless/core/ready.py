"""Configuration in, Ready out: the core's boundary with the runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from brokerless.messages import InstallSnapshot, Message
from brokerless.types import Entry, HardState, NodeId, Role, Snapshot


class Rng(Protocol):
    """The only randomness the core uses, injected so a seed replays a run."""

    def randrange(self, start: int, stop: int) -> int: ...


DEFAULT_CATCHUP_ENTRIES = 5000


@dataclass(frozen=True, slots=True)
class Config:
    id: NodeId
    voters: tuple[NodeId, ...]  # every voting member, this node included
    election_ticks: int = 10  # the randomized timeout is drawn from [election_ticks, 2*election_ticks)
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 256  # appends in flight to one follower
    max_batch_entries: int = 4096  # entries in one append
    # Bytes of entry data in one append (at least one entry is always sent): keeps every
    # consensus message well under the transport's frame limit, whatever the entries hold.
    max_batch_bytes: int = 4 << 20
    snapshot_chunk_bytes: int = 1 << 20
    # Entries kept behind each snapshot, so a follower slightly behind it (restarted, or
    # just done installing an older snapshot) catches up by appends, not another snapshot.
    catchup_entries: int = DEFAULT_CATCHUP_ENTRIES
    # A leader keeps, beyond that tail, what a follower that is still answering needs
    # (its match, or the snapshot it is receiving), up to this many entries behind a new
    # snapshot: compaction never makes a transfer in progress useless, yet a follower
    # that stops answering no longer holds the log back at the next compaction.
    max_catchup_hold: int = 250_000

    def __post_init__(self) -> None:
        if self.id not in self.voters:
            raise ValueError(f"node {self.id!r} is not among the voters {self.voters!r}")
        if len(set(self.voters)) != len(self.voters):
            raise ValueError("duplicate voter ids")
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.catchup_entries < 0 or self.max_catchup_hold < 0:
            raise ValueError("catchup_entries and max_catchup_hold must be >= 0")

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied `index`."""

    ctx: object
    index: int


@dataclass(frozen=True, slots=True)
class SoftState:
    role: Role
    leader: NodeId | None
    term: int


@dataclass(frozen=True, slots=True)
class CoreStatus:
    """A read-only view of a core: what a runtime or an operator may look at."""

    role: Role
    term: int
    leader: NodeId | None
    commit: int
    applied: int
    first_index: int  # the first entry still in the log
    last_index: int
    snapshot_index: int  # entries up to here live only in the snapshot


@dataclass(slots=True)
class IncomingSnapshot:
    """A snapshot a follower is receiving chunk by chunk from the leader."""

    index: int
    term: int
    data: bytearray = field(default_factory=bytearray)

    def is_for(self, msg: InstallSnapshot) -> bool:
        return self.index == msg.index and self.term == msg.snap_term


@dataclass(slots=True)
class Ready:
    """One batch of work, executed in this order by the runtime:

    1. persist `snapshot` (if any), `entries` and `hard_state` (fsync per durability policy);
    2. send `messages` (heartbeats go to every node);
    3. restore the application from `snapshot`, then apply `committed` in order;
    4. hand `read_states` to waiting readers once their index is applied;
    5. call `advance()`.
    """

    soft_state: SoftState
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[object] = field(default_factory=list)  # reads that can no longer be confirmed here

    def is_empty(self) -> bool:
        return not (
            self.hard_state or self.entries or self.snapshot or self.messages
            or self.committed or self.read_states or self.dropped_reads
        )


class NotLeader(Exception):
    """A proposal or read was made at a node that cannot serve it; `leader` is a hint."""

    def __init__(self, leader: NodeId | None):
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader
