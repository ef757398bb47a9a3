"""Storage in memory, for tests and the simulator, with a model of power loss."""

from __future__ import annotations

from collections.abc import Sequence

from brokerless.storage.interface import (
    Durability,
    LogSummary,
    PersistedState,
    StorageError,
    WritePlan,
    plan_compact,
    plan_save,
)
from brokerless.types import Entry, HardState, Snapshot, SnapshotMeta


class MemoryStorage:
    """Storage in memory, for tests and the simulator, with a model of power loss.

    It tells what was written from what was synced. With ALWAYS every save is synced. With
    BATCH or OFF only what was saved before the last `sync()` survives `crash()`: the
    simulator calls `sync()` where a real backend would fsync.
    """

    def __init__(self, durability: Durability = Durability.ALWAYS) -> None:
        self.durability = Durability(durability)
        self._hard_state = HardState()
        self._snapshot: Snapshot | None = None
        self._entries: list[Entry] = []
        self._synced: PersistedState | None = None  # None: nothing unsynced
        self._closed = False

    @property
    def hard_state(self) -> HardState:
        """The hard state as last saved (cheap: load() copies the whole log)."""
        return self._hard_state

    def load(self) -> PersistedState:
        self._check_open()
        return PersistedState(self._hard_state, self._snapshot, list(self._entries))

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        self._check_open()
        self._apply(plan_save(self._summary(), self._term_at, hard_state, entries, snapshot))

    def compact(self, snapshot: Snapshot) -> None:
        self._check_open()
        self._apply(plan_compact(self._summary(), self._term_at, snapshot))

    def close(self) -> None:
        self._closed = True

    def sync(self) -> None:
        """Make everything saved so far survive `crash()` (a real backend's fsync)."""
        self._synced = None

    def reopen(self) -> PersistedState:
        """Restart after a clean stop or a process crash: written data is kept."""
        self._closed = False
        return self.load()

    def crash(self) -> PersistedState:
        """Lose what a power loss would lose, reopen, and return what a restart loads."""
        if self._synced is not None:
            self._hard_state = self._synced.hard_state
            self._snapshot = self._synced.snapshot
            self._entries = list(self._synced.entries)
            self._synced = None
        return self.reopen()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")

    def _summary(self) -> LogSummary:
        snap = self._snapshot.meta if self._snapshot else SnapshotMeta()
        if not self._entries:
            return LogSummary(self._hard_state, snap, snap.index, snap.term)
        last = self._entries[-1]
        return LogSummary(self._hard_state, snap, last.index, last.term)

    def _term_at(self, index: int) -> int | None:
        snap = self._snapshot.meta if self._snapshot else SnapshotMeta()
        if index == snap.index:
            return snap.term
        position = index - snap.index - 1
        if 0 <= position < len(self._entries):
            return self._entries[position].term
        return None

    def _apply(self, plan: WritePlan) -> None:
        if self.durability is not Durability.ALWAYS and self._synced is None:
            # Remember the synced state once, before the first unsynced change.
            self._synced = PersistedState(self._hard_state, self._snapshot, list(self._entries))
        first = self._entries[0].index if self._entries else 0
        if plan.truncate_from is not None and self._entries:
            del self._entries[max(0, plan.truncate_from - first) :]
        if plan.drop_through and self._entries:
            del self._entries[: max(0, plan.drop_through - first + 1)]
        self._entries.extend(plan.entries)
        if plan.snapshot is not None:
            self._snapshot = plan.snapshot
        if plan.hard_state is not None:
            self._hard_state = plan.hard_state

