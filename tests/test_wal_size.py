"""The SQLite WAL shrinks back after a large transaction (a snapshot) is checkpointed, instead
of staying at its high-water mark for the life of the store."""

from __future__ import annotations

import os

import pytest

from brokerless.storage import Durability
from brokerless.storage.sqlite import WAL_SIZE_LIMIT, SqliteStorage
from brokerless.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta

SNAPSHOT_BYTES = 3 * WAL_SIZE_LIMIT  # one transaction far beyond the limit


def entries(first: int, count: int) -> list[Entry]:
    return [Entry(1, i, b"x" * 100, EntryKind.COMMAND) for i in range(first, first + count)]


def wal_size(store: SqliteStorage) -> int:
    wal = store.path.with_name(store.path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.mark.parametrize("durability", list(Durability))
def test_the_wal_is_truncated_after_a_large_snapshot_is_checkpointed(tmp_path, durability):
    store = SqliteStorage(tmp_path, durability)
    try:
        store.save(HardState(1, None, 0), entries(1, 100))
        store.save(HardState(1, None, 100), [])
        store.compact(Snapshot(SnapshotMeta(100, 1), os.urandom(SNAPSHOT_BYTES)))
        assert wal_size(store) > SNAPSHOT_BYTES  # the snapshot went through the WAL
        index = 101
        # Ordinary saves go on; each automatic checkpoint lets the next write restart the
        # WAL from its start, which is when SQLite applies the size limit.
        for _ in range(300):
            store.save(HardState(1, None, index - 1), entries(index, 50))
            index += 50
        if durability is not Durability.ALWAYS:
            store.sync()
        store.save(HardState(1, None, index - 1), entries(index, 1))
        assert wal_size(store) <= WAL_SIZE_LIMIT
    finally:
        store.close()
    reopened = SqliteStorage(tmp_path)
    try:
        loaded = reopened.load()
        assert loaded.snapshot is not None and len(loaded.snapshot.data) == SNAPSHOT_BYTES
        assert loaded.entries[-1].index == index
    finally:
        reopened.close()
