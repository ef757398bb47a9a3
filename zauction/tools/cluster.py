"""Local clusters: start node processes, fault them, wait for a leader, stop them.

The one API with which `zauction cluster up`, `zauction demo`, the tests (tests/harness.py)
and the benchmark scripts run nodes on this machine. A cluster is a ClusterHandle: a root
directory and one NodeProcess per node (address, data directory, log file, command line, and
the PID of its latest start). Every node runs in a session of its own with its output
appended to its log file, is signalled by its PID only, and the handle is recorded in
`<root>/cluster.json`, so that another process (`zauction cluster down`) can stop it later
after checking that the PID still runs one of our nodes.

    start_cluster          zauction nodes on given ports (PortInUse if one is taken)
    launch                 the same for nodes of any command (the benchmarks' PySyncObj)
    wait_serving           until every node answers (PortTaken: a node could not bind)
    wait_for_leader        until a node leads, by a deadline
    kill_node              SIGKILL (a crash), optionally with the snapshot child it forked
    pause_node/resume_node SIGSTOP / SIGCONT
    restart_node           the same command again, on the same data directory
    stop_cluster           SIGTERM, then SIGKILL after a deadline; one StopReport per node

A node that exits by itself makes the waits fail at once, with the tail of its log; one that
was killed or stopped here does not. Nothing here prints (the CLI decides what to show), and
only the client (zauction.client) talks to the nodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from zauction.client.client import AuctionClient, ClusterUnavailable
from zauction.tools.ports import PortError, check_ports_free
from zauction.tools.ports import free_port_run as free_port_run  # callers that pass base_port

CLUSTER_FILE = "cluster.json"
START_MARKER = "---- starting"  # the line written to a node's log before each of its starts
POLL_S = 0.05  # how often the waits below re-check their condition
STOP_TIMEOUT_S = 5.0  # SIGTERM, then this long before SIGKILL
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding zauction/


class ClusterError(Exception):
    """A local cluster could not be started, found or stopped as asked."""


class PortInUse(ClusterError):
    """A port of the cluster is taken: found so before the start, or a node could not bind."""


class NodeExited(ClusterError):
    """A node's process ended by itself while we waited for the cluster."""

    def __init__(self, node: NodeProcess):
        super().__init__(f"node {node.addr} (pid {node.pid}) exited with code {node.exit_code};"
                         f" its log ({node.log_file}) ends with:\n{log_tail(node)}")
        self.node = node


class PortTaken(NodeExited, PortInUse):
    """The node exited because it could not bind its port (another process took it)."""


# --- handles ------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class NodeProcess:
    """One node: where it listens and keeps its data, how it is run, and its process."""

    addr: str  # HOST:PORT that clients use
    port: int
    pid: int  # of the latest start; 0 before the first
    data_dir: Path
    log_file: Path
    cmd: tuple[str, ...] = ()
    code: Path = PACKAGE_ROOT  # the checkout it runs from (its PYTHONPATH and working dir)
    # Set for nodes this process started (None when read from cluster.json): waiting on it
    # reaps the child instead of leaving a zombie.
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    paused: bool = False  # SIGSTOPped by pause_node
    ended: bool = False  # killed or stopped here: its exit is expected, not a failure

    def __post_init__(self) -> None:
        self.data_dir, self.log_file = Path(self.data_dir), Path(self.log_file)
        self.cmd, self.code = tuple(self.cmd), Path(self.code)

    @property
    def alive(self) -> bool:
        """Its process runs (paused or not)."""
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid > 0 and is_our_node(self)

    @property
    def serving(self) -> bool:
        """Its process runs and is not paused."""
        return self.alive and not self.paused

    @property
    def exit_code(self) -> int | None:
        """How the latest start ended (None: still running, or not started here)."""
        return None if self.proc is None else self.proc.poll()


@dataclass(slots=True, eq=False)
class ClusterHandle:
    root: Path
    nodes: tuple[NodeProcess, ...]

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


# --- clients -------------------------------------------------------------------------------------


def open_client(servers: Sequence[str], timeout: float = 5.0,
                attempt_timeout: float = 0.5) -> AuctionClient:
    """The AuctionClient of the CLI and the waits here: one factory, so tests can replace it."""
    return AuctionClient(list(servers), timeout=timeout,
                         attempt_timeout=min(attempt_timeout, timeout))


# --- commands and starting --------------------------------------------------------------------------

Launcher = Callable[["NodeProcess"], Sequence[str]]


def zauction_launcher(node: NodeProcess) -> Sequence[str]:
    """`python -m zauction`: what runs before `node --addr ...` on a node's command line."""
    return (sys.executable, "-m", "zauction")


def node_command(launcher: Sequence[str], addr: str, peers: Iterable[str], data_dir: Path,
                 node_args: Sequence[str] = ()) -> tuple[str, ...]:
    """The command line of one `zauction node`."""
    return (*launcher, "node", "--addr", addr, "--peers", ",".join(peers),
            "--data-dir", str(data_dir), *node_args)


def plan_cluster(root: Path, ports: Sequence[int], *, host: str = "localhost",
                 node_args: Sequence[str] = (),
                 launcher: Launcher = zauction_launcher) -> ClusterHandle:
    """A handle for zauction nodes on `ports`, none started yet: each node's data directory is
    <root>/node-<port> and its log <root>/node-<port>.log."""
    addrs = [f"{host}:{port}" for port in ports]
    nodes = []
    for port, addr in zip(ports, addrs, strict=True):
        node = NodeProcess(addr, port, 0, root / f"node-{port}", root / f"node-{port}.log")
        peers = [a for a in addrs if a != addr]
        node.cmd = node_command(launcher(node), addr, peers, node.data_dir, node_args)
        nodes.append(node)
    return ClusterHandle(root, tuple(nodes))


def start_cluster(root: Path, *, nodes: int = 3, base_port: int = 8001,
                  ports: Sequence[int] | None = None, host: str = "localhost",
                  auction_duration_ms: int = 100_000, durability: str = "always",
                  node_args: Sequence[str] = (), launcher: Launcher = zauction_launcher,
                  prepare: Callable[[NodeProcess], None] | None = None) -> ClusterHandle:
    """Spawn zauction nodes on `ports` (default: `nodes` consecutive ports from `base_port`)
    and record them in <root>/cluster.json. Refuses ports in use and a root whose recorded
    cluster still runs. Returns at once: wait_serving / wait_for_leader wait for the nodes."""
    ports = list(ports) if ports is not None else list(range(base_port, base_port + nodes))
    if not ports:
        raise ClusterError("a cluster needs at least one node")
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    refuse_if_running(root)
    try:
        check_ports_free(host, ports)
    except PortError as exc:
        raise PortInUse(str(exc)) from None
    args = [f"--auction-duration={auction_duration_ms}ms", f"--durability={durability}",
            *node_args]
    handle = plan_cluster(root, ports, host=host, node_args=args, launcher=launcher)
    return launch(handle, prepare)


def launch(handle: ClusterHandle,
           prepare: Callable[[NodeProcess], None] | None = None) -> ClusterHandle:
    """Start every node of `handle` (its own `cmd`, whatever program that is) and record the
    handle; `prepare(node)` runs first, once its data directory exists (to seed it). If one
    cannot be started, those already started are stopped."""
    handle.root.mkdir(parents=True, exist_ok=True)
    try:
        for node in handle.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            if prepare is not None:
                prepare(node)
            _spawn(node)
        # Inside the try: an interrupt (or a full disk) here must not leave the nodes running
        # with nobody holding their PIDs.
        write_cluster_file(handle)
    except BaseException as exc:
        stop_cluster(handle)
        if isinstance(exc, OSError):
            raise ClusterError(f"cannot start a node: {exc}") from exc
        raise
    return handle


def child_env(code: Path = PACKAGE_ROOT) -> dict[str, str]:
    """This process's environment with `code` first on PYTHONPATH: a child imports that
    checkout of the project, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    return env


def _spawn(node: NodeProcess) -> None:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    node.log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(node.log_file, "ab") as log:
        log.write(f"{START_MARKER} {node.addr}\n".encode())
        log.flush()
        # A new session: a Ctrl-C at the terminal reaches only us, and we stop them in order.
        # An interrupt waits until the child is recorded, so whoever stops us can stop it.
        with deferred_interrupts():
            proc = subprocess.Popen(node.cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=node.code,
                                    env=child_env(node.code), start_new_session=True)
            node.proc, node.pid, node.paused, node.ended = proc, proc.pid, False, False


# --- cluster.json ---------------------------------------------------------------------------------


def write_cluster_file(handle: ClusterHandle) -> Path:
    path = handle.root / CLUSTER_FILE
    doc = {"root": str(handle.root), "servers": handle.servers, "nodes": [
        {"addr": n.addr, "port": n.port, "pid": n.pid, "data_dir": str(n.data_dir),
         "log_file": str(n.log_file), "cmd": list(n.cmd), "code": str(n.code)}
        for n in handle.nodes]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_cluster(root: Path) -> ClusterHandle:
    path = root / CLUSTER_FILE
    try:
        doc = json.loads(path.read_text())
        nodes = tuple(NodeProcess(str(n["addr"]), int(n["port"]), int(n["pid"]),
                                  Path(n["data_dir"]), Path(n["log_file"]),
                                  tuple(n.get("cmd", ())), Path(n.get("code", PACKAGE_ROOT)))
                      for n in doc["nodes"])
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


# --- process checks --------------------------------------------------------------------------------


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
    if pid <= 0:
        return False  # 0 and -1 would mean a whole process group to os.kill
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


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (a node's forked snapshot writer); Linux only."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def exited_nodes(handle: ClusterHandle) -> list[NodeProcess]:
    """Nodes this process started that have exited by themselves (see NodeProcess.exit_code)."""
    return [n for n in handle.nodes if not n.ended and n.exit_code is not None]


def log_tail(node: NodeProcess, lines: int = 5) -> str:
    try:
        text = node.log_file.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def log_since_start(node: NodeProcess) -> str:
    """The node's log since its latest start (see START_MARKER)."""
    try:
        text = node.log_file.read_text(errors="replace")
    except OSError:
        return ""
    return text.rsplit(START_MARKER, 1)[-1]


# --- faults ------------------------------------------------------------------------------------------


def kill_node(handle: ClusterHandle, addr: str, timeout: float = STOP_TIMEOUT_S, *,
              with_children: bool = False) -> NodeProcess:
    """SIGKILL one node (a crash: nothing unsynced survives) and wait until it is gone; a node
    that already died (killed by PID elsewhere) is only reaped. With `with_children`, the
    snapshot writer it may have forked is killed too, as a machine crash would."""
    node = handle.node(addr)
    if node.proc is None and node.pid > 0 and is_alive(node.pid) and not is_our_node(node):
        raise ClusterError(f"pid {node.pid} no longer runs node {addr}: not killing it")
    node.ended = True
    children = child_pids(node.pid) if with_children else []
    _signal(node, signal.SIGKILL)
    if not _wait_exit(node, time.monotonic() + timeout):
        raise ClusterError(f"node {addr} (pid {node.pid}) survived SIGKILL")
    node.paused = False
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return node


def pause_node(handle: ClusterHandle, addr: str) -> NodeProcess:
    """SIGSTOP: the node is frozen (its sockets stay open, it answers nothing)."""
    node = _running(handle, addr)
    _signal(node, signal.SIGSTOP)
    node.paused = True
    return node


def resume_node(handle: ClusterHandle, addr: str) -> NodeProcess:
    """SIGCONT after pause_node."""
    node = _running(handle, addr)
    _signal(node, signal.SIGCONT)
    node.paused = False
    return node


def restart_node(handle: ClusterHandle, addr: str) -> NodeProcess:
    """Start a node that is down again: its command, its address, its data directory."""
    node = handle.node(addr)
    if node.alive:
        raise ClusterError(f"node {addr} (pid {node.pid}) is still running")
    if node.proc is not None:
        node.proc.wait()  # reap the previous process if nobody did
    _spawn(node)
    write_cluster_file(handle)
    return node


def _running(handle: ClusterHandle, addr: str) -> NodeProcess:
    node = handle.node(addr)
    if not node.alive:
        raise ClusterError(f"node {addr} is not running")
    return node


# --- stopping ------------------------------------------------------------------------------------


def stop_cluster(handle: ClusterHandle, timeout: float = STOP_TIMEOUT_S) -> list[StopReport]:
    """SIGTERM every live node of ours, wait up to `timeout`, SIGKILL what is left."""
    return _stop(handle, handle.nodes, timeout)


def stop_node(handle: ClusterHandle, addr: str, timeout: float = STOP_TIMEOUT_S) -> StopReport:
    """stop_cluster for one node."""
    return _stop(handle, [handle.node(addr)], timeout)[0]


def _stop(handle: ClusterHandle, nodes: Sequence[NodeProcess],
          timeout: float) -> list[StopReport]:
    # Another Ctrl-C or SIGTERM while we stop must not cut the stop short (its SIGKILL after
    # the deadline is what ends a node that ignores SIGTERM): see sigterm_as_interrupt.
    with _absorbed_interrupts():
        return _stop_nodes(nodes, timeout)


def _stop_nodes(nodes: Sequence[NodeProcess], timeout: float) -> list[StopReport]:
    reports: dict[str, StopReport] = {}
    signalled: list[NodeProcess] = []
    for node in nodes:
        if not node.pid or ((node.proc.poll() is not None) if node.proc
                            else not is_alive(node.pid)):
            reports[node.addr] = StopReport(node.addr, node.pid, "not running")
        elif node.proc is None and not is_our_node(node):
            reports[node.addr] = StopReport(node.addr, node.pid, "not ours")
        else:
            node.ended = True
            _signal(node, signal.SIGTERM)
            if node.paused:
                _signal(node, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            signalled.append(node)
    deadline = time.monotonic() + timeout
    for node in signalled:
        exited = _wait_exit(node, deadline)
        if not exited:
            _signal(node, signal.SIGKILL)
            _wait_exit(node, time.monotonic() + timeout)
        node.paused = False
        reports[node.addr] = StopReport(node.addr, node.pid, "stopped" if exited else "killed")
    return [reports[n.addr] for n in nodes]


def _signal(node: NodeProcess, sig: int) -> None:
    if node.pid <= 0:
        raise ClusterError(f"node {node.addr} was never started")  # os.kill(0) = our group
    try:
        os.kill(node.pid, sig)
    except ProcessLookupError:
        pass


def _wait_exit(node: NodeProcess, deadline: float) -> bool:
    if node.proc is not None:
        try:
            node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
    while is_alive(node.pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)  # not our child: there is nothing to block on but the clock
    return True


# Signals that end a command which runs nodes: SIGTERM (kill, a supervisor), SIGINT (Ctrl-C)
# and SIGHUP (its terminal went away). The nodes run in sessions of their own, so only the
# command gets them, and it must stop its nodes itself.
INTERRUPT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP")
                          if hasattr(signal, name))


class _Interrupts:
    """What sigterm_as_interrupt's handler does now (signal handlers run in the main thread)."""

    deferring = 0  # > 0: inside deferred_interrupts (a signal waits for its end)
    absorbing = 0  # > 0: inside a stop (a signal is dropped: the stop ends every node anyway)
    pending = False  # a signal arrived while deferring


def _on_interrupt(signum: int, frame: object) -> None:
    if _Interrupts.absorbing:
        return
    if _Interrupts.deferring:
        _Interrupts.pending = True
        return
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM and SIGHUP raise KeyboardInterrupt as Ctrl-C (SIGINT) does, so the same
    cleanup runs for all three; and the cleanup is safe from more of them: while nodes are
    stopped (stop_cluster, stop_node) another signal is ignored, since the stop sends SIGTERM
    and then SIGKILL after its deadline whatever happens, and while a node is spawned (or in
    deferred_interrupts) a signal waits until the new node is recorded in its NodeProcess."""
    previous = {sig: signal.signal(sig, _on_interrupt) for sig in INTERRUPT_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """An interrupt (under sigterm_as_interrupt) that arrives inside is raised at its end: for
    short steps that must not be cut in two, such as starting a node and recording its PID, or
    a command keeping the handle that start_cluster returns."""
    _Interrupts.deferring += 1
    try:
        yield
    finally:
        _Interrupts.deferring -= 1
        interrupted = _Interrupts.pending and not _Interrupts.deferring
        if interrupted:
            _Interrupts.pending = False
    if interrupted:
        raise KeyboardInterrupt


@contextmanager
def _absorbed_interrupts() -> Iterator[None]:
    _Interrupts.absorbing += 1
    try:
        yield
    finally:
        _Interrupts.absorbing -= 1


# --- waiting --------------------------------------------------------------------------------------


def leader_of(statuses: Sequence[dict]) -> str | None:
    """The leader of the highest term any reachable node reports, if one says it leads."""
    leaders = [s for s in statuses if s.get("role") == "leader"]
    if not leaders:
        return None
    return max(leaders, key=lambda s: s.get("term", -1))["addr"]


def agreed_leader(statuses: Sequence[dict]) -> str | None:
    """The leader if exactly one node leads and every node answered, in its term, naming it."""
    leaders = [s["addr"] for s in statuses if s.get("role") == "leader"]
    if len(leaders) != 1 or len({s.get("term") for s in statuses}) != 1:
        return None
    return leaders[0] if all(s.get("leader") == leaders[0] for s in statuses) else None


def wait_for_leader(servers: Sequence[str], deadline: float,
                    handle: ClusterHandle | None = None, *, agreed: bool = False) -> str:
    """Poll `servers` until one reports itself leader (with `agreed`: until all of them agree
    on it, see agreed_leader); `deadline` is a time.monotonic() value, ClusterUnavailable
    when it passes. With a `handle`, a node that exits by itself fails the wait at once."""
    choose = agreed_leader if agreed else leader_of
    client = open_client(servers, timeout=1.0, attempt_timeout=0.3)
    try:
        while True:
            _check_alive(handle)
            leader = choose(client.status())
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                what = "agreed on" if agreed else "elected"
                raise ClusterUnavailable(f"no leader {what} among {', '.join(servers)} in time")
            time.sleep(POLL_S)  # a bounded poll of remote state: there is no event to wait on
    finally:
        client.close()


def wait_serving(handle: ClusterHandle, deadline: float,
                 addrs: Iterable[str] | None = None) -> None:
    """Until each node (of `addrs`, default all) answers a status request: its port is bound.
    A node that exits first raises NodeExited, or PortTaken if it could not bind its port;
    ClusterUnavailable once `deadline` (a time.monotonic() value) passes."""
    waiting = list(addrs or handle.servers)
    while waiting:
        node = handle.node(waiting[0])
        client = open_client([node.addr], timeout=1.0, attempt_timeout=0.2)
        try:
            answered = client.status()[0]["role"] != "unreachable"
        finally:
            client.close()
        if node.exit_code is not None:
            error = PortTaken if "cannot bind" in log_since_start(node) else NodeExited
            raise error(node)
        if answered:
            waiting.pop(0)
        elif time.monotonic() >= deadline:
            raise ClusterUnavailable(f"{node.addr} did not answer in time")
        else:
            time.sleep(POLL_S)  # a bounded poll until the node has bound its port


def _check_alive(handle: ClusterHandle | None) -> None:
    for node in exited_nodes(handle) if handle is not None else ():
        raise NodeExited(node)
