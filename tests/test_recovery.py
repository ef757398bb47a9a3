"""Durability and recovery end to end, on real node processes and their data directories.

kill -9 (a follower under load, a follower the leader compacted past, the whole cluster at
random moments), exactly-once across a whole-cluster crash, a restart on a million bids, and
data directories that must be refused: another node's, another cluster's, a corrupt one.
`zauction data inspect` (zauction.tools.datadir) is checked against what the nodes served.

Waits are conditions with deadlines (harness.wait_until); every process is stopped by PID in a
finalizer. Tests without real processes cover the inspector's refusals on offline stores.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import typer
from harness import (
    REPO,
    Bidders,
    Cluster,
    Node,
    Outcome,
    agreed_history,
    assert_acked_present,
    free_ports,
    repo_env,
    running_cluster,
    shows_logs,
    wait_until,
)
from typer.testing import CliRunner

from brokerless.storage import CorruptDataError, Durability, StorageError
from brokerless.storage.sqlite import DB_FILENAME, SqliteStorage, snapshot_crc
from brokerless.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from zauction.auction.commands import MAX_TIMESTAMP_MS, Bid, OpenAuction, Request, encode_request
from zauction.auction.domain import AuctionState
from zauction.cli.console import ExitCode
from zauction.cli.data import register
from zauction.client.client import BidRejected
from zauction.server.node import NodeOptions
from zauction.tools.cluster import START_MARKER
from zauction.tools.datadir import NotADataDirError, inspect_data_dir

SNAPSHOT_EVERY = "50"  # small, so that a few seconds of bidding compacts the log many times
CATCHUP_ENTRIES = "50"  # a short tail behind each snapshot, so a gap of 1000 needs a snapshot
BID_TIMEOUT_S = 1.5  # bids in flight at a kill give up soon, with an unknown outcome
AGREE_DEADLINE_S = 20.0  # for nodes that restarted or caught up to apply the same index


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    node_args = ("--snapshot-every", SNAPSHOT_EVERY, "--catchup-entries", CATCHUP_ENTRIES)
    with running_cluster(tmp_path, size=3, node_args=node_args) as nodes:
        yield nodes


def bidding(servers: list[str], threads: int = 3, amounts: Iterator[int] | None = None) -> Bidders:
    """Bidders with a short client timeout (BID_TIMEOUT_S)."""
    return Bidders(servers, threads, timeout=BID_TIMEOUT_S, amounts=amounts,
                   stop_deadline_s=BID_TIMEOUT_S + 10.0)


def log_since_last_start(cluster: Cluster, addr: str) -> str:
    return cluster.log_of(addr).rsplit(START_MARKER, 1)[-1]


# --- a follower killed under load ---------------------------------------------------------------


@pytest.mark.processes
@pytest.mark.timeout(60)
@shows_logs
def test_follower_killed_under_load_catches_up_and_agrees(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = cluster.others(leader)[0]
    with bidding(list(cluster.nodes), threads=3) as load:
        load.wait_acked(20, deadline_s=15)
        cluster.kill(follower, signal.SIGKILL)
        load.wait_acked(60, deadline_s=15)  # the two others commit without it
        cluster.restart(follower)
        target = cluster.status(leader)["commit_index"]
        # It catches up while the load goes on, not only once the cluster is idle.
        wait_until(lambda: cluster.status(follower).get("applied_index", 0) >= target,
                   20.0, f"{follower} to apply the leader's commit {target}", cluster.explain)
        load.wait_acked(len(load.acked()) + 10, deadline_s=15)
    history = agreed_history(cluster, list(cluster.nodes), AGREE_DEADLINE_S)
    assert_acked_present(history, load.outcomes)
    assert len(history) >= 70
    # The inspector reads the running follower's store; its durable commit may trail by the
    # last few entries, so what it shows is a prefix of what the node serves.
    report = inspect_data_dir(cluster.nodes[follower].data_dir)
    assert report.node_id == follower
    (shown,) = [a for a in report.auctions if a["auction"] == "default"]
    assert 0 < shown["bids"] <= len(history)
    assert shown["highest"]["amount"] == history[shown["bids"] - 1]["amount"]


# --- a follower the leader compacted past gets a snapshot -----------------------------------------


@pytest.mark.processes
@pytest.mark.timeout(60)
@shows_logs
def test_follower_behind_the_leaders_snapshot_installs_it(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = cluster.others(leader)[0]
    old_last = cluster.status(follower)["last_index"]
    cluster.kill(follower, signal.SIGKILL)
    # Far past it: the appends the leader sent to the dead follower stay queued in its ZeroMQ
    # socket (up to max_inflight of them) and reach the restarted process, so a short gap is
    # bridged by the log alone.
    gap = 1000
    with bidding(cluster.others(follower), threads=4) as load:
        wait_until(lambda: cluster.status(leader)["snapshot_index"] > old_last + gap, 30.0,
                   "the leader to compact far past the dead follower's log", cluster.explain)
    cluster.restart(follower)
    history = agreed_history(cluster, list(cluster.nodes), AGREE_DEADLINE_S)
    installed = [int(line.rsplit(" ", 1)[-1]) for line in
                 log_since_last_start(cluster, follower).splitlines()
                 if "installed snapshot at index" in line]
    assert installed and installed[0] > old_last, f"no snapshot installed past {old_last}"
    assert cluster.status(follower)["snapshot_index"] > old_last
    assert_acked_present(history, load.outcomes)
    print(f"SNAPSHOT follower last index {old_last} before the kill; installed {installed}")


# --- the whole cluster killed at random moments -------------------------------------------------


@pytest.mark.processes
@pytest.mark.timeout(90)
@shows_logs
def test_every_acked_bid_survives_three_whole_cluster_kill_9s(cluster: Cluster) -> None:
    seed = random.randrange(2**32)
    print(f"KILL-ALL seed {seed}")
    rng = random.Random(seed)
    amounts, outcomes = itertools.count(1), []
    addrs = list(cluster.nodes)
    for round_no in range(3):
        with bidding(addrs, threads=3, amounts=amounts) as load:
            load.wait_acked(rng.randint(5, 60), deadline_s=20)  # a random moment in the stream
            for addr in rng.sample(addrs, len(addrs)):
                cluster.kill(addr, signal.SIGKILL)
        outcomes += load.outcomes
        for addr in addrs:
            cluster.restart(addr)
        cluster.wait_for_leader()
        history = agreed_history(cluster, addrs, AGREE_DEADLINE_S)
        assert_acked_present(history, outcomes)
        print(f"KILL-ALL round {round_no}: {len(load.acked())} acked, history {len(history)}")
    assert len(history) >= len([o for o in outcomes if o.verdict == "ok"]) >= 15


# --- exactly-once across a whole-cluster crash ----------------------------------------------------


def crash_and_restart(cluster: Cluster) -> None:
    for addr in cluster.nodes:
        cluster.kill(addr, signal.SIGKILL)
    for addr in cluster.nodes:
        cluster.restart(addr)
    cluster.wait_for_leader()


def retry(cluster: Cluster, client_id: str, seq: int, amount: int) -> dict:
    """The same write again: same client id, same seq, same bid."""
    client = cluster.client()
    return client.call("bid", client=client_id, seq=seq, auction="default", bidder=client_id,
                       amount=amount)


@pytest.mark.processes
@pytest.mark.timeout(60)
@shows_logs
def test_a_retry_after_a_whole_cluster_crash_gets_the_stored_reply(cluster: Cluster) -> None:
    alice = cluster.client(client_id="alice")
    first = alice.bid(100, "alice")  # seq 1: still in the log at the crash
    crash_and_restart(cluster)
    assert retry(cluster, "alice", 1, 100) == first
    second = alice.bid(200, "alice")  # seq 2: will be inside a snapshot at the crash
    others = cluster.client()
    for amount in range(201, 201 + 2 * int(SNAPSHOT_EVERY)):
        others.bid(amount, "bob")
    history = agreed_history(cluster, list(cluster.nodes), AGREE_DEADLINE_S)
    (index,) = [h["index"] for h in history if h["bidder"] == "alice" and h["amount"] == 200]
    # Snapshots are written in the background: wait until every node's covers the bid.
    wait_until(lambda: all(s["snapshot_index"] > index for s in cluster.statuses().values()),
               10.0, f"every node to snapshot past index {index}", cluster.explain)
    crash_and_restart(cluster)
    # The stored reply (high 200), not a second judgement (which would be below_increment).
    assert retry(cluster, "alice", 2, 200) == second
    with pytest.raises(BidRejected) as stale:
        retry(cluster, "alice", 1, 100)
    assert stale.value.reason == "stale_request"
    history = agreed_history(cluster, list(cluster.nodes), AGREE_DEADLINE_S)
    alices = [(h["amount"]) for h in history if h["bidder"] == "alice"]
    assert alices == [100, 200], "a retried bid was applied twice"


# --- a restart on a million bids ------------------------------------------------------------------

BIG_BIDS = 1_000_000
BIG_TAIL = 400  # log entries after the snapshot
BIG_CLIENTS = 1000


@dataclass(frozen=True, slots=True)
class BigStore:
    db: Path  # a raft.db with no node id yet: the node that opens it first claims it
    expected: dict  # result("default") once every entry of the log is applied
    last_index: int


def bid_payload(n: int) -> bytes:
    """The n-th bid (n >= 1): client c<n % BIG_CLIENTS>, whose seq counts its own bids."""
    client = f"c{n % BIG_CLIENTS}"
    request = Request(client, n // BIG_CLIENTS + 1, 1_000 + n, Bid("default", client, n))
    return encode_request(request)


def build_big_store(directory: Path) -> BigStore:
    """A snapshot of BIG_BIDS bids plus a tail: committed bids of term 1, a NOOP of term 2,
    then bids of term 2 of which the last half is not committed yet."""
    state = AuctionState(max_pending_events=1)
    spec = OpenAuction("default", "a big one", 1, 1, 0, MAX_TIMESTAMP_MS)
    state.apply(1, 1, encode_request(Request("", 0, 0, spec)))
    for n in range(1, BIG_BIDS + 1):
        state.apply(n + 1, 1, bid_payload(n))
    snap_index = BIG_BIDS + 1
    snapshot = Snapshot(SnapshotMeta(snap_index, 1), state.snapshot())
    half = BIG_TAIL // 2
    tail = [Entry(1, snap_index + i, bid_payload(BIG_BIDS + i)) for i in range(1, half)]
    tail.append(Entry(2, snap_index + half, b"", EntryKind.NOOP))
    tail += [Entry(2, snap_index + i, bid_payload(BIG_BIDS + i)) for i in range(half + 1,
                                                                               BIG_TAIL + 1)]
    store = SqliteStorage(directory)
    try:
        store.save(HardState(2, None, snap_index), [], snapshot)
        store.save(HardState(2, None, snap_index + BIG_TAIL - half // 2), tail)
    finally:
        store.close()
    for entry in tail:
        if entry.kind == EntryKind.COMMAND:
            state.apply(entry.index, entry.term, entry.data)
    return BigStore(directory / DB_FILENAME, state.result("default"), tail[-1].index)


def big_store_key() -> str:
    """Changes whenever what the big store is made of changes: the code or this recipe."""
    digest = hashlib.sha256(repr((BIG_BIDS, BIG_TAIL, BIG_CLIENTS)).encode())
    for source in ("zauction/auction/domain.py", "zauction/auction/commands.py", "brokerless/storage/interface.py",
                   "brokerless/storage/sqlite.py"):
        digest.update((REPO / source).read_bytes())
    for function in (build_big_store, bid_payload):
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def big_store(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> BigStore:
    """Built once (about 20 s, more on a loaded machine) and kept in pytest's cache, keyed by
    the code it depends on, so that later runs only copy it."""
    cache = getattr(pytestconfig, "cache", None)
    if cache is None:  # -p no:cacheprovider
        return build_big_store(tmp_path_factory.mktemp("big"))
    home = cache.mkdir("zauction-big-store") / big_store_key()
    if not (home / "expected.json").exists():
        built_at = time.monotonic()
        big = build_big_store(tmp_path_factory.mktemp("big"))
        print(f"BIG store built in {time.monotonic() - built_at:.1f}s")
        staging = home.with_name(f"{home.name}.{os.getpid()}.tmp")  # same file system
        staging.mkdir()
        shutil.copyfile(big.db, staging / DB_FILENAME)
        doc = {"expected": big.expected, "last_index": big.last_index}
        (staging / "expected.json").write_text(json.dumps(doc))
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)  # atomic: a concurrent run sees all of it or nothing
    doc = json.loads((home / "expected.json").read_text())
    return BigStore(home / DB_FILENAME, doc["expected"], doc["last_index"])


def seeded_single_node(workdir: Path, big: BigStore, *node_args: str) -> Cluster:
    """A one-node cluster whose data directory starts as a copy of the big store."""

    def seed(node: Node) -> None:
        shutil.copyfile(big.db, node.data_dir / DB_FILENAME)

    return Cluster(workdir, size=1, prepare=seed, node_args=node_args)


def settled(cluster: Cluster, addr: str) -> dict | None:
    """The node's status once it leads and applied == commit == last index."""
    s = cluster.status(addr)
    done = s["role"] == "leader" and s["applied_index"] == s["commit_index"] == s["last_index"]
    return s if done else None


@pytest.mark.processes
@pytest.mark.timeout(90)
def test_restart_on_a_million_bids(big_store: BigStore, tmp_path: Path,
                                   record_property) -> None:
    big = big_store
    with seeded_single_node(tmp_path, big) as one:
        started = time.monotonic()
        one.start(ready_deadline_s=40)
        (addr,) = one.nodes
        status = wait_until(lambda: settled(one, addr), 40, "applied == commit == last index",
                            one.explain)
        restart_s = time.monotonic() - started
        result = one.client([addr], timeout=20).result()
    record_property("restart_1m_bids_s", round(restart_s, 2))
    print(f"RESTART on {BIG_BIDS + BIG_TAIL} bids: {restart_s:.2f}s to applied == commit == "
          f"last index ({status['last_index']})")
    assert status["last_index"] == big.last_index + 1  # the new leader's NOOP
    assert status["snapshot_index"] == BIG_BIDS + 1
    assert result == big.expected
    assert result["bids"] == BIG_BIDS + BIG_TAIL - 1  # every bid but the NOOP's slot


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def kill_orphans(pids: list[int]) -> None:
    """End snapshot children left behind by a killed node (checked to be ours, by PID)."""
    for pid in pids:
        try:
            if b"zauction\0node\0" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            continue


@pytest.mark.processes
@pytest.mark.timeout(90)
def test_restart_right_after_kill_9_during_a_forked_snapshot(big_store: BigStore,
                                                             tmp_path: Path) -> None:
    orphans: list[int] = []
    try:
        with seeded_single_node(tmp_path, big_store, "--snapshot-every", "100") as one:
            one.start(ready_deadline_s=40)
            (addr,) = one.nodes
            pid = one.nodes[addr].proc.pid
            # The tail past the snapshot is longer than 100 entries: it snapshots once applied.
            orphans = wait_until(lambda: child_pids(pid), 30, "the node to fork a snapshot child")
            one.kill(addr, signal.SIGKILL)
            one.restart(addr, ready_deadline_s=40)
            wait_until(lambda: settled(one, addr), 40, "the restarted node to settle",
                       one.explain)
            assert one.client([addr], timeout=20).result() == big_store.expected
    finally:
        kill_orphans(orphans)  # after the node is stopped: it can fork no more


# --- data directories that must be refused ---------------------------------------------------------


def run_zauction(*args: str, deadline_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`python -m zauction ARGS` to completion (killed at the deadline if it does not end)."""
    env = {**repo_env(), "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "zauction", *args], capture_output=True,
                          text=True, timeout=deadline_s, cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL)


def inspect_cli(*args: str) -> tuple[int, str]:
    """`zauction data inspect ARGS` through register(), on an app of its own."""
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `data` a sub-command
    outcome = CliRunner().invoke(app, ["data", "inspect", *args], terminal_width=400)
    return outcome.exit_code, outcome.output


def flip_a_byte_of_a_bid(db: Path) -> int:
    """Change one byte of a committed bid's data, leaving its checksum: returns its index."""
    with sqlite3.connect(db) as conn:
        index, data = conn.execute("SELECT idx, data FROM log WHERE kind = 0 ORDER BY idx DESC "
                                   "LIMIT 1 OFFSET 3").fetchone()
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x01
        conn.execute("UPDATE log SET data = ? WHERE idx = ?", (bytes(flipped), index))
    conn.close()
    return index


@pytest.mark.processes
@pytest.mark.timeout(60)
def test_foreign_and_corrupt_data_directories_are_refused(tmp_path: Path) -> None:
    # Leaving the block stops the node with SIGTERM: it writes its commit index and closes
    # the store.
    with Cluster(tmp_path, size=1) as one:
        one.start()
        one.wait_for_default_auction()
        client = one.client()
        for amount in range(10, 20):
            client.bid(amount, "alice")
        served = client.result()
    (addr,) = one.nodes
    data_dir = one.nodes[addr].data_dir
    report = inspect_data_dir(data_dir)
    cluster_id = NodeOptions(addr, (), data_dir).resolved_cluster_id()
    assert (report.node_id, report.cluster_id) == (addr, cluster_id)
    assert list(report.auctions) == [served]

    stranger = f"127.0.0.1:{free_ports(1)[0]}"
    as_other_node = run_zauction("node", "--addr", stranger, "--data-dir", str(data_dir))
    assert as_other_node.returncode == ExitCode.DATA_DIR, as_other_node.stderr
    assert addr in as_other_node.stderr and stranger in as_other_node.stderr
    other_cluster = NodeOptions(addr, (stranger,), data_dir).resolved_cluster_id()
    in_other_cluster = run_zauction("node", "--addr", addr, "--peers", stranger,
                                    "--data-dir", str(data_dir))
    assert in_other_cluster.returncode == ExitCode.DATA_DIR, in_other_cluster.stderr
    assert cluster_id in in_other_cluster.stderr and other_cluster in in_other_cluster.stderr
    assert inspect_data_dir(data_dir) == report, "a refused start changed the store"

    index = flip_a_byte_of_a_bid(data_dir / DB_FILENAME)
    started = run_zauction("node", "--addr", addr, "--data-dir", str(data_dir))
    assert started.returncode == ExitCode.DATA_DIR, started.stderr
    for words in (str(data_dir / DB_FILENAME), f"at index {index}", "checksum mismatch"):
        assert words in started.stderr, started.stderr
    code, output = inspect_cli(str(data_dir))
    assert code == ExitCode.DATA_DIR
    for words in (str(data_dir / DB_FILENAME), f"at index {index}", "checksum mismatch"):
        assert words in output, output
    with pytest.raises(CorruptDataError) as corrupt:
        inspect_data_dir(data_dir)
    assert corrupt.value.index == index


@pytest.mark.processes
@pytest.mark.timeout(60)
def test_a_snapshot_that_does_not_restore_is_refused_with_exit_5(tmp_path: Path) -> None:
    old_format = msgpack.packb([1, 2, [], []])  # version 1: [version, applied, auctions, sessions]
    small_store(tmp_path, snapshot_data=old_format, ids=None)
    with pytest.raises(CorruptDataError, match="does not restore"):
        inspect_data_dir(tmp_path)
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    started = run_zauction("node", "--addr", addr, "--data-dir", str(tmp_path))
    assert started.returncode == ExitCode.DATA_DIR, started.stderr[-2000:]
    assert str(tmp_path / DB_FILENAME) in started.stderr, started.stderr[-2000:]


# --- the inspector on offline stores (no processes) --------------------------------------------------


def small_store(directory: Path, snapshot_data: bytes | None = None,
                ids: tuple[str, str] | None = ("n1", "k1")) -> list[Entry]:
    """A store with a snapshot at 2 (the default auction open), then bids, a NOOP and a bid
    past the commit index, claimed by `ids` (node, cluster; None: by nobody yet). Returns the
    log entries."""
    state = AuctionState()
    spec = OpenAuction("default", "lamp", 5, 1, 0, MAX_TIMESTAMP_MS)
    state.apply(2, 1, encode_request(Request("", 0, 0, spec)))
    data = state.snapshot() if snapshot_data is None else snapshot_data
    entries = [Entry(1, 3, encode_request(Request("c", 1, 10, Bid("default", "ann", 7)))),
               Entry(2, 4, b"", EntryKind.NOOP),
               Entry(2, 5, encode_request(Request("c", 2, 20, Bid("default", "bo", 9)))),
               Entry(2, 6, encode_request(Request("c", 3, 30, Bid("default", "cy", 12))))]
    if ids is None:
        store = SqliteStorage(directory, Durability.OFF)
    else:
        store = SqliteStorage.open(directory, *ids, Durability.OFF)
    try:
        store.save(HardState(2, None, 2), [], Snapshot(SnapshotMeta(2, 1), data))
        store.save(HardState(2, None, 5), entries)
    finally:
        store.close()
    return entries


def test_inspect_applies_committed_commands_only(tmp_path: Path) -> None:
    small_store(tmp_path)
    report = inspect_data_dir(tmp_path)
    assert (report.node_id, report.cluster_id, report.term, report.vote) == ("n1", "k1", 2, None)
    assert (report.commit, report.first_index, report.last_index) == (5, 3, 6)
    assert report.entry_count == 4 and report.commands_applied == 2  # NOOP skipped, 6 > commit
    assert report.snapshot is not None and report.snapshot.index == 2
    (auction,) = report.auctions
    assert auction["highest"] == {"bidder": "bo", "amount": 9} and auction["bids"] == 2
    code, output = inspect_cli(str(tmp_path), "--json")
    assert code == 0 and '"highest": {"bidder": "bo", "amount": 9}' in output


def test_inspect_refuses_what_is_not_a_data_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADataDirError, match="no such file"):
        inspect_data_dir(tmp_path / "missing")
    with pytest.raises(NotADataDirError, match="has no raft.db"):
        inspect_data_dir(tmp_path)
    (tmp_path / DB_FILENAME).write_bytes(b"")
    with pytest.raises(NotADataDirError, match="not a node's store"):
        inspect_data_dir(tmp_path)
    assert (tmp_path / DB_FILENAME).read_bytes() == b"", "the inspector wrote to the file"
    (tmp_path / DB_FILENAME).write_bytes(b"not sqlite at all " * 100)
    with pytest.raises(CorruptDataError, match="raft.db"):
        inspect_data_dir(tmp_path)
    code, output = inspect_cli(str(tmp_path))
    assert code == ExitCode.DATA_DIR and "raft.db" in output


def test_inspect_reports_a_snapshot_that_does_not_restore(tmp_path: Path) -> None:
    small_store(tmp_path, snapshot_data=b"\x93not an auction state")
    with pytest.raises(CorruptDataError, match="does not restore") as corrupt:
        inspect_data_dir(tmp_path)
    assert corrupt.value.index == 2


def test_inspect_reports_a_snapshot_checksum_mismatch(tmp_path: Path) -> None:
    small_store(tmp_path)
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        index, term, data = conn.execute("SELECT idx, term, data FROM snapshot").fetchone()
        conn.execute("UPDATE snapshot SET data = ?", (data + b"\x00",))
        assert snapshot_crc(index, term, data + b"\x00") != snapshot_crc(index, term, data)
    conn.close()
    with pytest.raises(CorruptDataError, match="snapshot checksum mismatch"):
        inspect_data_dir(tmp_path)


def test_inspect_refuses_a_store_of_another_format(tmp_path: Path) -> None:
    small_store(tmp_path)
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        conn.execute("UPDATE meta SET format_version = 99")
    conn.close()
    with pytest.raises(StorageError, match="format version 99"):
        inspect_data_dir(tmp_path)


# --- the shared check itself (no processes) -----------------------------------------------------


def test_assert_acked_present_catches_lost_rejected_and_invented_bids() -> None:
    def said(bidder: str, amount: int, verdict: str) -> Outcome:
        return Outcome(bidder, amount, 0.0, 0.0, verdict)

    outcomes = [said("a", 1, "ok"), said("b", 2, "rejected"), said("a", 3, "unknown")]
    assert_acked_present([{"bidder": "a", "amount": 1}], outcomes)  # unknown may be absent
    assert_acked_present([{"bidder": "a", "amount": 1}, {"bidder": "a", "amount": 3}], outcomes)
    wrong = {
        "acknowledged bid lost": [{"bidder": "a", "amount": 3}],
        "rejected bid in the history": [{"bidder": "a", "amount": 1},
                                         {"bidder": "b", "amount": 2}],
        "nobody made": [{"bidder": "a", "amount": 1}, {"bidder": "z", "amount": 9}],
        "strictly increasing": [{"bidder": "a", "amount": 3}, {"bidder": "a", "amount": 1}],
    }
    for message, history in wrong.items():
        with pytest.raises(AssertionError, match=message):
            assert_acked_present(history, outcomes)
