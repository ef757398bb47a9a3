"""Local clusters: start node processes, find their leader, stop them, and the demo's steps.

`start_cluster` spawns `python -m zauction node ...` once per port, each with its own data
directory and log file under one root, and records them in `<root>/cluster.json` so that
another process (`zauction cluster down`) can stop them later, by PID, after checking the
PID still runs one of our nodes. Nothing here prints: the CLI decides what to show.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zauction.client.client import AuctionClient, BidRejected, ClientError, ClusterUnavailable

CLUSTER_FILE = "cluster.json"
POLL_S = 0.1  # how often waits below re-check their condition
STOP_TIMEOUT_S = 5.0  # SIGTERM, then this long before SIGKILL
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding zauction/


class ClusterError(Exception):
    """A local cluster could not be started, found or stopped as asked."""


@dataclass(frozen=True, slots=True)
class NodeProcess:
    addr: str
    port: int
    pid: int
    data_dir: str
    log_file: str


@dataclass(frozen=True, slots=True)
class ClusterHandle:
    root: Path
    nodes: tuple[NodeProcess, ...]
    # The Popen objects of the nodes this process spawned (empty when read from cluster.json):
    # waiting on them reaps the children instead of leaving zombies.
    procs: dict[int, subprocess.Popen] = field(default_factory=dict, compare=False, repr=False)

    @property
    def servers(self) -> list[str]:
        return [n.addr for n in self.nodes]

    def node(self, addr: str) -> NodeProcess:
        for n in self.nodes:
            if n.addr == addr:
                return n
        raise ClusterError(f"no node {addr} in this cluster")


@dataclass(frozen=True, slots=True)
class StopReport:
    addr: str
    pid: int
    outcome: str  # "stopped", "killed", "not running", "not ours"


# --- clients -----------------------------------------------------------------------------------


def open_client(servers: Sequence[str], timeout: float = 5.0,
                attempt_timeout: float = 0.5) -> AuctionClient:
    """The AuctionClient of the CLI and the demo: one factory, so tests can replace it."""
    return AuctionClient(list(servers), timeout=timeout,
                         attempt_timeout=min(attempt_timeout, timeout))


# --- starting -----------------------------------------------------------------------------------


def start_cluster(root: Path, *, nodes: int = 3, base_port: int = 8001, host: str = "localhost",
                  auction_duration_ms: int = 100_000, durability: str = "always",
                  node_args: Sequence[str] = ()) -> ClusterHandle:
    """Spawn `nodes` node processes on consecutive ports and write `<root>/cluster.json`."""
    if nodes < 1:
        raise ClusterError("a cluster needs at least one node")
    root.mkdir(parents=True, exist_ok=True)
    refuse_if_running(root)
    ports = list(range(base_port, base_port + nodes))
    check_ports_free(host, ports)
    addrs = [f"{host}:{port}" for port in ports]
    started: list[NodeProcess] = []
    procs: dict[int, subprocess.Popen] = {}
    try:
        for port, addr in zip(ports, addrs, strict=True):
            peers = [a for a in addrs if a != addr]
            args = [f"--auction-duration={auction_duration_ms}ms",
                    f"--durability={durability}", *node_args]
            proc, node = _spawn(root, addr, port, peers, args)
            procs[proc.pid] = proc
            started.append(node)
    except OSError as exc:
        stop_cluster(ClusterHandle(root, tuple(started), procs))
        raise ClusterError(f"cannot start a node: {exc}") from exc
    handle = ClusterHandle(root, tuple(started), procs)
    write_cluster_file(handle)
    return handle


def _spawn(root: Path, addr: str, port: int, peers: list[str],
           args: list[str]) -> tuple[subprocess.Popen, NodeProcess]:
    data_dir = root / f"node-{port}"
    log_file = root / f"node-{port}.log"
    cmd = [sys.executable, "-m", "zauction", "node", "--addr", addr, "--peers", ",".join(peers),
           "--data-dir", str(data_dir), *args]
    env = dict(os.environ)
    # The children import this very package, even when it is run from a checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    with open(log_file, "ab") as log:
        # A new session: a Ctrl-C at the terminal reaches only us, and we stop them in order.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                start_new_session=True)
    return proc, NodeProcess(addr, port, proc.pid, str(data_dir), str(log_file))


def check_ports_free(host: str, ports: Sequence[int]) -> None:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # ZeroMQ listens with SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ClusterError(f"port {port} on {host} is not free: {exc.strerror}") from None


def free_port_run(count: int, host: str = "127.0.0.1", start: int = 20000,
                  stop: int = 60000) -> int:
    """The first port of `count` consecutive free ports (for tests and demos)."""
    for base in range(start, stop, count):
        try:
            check_ports_free(host, range(base, base + count))
            return base
        except ClusterError:
            continue
    raise ClusterError(f"no {count} consecutive free ports in [{start}, {stop})")


# --- cluster.json ---------------------------------------------------------------------------------


def write_cluster_file(handle: ClusterHandle) -> Path:
    path = handle.root / CLUSTER_FILE
    doc = {"root": str(handle.root), "servers": handle.servers,
           "nodes": [asdict(n) for n in handle.nodes]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_cluster(root: Path) -> ClusterHandle:
    path = root / CLUSTER_FILE
    try:
        doc = json.loads(path.read_text())
        nodes = tuple(NodeProcess(str(n["addr"]), int(n["port"]), int(n["pid"]),
                                  str(n["data_dir"]), str(n["log_file"])) for n in doc["nodes"])
    except FileNotFoundError:
        raise ClusterError(f"no cluster recorded in {root} ({CLUSTER_FILE} not found)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"{path} is not a valid cluster file: {exc}") from None
    return ClusterHandle(root, nodes)


def refuse_if_running(root: Path) -> None:
    try:
        handle = load_cluster(root)
    except ClusterError:
        return
    alive = [n.addr for n in handle.nodes if is_our_node(n)]
    if alive:
        raise ClusterError(f"a cluster is already running from {root} ({', '.join(alive)}); "
                           "stop it first with `zauction cluster down`")


# --- process checks and stopping --------------------------------------------------------------


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None  # Linux, and the process is gone
    except OSError:
        return None
    found = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                           text=True, check=False)
    return found.stdout.strip() or None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, but someone else's
    return not _is_zombie(pid)


def is_our_node(node: NodeProcess) -> bool:
    """Does `node.pid` still run our node for `node.addr` (and not a recycled PID)?"""
    if not is_alive(node.pid):
        return False
    cmd = _cmdline(node.pid) or ""
    return "zauction" in cmd and " node " in f" {cmd} " and node.addr in cmd


def stop_cluster(handle: ClusterHandle, timeout: float = STOP_TIMEOUT_S) -> list[StopReport]:
    """SIGTERM every live node of ours, wait up to `timeout`, SIGKILL what is left."""
    reports: dict[str, StopReport] = {}
    signalled: list[NodeProcess] = []
    for node in handle.nodes:
        proc = handle.procs.get(node.pid)
        if (proc.poll() is not None) if proc else not is_alive(node.pid):
            reports[node.addr] = StopReport(node.addr, node.pid, "not running")
        elif proc is None and not is_our_node(node):
            reports[node.addr] = StopReport(node.addr, node.pid, "not ours")
        else:
            _signal(node.pid, signal.SIGTERM)
            signalled.append(node)
    deadline = time.monotonic() + timeout
    for node in signalled:
        exited = _wait_exit(node.pid, handle.procs.get(node.pid), deadline)
        if not exited:
            _signal(node.pid, signal.SIGKILL)
            _wait_exit(node.pid, handle.procs.get(node.pid), time.monotonic() + timeout)
        reports[node.addr] = StopReport(node.addr, node.pid, "stopped" if exited else "killed")
    return [reports[n.addr] for n in handle.nodes]


def kill_node(handle: ClusterHandle, addr: str, timeout: float = STOP_TIMEOUT_S) -> NodeProcess:
    """SIGKILL one node (a crash: nothing unsynced survives) and wait until it is gone."""
    node = handle.node(addr)
    _signal(node.pid, signal.SIGKILL)
    if not _wait_exit(node.pid, handle.procs.get(node.pid), time.monotonic() + timeout):
        raise ClusterError(f"node {addr} (pid {node.pid}) survived SIGKILL")
    return node


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_exit(pid: int, proc: subprocess.Popen | None, deadline: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
    while is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)  # not our child: there is nothing to block on but the clock
    return True


def exited_nodes(handle: ClusterHandle) -> list[tuple[NodeProcess, int]]:
    """Nodes this process spawned that have already exited, with their exit codes."""
    out = []
    for node in handle.nodes:
        proc = handle.procs.get(node.pid)
        if proc is not None and proc.poll() is not None:
            out.append((node, proc.returncode))
    return out


def log_tail(node: NodeProcess, lines: int = 5) -> str:
    try:
        text = Path(node.log_file).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt, so the same cleanup runs for both."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- waiting ---------------------------------------------------------------------------------------


def leader_of(statuses: Sequence[dict]) -> str | None:
    """The leader of the highest term any reachable node reports, if one says it leads."""
    leaders = [s for s in statuses if s.get("role") == "leader"]
    if not leaders:
        return None
    return max(leaders, key=lambda s: s.get("term", -1))["addr"]


def wait_for_leader(servers: Sequence[str], deadline: float,
                    handle: ClusterHandle | None = None) -> str:
    """Poll the nodes until one reports itself leader; `deadline` is a time.monotonic() value.

    With a `handle`, a node that exits meanwhile fails the wait at once, with its log's tail.
    """
    client = open_client(servers, timeout=1.0, attempt_timeout=0.3)
    try:
        while True:
            _check_alive(handle)
            leader = leader_of(client.status())
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise ClusterUnavailable(f"no leader elected among {', '.join(servers)} in time")
            time.sleep(POLL_S)  # a bounded poll of remote state: there is no event to wait on
    finally:
        client.close()


def wait_for_auction(client: AuctionClient, auction: str, deadline: float) -> dict:
    """Wait until `auction` exists (a new leader opens the default one) and return its result."""
    while True:
        try:
            return client.result(auction)
        except ClientError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(POLL_S)


def _check_alive(handle: ClusterHandle | None) -> None:
    if handle is None:
        return
    for node, code in exited_nodes(handle):
        raise ClusterError(f"node {node.addr} exited with code {code}; its log "
                           f"({node.log_file}) ends with:\n{log_tail(node)}")


# --- the demo's steps ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BidOutcome:
    bidder: str
    amount: int
    accepted: bool
    reason: str | None
    seconds: float  # from sending to the cluster's answer


def place_bid(client: AuctionClient, auction: str, bidder: str, amount: int) -> BidOutcome:
    started = time.monotonic()
    try:
        client.bid(amount, bidder, auction)
        accepted, reason = True, None
    except BidRejected as exc:
        accepted, reason = False, exc.reason
    return BidOutcome(bidder, amount, accepted, reason, time.monotonic() - started)


def place_bids(client: AuctionClient, auction: str, bidders: Sequence[str], count: int,
               next_amount: Callable[[], int],
               on_bid: Callable[[BidOutcome], None] = lambda _: None) -> list[BidOutcome]:
    """`count` bids, bidders in turn, each for `next_amount()`."""
    outcomes = []
    for i in range(count):
        outcome = place_bid(client, auction, bidders[i % len(bidders)], next_amount())
        outcomes.append(outcome)
        on_bid(outcome)
    return outcomes


def read_everywhere(servers: Sequence[str], auction: str, expected: dict,
                    deadline: float) -> dict[str, dict | None]:
    """Each node's own (stale, local) result, re-read until it matches `expected` or the
    deadline passes: a follower may apply the last entries a moment after the leader."""
    results: dict[str, dict | None] = {}
    for server in servers:
        client = open_client([server], timeout=1.0, attempt_timeout=0.5)
        try:
            results[server] = _read_until(client, auction, expected, deadline)
        finally:
            client.close()
    return results


def _read_until(client: AuctionClient, auction: str, expected: dict,
                deadline: float) -> dict | None:
    seen = None
    while True:
        try:
            seen = client.result(auction, stale=True)
        except ClientError:
            seen = None
        if seen == expected or time.monotonic() >= deadline:
            return seen
        time.sleep(POLL_S)  # bounded poll until the follower has applied as far
