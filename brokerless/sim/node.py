"""One simulated node: a core, the production Ready executor over MemoryStorage (whose
power-loss model decides what a crash keeps), and a toy application.

The application records every applied command, so the checker can compare what each
node applied. Its snapshot is that record, packed.
"""

from __future__ import annotations

import random

import msgpack

from brokerless.core import Config, Core, Ready
from brokerless.executor import ReadyExecutor, ReadyIO
from brokerless.storage import MemoryStorage
from brokerless.types import EntryKind, HardState, Snapshot


class SimNode:
    def __init__(self, config: Config, seed: int, snapshot_every: int):
        self.config = config
        self.storage = MemoryStorage()  # every save synced, as with durability=always
        self.rng = random.Random(seed)
        self.snapshot_every = snapshot_every
        self.alive = False
        self.start()

    def start(self) -> None:
        """Start from what storage kept: a first start, or a restart after a crash."""
        stored = self.storage.crash()
        self.core = Core(self.config, self.rng, stored.hard_state, stored.snapshot,
                         stored.entries)
        self.executor = ReadyExecutor(stored.hard_state)
        self.applied: list[tuple[int, int, bytes]] = []  # (index, term, data) of each command
        self.applied_index = 0
        if stored.snapshot is not None:
            self._restore(stored.snapshot)
        self.alive = True

    def crash(self) -> None:
        self.alive = False

    @property
    def durable(self) -> HardState:
        return self.storage.hard_state

    def _restore(self, snap: Snapshot) -> None:
        self.applied = [tuple(x) for x in msgpack.unpackb(snap.data)]
        self.applied_index = snap.meta.index

    def apply(self, rd: Ready, io: ReadyIO) -> list[tuple[int, int, bytes]]:
        """Apply an executed Ready and advance the core; returns the new commands."""
        if rd.snapshot is not None:
            self._restore(rd.snapshot)
        new = []
        for entry in rd.committed:
            self.applied_index = entry.index
            if entry.kind == EntryKind.COMMAND:
                new.append((entry.index, entry.term, entry.data))
        self.applied.extend(new)
        self.core.advance(rd)
        self._maybe_snapshot(io)
        return new

    def _maybe_snapshot(self, io: ReadyIO) -> None:
        core = self.core
        if self.snapshot_every and core.applied - core.snapshot_index >= self.snapshot_every:
            snap = core.compact(core.applied, msgpack.packb(self.applied))
            self.executor.flush(io)  # storage compacts only up to a durable commit index
            self.storage.compact(snap)
