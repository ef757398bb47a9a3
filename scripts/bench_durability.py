"""Durability benchmark: millions of bids into a local cluster with snapshots on.

A benchmark, not a test. It starts `python -m zauction node` processes on free ports (through
zauction.tools.cluster, like `zauction cluster up` and the tests), drives
bids with a pipelined client (one DEALER to the leader, `--window` client ids with one write in
flight each, replies matched by rid) and, at each milestone of committed bids, prints:

  * disk bytes of every data directory and RSS of every node (VmRSS from /proc/<pid>/status);
  * the restart time from the latest snapshot: kill -9 every node, start them again, time until
    a leader is agreed and every node has applied == commit == last index (the tail after the
    snapshot is replayed too), and check that no acknowledged bid is missing;
  * committed bids/s since the previous milestone.

Bids go to auctions that close on their own (`--auction-duration`): when a bid comes back
`auction_closed` the next auction is opened, so memory can be watched as auctions end.
Before that, a comparison phase drives `--compare-bids` into fresh clusters with durability
always, batch and off (same node count) and prints committed bids/s for each.

    python scripts/bench_durability.py --nodes 1 --milestones 1000000,5000000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from brokerless.wire import pack  # noqa: E402
from zauction.client.client import AuctionClient, ClientError, endpoint  # noqa: E402
from zauction.protocol import CLIENT_KIND, ErrorCode, decode_reply  # noqa: E402
from zauction.tools import cluster as local  # noqa: E402
from zauction.tools.ports import free_ports  # noqa: E402

READY_DEADLINE_S = 600.0  # a restart on 10M bids restores a large snapshot
STALL_DEADLINE_S = 120.0  # no reply at all for this long: the run is broken
# brokerless.runtime's line: "snapshot at index N (B bytes) in T ms, of which S ms storing it"
SNAPSHOT_LINE = re.compile(r"brokerless\.runtime: snapshot at index \d+ \((\d+) bytes\) in ([\d.]+) ms")
RETRYABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.OUTCOME_UNKNOWN, ErrorCode.TIMEOUT})


class BenchError(Exception):
    """The cluster did not do what the benchmark needs (no leader, a stall, a lost bid)."""


# --- a local cluster of node processes (zauction.tools.cluster) ----------------------------------


def start_nodes(root: Path, size: int, durability: str, snapshot_every: int,
                wrapper: list[str] | None = None,
                node_args: list[str] | None = None) -> local.ClusterHandle:
    """`size` nodes on free ports under `root`; `node_args` are extra `zauction node` options
    (retention caps), `wrapper` scripts/probed_node.py's arguments (a memory probe), if any."""
    return local.start_cluster(
        root, ports=free_ports(size), host="127.0.0.1", auction_duration_ms=3_600_000,
        durability=durability, launcher=probed_launcher(wrapper) if wrapper else
        local.zauction_launcher,
        node_args=["--snapshot-every", str(snapshot_every), "--log-level", "INFO",
                   *(node_args or [])])


def probed_launcher(wrapper: list[str]) -> local.Launcher:
    """scripts/probed_node.py instead of `python -m zauction`; its probe writes next to the
    node's log: <log>.mem."""

    def launcher(node: local.NodeProcess) -> list[str]:
        probe = [arg.replace("{mem}", f"{node.log_file}.mem") for arg in wrapper]
        return [sys.executable, str(REPO / "scripts" / "probed_node.py"), *probe, "--"]

    return launcher


def crash_all(cluster: local.ClusterHandle) -> None:
    """kill -9 every node and the snapshot child it may have forked (a machine crash takes
    both; an orphan child would hold the store's lock until it is done)."""
    for addr in cluster.servers:
        local.kill_node(cluster, addr, with_children=True)


def restart_all(cluster: local.ClusterHandle) -> None:
    for addr in cluster.servers:
        local.restart_node(cluster, addr)


def stop(cluster: local.ClusterHandle) -> None:
    local.stop_cluster(cluster, timeout=30.0)  # a node on a large store takes a while to close


def statuses(cluster: local.ClusterHandle) -> list[dict]:
    with AuctionClient(cluster.servers, attempt_timeout=0.5) as client:
        return client.status()


def wait_settled(cluster: local.ClusterHandle, deadline_s: float = READY_DEADLINE_S) -> str:
    """Until one leader is agreed and every node applied == commit == last index."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for node in local.exited_nodes(cluster):
            raise BenchError(f"{node.addr} exited; see {node.log_file}")
        leader = _settled_leader(statuses(cluster))
        if leader is not None:
            return leader
        time.sleep(0.05)  # polling a condition with a deadline
    raise BenchError(f"the cluster did not settle within {deadline_s:.0f}s")


def find_leader(cluster: local.ClusterHandle, deadline_s: float = 30.0) -> str:
    """The node that says it leads (under load: the nodes need not have settled)."""
    try:
        return local.wait_for_leader(cluster.servers, time.monotonic() + deadline_s, cluster)
    except (local.ClusterError, ClientError) as exc:
        raise BenchError(str(exc)) from None


def rss_bytes(cluster: local.ClusterHandle) -> list[int]:
    return [_vm_rss(n.pid) if n.alive else 0 for n in cluster.nodes]


def disk_bytes(cluster: local.ClusterHandle) -> list[int]:
    return [sum(f.stat().st_size for f in n.data_dir.iterdir() if f.is_file())
            for n in cluster.nodes]


def _settled_leader(statuses: list[dict]) -> str | None:
    leaders = {s.get("leader") for s in statuses}
    if len(leaders) != 1 or None in leaders:
        return None
    if any(s.get("role") == "unreachable" for s in statuses):
        return None
    if any(not s["applied_index"] == s["commit_index"] == s["last_index"] for s in statuses):
        return None
    if len({s["last_index"] for s in statuses}) != 1:
        return None
    return leaders.pop()


class PeakMemory(threading.Thread):
    """Samples each node's memory plus that of the snapshot child it may have forked, and keeps
    the peak. PSS (proportional set size), so that pages the child shares copy-on-write with
    its parent are counted once, not twice as the two RSS would."""

    def __init__(self, cluster: local.ClusterHandle, every_s: float = 0.25):
        super().__init__(daemon=True)
        self.cluster, self.every_s = cluster, every_s
        self.peaks = [0] * len(cluster.nodes)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            for i, node in enumerate(self.cluster.nodes):
                if not node.alive:
                    continue
                pids = [node.pid, *local.child_pids(node.pid)]
                self.peaks[i] = max(self.peaks[i], sum(_pss(pid) for pid in pids))

    def take(self) -> list[int]:
        """The peaks since the previous take."""
        peaks, self.peaks = self.peaks, [0] * len(self.peaks)
        return peaks

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass  # the child exited between listing and reading
    return 0


def _vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --- the pipelined client ----------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    retried: int = 0

    @property
    def committed(self) -> int:
        """Bids the cluster judged: accepted or rejected, each one a committed log entry."""
        return self.accepted + sum(self.rejected.values())


class Pipeline:
    """One DEALER to the leader; `window` client ids, each with one write in flight.

    When the leader answers not_leader (it lost an election), `moved` is set; the caller finds
    the new leader and calls `reconnect`, which resends every write in flight with its own
    (client, seq): one that was already applied gets its stored reply, not a second bid."""

    def __init__(self, ctx: zmq.Context, leader: str, window: int, prefix: str):
        self.ctx = ctx
        self.sock = self._connect(leader)
        self.clients = [f"{prefix}-{i}" for i in range(window)]
        self.seqs = [0] * window
        self.idle = list(range(window))
        self.in_flight: dict[int, tuple[int, dict]] = {}  # rid -> (client index, request)
        self.rids = itertools.count(1)
        self.moved = False

    def _connect(self, leader: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # never drop or block: the window bounds the queue
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(endpoint(leader))
        return sock

    def reconnect(self, leader: str, tally: Tally) -> None:
        self.sock.close(linger=0)
        self.sock, self.moved = self._connect(leader), False
        pending = list(self.in_flight.values())
        self.in_flight.clear()
        for client, request in pending:
            tally.retried += 1
            self._send(client, request)

    def send_bid(self, auction: str, amount: int) -> None:
        client = self.idle.pop()
        self.seqs[client] += 1
        name = self.clients[client]
        self._send(client, {"op": "bid", "client": name, "seq": self.seqs[client],
                            "auction": auction, "bidder": name, "amount": amount})

    def _send(self, client: int, request: dict) -> None:
        rid = next(self.rids)
        self.in_flight[rid] = (client, request)
        self.sock.send_multipart([CLIENT_KIND, pack({**request, "rid": rid})])

    def replies(self, timeout_ms: int, tally: Tally) -> list[dict]:
        """Judged bids' replies; a retryable error is resent with the same (client, seq)."""
        judged = []
        if not self.sock.poll(timeout_ms):
            return judged
        while self.sock.poll(0):
            _, payload = self.sock.recv_multipart()
            reply = decode_reply(payload)
            client, request = self.in_flight.pop(reply.get("rid"), (None, None))
            if client is None:
                continue
            if _judged(reply):
                self.idle.append(client)
                judged.append(reply)
            elif reply.get("error") in RETRYABLE:
                tally.retried += 1
                self._send(client, request)
            elif reply.get("error") == ErrorCode.NOT_LEADER:
                self.in_flight[next(self.rids)] = (client, request)  # resent by reconnect()
                self.moved = True
            else:
                raise BenchError(f"the leader refused a bid: {reply}")
        return judged

    def close(self) -> None:
        self.sock.close(linger=0)


def _judged(reply: dict) -> bool:
    return reply["ok"] or reply.get("error") == ErrorCode.REJECTED


class Auctions:
    """Bids go to one auction at a time; once it closed (a bid says so) the next one opens."""

    def __init__(self, servers: list[str], duration_ms: int):
        self.servers, self.duration_ms = servers, duration_ms
        self.number, self.amount, self.current = 0, 0, ""
        self.opened: list[str] = []
        self.open_next()

    def open_next(self) -> None:
        self.number += 1
        self.current, self.amount = f"bench-{self.number}", 0
        with AuctionClient(self.servers, timeout=60) as client:
            client.open_auction(self.current, duration_ms=self.duration_ms)
        self.opened.append(self.current)

    def next_bid(self) -> tuple[str, int]:
        self.amount += 1
        return self.current, self.amount

    def observe(self, reply: dict) -> None:
        closed = reply.get("reason") == "auction_closed"
        if closed and (reply.get("result") or {}).get("auction") == self.current:
            self.open_next()


def drive(pipe: Pipeline, auctions: Auctions, tally: Tally, until: int,
          find_leader: Callable[[], str]) -> None:
    """Bid until `until` bids were judged in all (accepted or rejected)."""
    sent = tally.committed + len(pipe.in_flight)
    last_reply = time.monotonic()
    while tally.committed < until:
        if pipe.moved:
            pipe.reconnect(find_leader(), tally)
        while pipe.idle and sent < until:
            pipe.send_bid(*auctions.next_bid())
            sent += 1
        replies = pipe.replies(100, tally)
        for reply in replies:
            if reply["ok"]:
                tally.accepted += 1
            else:
                tally.rejected[str(reply.get("reason"))] += 1
            auctions.observe(reply)
        now = time.monotonic()
        if replies:
            last_reply = now
        elif now - last_reply > STALL_DEADLINE_S:
            raise BenchError(f"no reply for {STALL_DEADLINE_S:.0f}s")


# --- phases ------------------------------------------------------------------------------------------


def compare_durability(args: argparse.Namespace, root: Path,
                       ctx: zmq.Context) -> dict[str, list[float]]:
    """Committed bids/s for each durability policy, each time on a fresh cluster. The
    policies take turns, round after round, so that a noisy machine hits them alike."""
    rates: dict[str, list[float]] = {}
    for round_no in range(args.compare_rounds):
        for durability in ("always", "batch", "off"):
            cluster = start_nodes(root / f"compare-{durability}-{round_no}", args.nodes,
                                  durability, args.snapshot_every)
            try:
                leader = wait_settled(cluster, 60)
                rate = _timed_bids(cluster, leader, args, ctx)
            finally:
                stop(cluster)
            rates.setdefault(durability, []).append(rate)
            print(f"durability {durability:6}: {rate:9,.0f} committed bids/s "
                  f"({args.compare_bids:,} bids, {args.nodes} node(s), window {args.window}; "
                  f"load average {os.getloadavg()[0]:.1f})", flush=True)
    return rates


def _timed_bids(cluster: local.ClusterHandle, leader: str, args: argparse.Namespace,
                ctx: zmq.Context) -> float:
    auctions = Auctions(cluster.servers, duration_ms=3_600_000)
    pipe, tally = Pipeline(ctx, leader, args.window, "cmp"), Tally()
    try:
        drive(pipe, auctions, tally, min(2_000, args.compare_bids), lambda: find_leader(cluster))
        started, before = time.monotonic(), tally.committed
        drive(pipe, auctions, tally, args.compare_bids, lambda: find_leader(cluster))
        return (tally.committed - before) / (time.monotonic() - started)
    finally:
        pipe.close()


@dataclass(frozen=True, slots=True)
class Milestone:
    committed: int
    accepted: int
    rate: float  # committed bids/s since the previous milestone
    rss_mb: list[float]  # each node, before the restart
    rss_after_restart_mb: list[float]
    disk_mb: list[float]
    snapshot_index: int
    last_index: int
    auctions_opened: int
    restart_s: float
    snapshots: dict[str, float]
    term: int  # the leader's term before the restart: > 1 means elections happened under load
    retried: int  # writes resent (same client and seq) after an error or a leader change
    load_average: float  # of the machine (1 min) when the milestone was reached: others' CPU
    peak_pss_mb: list[float]  # each node plus its snapshot child, the peak since the last one


def main_run(args: argparse.Namespace, root: Path, ctx: zmq.Context) -> list[Milestone]:
    caps = ["--max-retained-bids", str(args.max_retained_bids)] if args.max_retained_bids else []
    cluster = start_nodes(root / "main", args.nodes, args.durability, args.snapshot_every,
                          node_wrapper(args), caps)
    rows: list[Milestone] = []
    pipe: Pipeline | None = None
    memory = PeakMemory(cluster)
    try:
        memory.start()
        leader = wait_settled(cluster, 60)
        auctions, tally = Auctions(cluster.servers, args.auction_duration_ms), Tally()
        for milestone in args.milestones:
            pipe = Pipeline(ctx, leader, args.window, f"bench{len(rows)}")
            started, before = time.monotonic(), tally.committed
            for target in _rss_points(before, milestone, args.rss_every):
                drive(pipe, auctions, tally, target, lambda: find_leader(cluster))
                if target < milestone:
                    _print_live_rss(cluster, tally, auctions)
            rate = (tally.committed - before) / (time.monotonic() - started)
            pipe.close()
            pipe = None
            peaks = memory.take()
            row, leader = _milestone(cluster, tally, auctions, rate, peaks)
            rows.append(row)
            _print_milestone(row, args.nodes)
    finally:
        if pipe is not None:
            pipe.close()
        if memory.is_alive():
            memory.stop()
        stop(cluster)
    return rows


def node_wrapper(args: argparse.Namespace) -> list[str]:
    """scripts/probed_node.py's arguments, or none when the nodes run as they ship."""
    wrapper = []
    if args.mem_every:
        wrapper += ["--mem-report", "{mem}", "--mem-every", str(args.mem_every)]
        wrapper += ["--trace"] if args.trace else []
    return wrapper


def _rss_points(start: int, milestone: int, every: int) -> list[int]:
    """Where to sample live RSS on the way to `milestone` (the milestone itself last)."""
    if every <= 0:
        return [milestone]
    return [*range(start - start % every + every, milestone, every), milestone]


def _print_live_rss(cluster: local.ClusterHandle, tally: Tally, auctions: Auctions) -> None:
    """The live nodes' RSS, without the restart a milestone does: memory of one process."""
    rss = "/".join(f"{r / 1e6:,.0f}" for r in rss_bytes(cluster))
    print(f"   live at {tally.committed:>11,} bids ({tally.accepted:,} accepted, "
          f"{len(auctions.opened)} auctions): RSS MB per node {rss}", flush=True)


def _milestone(cluster: local.ClusterHandle, tally: Tally, auctions: Auctions, rate: float,
               peaks: list[int]) -> tuple[Milestone, str]:
    """Measure, then kill -9 every node and time the restart; check no accepted bid is lost."""
    load_average = os.getloadavg()[0]
    leader = wait_settled(cluster)
    status = next(s for s in statuses(cluster) if s["addr"] == leader)
    rss, disk = rss_bytes(cluster), disk_bytes(cluster)
    crash_all(cluster)
    started = time.monotonic()
    restart_all(cluster)
    leader = wait_settled(cluster)
    restart_s = time.monotonic() - started
    with AuctionClient([leader], timeout=120) as client:
        stored = sum(a["bids"] for a in client.auctions() if a["auction"] in auctions.opened)
    if stored != tally.accepted:
        raise BenchError(f"{tally.accepted} bids accepted but {stored} after the restart")
    mb = 1 / 1e6
    row = Milestone(tally.committed, tally.accepted, rate, [r * mb for r in rss],
                    [r * mb for r in rss_bytes(cluster)], [d * mb for d in disk],
                    status["snapshot_index"], status["last_index"], len(auctions.opened),
                    restart_s, _snapshot_stats(cluster.nodes[0].log_file), status["term"],
                    tally.retried, load_average, [p * mb for p in peaks])
    return row, leader


def _snapshot_stats(log_path: Path) -> dict[str, float]:
    """From the node's log: how many snapshots, the last one's size, the longest pause."""
    sizes, pauses = [], []
    for line in log_path.read_text(errors="replace").splitlines():
        found = SNAPSHOT_LINE.search(line)
        if found:
            sizes.append(int(found.group(1)))
            pauses.append(float(found.group(2)))
    return {"count": len(sizes), "last_mb": (sizes[-1] / 1e6) if sizes else 0.0,
            "max_snapshot_ms": max(pauses, default=0.0)}


def _print_milestone(row: Milestone, nodes: int) -> None:
    def mbs(values: list[float]) -> str:
        return "/".join(f"{v:,.0f}" for v in values)

    print(f"\n== {row.committed:,} bids committed ({row.accepted:,} accepted, "
          f"{row.auctions_opened} auctions) on {nodes} node(s)", flush=True)
    print(f"   rate since previous milestone: {row.rate:,.0f} committed bids/s "
          f"(term {row.term}, {row.retried} writes resent; machine load average "
          f"{row.load_average:.1f} on {os.cpu_count()} CPUs)")
    print(f"   RSS MB per node: {mbs(row.rss_mb)} (after restart: "
          f"{mbs(row.rss_after_restart_mb)})")
    print(f"   peak memory MB per node, with its forked snapshot child (PSS): "
          f"{mbs(row.peak_pss_mb)}")
    print(f"   disk MB per data dir: {mbs(row.disk_mb)}")
    snaps = row.snapshots
    print(f"   log: snapshot at {row.snapshot_index:,}, last index {row.last_index:,}; "
          f"{snaps['count']:.0f} snapshots so far, last {snaps['last_mb']:.1f} MB, "
          f"longest snapshot took {snaps['max_snapshot_ms']:,.0f} ms")
    print(f"   restart (kill -9, start, until applied == commit == last index): "
          f"{row.restart_s:.2f} s", flush=True)


# --- the command line ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1, help="cluster size (1 or 3)")
    parser.add_argument("--milestones", default="1000000,5000000",
                        help="comma-separated committed-bid counts to measure at")
    parser.add_argument("--durability", default="always", choices=("always", "batch", "off"),
                        help="durability of the main run")
    parser.add_argument("--snapshot-every", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=256, help="client ids, one bid in flight each")
    parser.add_argument("--auction-duration-s", type=float, default=20.0,
                        help="each auction closes this long after it opens")
    parser.add_argument("--compare-bids", type=int, default=100_000,
                        help="bids per durability policy in the comparison (0: skip it)")
    parser.add_argument("--compare-rounds", type=int, default=2,
                        help="each policy is measured this many times, taking turns")
    parser.add_argument("--root", type=Path, default=None, help="keep data here (default: tmp)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--rss-every", type=int, default=0,
                        help="also print the live nodes' RSS every N committed bids (0: only at "
                             "milestones, where the nodes are then restarted)")
    parser.add_argument("--max-retained-bids", type=int, default=0,
                        help="retention cap of the nodes (0: the default, 2,000,000)")
    parser.add_argument("--mem-every", type=float, default=0,
                        help="seconds between memory probes written to <node log>.mem (0: none)")
    parser.add_argument("--trace", action="store_true",
                        help="the memory probe also diffs tracemalloc snapshots (slow)")
    args = parser.parse_args(argv)
    args.milestones = sorted(int(m) for m in args.milestones.split(",") if m.strip())
    args.auction_duration_ms = int(args.auction_duration_s * 1000)
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-durability-"))
    ctx = zmq.Context.instance()
    print(f"bench_durability: {args.nodes} node(s), snapshot every {args.snapshot_every:,}, "
          f"window {args.window}, auctions of {args.auction_duration_s:g}s, data in {root}",
          flush=True)
    try:
        rates = compare_durability(args, root, ctx) if args.compare_bids else {}
        rows = main_run(args, root, ctx)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json is not None:
        doc = {"args": {k: str(v) for k, v in vars(args).items()}, "compare_bids_per_s": rates,
               "milestones": [asdict(row) for row in rows]}
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
