"""Executing a Ready: what may be sent before the save, what is saved, what waits for it.

One piece, used by the runtime over real storage and sockets and by the simulator over
MemoryStorage and its network, so the randomized checker proves the very rules that run.
For each Ready, in this order:

1. send what may leave before the save: a leader's appends and heartbeats, while its term
   and vote are already durable (Raft thesis 10.2.1). It counts itself towards a commit
   only in a later Ready, after this save returned, so its disk write overlaps the
   followers' instead of preceding it;
2. save the hard state, the new entries and a received snapshot, except a hard state that
   only moves the commit index: that need not be durable (a restarted node learns it again
   from the leader), so it rides along with the next save instead of costing its own fsync;
3. send everything else (votes, acknowledgements, a follower's answers) only now.

The caller then applies the committed entries and advances the core. A save that raises
stops the Ready there: nothing that depends on it has left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from brokerless.core import Ready
from brokerless.messages import Append, Heartbeat, Message
from brokerless.types import Entry, HardState, Role, Snapshot

_LEADER_OUTBOUND = (Append, Heartbeat)


@dataclass(frozen=True, slots=True)
class Save:
    """One write to storage."""

    hard_state: HardState | None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """A Ready's I/O, in order: `early` sends, the `save` (if any), the `late` sends."""

    early: list[Message]
    save: Save | None
    late: list[Message]


class ReadyIO(Protocol):
    """Where a Ready's messages and writes go."""

    def send(self, msg: Message) -> None: ...

    def save(self, save: Save) -> None: ...


class ReadyExecutor:
    """Plans and runs each Ready's I/O; remembers what is durable between Readies."""

    def __init__(self, durable: HardState) -> None:
        self._durable_term_vote = (durable.term, durable.vote)
        self._deferred: HardState | None = None  # a commit-only change not yet written

    def plan(self, rd: Ready) -> Plan:
        save = self._save_for(rd)
        early = self._early(rd)
        late = [m for m in rd.messages if not early or not isinstance(m, _LEADER_OUTBOUND)]
        return Plan(early, save, late)

    def execute(self, rd: Ready, io: ReadyIO) -> Plan:
        """Send, save, send, as planned; returns the plan it ran."""
        plan = self.plan(rd)
        for msg in plan.early:
            io.send(msg)
        if plan.save is not None:
            io.save(plan.save)
            self.saved(plan.save)
        for msg in plan.late:
            io.send(msg)
        return plan

    def saved(self, save: Save) -> None:
        """`save` is durable now."""
        self._deferred = None
        if save.hard_state is not None:
            self._durable_term_vote = (save.hard_state.term, save.hard_state.vote)

    def flush(self, io: ReadyIO) -> None:
        """Write a deferred commit index now (before a compaction, and at shutdown)."""
        if self._deferred is not None:
            save = Save(self._deferred)
            io.save(save)
            self.saved(save)

    def _save_for(self, rd: Ready) -> Save | None:
        hs = rd.hard_state
        writes = bool(rd.entries) or rd.snapshot is not None
        if hs is not None and not writes and (hs.term, hs.vote) == self._durable_term_vote:
            self._deferred = hs
            return None
        if hs is None:
            hs = self._deferred if writes else None
        if hs is None and not writes:
            return None
        return Save(hs, list(rd.entries), rd.snapshot)

    def _early(self, rd: Ready) -> list[Message]:
        if rd.soft_state.role != Role.LEADER or rd.snapshot is not None:
            return []
        hs = rd.hard_state
        if hs is not None and (hs.term, hs.vote) != self._durable_term_vote:
            return []
        return [m for m in rd.messages if isinstance(m, _LEADER_OUTBOUND)]
