"""An offline look at a node's data directory: read-only, and safe while the node runs.

`inspect_data_dir(path)` opens `raft.db` read-only (SQLite's `mode=ro`: no lock taken, the
database never written or repaired; on a stopped node's directory SQLite creates the empty
`-wal`/`-shm` files a WAL reader needs, which the node reuses when it starts) and reads it in
ONE read transaction, so with WAL it sees a consistent
store even while the node keeps writing. It verifies every row's checksum with the public
functions of `brokerless.storage.sqlite` (the layout is docs/storage.md), restores the snapshot
into an AuctionState and applies the committed log entries after it, streaming the rows: the
log is never held in memory.

Why not `SqliteStorage.load()`: it takes the store's writer lock (refused while the node
runs) and creates a store where there is none; an inspector must do neither.

The auctions shown are as of the *durable* commit index. A running node writes a commit index
that moved on its own only with its next write, so a live node may be a few entries ahead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokerless.storage import CorruptDataError, StorageError
from brokerless.storage.sqlite import (
    DB_FILENAME,
    FORMAT_VERSION,
    db_file,
    read_verified,
)
from brokerless.types import Entry, EntryKind, Snapshot
from zauction.auction.domain import AuctionState, InvalidSnapshot

_TABLES = frozenset({"meta", "hard_state", "log", "snapshot"})
_CORRUPTION_CODES = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_FILE_SUFFIXES = ("", "-wal", "-shm", ".lock")


class NotADataDirError(StorageError):
    """The path is not a node's data directory: no store there, or a file of something else."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    index: int
    term: int
    size: int  # bytes of the application's snapshot


@dataclass(frozen=True, slots=True)
class DataDirReport:
    """What a node's data directory holds, verified; auctions as of `commit`."""

    path: str  # the database file
    files: tuple[tuple[str, int], ...]  # (file name, bytes) of raft.db and its companions
    format_version: int
    cluster_id: str | None  # None until a node claimed the store
    node_id: str | None
    term: int
    vote: str | None
    commit: int
    first_index: int  # the first entry in the log (snapshot index + 1 when there is one)
    last_index: int  # the snapshot's index when the log is empty
    entry_count: int
    snapshot: SnapshotInfo | None
    commands_applied: int  # log entries applied on top of the snapshot (NOOPs skipped)
    auctions: tuple[dict[str, Any], ...]  # AuctionState.auctions(), sorted by id

    @property
    def disk_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def to_dict(self) -> dict[str, Any]:
        snap = self.snapshot
        return {
            "path": self.path, "files": dict(self.files), "disk_bytes": self.disk_bytes,
            "format_version": self.format_version, "cluster_id": self.cluster_id,
            "node_id": self.node_id, "term": self.term, "vote": self.vote,
            "commit": self.commit,
            "log": {"first_index": self.first_index, "last_index": self.last_index,
                    "entries": self.entry_count},
            "snapshot": None if snap is None else
            {"index": snap.index, "term": snap.term, "size": snap.size},
            "commands_applied": self.commands_applied,
            "auctions": list(self.auctions),
        }


def inspect_data_dir(path: str | Path) -> DataDirReport:
    """Read, verify and summarize a node's data directory (or its raft.db file).

    Raises NotADataDirError when there is no brokerless store at `path`, CorruptDataError
    (naming the file, the index and the problem) when what is stored cannot be trusted, and
    StorageError for a store of another format version.
    """
    file = _store_file(Path(path))
    with _read_only(file) as conn:
        version, node_id, cluster_id = _check_store(conn, file)
        stored = read_verified(conn, file)  # the very checks the node's load() makes
    hard_state = stored.hard_state
    snapshot, state = _restored_snapshot(stored.snapshot, file)
    applied = _apply_committed(stored.entries, hard_state.commit, state)
    first = snapshot.index + 1 if snapshot else 1
    last, count = first - 1 + len(stored.entries), len(stored.entries)
    return DataDirReport(
        str(file), _file_sizes(file), version, cluster_id, node_id, hard_state.term,
        hard_state.vote, hard_state.commit, first, last, count, snapshot, applied,
        tuple(state.auctions()))


# --- opening ------------------------------------------------------------------------------------


def _store_file(path: Path) -> Path:
    if not path.exists():
        raise NotADataDirError(f"{path}: no such file or directory")
    file = db_file(path)
    if not file.is_file():
        raise NotADataDirError(f"{path} is not a node's data directory: it has no {DB_FILENAME}")
    return file


@contextmanager
def _read_only(file: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction; sqlite errors become ours."""
    try:
        uri = f"{file.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
            conn.execute("BEGIN")  # one snapshot of the WAL for every read below
            yield conn
    except sqlite3.Error as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name in _CORRUPTION_CODES or type(exc) is sqlite3.DatabaseError:
            raise CorruptDataError(file, f"sqlite says: {exc}") from exc
        raise StorageError(f"{file}: sqlite error: {exc}") from exc


def _check_store(conn: sqlite3.Connection, file: Path) -> tuple[int, str | None, str | None]:
    """The store's format version and ids, once it is known to be a brokerless store."""
    tables = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        raise NotADataDirError(f"{file} is not a node's store (tables: {sorted(tables)})")
    row = conn.execute("SELECT format_version, node_id, cluster_id FROM meta WHERE id = 0")
    found = row.fetchone()
    if found is None:
        raise CorruptDataError(file, "the meta row is missing")
    if found[0] != FORMAT_VERSION:
        raise StorageError(f"{file} has storage format version {found[0]!r}; "
                           f"this code reads version {FORMAT_VERSION}")
    if missing := _TABLES - tables:
        raise CorruptDataError(file, f"missing tables {sorted(missing)}")
    return found[0], found[1], found[2]


def _file_sizes(file: Path) -> tuple[tuple[str, int], ...]:
    sizes = []
    for suffix in _FILE_SUFFIXES:
        companion = file.with_name(file.name + suffix)
        try:
            sizes.append((companion.name, companion.stat().st_size))
        except FileNotFoundError:  # the WAL and its index vanish when the node closes
            continue
    return tuple(sizes)


# --- verifying ----------------------------------------------------------------------------------


def _restored_snapshot(
    snapshot: Snapshot | None, file: Path
) -> tuple[SnapshotInfo | None, AuctionState]:
    """The snapshot's position and the auction state restored from it (empty without one)."""
    # Events are never drained here: keep one at most instead of the node's 100,000.
    state = AuctionState(max_pending_events=1)
    if snapshot is None:
        return None, state
    index = snapshot.meta.index
    try:
        state.restore(snapshot.data)
    except InvalidSnapshot as exc:
        raise CorruptDataError(file, f"the snapshot does not restore: {exc}", index) from None
    if state.applied_index > index:
        problem = f"the snapshot's state was applied through {state.applied_index}"
        raise CorruptDataError(file, problem, index)
    return SnapshotInfo(index, snapshot.meta.term, len(snapshot.data)), state


def _apply_committed(entries: list[Entry], commit: int, state: AuctionState) -> int:
    """Apply the committed commands to `state` (NOOPs skipped); returns how many."""
    applied = 0
    for entry in entries:
        if entry.index <= commit and entry.kind == EntryKind.COMMAND:
            # Bad payloads get an "invalid" reply and change nothing, exactly as on the node.
            state.apply(entry.index, entry.term, entry.data)
            applied += 1
    return applied
