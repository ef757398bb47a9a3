"""One simulated node: a core, a disk that survives crashes, and a toy application.

The application records every applied command, so the checker can compare what each
node applied. Its snapshot is that record, packed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import msgpack

from brokerless.core import Config, Core, Ready
from brokerless.types import Entry, EntryKind, HardState, Snapshot


@dataclass(slots=True)
class Disk:
    """What a node has made durable. The simulator persists every Ready before sending
    (fsync per Ready), so a crash loses only what was never handed to the disk."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def save(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self._install(rd.snapshot)
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def _install(self, snap: Snapshot) -> None:
        keep = any(e.index == snap.meta.index and e.term == snap.meta.term for e in self.entries)
        self.entries = [e for e in self.entries if keep and e.index > snap.meta.index]
        self.snapshot = snap

    def compact(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.entries = [e for e in self.entries if e.index > snap.meta.index]


class SimNode:
    def __init__(self, config: Config, seed: int, snapshot_every: int):
        self.config = config
        self.disk = Disk()
        self.rng = random.Random(seed)
        self.snapshot_every = snapshot_every
        self.alive = False
        self.start()

    def start(self) -> None:
        d = self.disk
        self.core = Core(self.config, self.rng, d.hard_state, d.snapshot, d.entries)
        self.applied: list[tuple[int, int, bytes]] = []  # (index, term, data) of each command
        self.applied_index = 0
        if d.snapshot is not None:
            self._restore(d.snapshot)
        self.alive = True

    def crash(self) -> None:
        self.alive = False

    def _restore(self, snap: Snapshot) -> None:
        self.applied = [tuple(x) for x in msgpack.unpackb(snap.data)]
        self.applied_index = snap.meta.index

    def apply(self, rd: Ready) -> list[tuple[int, int, bytes]]:
        """Apply a persisted Ready and advance the core; returns the new commands."""
        if rd.snapshot is not None:
            self._restore(rd.snapshot)
        new = []
        for entry in rd.committed:
            self.applied_index = entry.index
            if entry.kind == EntryKind.COMMAND:
                new.append((entry.index, entry.term, entry.data))
        self.applied.extend(new)
        self.core.advance(rd)
        self._maybe_snapshot()
        return new

    def _maybe_snapshot(self) -> None:
        core = self.core
        if self.snapshot_every and core.applied - core.snapshot_index >= self.snapshot_every:
            snap = core.compact(core.applied, msgpack.packb(self.applied))
            self.disk.compact(snap)
