"""Durable state of one consensus node: the interface and the write rules.

The core keeps the whole unsnapshotted log in memory; storage is its durable mirror. The
runtime calls `save()` once per Ready, before sending any message of that Ready, so that a
vote or an acknowledged entry is never forgotten by a restart.

The write rules live here, in `plan_save` and `plan_compact`, as pure functions over a small
summary of what is stored. Every backend validates through them and then only executes the
resulting `WritePlan`, so all backends accept and refuse exactly the same writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Protocol

from brokerless.types import MAX_INDEX, Entry, EntryKind, HardState, Snapshot, SnapshotMeta

MAX_INT64 = MAX_INDEX  # sqlite's INTEGER range, the one brokerless.types gives every component


class StorageError(Exception):
    """A storage operation was refused or failed. A refused write changed nothing."""


class CorruptDataError(StorageError):
    """What is stored cannot be trusted: a bad checksum, a gap, an unreadable file."""

    def __init__(self, path: str | Path, problem: str, index: int | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.index = index
        where = "" if index is None else f" at index {index}"
        super().__init__(f"corrupt data in {self.path}{where}: {problem}")


class IdentityMismatchError(StorageError):
    """The data directory belongs to another node or another cluster."""

    def __init__(
        self, path: str | Path, expected: tuple[str, str], found: tuple[str | None, str | None]
    ) -> None:
        self.path = str(path)
        self.expected = expected
        self.found = found
        super().__init__(
            f"{self.path} belongs to node {found[0]!r} of cluster {found[1]!r}, "
            f"refusing to open it as node {expected[0]!r} of cluster {expected[1]!r}"
        )


class Durability(str, Enum):
    """When a save reaches stable storage (fsync)."""

    ALWAYS = "always"  # fsync before save() returns: nothing acknowledged is ever lost
    # !!! BATCH CAN LOSE THE LAST MOMENTS ON POWER LOSS: saves are fsynced together at most
    # every N ms / M saves, so a node may forget votes and entries it already acknowledged.
    BATCH = "batch"
    OFF = "off"  # never fsync: tests and benchmarks only


@dataclass(frozen=True, slots=True)
class PersistedState:
    """What a node reloads at start."""

    hard_state: HardState
    snapshot: Snapshot | None  # latest snapshot, or None
    entries: list[Entry]  # every entry after the snapshot's index, contiguous, ascending


class Storage(Protocol):
    def load(self) -> PersistedState: ...

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """One atomic write per Ready; see `plan_save` for the order of effect."""
        ...

    def compact(self, snapshot: Snapshot) -> None:
        """Store a snapshot the application took locally and drop entries up to its index."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# The write rules, shared by every backend


@dataclass(frozen=True, slots=True)
class LogSummary:
    """The little a backend must know about what it stores to validate a write."""

    hard_state: HardState = HardState()
    snapshot: SnapshotMeta = SnapshotMeta()  # index 0, term 0 when there is no snapshot
    last_index: int = 0  # the snapshot's index when the log is empty
    last_term: int = 0


TermAt = Callable[[int], int | None]
"""The term of the stored entry at an index (the snapshot's term at its index), else None."""


@dataclass(frozen=True, slots=True)
class WritePlan:
    """A validated write. Backends apply it in one atomic step, in this order."""

    truncate_from: int | None  # first delete every entry with index >= this
    drop_through: int  # then delete every entry with index <= this (0: none)
    snapshot: Snapshot | None  # replaces the stored snapshot
    entries: tuple[Entry, ...]  # appended after what remains
    hard_state: HardState | None  # replaces the stored hard state
    after: LogSummary  # what is stored once the plan is applied


def plan_save(
    cur: LogSummary,
    term_at: TermAt,
    hard_state: HardState | None,
    entries: Sequence[Entry],
    snapshot: Snapshot | None = None,
) -> WritePlan:
    """Validate a save and say what to write, or raise StorageError.

    Order of effect: a snapshot received from the leader replaces the log up to its index
    (the entries after it survive only if the log holds that index with the snapshot's term);
    then `entries` are written, truncating a conflicting suffix from entries[0].index; then
    the hard state.
    """
    entries = tuple(entries)
    _check_entry_shapes(entries)
    if hard_state is not None:
        _check_hard_state_shape(hard_state)
        _check_hard_state_change(cur.hard_state, hard_state)
    installed, truncate_from = cur, None
    if snapshot is not None:
        installed, truncate_from = _plan_install(cur, term_at, snapshot)
    last_index, last_term = installed.last_index, installed.last_term
    if entries:
        view = _after_install(term_at, installed, truncate_from)
        if _check_placement(cur.hard_state.commit, view, installed, entries):
            first = entries[0].index
            truncate_from = first if truncate_from is None else min(truncate_from, first)
        last_index, last_term = entries[-1].index, entries[-1].term
    after = LogSummary(hard_state or cur.hard_state, installed.snapshot, last_index, last_term)
    _check_commit_range(after, snapshot)
    drop_through = snapshot.meta.index if snapshot is not None else 0
    return WritePlan(truncate_from, drop_through, snapshot, entries, hard_state, after)


def _check_commit_range(after: LogSummary, snapshot: Snapshot | None) -> None:
    """Commit ends up within the log, and at or past a snapshot just installed."""
    commit = after.hard_state.commit
    if snapshot is not None and commit < snapshot.meta.index:
        raise StorageError(
            f"a snapshot at {snapshot.meta.index} holds committed state: commit must reach it "
            f"(it is {commit})"
        )
    if commit > after.last_index:
        raise StorageError(f"commit {commit} would be beyond the last index {after.last_index}")


def _plan_install(
    cur: LogSummary, term_at: TermAt, snapshot: Snapshot
) -> tuple[LogSummary, int | None]:
    """A snapshot from the leader: what is stored after it, and where to truncate the log.

    The entries after the snapshot survive only if the log holds its index with its term;
    otherwise the log disagrees with the leader and goes entirely.
    """
    _check_snapshot_shape(snapshot)
    _check_not_older(cur.snapshot, snapshot.meta)
    index, term = snapshot.meta.index, snapshot.meta.term
    stored = term_at(index)
    if stored is not None and stored != term and index <= cur.hard_state.commit:
        raise StorageError(
            f"snapshot term {term} conflicts with committed entry {index} ({stored})"
        )
    if stored == term and index < cur.last_index:
        return replace(cur, snapshot=snapshot.meta), None
    return replace(cur, snapshot=snapshot.meta, last_index=index, last_term=term), index + 1


def plan_compact(cur: LogSummary, term_at: TermAt, snapshot: Snapshot) -> WritePlan:
    """Validate a snapshot the application took locally, or raise StorageError.

    It may only cover committed entries that are stored, with their term: compacting an
    entry that could still be overwritten would make the log unrepairable.
    """
    _check_snapshot_shape(snapshot)
    _check_not_older(cur.snapshot, snapshot.meta)
    index, term = snapshot.meta.index, snapshot.meta.term
    if index > cur.hard_state.commit:
        raise StorageError(
            f"cannot compact through {index}: only {cur.hard_state.commit} is committed"
        )
    if index > cur.last_index:
        raise StorageError(f"cannot compact through {index}: the log ends at {cur.last_index}")
    stored = term_at(index)
    if stored != term:
        raise StorageError(f"snapshot term {term} differs from the stored term {stored} at {index}")
    after = LogSummary(cur.hard_state, snapshot.meta, cur.last_index, cur.last_term)
    return WritePlan(None, index, snapshot, (), None, after)


def _after_install(term_at: TermAt, after: LogSummary, truncate_from: int | None) -> TermAt:
    """`term_at` as it will be once the snapshot part of a save is applied."""
    snap = after.snapshot

    def view(index: int) -> int | None:
        if index == snap.index:
            return snap.term
        if index < snap.index or index > after.last_index:
            return None
        if truncate_from is not None and index >= truncate_from:
            return None
        return term_at(index)

    return view


def _check_placement(
    commit: int, term_at: TermAt, cur: LogSummary, entries: tuple[Entry, ...]
) -> bool:
    """Check where `entries` land in the log `cur`; return True when they overwrite a suffix."""
    first, snap_index, last_index = entries[0].index, cur.snapshot.index, cur.last_index
    if first <= snap_index:
        raise StorageError(
            f"entry {first} is at or below the snapshot index {snap_index}: compacted entries "
            "cannot be rewritten"
        )
    if first > last_index + 1:
        raise StorageError(f"gap: the log ends at {last_index}, the new entries start at {first}")
    previous_term = term_at(first - 1)
    if previous_term is not None and entries[0].term < previous_term:
        raise StorageError(f"entry {first} has term {entries[0].term} < {previous_term} before it")
    _check_committed_unchanged(commit, term_at, entries, last_index)
    return first <= last_index


def _check_committed_unchanged(
    commit: int, term_at: TermAt, entries: tuple[Entry, ...], last_index: int
) -> None:
    """A committed entry never changes: rewriting it with another term is a core bug."""
    for entry in entries:
        if entry.index > min(commit, last_index):
            return
        stored = term_at(entry.index)
        if stored != entry.term:
            raise StorageError(
                f"entry {entry.index} is committed with term {stored}; refusing term {entry.term}"
            )


def _check_not_older(stored: SnapshotMeta, new: SnapshotMeta) -> None:
    if new.index < stored.index:
        raise StorageError(
            f"snapshot at {new.index} is older than the stored one at {stored.index}"
        )
    if new.index == stored.index and new.term != stored.term and stored.index > 0:
        raise StorageError(f"snapshot at {new.index} has term {new.term}, stored has {stored.term}")


def _check_hard_state_change(old: HardState, new: HardState) -> None:
    """Terms and commit only grow, and a vote, once cast, holds for the whole term."""
    if new.term < old.term:
        raise StorageError(f"term would go back from {old.term} to {new.term}")
    if new.term == old.term and old.vote is not None and new.vote != old.vote:
        raise StorageError(
            f"vote for {old.vote!r} in term {old.term} cannot change to {new.vote!r}"
        )
    if new.commit < old.commit:
        raise StorageError(f"commit would go back from {old.commit} to {new.commit}")


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_INT64


def _check_entry_shapes(entries: tuple[Entry, ...]) -> None:
    for position, entry in enumerate(entries):
        if not isinstance(entry, Entry):
            raise StorageError(f"expected an Entry, got {type(entry).__name__}")
        if not (_is_count(entry.index) and entry.index >= 1 and _is_count(entry.term)):
            raise StorageError(f"entry index must be >= 1 and term >= 0: {entry!r}")
        if not isinstance(entry.kind, EntryKind) or type(entry.data) is not bytes:
            raise StorageError(f"entry {entry.index} needs an EntryKind and bytes data")
        if position and entry.index != entries[position - 1].index + 1:
            raise StorageError(
                f"gap inside the batch: {entries[position - 1].index} -> {entry.index}"
            )
        if position and entry.term < entries[position - 1].term:
            raise StorageError(f"entry {entry.index} has a lower term than the entry before it")


def _check_hard_state_shape(hard_state: HardState) -> None:
    if not isinstance(hard_state, HardState):
        raise StorageError(f"expected a HardState, got {type(hard_state).__name__}")
    if not (_is_count(hard_state.term) and _is_count(hard_state.commit)):
        raise StorageError(f"hard state term and commit must be integers >= 0: {hard_state!r}")
    if hard_state.vote is not None and (type(hard_state.vote) is not str or not hard_state.vote):
        raise StorageError(f"a vote names a node (a non-empty str) or is None: {hard_state.vote!r}")


def _check_snapshot_shape(snapshot: Snapshot) -> None:
    if not isinstance(snapshot, Snapshot) or not isinstance(snapshot.meta, SnapshotMeta):
        raise StorageError(f"expected a Snapshot, got {type(snapshot).__name__}")
    meta = snapshot.meta
    if not (_is_count(meta.index) and meta.index >= 1 and _is_count(meta.term)):
        raise StorageError(f"snapshot index must be >= 1 and term >= 0: {meta!r}")
    if type(snapshot.data) is not bytes:
        raise StorageError("snapshot data must be bytes")
