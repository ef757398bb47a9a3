"""Storage: the same semantics from MemoryStorage and SqliteStorage, corruption, crashes."""

from __future__ import annotations

import importlib.util
import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokerless.storage import (
    CorruptDataError,
    Durability,
    IdentityMismatchError,
    MemoryStorage,
    PersistedState,
    Storage,
    StorageError,
)
from brokerless.storage.sqlite import (
    DB_FILENAME,
    TRIM_ROWS_PER_WRITE,
    SqliteStorage,
    db_file,
    describe_store,
    entry_crc,
    hard_state_crc,
    snapshot_crc,
)
from brokerless.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta

REPO = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).with_name("storage_writer.py")


def make_entries(first: int, last: int, term: int = 1, tag: bytes = b"e") -> list[Entry]:
    return [Entry(term, index, tag + str(index).encode()) for index in range(first, last + 1)]


def indexes(state: PersistedState) -> list[int]:
    return [entry.index for entry in state.entries]


class Backend:
    """Opens and reopens one kind of store in a directory, so tests run on both kinds."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind, self.directory = kind, directory
        self.memory = MemoryStorage()

    def open(self) -> Storage:
        if self.kind == "memory":
            self.memory.reopen()
            return self.memory
        return SqliteStorage(self.directory)

    def reopen(self, store: Storage) -> Storage:
        store.close()
        return self.open()


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, tmp_path)


@pytest.fixture
def store(backend: Backend) -> Storage:
    opened = backend.open()
    yield opened
    opened.close()


# ---------------------------------------------------------------------------------------------
# Semantics, on both backends


def test_a_new_store_loads_empty(store: Storage) -> None:
    assert store.load() == PersistedState(HardState(), None, [])


def test_appends_survive_a_reopen(backend: Backend, store: Storage) -> None:
    store.save(HardState(1, "a", 0), make_entries(1, 3))
    store.save(HardState(1, "a", 2), make_entries(4, 5))
    expected = PersistedState(HardState(1, "a", 2), None, make_entries(1, 5))
    assert store.load() == expected
    reopened = backend.reopen(store)
    assert reopened.load() == expected
    reopened.close()


def test_entries_overwrite_a_conflicting_suffix(store: Storage) -> None:
    store.save(HardState(1, None, 2), make_entries(1, 5))
    store.save(HardState(2, None, 2), make_entries(3, 4, term=2, tag=b"new"))
    assert store.load().entries == make_entries(1, 2) + make_entries(3, 4, term=2, tag=b"new")


def test_rewriting_committed_entries_identically_is_accepted(store: Storage) -> None:
    store.save(HardState(1, None, 4), make_entries(1, 5))
    store.save(None, make_entries(2, 6))  # a naive core re-persisting a resent Append
    assert indexes(store.load()) == [1, 2, 3, 4, 5, 6]


def test_changing_a_committed_entry_is_refused(store: Storage) -> None:
    store.save(HardState(1, None, 4), make_entries(1, 5))
    with pytest.raises(StorageError, match="committed"):
        store.save(HardState(2, None, 4), make_entries(4, 4, term=2))
    assert store.load() == PersistedState(HardState(1, None, 4), None, make_entries(1, 5))


@pytest.mark.parametrize(
    ("batch", "problem"),
    [
        (make_entries(5, 6), "gap"),
        ([Entry(1, 4), Entry(1, 6)], "gap inside the batch"),
        ([Entry(1, 4, b"x"), Entry(0, 5)], "lower term"),
        (make_entries(4, 4, term=0), "term 0 < 1"),
    ],
)
def test_a_bad_batch_is_refused_and_changes_nothing(
    backend: Backend, store: Storage, batch: list[Entry], problem: str
) -> None:
    store.save(HardState(1, "a", 1), make_entries(1, 3))
    before = store.load()
    with pytest.raises(StorageError, match=problem):
        store.save(HardState(2, "b", 2), batch)
    assert store.load() == before
    reopened = backend.reopen(store)
    assert reopened.load() == before
    reopened.close()


@pytest.mark.parametrize(
    "bad",
    [
        [Entry(1, 1, "text")],
        [Entry(1, 1, b"x", kind=0)],
        [Entry(1, 0)],
        [Entry(-1, 1)],
        [Entry(1, 2**63)],
        [(1, 1)],
    ],
)
def test_malformed_entries_are_refused(store: Storage, bad: list[object]) -> None:
    with pytest.raises(StorageError):
        store.save(None, bad)  # type: ignore[arg-type]
    assert store.load().entries == []


@pytest.mark.parametrize(
    ("hard_state", "problem"),
    [
        (HardState(1, "a", 0), "term would go back"),
        (HardState(2, "c", 0), "vote for 'b' in term 2"),
        (HardState(2, None, 0), "vote for 'b' in term 2"),
        (HardState(2, "b", 0), "commit would go back"),
        (HardState(2, "b", 4), "beyond the last index"),
        (HardState(-3, "b", 0), "integers >= 0"),
        (HardState(2, "", 1), "non-empty str"),
    ],
)
def test_hard_state_rules(store: Storage, hard_state: HardState, problem: str) -> None:
    store.save(HardState(2, "b", 1), make_entries(1, 3))
    with pytest.raises(StorageError, match=problem):
        store.save(hard_state, [])
    assert store.load().hard_state == HardState(2, "b", 1)
    store.save(HardState(3, "c", 3), [])  # a new term may carry a new vote
    assert store.load().hard_state == HardState(3, "c", 3)


def test_a_matching_snapshot_keeps_the_entries_after_it(store: Storage) -> None:
    store.save(HardState(1, None, 2), make_entries(1, 5))
    snapshot = Snapshot(SnapshotMeta(3, 1), b"state@3")
    store.save(HardState(1, None, 3), [], snapshot)
    assert store.load() == PersistedState(HardState(1, None, 3), snapshot, make_entries(4, 5))


def test_a_conflicting_snapshot_drops_the_whole_log(backend: Backend, store: Storage) -> None:
    store.save(HardState(1, None, 1), make_entries(1, 5))
    snapshot = Snapshot(SnapshotMeta(4, 2), b"state@4")
    store.save(HardState(2, None, 4), make_entries(5, 6, term=2), snapshot)
    expected = PersistedState(HardState(2, None, 4), snapshot, make_entries(5, 6, term=2))
    assert store.load() == expected
    reopened = backend.reopen(store)
    assert reopened.load() == expected
    reopened.close()


def test_a_snapshot_beyond_the_log_sets_the_next_index(store: Storage) -> None:
    store.save(HardState(1, None, 0), make_entries(1, 2))
    store.save(HardState(3, None, 10), [], Snapshot(SnapshotMeta(10, 3), b"s"))
    assert store.load().entries == []
    with pytest.raises(StorageError, match="at or below the snapshot index 10"):
        store.save(None, make_entries(10, 11, term=3))
    with pytest.raises(StorageError, match="gap"):
        store.save(None, make_entries(12, 12, term=3))
    store.save(None, make_entries(11, 11, term=3))
    assert indexes(store.load()) == [11]


def test_a_snapshot_conflicting_with_a_committed_entry_is_refused(store: Storage) -> None:
    store.save(HardState(1, None, 4), make_entries(1, 5))
    with pytest.raises(StorageError, match="conflicts with committed entry 3"):
        store.save(None, [], Snapshot(SnapshotMeta(3, 2), b"s"))
    assert store.load().snapshot is None


def test_installing_a_snapshot_requires_commit_to_reach_it(store: Storage) -> None:
    store.save(HardState(1, None, 1), make_entries(1, 2))
    with pytest.raises(StorageError, match="commit must reach it"):
        store.save(None, [], Snapshot(SnapshotMeta(5, 1), b"s"))
    assert store.load() == PersistedState(HardState(1, None, 1), None, make_entries(1, 2))


def test_compact_drops_entries_through_the_snapshot(backend: Backend, store: Storage) -> None:
    store.save(HardState(1, None, 3), make_entries(1, 5))
    snapshot = Snapshot(SnapshotMeta(3, 1), b"app@3")
    store.compact(snapshot)
    expected = PersistedState(HardState(1, None, 3), snapshot, make_entries(4, 5))
    assert store.load() == expected
    reopened = backend.reopen(store)
    assert reopened.load() == expected
    with pytest.raises(StorageError, match="at or below the snapshot"):
        reopened.save(None, make_entries(3, 4))
    reopened.close()


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        (SnapshotMeta(4, 1), "only 3 is committed"),
        (SnapshotMeta(3, 2), "differs from the stored term 1"),
        (SnapshotMeta(1, 1), "older than the stored one"),
        (SnapshotMeta(0, 0), "index must be >= 1"),
    ],
)
def test_compact_refuses_what_it_cannot_honour(
    store: Storage, meta: SnapshotMeta, problem: str
) -> None:
    store.save(HardState(1, None, 3), make_entries(1, 5))
    store.compact(Snapshot(SnapshotMeta(2, 1), b"app@2"))
    before = store.load()
    with pytest.raises(StorageError, match=problem):
        store.compact(Snapshot(meta, b"x"))
    assert store.load() == before


def test_a_closed_store_refuses_work(store: Storage) -> None:
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.save(None, make_entries(1, 1))
    with pytest.raises(StorageError, match="closed"):
        store.load()


# ---------------------------------------------------------------------------------------------
# MemoryStorage's power-loss model


def test_memory_always_loses_nothing_in_a_crash() -> None:
    memory = MemoryStorage(Durability.ALWAYS)
    memory.save(HardState(1, "a", 1), make_entries(1, 3))
    assert memory.crash() == PersistedState(HardState(1, "a", 1), None, make_entries(1, 3))


@pytest.mark.parametrize("durability", [Durability.BATCH, Durability.OFF])
def test_memory_crash_keeps_only_what_was_synced(durability: Durability) -> None:
    memory = MemoryStorage(durability)
    memory.save(HardState(1, "a", 1), make_entries(1, 3))
    memory.sync()
    synced = memory.load()
    memory.save(HardState(2, "b", 2), make_entries(3, 4, term=2))
    memory.compact(Snapshot(SnapshotMeta(2, 1), b"s"))
    assert memory.crash() == synced
    assert memory.load() == synced
    memory.save(None, make_entries(4, 4))  # usable again after the crash
    assert indexes(memory.load()) == [1, 2, 3, 4]


def test_memory_reopen_keeps_unsynced_writes() -> None:
    memory = MemoryStorage(Durability.OFF)
    memory.save(HardState(1, "a", 1), make_entries(1, 2))
    memory.close()
    assert memory.reopen().entries == make_entries(1, 2)


# ---------------------------------------------------------------------------------------------
# SqliteStorage: files, identity, corruption


def _raw(directory: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(directory / DB_FILENAME)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def _filled(directory: Path) -> None:
    store = SqliteStorage(directory)
    store.save(HardState(1, "a", 3), make_entries(1, 5))
    store.compact(Snapshot(SnapshotMeta(1, 1), b"snapshot-bytes"))
    store.close()


def test_a_flipped_byte_names_the_file_and_the_index(tmp_path: Path) -> None:
    _filled(tmp_path)
    flipped = bytes([b"e3"[0] ^ 0x01]) + b"3"
    _raw(tmp_path, "UPDATE log SET data = ? WHERE idx = 3", (flipped,))
    store = SqliteStorage(tmp_path)
    with pytest.raises(CorruptDataError) as caught:
        store.load()
    store.close()
    assert caught.value.index == 3
    assert str(tmp_path / DB_FILENAME) in str(caught.value)
    assert "at index 3" in str(caught.value) and "checksum" in str(caught.value)


@pytest.mark.parametrize(
    ("sql", "index", "problem"),
    [
        ("UPDATE log SET crc = crc + 1 WHERE idx = 4", 4, "checksum"),
        ("UPDATE log SET term = 7 WHERE idx = 2", 2, "checksum"),
        ("UPDATE log SET kind = 9 WHERE idx = 5", 5, "bad term, kind or data"),
        ("UPDATE log SET data = 'text' WHERE idx = 5", 5, "bad term, kind or data"),
        ("DELETE FROM log WHERE idx = 3", 3, "not contiguous"),
        ("DELETE FROM log WHERE idx = 2", 2, "not contiguous"),
        ("UPDATE snapshot SET data = X'00'", 1, "snapshot checksum"),
        ("UPDATE hard_state SET vote = 'z'", None, "hard_state fails its checksum"),
        ("DELETE FROM hard_state", None, "hard_state row is missing"),
    ],
)
def test_tampered_rows_raise_corrupt_data(
    tmp_path: Path, sql: str, index: int | None, problem: str
) -> None:
    _filled(tmp_path)
    _raw(tmp_path, sql)
    with pytest.raises(CorruptDataError, match=problem) as caught:
        store = SqliteStorage(tmp_path)
        try:
            store.load()
        finally:
            store.close()
    assert caught.value.index == index
    assert caught.value.path == str(tmp_path / DB_FILENAME)


def test_a_commit_outside_the_stored_log_is_corrupt(tmp_path: Path) -> None:
    _filled(tmp_path)  # snapshot at 1, entries 2..5
    _raw(tmp_path, "UPDATE hard_state SET commit_index = 9, crc = ?", (hard_state_crc(1, "a", 9),))
    store = SqliteStorage(tmp_path)
    with pytest.raises(CorruptDataError, match=r"commit 9 outside \[snapshot 1, last 5\]"):
        store.load()
    store.close()


def test_a_garbage_file_is_corrupt_data(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).write_bytes(b"definitely not sqlite " * 200)
    with pytest.raises(CorruptDataError, match="not a database") as caught:
        SqliteStorage(tmp_path)
    assert caught.value.path == str(tmp_path / DB_FILENAME)
    (tmp_path / DB_FILENAME).unlink()  # the refused open released its lock:
    SqliteStorage(tmp_path).close()


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    _raw(tmp_path, "CREATE TABLE bids (id INTEGER)")
    with pytest.raises(StorageError, match="not a brokerless store"):
        SqliteStorage(tmp_path)


def test_a_different_format_version_is_refused(tmp_path: Path) -> None:
    _filled(tmp_path)
    _raw(tmp_path, "UPDATE meta SET format_version = 99")
    with pytest.raises(StorageError, match="format version 99; this code reads version 1"):
        SqliteStorage(tmp_path)


def test_identity_is_recorded_then_enforced(tmp_path: Path) -> None:
    store = SqliteStorage.open(tmp_path, "n1", "auction-a")
    store.save(HardState(1, "n1", 0), make_entries(1, 2))
    store.close()
    for node_id, cluster_id in [("n2", "auction-a"), ("n1", "auction-b")]:
        with pytest.raises(IdentityMismatchError) as caught:
            SqliteStorage.open(tmp_path, node_id, cluster_id)
        message = str(caught.value)
        assert str(tmp_path / DB_FILENAME) in message
        assert all(name in message for name in ("n1", "auction-a", node_id, cluster_id))
    again = SqliteStorage.open(tmp_path, "n1", "auction-a")
    assert again.load().entries == make_entries(1, 2)
    assert again.describe()["node_id"] == "n1"
    again.close()


def test_identity_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="node_id must be a non-empty str"):
        SqliteStorage.open(tmp_path, "", "c")
    assert not (tmp_path / DB_FILENAME).exists()


def test_a_second_open_of_the_same_store_is_refused(tmp_path: Path) -> None:
    first = SqliteStorage(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        SqliteStorage(tmp_path)
    first.close()
    SqliteStorage(tmp_path).close()


def test_paths_name_a_directory_or_a_db_file(tmp_path: Path) -> None:
    assert db_file(tmp_path / "new-dir") == tmp_path / "new-dir" / DB_FILENAME
    assert db_file(tmp_path / "node.db") == tmp_path / "node.db"
    store = SqliteStorage(tmp_path / "a" / "b")
    store.close()
    assert (tmp_path / "a" / "b" / DB_FILENAME).is_file()


def test_describe_reports_without_verifying(tmp_path: Path) -> None:
    store = SqliteStorage.open(tmp_path, "n1", "c1")
    store.save(HardState(2, "n1", 3), make_entries(1, 5))
    store.compact(Snapshot(SnapshotMeta(3, 1), b"12345"))
    expected = {
        "path": str(tmp_path / DB_FILENAME),
        "format_version": 1,
        "node_id": "n1",
        "cluster_id": "c1",
        "hard_state": {"term": 2, "vote": "n1", "commit": 3},
        "first_index": 4,
        "last_index": 5,
        "entry_count": 2,
        "snapshot": {"index": 3, "term": 1, "size": 5},
    }
    assert store.describe() == expected
    assert describe_store(tmp_path) == expected  # read-only, while the store is open
    store.close()
    with pytest.raises(StorageError, match="no such store"):
        describe_store(tmp_path / "missing")


class _FailingConnection:
    """Lets every statement through except executemany, which fails like a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, *args: object) -> sqlite3.Cursor:
        return self._conn.execute(*args)

    def executemany(self, *args: object) -> sqlite3.Cursor:
        raise sqlite3.OperationalError("database or disk is full (simulated)")

    def close(self) -> None:
        self._conn.close()


def test_a_failed_write_rolls_back_and_stops_the_store(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path)
    store.save(HardState(1, None, 0), make_entries(1, 5))
    before = store.load()
    store._conn = _FailingConnection(store._conn)  # type: ignore[assignment]
    with pytest.raises(StorageError, match="disk is full"):
        store.save(HardState(2, None, 0), make_entries(3, 4, term=2))  # truncates, then fails
    with pytest.raises(StorageError, match="earlier write failed"):
        store.save(None, make_entries(6, 6))
    store.close()
    reopened = SqliteStorage(tmp_path)
    assert reopened.load() == before
    reopened.close()


def test_batch_syncs_every_n_saves_or_after_the_interval(tmp_path: Path) -> None:
    now = [0.0]
    store = SqliteStorage(
        tmp_path, Durability.BATCH, batch_ms=100, batch_saves=3, clock=lambda: now[0]
    )
    counts = []
    for index in range(1, 5):
        store.save(None, make_entries(index, index))
        counts.append(store.unsynced_saves)
    assert counts == [1, 2, 0, 1]
    now[0] += 0.2
    store.save(None, make_entries(5, 5))
    assert store.unsynced_saves == 0
    store.save(None, make_entries(6, 6))
    store.sync()
    assert store.unsynced_saves == 0
    store.close()


def test_always_has_nothing_pending_and_off_never_syncs(tmp_path: Path) -> None:
    always = SqliteStorage(tmp_path / "always", Durability.ALWAYS)
    off = SqliteStorage(tmp_path / "off", Durability.OFF)
    for store in (always, off):
        store.save(None, make_entries(1, 2))
        store.save(None, make_entries(3, 3))
        store.sync()
    assert (always.unsynced_saves, off.unsynced_saves) == (0, 2)
    always.close()
    off.close()


# ---------------------------------------------------------------------------------------------
# Crash consistency: kill -9 a writer that uses ALWAYS


def _load_writer_module():
    spec = importlib.util.spec_from_file_location("storage_writer", WRITER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _complete_lines(buffer: bytes) -> list[int]:
    """The indexes of complete lines: a line cut by the kill was not fully printed."""
    return [int(line) for line in buffer.split(b"\n")[:-1]]


def _read_until(proc: subprocess.Popen[bytes], lines: int, deadline: float) -> bytes:
    """Read the writer's stdout until it has printed `lines` lines, or fail at the deadline."""
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while buffer.count(b"\n") < lines:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"writer printed {len(_complete_lines(buffer))}/{lines} lines"
            if selector.select(timeout=remaining):
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"writer exited early with {proc.wait()}"
                buffer += chunk
    return buffer


def _run_and_kill(directory: Path, seed: int, lines: int, stderr_path: Path) -> list[int]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(directory), str(seed)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    try:
        buffer = _read_until(proc, lines, deadline=time.monotonic() + 20)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        buffer += proc.stdout.read()  # what it printed between our last read and the kill
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()
    return _complete_lines(buffer)


@pytest.mark.processes
def test_a_killed_writer_leaves_a_verified_prefix_with_every_acknowledged_entry(
    tmp_path: Path,
) -> None:
    writer = _load_writer_module()
    rng = random.Random(20240611)
    directory = tmp_path / "store"
    acknowledged = 0
    for round_number in range(5):
        lines = rng.randint(1, 200)
        printed = _run_and_kill(directory, round_number, lines, tmp_path / "writer.err")
        assert len(printed) >= lines and printed == list(range(printed[0], printed[-1] + 1))
        acknowledged = printed[-1]
        store = SqliteStorage.open(directory, writer.NODE_ID, writer.CLUSTER_ID)
        state = store.load()  # verifies every CRC and that the log has no gap
        store.close()
        assert indexes(state) == list(range(1, len(state.entries) + 1))
        assert state.entries[-1].index >= acknowledged, f"round {round_number} lost entries"
        assert all(entry.data == writer.payload(entry.index) for entry in state.entries)
        assert acknowledged <= state.hard_state.commit <= state.entries[-1].index


# ---------------------------------------------------------------------------------------------
# Property: MemoryStorage and SqliteStorage agree on every sequence of operations


def _term_at(state: PersistedState, index: int) -> int | None:
    snap = state.snapshot.meta if state.snapshot else SnapshotMeta()
    if index == snap.index:
        return snap.term
    by_index = {entry.index: entry.term for entry in state.entries}
    return by_index.get(index)


def _last(state: PersistedState) -> tuple[int, int]:
    if state.entries:
        return state.entries[-1].index, state.entries[-1].term
    snap = state.snapshot.meta if state.snapshot else SnapshotMeta()
    return snap.index, snap.term


@st.composite
def _hard_states(
    draw: st.DrawFn, state: PersistedState, low: int, high: int, optional: bool = True
) -> HardState | None:
    """Mostly valid: term and commit grow (commit in [low, high]), the vote holds."""
    if optional and draw(st.booleans()):
        return None
    hs = state.hard_state
    term = hs.term + draw(st.integers(0, 1))
    vote = draw(st.sampled_from([hs.vote, hs.vote, None, "a", "b"]))
    return HardState(term, vote, draw(st.integers(low, max(low, high))))


@st.composite
def _appends(draw: st.DrawFn, state: PersistedState) -> tuple[object, ...]:
    snap_index = state.snapshot.meta.index if state.snapshot else 0
    last, _ = _last(state)
    first = draw(st.integers(max(1, snap_index), last + 2))  # may hit the snapshot or a gap
    base = _term_at(state, first - 1) or 1
    count = draw(st.integers(1, 4))
    terms = sorted(draw(st.lists(st.integers(base - 1, base + 2), min_size=count, max_size=count)))
    tag = draw(st.binary(max_size=3))
    kinds = draw(st.lists(st.sampled_from(list(EntryKind)), min_size=count, max_size=count))
    entries = [
        Entry(term, first + i, tag + bytes([i]), kind)
        for i, (term, kind) in enumerate(zip(terms, kinds, strict=True))
    ]
    commit = state.hard_state.commit
    return ("save", draw(_hard_states(state, commit, first + count - 1)), entries, None)


@st.composite
def _snapshots(draw: st.DrawFn, state: PersistedState, ceiling: int) -> Snapshot:
    floor = max(1, state.snapshot.meta.index if state.snapshot else 0)
    index = draw(st.integers(floor, max(floor, ceiling)))
    stored = _term_at(state, index)
    term = draw(st.sampled_from([stored if stored is not None else 1, (stored or 0) + 1]))
    return Snapshot(SnapshotMeta(index, term), draw(st.binary(max_size=8)))


@st.composite
def _operations(draw: st.DrawFn, state: PersistedState) -> tuple[object, ...]:
    """One save or compact, mostly valid, sometimes not: both stores must agree either way."""
    last, _ = _last(state)
    commit = state.hard_state.commit
    choice = draw(st.sampled_from(["append", "append", "install", "compact", "hard"]))
    if choice == "append":
        return draw(_appends(state))
    if choice == "install":
        snapshot = draw(_snapshots(state, last + 3))
        low, high = max(commit, snapshot.meta.index), max(last, snapshot.meta.index)
        return ("save", draw(_hard_states(state, low, high, optional=False)), [], snapshot)
    if choice == "compact":
        return ("compact", draw(_snapshots(state, min(last, commit) + 1)))
    return ("save", draw(_hard_states(state, commit, last, optional=False)), [], None)


def _outcome(store: Storage, operation: tuple[object, ...]) -> str:
    try:
        if operation[0] == "compact":
            store.compact(operation[1])  # type: ignore[arg-type]
        else:
            store.save(*operation[1:])  # type: ignore[arg-type]
    except StorageError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_memory_and_sqlite_agree_on_any_sequence(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as directory:
        memory, sqlite = MemoryStorage(), SqliteStorage(directory, Durability.OFF)
        try:
            for _ in range(data.draw(st.integers(1, 12), label="steps")):
                operation = data.draw(_operations(memory.load()), label="operation")
                assert _outcome(memory, operation) == _outcome(sqlite, operation)
                assert sqlite.load() == memory.load()
        finally:
            sqlite.close()
        reopened = SqliteStorage(directory, Durability.OFF)
        assert reopened.load() == memory.load()
        reopened.close()


def test_checksums_match_the_documented_test_vectors() -> None:
    assert entry_crc(7, 3, 0, b"payload") == 0x659E3FC5
    assert snapshot_crc(7, 3, b"payload") == 0xDE966EB9
    assert hard_state_crc(3, "n1", 7) == 0x9B230F02
    assert hard_state_crc(0, None, 0) == 0xC9EFF1BD


def test_entry_crc_covers_every_field() -> None:
    reference = entry_crc(7, 3, 0, b"payload")
    assert reference == entry_crc(7, 3, 0, b"payload")
    variants = [entry_crc(8, 3, 0, b"payload"), entry_crc(7, 4, 0, b"payload")]
    variants += [entry_crc(7, 3, 1, b"payload"), entry_crc(7, 3, 0, b"payloae")]
    assert reference not in variants


# --- compaction leaves the old rows to later writes --------------------------------------------


def log_rows(path: Path) -> int:
    conn = sqlite3.connect(db_file(path))
    try:
        return conn.execute("SELECT count(*) FROM log").fetchone()[0]
    finally:
        conn.close()


def test_compaction_deletes_the_old_log_a_chunk_per_write_and_load_ignores_the_rest(
        tmp_path: Path) -> None:
    chunk = TRIM_ROWS_PER_WRITE
    total = 3 * chunk + 500
    store = SqliteStorage(tmp_path)
    store.save(HardState(1, "a", total), make_entries(1, total))
    store.compact(Snapshot(SnapshotMeta(total - 10, 1), b"snap"))
    # One transaction deleted at most one chunk: the node loop is not stalled by the rest.
    assert store.leftover_rows == total - 10 - chunk
    state = store.load()
    assert state.snapshot.meta.index == total - 10 and indexes(state) == list(range(total - 9, total + 1))
    store.close()
    reopened = SqliteStorage(tmp_path)  # leftovers survive a restart, and are still ignored
    assert indexes(reopened.load()) == list(range(total - 9, total + 1))
    for n in range(1, 4):
        reopened.save(None, make_entries(total + n, total + n))
    assert reopened.leftover_rows == 0
    assert log_rows(tmp_path) == 13  # the 10 after the snapshot and the 3 new ones
    assert indexes(reopened.load()) == list(range(total - 9, total + 4))
    reopened.close()
