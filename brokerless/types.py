"""Plain data shared by the core, storage, simulator and runtime."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# One range for terms and log indexes, shared by the codec, the core and every storage
# backend: 0..2**63-1, what a signed 64-bit integer (and SQLite's INTEGER) holds.
MAX_TERM = MAX_INDEX = 2**63 - 1
# The most a message may raise our term by. An honest cluster's term grows by one per
# election (pre-vote stops a partitioned node from inflating it), so 2**32 is more than
# centuries of elections; a forged message with a term near MAX_TERM would otherwise leave
# the cluster unable to ever start another election.
MAX_TERM_JUMP = 2**32

NodeId = str


class EntryKind(int, Enum):
    """What an entry carries. NOOP is appended by a new leader to commit its term."""

    COMMAND = 0
    NOOP = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One slot of the replicated log. `data` is opaque to brokerless."""

    term: int
    index: int
    data: bytes = b""
    kind: EntryKind = EntryKind.COMMAND


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it leaves the node."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The last log position a snapshot covers."""

    index: int = 0
    term: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The application's state as of `meta.index`, as opaque bytes."""

    meta: SnapshotMeta
    data: bytes


class Role(str, Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
