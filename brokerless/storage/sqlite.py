"""Durable storage in one SQLite file (stdlib sqlite3, WAL mode): the default backend.

The on-disk format is specified in docs/storage.md. Every entry, the snapshot and the hard
state carry a CRC32 that `load()` verifies; what does not check out raises CorruptDataError,
it is never skipped. A lock file keeps a second process (or a second open in this one) from
writing the same store.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from brokerless.storage.interface import (
    CorruptDataError,
    Durability,
    IdentityMismatchError,
    LogSummary,
    PersistedState,
    StorageError,
    WritePlan,
    plan_compact,
    plan_save,
)
from brokerless.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta

FORMAT_VERSION = 1
DB_FILENAME = "raft.db"
# The WAL grows to the largest transaction (a snapshot: tens of MB) and SQLite then reuses
# the file at that size forever. With this limit, the first write after a checkpoint that
# restarts the WAL truncates the file back to it. 8 MiB is twice the automatic checkpoint
# threshold (1,000 pages of 4 KiB), so ordinary saves never pay for a truncation.
WAL_SIZE_LIMIT = 8 * 1024 * 1024

_SCHEMA = (
    "CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 0), "
    "format_version INTEGER NOT NULL, cluster_id TEXT, node_id TEXT)",
    "CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 0), term INTEGER NOT NULL, "
    "vote TEXT, commit_index INTEGER NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, kind INTEGER NOT NULL, "
    "data BLOB NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 0), idx INTEGER NOT NULL, "
    "term INTEGER NOT NULL, data BLOB NOT NULL, crc INTEGER NOT NULL)",
)
_TABLES = frozenset({"meta", "hard_state", "log", "snapshot"})
_SYNCHRONOUS = {Durability.ALWAYS: "FULL", Durability.BATCH: "NORMAL", Durability.OFF: "OFF"}
_CORRUPTION_CODES = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_KINDS = frozenset(kind.value for kind in EntryKind)

_INSERT_ENTRY = "INSERT INTO log (idx, term, kind, data, crc) VALUES (?, ?, ?, ?, ?)"
_DELETE_FROM = "DELETE FROM log WHERE idx >= ?"
_DELETE_THROUGH = "DELETE FROM log WHERE idx <= ?"
# Rows at or below the snapshot index are deleted this many per write, not all at once:
# deleting 100,000 rows in one transaction stalled the node loop for ~100 ms (heartbeats late,
# followers elected a new leader under load). Leftover rows are ignored on load.
TRIM_ROWS_PER_WRITE = 2_000
_PUT_SNAPSHOT = "INSERT OR REPLACE INTO snapshot (id, idx, term, data, crc) VALUES (0, ?, ?, ?, ?)"
_PUT_HARD_STATE = "UPDATE hard_state SET term = ?, vote = ?, commit_index = ?, crc = ? WHERE id = 0"

# ---------------------------------------------------------------------------------------------
# Checksums (docs/storage.md gives the exact byte layout)

_POSITION = struct.Struct(">QQ")  # index (or commit), term: unsigned 64-bit big-endian
_KIND = struct.Struct(">B")


def entry_crc(index: int, term: int, kind: int, data: bytes) -> int:
    """CRC32 of index (u64 BE), term (u64 BE), kind (u8), then the data bytes."""
    return zlib.crc32(data, zlib.crc32(_POSITION.pack(index, term) + _KIND.pack(kind)))


def snapshot_crc(index: int, term: int, data: bytes) -> int:
    """CRC32 of index (u64 BE), term (u64 BE), then the snapshot bytes."""
    return zlib.crc32(data, zlib.crc32(_POSITION.pack(index, term)))


def hard_state_crc(term: int, vote: str | None, commit: int) -> int:
    """CRC32 of term (u64 BE), commit (u64 BE), a has-vote byte, then the vote in UTF-8."""
    vote_bytes = b"" if vote is None else vote.encode()
    header = _POSITION.pack(term, commit) + _KIND.pack(vote is not None)
    return zlib.crc32(vote_bytes, zlib.crc32(header))


# ---------------------------------------------------------------------------------------------
# The store


class SqliteStorage:
    """Raft log, hard state and snapshot in `<dir>/raft.db`.

    Not thread-safe: one caller at a time (the runtime's loop). BATCH syncs from within
    `save()`, when `batch_saves` saves or `batch_ms` milliseconds have accumulated, and on
    `sync()` and `close()`; until then a power loss can take the latest saves.
    """

    def __init__(
        self,
        path: str | Path,
        durability: Durability = Durability.ALWAYS,
        *,
        batch_ms: float = 50.0,
        batch_saves: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.durability = Durability(durability)
        self.path = db_file(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._batch_seconds, self._batch_saves, self._clock = batch_ms / 1000, batch_saves, clock
        self._unsynced_saves, self._last_sync = 0, clock()
        self._broken = False
        self._lock_fd = _lock(self.path)
        self._conn: sqlite3.Connection | None = None
        try:
            with _sqlite_errors(self.path):
                self._conn = _connect(self.path, self.durability)
                _create_if_empty(self._conn)
                _check_format(self._conn, self.path)
                self._summary = _read_summary(self._conn, self.path)
                self._trim_low = _lowest_index(self._conn)  # rows below are already gone
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        path: str | Path,
        node_id: str,
        cluster_id: str,
        durability: Durability = Durability.ALWAYS,
        **options: Any,
    ) -> SqliteStorage:
        """Open the store of `node_id` in `cluster_id`; a new store records both ids.

        Raises IdentityMismatchError when the store belongs to another node or cluster.
        """
        for name, value in (("node_id", node_id), ("cluster_id", cluster_id)):
            if type(value) is not str or not value:
                raise StorageError(f"{name} must be a non-empty str, got {value!r}")
        store = cls(path, durability, **options)
        try:
            store._claim(node_id, cluster_id)
        except BaseException:
            store.close()
            raise
        return store

    # -- the Storage protocol -----------------------------------------------------------------

    def load(self) -> PersistedState:
        """Read and verify everything; raise CorruptDataError on any inconsistency."""
        conn = self._open_conn()
        with _sqlite_errors(self.path):
            return read_verified(conn, self.path)

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        self._open_conn()
        if hard_state is None and not entries and snapshot is None:
            return
        self._write(plan_save(self._summary, self._term_at, hard_state, entries, snapshot))

    def compact(self, snapshot: Snapshot) -> None:
        self._open_conn()
        self._write(plan_compact(self._summary, self._term_at, snapshot))

    def close(self) -> None:
        """Sync what BATCH still holds, close the file and release the lock. Idempotent."""
        try:
            batch = self.durability is Durability.BATCH
            if batch and self._conn is not None and not self._broken and self._unsynced_saves:
                self.sync()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = None

    # -- beyond the protocol ------------------------------------------------------------------

    def sync(self) -> None:
        """Under BATCH, make every save so far durable now (a checkpoint fsyncs the WAL)."""
        conn = self._open_conn()
        if self.durability is not Durability.BATCH:
            return  # ALWAYS has nothing pending; OFF never fsyncs
        try:
            with _sqlite_errors(self.path):
                # With synchronous=NORMAL a checkpoint fsyncs the WAL, then the database file.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except StorageError:
            self._broken = True  # a failed fsync leaves durability unknown
            raise
        self._unsynced_saves, self._last_sync = 0, self._clock()

    @property
    def unsynced_saves(self) -> int:
        """Saves a power loss could take right now (0 under ALWAYS; only grows under OFF)."""
        return self._unsynced_saves

    def describe(self) -> dict[str, Any]:
        """Ids, format version, hard state, index range and snapshot meta, unverified."""
        conn = self._open_conn()
        with _sqlite_errors(self.path):
            return _describe(conn, self.path)

    # -- internals ----------------------------------------------------------------------------

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"{self.path}: storage is closed")
        if self._broken:
            raise StorageError(f"{self.path}: an earlier write failed; close and reopen")
        return self._conn

    def _trim_step(self, conn: sqlite3.Connection, trim_through: int) -> None:
        """Delete the next TRIM_ROWS_PER_WRITE rows at or below the snapshot index, if any."""
        if self._trim_low > trim_through:
            return
        upto = min(trim_through, self._trim_low + TRIM_ROWS_PER_WRITE - 1)
        conn.execute(_DELETE_THROUGH, (upto,))
        self._trim_low = upto + 1

    @property
    def leftover_rows(self) -> int:
        """Log rows at or below the snapshot index not deleted yet (ignored on load)."""
        snapshot_index = self._summary.snapshot.index
        with _sqlite_errors(self.path):
            row = self._open_conn().execute(
                "SELECT count(*) FROM log WHERE idx <= ?", (snapshot_index,)).fetchone()
        return row[0]

    def _term_at(self, index: int) -> int | None:
        summary = self._summary
        if index == summary.snapshot.index:
            return summary.snapshot.term
        if index == summary.last_index:
            return summary.last_term
        if not summary.snapshot.index < index < summary.last_index:
            return None
        with _sqlite_errors(self.path):
            row = self._open_conn().execute("SELECT term FROM log WHERE idx = ?", (index,))
            found = row.fetchone()
        return None if found is None else found[0]

    def _write(self, plan: WritePlan) -> None:
        rows = [_entry_row(entry) for entry in plan.entries]
        with self._transaction() as conn:
            if plan.truncate_from is not None:
                conn.execute(_DELETE_FROM, (plan.truncate_from,))
            self._trim_step(conn, plan.after.snapshot.index)
            if plan.snapshot is not None:
                conn.execute(_PUT_SNAPSHOT, _snapshot_row(plan.snapshot))
            if rows:
                conn.executemany(_INSERT_ENTRY, rows)
            if plan.hard_state is not None:
                conn.execute(_PUT_HARD_STATE, _hard_state_row(plan.hard_state))
        self._summary = plan.after
        self._note_saved()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write; any sqlite failure rolls back and marks the store broken."""
        conn = self._open_conn()
        try:
            with _sqlite_errors(self.path):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except StorageError:
            # The cached summary may no longer match the file (think of a failed fsync):
            # refuse further writes rather than build on an unknown state.
            self._broken = True
            raise

    def _note_saved(self) -> None:
        if self.durability is Durability.ALWAYS:
            return  # the COMMIT already fsynced
        self._unsynced_saves += 1
        if self.durability is Durability.OFF:
            return
        due = self._clock() - self._last_sync >= self._batch_seconds
        if due or self._unsynced_saves >= self._batch_saves:
            self.sync()

    def _claim(self, node_id: str, cluster_id: str) -> None:
        conn = self._open_conn()
        with _sqlite_errors(self.path):
            found = conn.execute("SELECT node_id, cluster_id FROM meta WHERE id = 0").fetchone()
        if tuple(found) == (node_id, cluster_id):
            return
        if tuple(found) != (None, None):
            raise IdentityMismatchError(self.path, (node_id, cluster_id), tuple(found))
        with self._transaction() as conn:
            conn.execute(
                "UPDATE meta SET node_id = ?, cluster_id = ? WHERE id = 0", (node_id, cluster_id)
            )


def db_file(path: str | Path) -> Path:
    """The database file for `path`: a directory holds `raft.db`; a `*.db` path is the file."""
    path = Path(path)
    if path.is_dir():
        return path / DB_FILENAME
    if path.is_file() or path.suffix == ".db":
        return path
    return path / DB_FILENAME


def describe_store(path: str | Path) -> dict[str, Any]:
    """`describe()` for an offline inspector: read-only, no lock, creates nothing."""
    file = db_file(path)
    if not file.is_file():
        raise StorageError(f"{file}: no such store")
    with _sqlite_errors(file):
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
        try:
            _check_format(conn, file)
            return _describe(conn, file)
        finally:
            conn.close()


# ---------------------------------------------------------------------------------------------
# Opening


def _lock(file: Path) -> int:
    lock_path = file.with_name(file.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"{file} is in use by another storage (lock {lock_path})") from None
    return fd


def _connect(file: Path, durability: Durability) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per save.
    conn = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"{file}: cannot use WAL mode (journal mode is {mode})")
        conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        if durability is Durability.ALWAYS:
            conn.execute("PRAGMA fullfsync=ON")  # macOS: a real barrier, not just a cache flush
    except BaseException:
        conn.close()
        raise
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _create_if_empty(conn: sqlite3.Connection) -> None:
    if _tables(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO meta (id, format_version) VALUES (0, ?)", (FORMAT_VERSION,))
    conn.execute(
        "INSERT INTO hard_state (id, term, vote, commit_index, crc) VALUES (0, 0, NULL, 0, ?)",
        (hard_state_crc(0, None, 0),),
    )
    conn.execute("COMMIT")


def _check_format(conn: sqlite3.Connection, file: Path) -> None:
    tables = _tables(conn)
    if "meta" not in tables:
        raise StorageError(f"{file} is not a brokerless store (tables: {sorted(tables)})")
    row = conn.execute("SELECT format_version FROM meta WHERE id = 0").fetchone()
    if row is None:
        raise CorruptDataError(file, "the meta row is missing")
    if row[0] != FORMAT_VERSION:
        raise StorageError(
            f"{file} has storage format version {row[0]!r}; this code reads version {FORMAT_VERSION}"
        )
    if missing := _TABLES - tables:
        raise CorruptDataError(file, f"missing tables {sorted(missing)}")


@contextmanager
def _sqlite_errors(file: Path) -> Iterator[None]:
    """Turn sqlite3's exceptions into ours, naming the file."""
    try:
        yield
    except sqlite3.Error as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name in _CORRUPTION_CODES or type(exc) is sqlite3.DatabaseError:
            raise CorruptDataError(file, f"sqlite says: {exc}") from exc
        raise StorageError(f"{file}: sqlite error: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Reading and verifying rows


def _entry_row(entry: Entry) -> tuple[Any, ...]:
    index, term, kind, data = entry.index, entry.term, entry.kind.value, entry.data
    return index, term, kind, data, entry_crc(index, term, kind, data)


def _snapshot_row(snapshot: Snapshot) -> tuple[Any, ...]:
    index, term, data = snapshot.meta.index, snapshot.meta.term, snapshot.data
    return index, term, data, snapshot_crc(index, term, data)


def _hard_state_row(hard_state: HardState) -> tuple[Any, ...]:
    term, vote, commit = hard_state.term, hard_state.vote, hard_state.commit
    return term, vote, commit, hard_state_crc(term, vote, commit)


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _read_summary(conn: sqlite3.Connection, file: Path) -> LogSummary:
    hard_state = _read_hard_state(conn, file)
    row = conn.execute("SELECT idx, term FROM snapshot WHERE id = 0").fetchone()
    snap = SnapshotMeta(*row) if row else SnapshotMeta()
    last = conn.execute("SELECT idx, term FROM log WHERE idx > ? ORDER BY idx DESC LIMIT 1",
                        (snap.index,)).fetchone()
    last_index, last_term = last if last else (snap.index, snap.term)
    return LogSummary(hard_state, snap, last_index, last_term)


def _lowest_index(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT min(idx) FROM log").fetchone()
    return row[0] if row and row[0] is not None else 1


def read_verified(conn: sqlite3.Connection, file: Path) -> PersistedState:
    """Read and verify every row through `conn` (also a read-only connection, for offline
    inspectors); raises CorruptDataError naming `file` on any inconsistency."""
    hard_state = _read_hard_state(conn, file)
    snapshot = _read_snapshot(conn, file)
    first = snapshot.meta.index + 1 if snapshot else 1
    entries = _read_entries(conn, file, first)
    last = entries[-1].index if entries else first - 1
    if not first - 1 <= hard_state.commit <= last:
        problem = f"commit {hard_state.commit} outside [snapshot {first - 1}, last {last}]"
        raise CorruptDataError(file, problem)
    return PersistedState(hard_state, snapshot, entries)


def _read_hard_state(conn: sqlite3.Connection, file: Path) -> HardState:
    row = conn.execute(
        "SELECT term, vote, commit_index, crc FROM hard_state WHERE id = 0"
    ).fetchone()
    if row is None:
        raise CorruptDataError(file, "the hard_state row is missing")
    term, vote, commit, crc = row
    shapes_ok = _is_count(term) and _is_count(commit) and (vote is None or type(vote) is str)
    if not shapes_ok or crc != hard_state_crc(term, vote, commit):
        raise CorruptDataError(file, f"hard_state fails its checksum: {row!r}")
    return HardState(term, vote, commit)


def _read_snapshot(conn: sqlite3.Connection, file: Path) -> Snapshot | None:
    row = conn.execute("SELECT idx, term, data, crc FROM snapshot WHERE id = 0").fetchone()
    if row is None:
        return None
    index, term, data, crc = row
    if not (_is_count(index) and _is_count(term) and type(data) is bytes):
        raise CorruptDataError(file, "snapshot row has wrong column types", index)
    if crc != snapshot_crc(index, term, data):
        raise CorruptDataError(file, f"snapshot checksum mismatch (stored {crc!r})", index)
    return Snapshot(SnapshotMeta(index, term), data)


def _read_entries(conn: sqlite3.Connection, file: Path, first: int) -> list[Entry]:
    """Every log row from `first` on, verified: it must start at `first` and leave no gap.
    Rows below `first` are what a compaction has not deleted yet: covered by the snapshot."""
    entries: list[Entry] = []
    expected = first
    for index, term, kind, data, crc in conn.execute(
        "SELECT idx, term, kind, data, crc FROM log WHERE idx >= ? ORDER BY idx", (first,)
    ):
        if index != expected:
            problem = f"log is not contiguous: expected index {expected}, found {index}"
            raise CorruptDataError(file, problem, expected)
        if not (_is_count(term) and kind in _KINDS and type(data) is bytes):
            raise CorruptDataError(file, f"entry row has a bad term, kind or data: {kind!r}", index)
        if crc != entry_crc(index, term, kind, data):
            raise CorruptDataError(file, f"entry checksum mismatch (stored {crc!r})", index)
        entries.append(Entry(term, index, data, EntryKind(kind)))
        expected += 1
    return entries


def _describe(conn: sqlite3.Connection, file: Path) -> dict[str, Any]:
    version, node_id, cluster_id = conn.execute(
        "SELECT format_version, node_id, cluster_id FROM meta WHERE id = 0"
    ).fetchone()
    term, vote, commit = conn.execute(
        "SELECT term, vote, commit_index FROM hard_state WHERE id = 0"
    ).fetchone()
    snap = conn.execute("SELECT idx, term, length(data) FROM snapshot WHERE id = 0").fetchone()
    first, last, count = conn.execute("SELECT min(idx), max(idx), count(*) FROM log WHERE idx > ?",
                                      (snap[0] if snap else 0,)).fetchone()
    snapshot = None if snap is None else {"index": snap[0], "term": snap[1], "size": snap[2]}
    return {
        "path": str(file),
        "format_version": version,
        "node_id": node_id,
        "cluster_id": cluster_id,
        "hard_state": {"term": term, "vote": vote, "commit": commit},
        "first_index": first,
        "last_index": last if last is not None else (snap[0] if snap else 0),
        "entry_count": count,
        "snapshot": snapshot,
    }
