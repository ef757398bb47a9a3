"""zauction against PySyncObj on this machine, one command, one table with ratios.

Three clusters of 3 node processes: zauction, and PySyncObj in its two best configurations
(batched appends for throughput, unbatched for latency). One load driver drives all of them
through the same client protocol (PySyncObj nodes get a request server in front, see
scripts/pso_node.py), the same operation ("bid if higher": every bid is a log entry, judged
when applied) and the same client rules (pipelined DEALERs, one write in flight per client
id, replies matched by rid, retries elsewhere on not_leader / unavailable / a dead node).
Every phase interleaves the systems, so a noisy neighbour hurts all of them alike.

Measured for each system:
  peak        closed loop at several in-flight levels (client ids with one write each);
              the best level is repeated and the median of its runs reported
  latency     closed loop, 1 in flight: p50 / p99 (medians of the runs)
  rate grid   open loop at 100, 200, 400... ops/s up to the peak: the highest rate with
              p99 < 10 ms (and < 100 ms); latency counts from the scheduled send time
  overload    open loop at 1.5x the peak: share of offered ops committed by the end of the
              run plus a grace period, and the commit rate while it is offered
  failover    kill -9 of the leader under 10 writes in flight, several times: time from the
              kill to the first acknowledged op sent after the kill; the node is restarted
              and caught up before the next round

Every ZeroMQ client runs in a worker process (see Worker); this process only starts, kills and
stops nodes, by PID, in a finally block and on SIGINT/SIGTERM.

    python scripts/bench_compare.py --quick         # 2-3 s per point, ~3 min
    python scripts/bench_compare.py                 # the full run, ~8 min
    python scripts/bench_compare.py --json out.json --keep
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack
import zmq
from hdrh.histogram import HdrHistogram
from zmq.utils.monitor import recv_monitor_message

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zauction.client.client import busy_pause_s  # noqa: E402
from zauction.protocol import decode_replies, request_frames  # noqa: E402
from zauction.tools import cluster as local  # noqa: E402
from zauction.tools.cluster import sigterm_as_interrupt  # noqa: E402
from zauction.tools.ports import free_ports  # noqa: E402

CLIENT_KIND = b"C"
RETRYABLE = frozenset({"not_leader", "unavailable", "outcome_unknown", "timeout"})
RETRY_PAUSE_S = 0.01  # before retrying an op a node could not serve (no leader yet, ...)
STOP_TIMEOUT_S = 5.0
AUCTION_MS = 6 * 3600 * 1000  # the default auction must stay open for the whole run
P99_TARGET_MS = 10.0
P99_LOOSE_MS = 100.0  # a second threshold, for a machine whose scheduling noise is near 10 ms
GRID_STOP_MS = 200.0
SETTLED_MS = 500.0  # a lone write answered this fast: no backlog left from the last point


class BenchError(Exception):
    """A cluster did not start, elect or recover as the benchmark needs."""


# --- node processes (zauction.tools.cluster: started, killed and stopped by PID) -------------


@dataclass(frozen=True, slots=True)
class NodeSet:
    """One system under test: its name and the handle of its node processes, by client
    address (PySyncObj nodes are addressed by their request server)."""

    name: str
    handle: local.ClusterHandle

    @property
    def servers(self) -> list[str]:
        return self.handle.servers

    def exited(self) -> list[str]:
        """Nodes that exited by themselves (not the ones we killed)."""
        return [n.addr for n in local.exited_nodes(self.handle)]


def start_zauction(root: Path, nodes: int, durability: str = "always",
                   name: str = "zauction") -> NodeSet:
    handle = local.start_cluster(root, ports=free_ports(nodes), host="127.0.0.1",
                                 auction_duration_ms=AUCTION_MS, durability=durability)
    return NodeSet(name, handle)


def start_pso(root: Path, nodes: int, extra: list[str], name: str = "pysyncobj") -> NodeSet:
    ports = free_ports(2 * nodes)
    raft = [f"127.0.0.1:{port}" for port in ports[:nodes]]
    serve = ports[nodes:]
    script = str(ROOT / "scripts" / "pso_node.py")
    planned = []
    for i, port in enumerate(serve):
        addr = f"127.0.0.1:{port}"
        peers = ",".join(f"{raft[j]}=127.0.0.1:{serve[j]}" for j in range(nodes) if j != i)
        data_dir = root / f"pso-{i}"
        cmd = [sys.executable, script, "--raft", raft[i], "--serve", addr, "--peers", peers,
               "--data-dir", str(data_dir), *extra]
        planned.append(local.NodeProcess(addr, port, 0, data_dir,
                                         root / f"{addr.replace(':', '_')}.log", cmd))
    try:
        return NodeSet(name, local.launch(local.ClusterHandle(root, tuple(planned))))
    except local.ClusterError as exc:
        raise BenchError(f"cannot start a PySyncObj node: {exc}") from exc


# --- status and leaders (ZeroMQ clients: these run in the worker process) ---------------------


def statuses(servers: list[str], timeout: float = 0.3) -> dict[str, dict]:
    """Each answering node's own status (the `status` op both systems serve)."""
    ctx = zmq.Context.instance()
    socks = {}
    for server in servers:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{server}")
        sock.send_multipart([CLIENT_KIND, msgpack.packb({"op": "status", "rid": 1})])
        socks[server] = sock
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    try:
        for server, sock in socks.items():
            if sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                reply = msgpack.unpackb(sock.recv_multipart()[-1])
                if reply.get("ok"):
                    found[server] = reply["result"]
    finally:
        for sock in socks.values():
            sock.close(linger=0)
    return found


def agreed_leader(servers: list[str], quorum: int) -> str | None:
    """The leader that at least `quorum` answering nodes name (itself included)."""
    views = statuses(servers)
    named = [s.get("leader") for s in views.values()]
    for leader in set(named):
        if leader and named.count(leader) >= quorum and views.get(leader, {}).get("role") == "leader":
            return leader
    return None


def leader_now(servers: list[str]) -> str | None:
    """The node that says it leads in the highest term, right now."""
    views = statuses(servers)
    leaders = [a for a, v in views.items() if v.get("role") == "leader"]
    return max(leaders, key=lambda a: views[a].get("term") or 0) if leaders else None


# --- the load driver -------------------------------------------------------------------------


@dataclass(slots=True)
class Op:
    """One write: a bid from a client slot (client id + seq), retried with the same seq."""

    slot: int
    seq: int
    amount: int
    scheduled: float  # when it was due: latency counts from here
    rid: int = 0
    server: str = ""
    attempts: int = 0
    refusals: int = 0  # `busy` answers so far


class Conn:
    """A DEALER to one node, plus a monitor that says at once when the node goes away."""

    def __init__(self, ctx: zmq.Context, server: str):
        self.server = server
        self.sock = ctx.socket(zmq.DEALER)
        for option, value in ((zmq.LINGER, 0), (zmq.IMMEDIATE, 1), (zmq.SNDHWM, 0),
                              (zmq.RCVHWM, 0), (zmq.RECONNECT_IVL, 50)):
            self.sock.setsockopt(option, value)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(f"tcp://{server}")
        self.up = False

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


Done = Callable[[Op, str, float], None]  # (op, outcome "ok"/"rejected"/"failed", now)


class Driver:
    """Many pipelined writes over one DEALER per node; a reply finds its op by rid."""

    _amounts = itertools.count(1)  # bids rise over the whole run, so most are accepted

    def __init__(self, servers: list[str], prefer: str, on_done: Done,
                 attempt_timeout: float | None = None):
        ctx = zmq.Context.instance()
        self.conns = {s: Conn(ctx, s) for s in servers}
        self.order = list(servers)
        self.prefer = prefer
        self.on_done = on_done
        self.attempt_timeout = attempt_timeout
        self.tag = uuid.uuid4().hex[:8]
        self.seqs: list[int] = []
        self.pending: dict[int, Op] = {}  # rid -> op
        self.outbox: dict[str, list[bytes]] = {}  # server -> requests for the next frame
        self.timeouts: deque[tuple[float, int]] = deque()  # (deadline, rid), in send order
        self.retries: list[tuple[float, int, Op]] = []  # heap of (due, tiebreak, op)
        self._rids = itertools.count(1)
        self._ties = itertools.count()
        self.poller = zmq.Poller()
        for conn in self.conns.values():
            self.poller.register(conn.sock, zmq.POLLIN)
            self.poller.register(conn.monitor, zmq.POLLIN)
        self._by_sock = {c.sock: c for c in self.conns.values()}
        self._by_monitor = {c.monitor: c for c in self.conns.values()}

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()

    def wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(c.up for c in self.conns.values()) and time.monotonic() < deadline:
            self.step(0.01)

    # --- submitting -------------------------------------------------------------------

    def new_slot(self) -> int:
        self.seqs.append(0)
        return len(self.seqs) - 1

    def submit(self, slot: int, scheduled: float) -> Op:
        self.seqs[slot] += 1
        op = Op(slot, self.seqs[slot], next(self._amounts), scheduled)
        self._send(op, self.prefer)
        return op

    def _send(self, op: Op, server: str) -> None:
        for candidate in self._rotation(server):
            conn = self.conns[candidate]
            op.rid, op.server = next(self._rids), candidate
            body = {"op": "bid", "rid": op.rid, "client": f"{self.tag}-{op.slot}",
                    "seq": op.seq, "auction": "default", "bidder": f"b{op.slot}",
                    "amount": op.amount, "stream": True}
            if not conn.sock.get(zmq.EVENTS) & zmq.POLLOUT:
                continue  # IMMEDIATE: no connection to that node right now
            # Requests wait in the outbox until step(): several leave in one frame, the way
            # zauction.tools.loadgen sends them (docs/protocol.md, several requests in one frame).
            self.outbox.setdefault(candidate, []).append(msgpack.packb(body))
            op.attempts += 1
            self.pending[op.rid] = op
            if self.attempt_timeout is not None:
                self.timeouts.append((time.monotonic() + self.attempt_timeout, op.rid))
            return
        self._retry_later(op, server, RETRY_PAUSE_S)  # no node reachable at all

    def _rotation(self, first: str) -> list[str]:
        i = self.order.index(first)
        return self.order[i:] + self.order[:i]

    def _next_after(self, server: str) -> str:
        return self.order[(self.order.index(server) + 1) % len(self.order)]

    def _retry_later(self, op: Op, server: str, delay: float) -> None:
        heapq.heappush(self.retries, (time.monotonic() + delay, next(self._ties), op))
        op.server = server

    # --- progress ---------------------------------------------------------------------

    def step(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for replies, then handle everything that is due."""
        wait_ms = max(0, int(timeout * 1000))
        if self.retries:
            wait_ms = min(wait_ms, max(0, int((self.retries[0][0] - time.monotonic()) * 1000)))
        self._flush()
        for sock, _ in self.poller.poll(wait_ms):
            if sock in self._by_sock:
                self._read_replies(self._by_sock[sock])
            else:
                self._read_monitor(self._by_monitor[sock])
        self._expire_attempts()
        self._send_due_retries()

    def _flush(self) -> None:
        outbox, self.outbox = self.outbox, {}
        for server, payloads in outbox.items():
            for frame in request_frames(payloads):
                try:
                    self.conns[server].sock.send_multipart([CLIENT_KIND, frame], zmq.NOBLOCK)
                except zmq.Again:
                    break  # the connection dropped meanwhile: the attempt timeout retries

    def _read_replies(self, conn: Conn) -> None:
        while True:
            try:
                frames = conn.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            for reply in decode_replies(frames[-1]):
                self._on_reply(conn, reply)

    def _on_reply(self, conn: Conn, reply: dict) -> None:
        rid = reply.get("rid", 0)
        if rid == 0 and reply.get("error") in RETRYABLE:
            # A node that gives up on requests it forwarded (its leader changed or did
            # not answer) may say so with rid 0: retry everything waiting there.
            self._reroute_from(conn.server, reply.get("leader"))
        op = self.pending.pop(rid, None)
        if op is not None:
            self._judge(op, reply)

    def _judge(self, op: Op, reply: dict) -> None:
        now = time.monotonic()
        if reply.get("ok"):
            self.on_done(op, "ok", now)
            return
        code = reply.get("error")
        if code == "rejected":
            self.on_done(op, "rejected", now)
        elif code == "busy":  # the leader sheds load: come back to it, as AuctionClient does
            op.refusals += 1
            self._retry_later(op, op.server, busy_pause_s(reply, op.refusals))
        elif code in RETRYABLE:
            hint = reply.get("leader")
            if hint in self.conns and hint != op.server:
                self.prefer = hint
                self._retry_later(op, hint, 0.0)
            else:
                self.prefer = self._next_after(op.server)
                self._retry_later(op, self.prefer, RETRY_PAUSE_S)
        else:
            self.on_done(op, "failed", now)

    def _read_monitor(self, conn: Conn) -> None:
        while conn.monitor.poll(0):
            event = recv_monitor_message(conn.monitor)["event"]
            conn.up = event == zmq.EVENT_CONNECTED
            if not conn.up:
                self._reroute_from(conn.server)

    def _reroute_from(self, server: str, hint: str | None = None) -> None:
        """What waits at `server` will not be answered: send it elsewhere now (same seq)."""
        target = hint if hint in self.conns and hint != server else self._next_after(server)
        if self.prefer == server:
            self.prefer = target
        lost = [rid for rid, op in self.pending.items() if op.server == server]
        for rid in lost:
            self._retry_later(self.pending.pop(rid), target, 0.0)

    def _expire_attempts(self) -> None:
        now = time.monotonic()
        while self.timeouts and self.timeouts[0][0] <= now:
            _, rid = self.timeouts.popleft()
            op = self.pending.pop(rid, None)
            if op is not None:
                self.prefer = self._next_after(op.server)
                self._send(op, self.prefer)

    def _send_due_retries(self) -> None:
        now = time.monotonic()
        while self.retries and self.retries[0][0] <= now:
            _, _, op = heapq.heappop(self.retries)
            self._send(op, op.server)


# --- recording -------------------------------------------------------------------------------


class Recorder:
    """Outcomes and latencies (microseconds) of the ops that count for one measurement."""

    def __init__(self) -> None:
        self.hist = HdrHistogram(1, 120_000_000, 3)
        self.outcomes = {"ok": 0, "rejected": 0, "failed": 0}

    def add(self, outcome: str, latency_s: float) -> None:
        self.outcomes[outcome] += 1
        if outcome != "failed":
            self.hist.record_value(max(1, int(latency_s * 1e6)))

    @property
    def committed(self) -> int:
        return self.outcomes["ok"] + self.outcomes["rejected"]

    def ms(self, percentile: float) -> float:
        if self.hist.get_total_count() == 0:
            return float("nan")
        return self.hist.get_value_at_percentile(percentile) / 1000.0


@contextmanager
def driving(servers: list[str], prefer: str, on_done: Done,
            attempt_timeout: float | None) -> Iterator[Driver]:
    driver = Driver(servers, prefer, on_done, attempt_timeout)
    try:
        driver.wait_connected(2.0)
        yield driver
    finally:
        driver.close()


def closed_loop(servers: list[str], leader: str, inflight: int, seconds: float,
                warmup: float) -> dict:
    """`inflight` client ids, each sending its next write as soon as the last is answered."""
    rec = Recorder()
    window: list[float] = []

    def done(op: Op, outcome: str, now: float) -> None:
        if window[0] <= now <= window[1]:
            rec.add(outcome, now - op.scheduled)
        if now < window[1]:
            driver.submit(op.slot, now)

    with driving(servers, leader, done, attempt_timeout=1.0) as driver:
        start = time.monotonic()
        window.extend([start + warmup, start + warmup + seconds])
        for _ in range(inflight):
            driver.submit(driver.new_slot(), start)
        while time.monotonic() < window[1]:
            driver.step(0.05)
    return {"ops_s": rec.committed / seconds, "p50_ms": rec.ms(50), "p99_ms": rec.ms(99),
            "p999_ms": rec.ms(99.9), "max_ms": rec.ms(100), **rec.outcomes}


def open_loop(servers: list[str], leader: str, rate: float, seconds: float, warmup: float,
              grace: float) -> dict:
    """Writes due at a fixed rate whatever the answers; latency from when each was due."""
    rec = Recorder()
    free: list[int] = []
    measured_from, in_window = [0.0, 0.0], [0]

    def done(op: Op, outcome: str, now: float) -> None:
        free.append(op.slot)
        if op.scheduled >= measured_from[0]:
            rec.add(outcome, now - op.scheduled)
        if outcome != "failed" and measured_from[0] <= now <= measured_from[1]:
            in_window[0] += 1  # answers while the load is offered: the rate it keeps up

    with driving(servers, leader, done, attempt_timeout=None) as driver:
        start = time.monotonic()
        measured_from[:] = [start + warmup, start + warmup + seconds]
        offered = _offer(driver, free, start, rate, warmup + seconds, measured_from[0])
        end = start + warmup + seconds + grace
        while driver.pending or driver.retries:
            if time.monotonic() >= end:
                break
            driver.step(0.02)
        unfinished = [op for op in driver.pending.values() if op.scheduled >= measured_from[0]]
        unfinished += [op for _, _, op in driver.retries if op.scheduled >= measured_from[0]]
        for op in unfinished:  # still waiting: at least this late
            rec.hist.record_value(max(1, int((end - op.scheduled) * 1e6)))
    return {"rate": rate, "offered": offered, "committed": rec.committed,
            "share": rec.committed / offered if offered else float("nan"),
            "p50_ms": rec.ms(50), "p99_ms": rec.ms(99), "unfinished": len(unfinished),
            "commit_rate": in_window[0] / seconds, **rec.outcomes}


def _offer(driver: Driver, free: list[int], start: float, rate: float, span: float,
           counted_from: float) -> int:
    """Submit a write every 1/rate s from `start` for `span` s; returns how many were due
    at or after `counted_from` (the ones that count)."""
    interval, end = 1.0 / rate, start + span
    due, offered = start, 0
    while (now := time.monotonic()) < end:
        while due <= now and due < end:
            driver.submit(free.pop() if free else driver.new_slot(), due)
            offered += due >= counted_from
            due += interval
        driver.step(min(max(0.0, due - time.monotonic()), 0.005))
    return offered

# --- whole measurements, as the worker process runs them -----------------------------------------


def settle_servers(servers: list[str], timeout: float = 30.0) -> str:
    """A leader a majority agrees on, and a lone write answered fast: no backlog is left."""
    quorum = len(servers) // 2 + 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = agreed_leader(servers, quorum)
        if leader is None:
            time.sleep(0.05)  # a bounded poll of remote state: there is no event to wait on
            continue
        probe = closed_loop(servers, leader, 1, 0.3, 0.0)
        if probe["ok"] + probe["rejected"] > 0 and probe["max_ms"] < SETTLED_MS:
            return leader
    raise BenchError(f"writes to {', '.join(servers)} still slow or failing after {timeout:.0f}s")


def kill_leader_under_load(servers: list[str], pids: dict[str, int], inflight: int,
                           warmup: float, limit: float) -> tuple[str, float | None]:
    """Kill -9 the leader under load: (the node killed, seconds from the kill until an op sent
    after it is answered, None if none within `limit`). The caller reaps and restarts it."""
    leader = settle_servers(servers)
    killed_at, first_ack, before = [float("inf")], [], [0]

    def done(op: Op, outcome: str, now: float) -> None:
        if outcome != "failed":
            before[0] += now < killed_at[0]
            if op.scheduled >= killed_at[0] and not first_ack:
                first_ack.append(now)
        driver.submit(op.slot, now)

    with driving(servers, leader, done, attempt_timeout=1.0) as driver:
        for _ in range(inflight):
            driver.submit(driver.new_slot(), time.monotonic())
        _run_for(driver, warmup)
        if before[0] == 0:
            raise BenchError("no write answered before the kill")
        leader = leader_now(servers) or leader  # it may have changed during the warmup
        killed_at[0] = time.monotonic()
        os.kill(pids[leader], signal.SIGKILL)
        while not first_ack and time.monotonic() < killed_at[0] + limit:
            driver.step(0.01)
    return leader, (first_ack[0] - killed_at[0] if first_ack else None)


def _run_for(driver: Driver, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        driver.step(0.02)


def loadgen_peak(servers: list[str], inflight: int, seconds: float) -> dict:
    """zauction's own load generator (zauction.tools.loadgen) at the same concurrency."""
    from zauction.tools.loadgen import run_load

    settle_servers(servers)
    got = run_load(servers, bidders=inflight, concurrency=inflight, duration_s=seconds)
    return {"ops_s": got.throughput, **got.latency_ms}


# --- the worker process: every ZeroMQ client socket lives there ---------------------------------
# libzmq can abort the whole process on a rare race (we saw "Assertion failed: !_more
# (src/fq.cpp:80)" once an overloaded node's connection dropped mid-reply). Then only the worker
# dies; the orchestrator, which alone holds the node processes, still stops them by PID.


class WorkerCrash(Exception):
    """The worker process died in the middle of a call."""


def _serve(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the orchestrator to handle
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        fn, args = job
        try:
            conn.send(("ok", fn(*args)))
        except Exception as exc:  # anything: reported to the orchestrator, which decides
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Worker:
    """Runs functions of this module in a child process, one call at a time."""

    def __init__(self) -> None:
        self._mp = multiprocessing.get_context("spawn")  # no fork: zmq state is not fork-safe
        self.crashes = 0
        self._start()

    def _start(self) -> None:
        self.conn, child = self._mp.Pipe()
        self.proc = self._mp.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 600.0) -> Any:
        """fn(*args) in the worker; after a crash, a new worker tries the call once more."""
        for attempt in (1, 2):
            try:
                return self._call_once(fn, args, timeout)
            except WorkerCrash as crash:
                self.crashes += 1
                say(f"the load process crashed in {fn.__name__} ({crash}); "
                    + ("retrying" if attempt == 1 else "giving up"))
                self.close()
                self._start()
        raise BenchError(f"{fn.__name__} crashed the load process twice")

    def _call_once(self, fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
        try:
            self.conn.send((fn, args))
            if not self.conn.poll(timeout):
                self.close()  # still busy: its late answer must not be read by another call
                self._start()
                raise BenchError(f"{fn.__name__} did not finish within {timeout:.0f}s")
            status, value = self.conn.recv()
        except (EOFError, OSError):  # the pipe broke: the worker is gone
            self.proc.join(STOP_TIMEOUT_S)
            raise WorkerCrash(f"exit code {self.proc.exitcode}") from None
        if status == "error":
            raise BenchError(f"{fn.__name__}: {value}")
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(STOP_TIMEOUT_S)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(STOP_TIMEOUT_S)
        self.conn.close()


# --- orchestration: node processes and the worker, never a socket ---------------------------------


def wait_leader(nodes: NodeSet, worker: Worker, timeout: float) -> str:
    quorum = len(nodes.servers) // 2 + 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_running(nodes)
        leader = worker.call(agreed_leader, nodes.servers, quorum)
        if leader:
            return leader
        time.sleep(0.05)  # a bounded poll of remote state: there is no event to wait on
    raise BenchError(f"{nodes.name}: no leader agreed by {quorum} nodes within {timeout:.0f}s")


def _check_running(nodes: NodeSet) -> None:
    if nodes.exited():
        raise BenchError(f"{nodes.name}: node(s) {nodes.exited()} exited (logs in "
                         f"{nodes.handle.root})")


def settle(nodes: NodeSet, worker: Worker) -> str:
    _check_running(nodes)
    return worker.call(settle_servers, nodes.servers, 30.0)


def wait_caught_up(nodes: NodeSet, worker: Worker, addr: str, timeout: float) -> float:
    """Wait until every node names the same leader and `addr` has applied its commit index."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        _check_running(nodes)
        views = worker.call(statuses, nodes.servers)
        leaders = {v.get("leader") for v in views.values()}
        if len(views) == len(nodes.servers) and len(leaders) == 1 and None not in leaders:
            target = views[leaders.pop()].get("commit_index") or 0
            if (views[addr].get("applied_index") or 0) >= target:
                return time.monotonic() - started
        time.sleep(0.05)  # a bounded poll of remote state
    raise BenchError(f"{nodes.name}: {addr} did not rejoin and catch up within {timeout:.0f}s")


def failover_round(nodes: NodeSet, worker: Worker, plan: Plan) -> float | None:
    pids = {n.addr: n.pid for n in nodes.handle.nodes}
    killed, took = worker.call(kill_leader_under_load, nodes.servers, pids,
                               plan.failover_inflight, plan.warmup, plan.failover_limit)
    local.kill_node(nodes.handle, killed)  # killed by the worker: reaped here (SIGKILL if not)
    local.restart_node(nodes.handle, killed)
    wait_caught_up(nodes, worker, killed, 30.0)
    return took


class RateGrid:
    """Open-loop rates start, start*factor, ... up to the peak, until p99 passes GRID_STOP_MS
    twice in a row (beyond that no threshold we report is likely to pass). A grid rather than
    a bisection: on a noisy machine p99 is not monotonic in the rate, and every point is shown."""

    def __init__(self, start: float, factor: float, peak: float):
        self.rate, self.factor, self.peak = min(start, peak), factor, peak
        self.points: list[dict] = []
        self.misses = 0  # consecutive points over GRID_STOP_MS
        self.done = False

    def record(self, point: dict) -> None:
        self.points.append(point)
        self.misses = self.misses + 1 if point["p99_ms"] >= GRID_STOP_MS else 0
        self.done = self.misses >= 2 or self.rate >= self.peak
        self.rate = min(self.rate * self.factor, self.peak)

    def best(self, target_ms: float) -> float:
        """The highest rate tried whose p99 stayed under `target_ms` (0 if none did)."""
        return max((p["rate"] for p in self.points if p["p99_ms"] < target_ms), default=0.0)


# --- the plan: every phase interleaves the systems, so background load hits all alike ----


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float  # measured time per closed-loop and overload point
    search_seconds: float  # measured time per point of the rate grid
    warmup: float  # unmeasured time before each point
    runs: int  # runs of the peak (at its best in-flight level) and 1-in-flight points
    kills: int
    levels: tuple[int, ...]  # in-flight levels tried for the peak; the best one is repeated
    grid_start: float  # ops/s of the first point of the rate grid
    grid_factor: float
    grace: float = 2.0  # open loop: how long answers are awaited after the last op was due
    failover_inflight: int = 10
    failover_limit: float = 20.0


QUICK = Plan(seconds=3.0, search_seconds=2.0, warmup=1.0, runs=1, kills=3,
             levels=(128, 1024), grid_start=100.0, grid_factor=4.0)
FULL = Plan(seconds=8.0, search_seconds=4.0, warmup=1.0, runs=3, kills=5,
            levels=(128, 512, 2048), grid_start=100.0, grid_factor=2.0)

Results = dict[str, dict[str, Any]]  # system name -> numbers


def measure_all(clusters: dict[str, NodeSet], worker: Worker, plan: Plan,
                phases: set[str]) -> Results:
    """Every phase, systems interleaved. A system that fails (a node died, no leader) is dropped
    with its error recorded; the others go on."""
    bench = Bench(dict(clusters), worker, plan)
    if "peak" in phases:
        bench.peak()
        if "zauction" in bench.live:
            bench.guard("zauction", bench.loadgen_crosscheck)
    if "latency" in phases:
        bench.latency()
    if "search" in phases:
        bench.search()
    if "overload" in phases:
        bench.overload()
    if "failover" in phases:
        bench.failovers()
    return bench.res


class Bench:
    def __init__(self, live: dict[str, NodeSet], worker: Worker, plan: Plan):
        self.live, self.worker, self.plan = live, worker, plan
        self.res: Results = {name: {"system": name} for name in live}

    def guard(self, name: str, action: Callable[[], Any]) -> Any:
        """action(); if it fails with BenchError, `name` is out of the rest of the run."""
        try:
            return action()
        except BenchError as exc:
            self.res[name]["error"] = str(exc)
            self.live.pop(name, None)
            say(f"{name}: dropped from the rest of the run: {exc}")
            return None

    def each(self, action: Callable[[str, NodeSet], Any]) -> None:
        for name, nodes in list(self.live.items()):
            self.guard(name, lambda n=name, s=nodes: (self.revive(n, s), action(n, s)))

    def revive(self, name: str, nodes: NodeSet) -> None:
        """A node that died on its own (not one we killed) is recorded, restarted, and caught
        up before the next measurement: the run goes on, the crash is reported."""
        for node in local.exited_nodes(nodes.handle):
            addr = node.addr
            crash = {"addr": addr, "code": node.exit_code,
                     "last_log_line": local.log_tail(node, 1)}
            self.res[name].setdefault("crashes", []).append(crash)
            say(f"{name}: node {addr} exited by itself ({crash}); restarting it")
            local.restart_node(nodes.handle, addr)
            wait_caught_up(nodes, self.worker, addr, 60.0)

    def closed_point(self, nodes: NodeSet, inflight: int) -> dict:
        leader = settle(nodes, self.worker)
        run = self.worker.call(closed_loop, nodes.servers, leader, inflight, self.plan.seconds,
                               self.plan.warmup)
        say(f"{nodes.name}: {inflight} in flight: {run['ops_s']:.0f} ops/s, p50 "
            f"{run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms, failed {run['failed']}")
        return {"inflight": inflight, **run}

    def peak(self) -> None:
        """Each in-flight level once; then the best level again until it has `runs` runs."""
        for level in self.plan.levels:
            self.each(lambda name, nodes, lv=level: self.res[name].setdefault("sweep", [])
                      .append(self.closed_point(nodes, lv)))
        for name in self.live:
            best = max(self.res[name]["sweep"], key=lambda r: r["ops_s"])
            self.res[name].update(peak_inflight=best["inflight"], peak_runs=[best])
        for _ in range(self.plan.runs - 1):
            self.each(lambda name, nodes: self.res[name]["peak_runs"].append(
                self.closed_point(nodes, self.res[name]["peak_inflight"])))
        for name in self.live:
            runs = self.res[name]["peak_runs"]
            self.res[name]["peak"] = statistics.median(r["ops_s"] for r in runs)

    def latency(self) -> None:
        for _ in range(self.plan.runs):
            self.each(lambda name, nodes: self.res[name].setdefault("latency_runs", [])
                      .append(self.closed_point(nodes, 1)))
        for name in self.live:
            runs = self.res[name]["latency_runs"]
            self.res[name]["p50_ms"] = statistics.median(r["p50_ms"] for r in runs)
            self.res[name]["p99_ms"] = statistics.median(r["p99_ms"] for r in runs)

    def loadgen_crosscheck(self) -> None:
        nodes, res = self.live["zauction"], self.res["zauction"]
        got = self.worker.call(loadgen_peak, nodes.servers, res["peak_inflight"],
                               self.plan.seconds)
        res["loadgen_peak"] = got["ops_s"]
        say(f"zauction: {res['peak_inflight']} in flight, zauction.tools.loadgen cross-check: "
            f"{got['ops_s']:.0f} ops/s, p50 {got['p50']:.2f} ms, p99 {got['p99']:.2f} ms")

    def search(self) -> None:
        grids = {name: RateGrid(self.plan.grid_start, self.plan.grid_factor,
                                self.res[name]["peak"]) for name in self.live
                 if "peak" in self.res[name]}

        def step(name: str, nodes: NodeSet) -> None:
            grid = grids.get(name)
            if grid and not grid.done:
                grid.record(self.open_point(nodes, grid.rate, self.plan.search_seconds, 1.0))

        while any(not grids[name].done for name in self.live if name in grids):
            self.each(step)
        for name in self.live:
            if name not in grids:
                continue
            grid = grids[name]
            self.res[name].update(p99_rate=grid.best(P99_TARGET_MS), search=grid.points,
                                  p99_loose_rate=grid.best(P99_LOOSE_MS))

    def open_point(self, nodes: NodeSet, rate: float, seconds: float, grace: float) -> dict:
        point = self.worker.call(open_loop, nodes.servers, settle(nodes, self.worker), rate,
                                 seconds, self.plan.warmup, grace)
        say(f"{nodes.name}: open loop {rate:.0f}/s: p50 {point['p50_ms']:.2f} ms, p99 "
            f"{point['p99_ms']:.2f} ms, {point['share']:.1%} committed, "
            f"{point['commit_rate']:.0f} ops/s while offered")
        return point

    def overload(self) -> None:
        def point(name: str, nodes: NodeSet) -> None:
            if "peak" in self.res[name]:
                self.res[name]["overload"] = self.open_point(
                    nodes, 1.5 * self.res[name]["peak"], self.plan.seconds, self.plan.grace)

        self.each(point)

    def failovers(self) -> None:
        for i in range(self.plan.kills):
            self.each(lambda name, nodes, k=i: self.failover(name, nodes, k))

    def failover(self, name: str, nodes: NodeSet, i: int) -> None:
        took = failover_round(nodes, self.worker, self.plan)
        self.res[name].setdefault("failover_s", []).append(took)
        shown = f"{took * 1000:.0f} ms" if took is not None else "no answer in time"
        say(f"{name}: failover {i + 1}/{self.plan.kills}: {shown}")


# --- the table ---------------------------------------------------------------------------------

NAN = float("nan")


def failover_stat(result: dict, stat: Callable[[list[float]], float]) -> float:
    times = [t for t in result.get("failover_s", []) if t is not None]
    return stat(times) * 1000 if times else NAN


# label, value, whether higher is better (None: shown, not compared)
ROWS: list[tuple[str, Callable[[dict], float], bool | None]] = [
    ("peak committed ops/s, closed loop", lambda r: r.get("peak", NAN), True),
    ("  in flight at the peak", lambda r: r.get("peak_inflight", NAN), None),
    ("latency p50 at 1 in flight, ms", lambda r: r.get("p50_ms", NAN), False),
    ("latency p99 at 1 in flight, ms", lambda r: r.get("p99_ms", NAN), False),
    (f"max offered ops/s with p99 < {P99_TARGET_MS:g} ms", lambda r: r.get("p99_rate", NAN), True),
    (f"max offered ops/s with p99 < {P99_LOOSE_MS:g} ms",
     lambda r: r.get("p99_loose_rate", NAN), True),
    ("committed at 1.5x peak, % of offered",
     lambda r: 100 * r["overload"]["share"] if "overload" in r else NAN, True),
    ("committed ops/s while 1.5x peak is offered",
     lambda r: r["overload"]["commit_rate"] if "overload" in r else NAN, True),
    ("p99 at 1.5x peak, ms", lambda r: r["overload"]["p99_ms"] if "overload" in r else NAN, False),
    ("failover median, ms", lambda r: failover_stat(r, statistics.median), False),
    ("failover max, ms", lambda r: failover_stat(r, max), False),
]


def _fmt(value: float) -> str:
    if value != value:  # NaN: not measured
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _best(values: list[float], higher: bool) -> float:
    known = [v for v in values if v == v]
    if not known:
        return NAN
    return max(known) if higher else min(known)


def table(res: Results, plan: Plan) -> str:
    """One row per metric: zauction, each PySyncObj configuration, zauction / best of those."""
    names = list(res)
    ours, theirs = "zauction", [n for n in names if n.startswith("pso")]
    head = f"{'metric':<42}" + "".join(f"{n:>13}" for n in names) + f"{'z/best pso':>12}  better"
    lines = [head, "-" * len(head)]
    for label, value, higher in ROWS:
        values = {n: value(res[n]) for n in names}
        a, b = values.get(ours, NAN), _best([values[n] for n in theirs], bool(higher))
        ratio = a / b if higher is not None and b and a == a and b == b else NAN
        better = "" if ratio != ratio or a == b else ("zauction" if (a > b) == higher
                                                      else "pysyncobj")
        lines.append(f"{label:<42}"
                     + "".join(f"{_fmt(values[n]):>13}" for n in names)
                     + f"{(f'{ratio:.2f}x' if ratio == ratio else '-'):>12}  {better}")
    return "\n".join(lines)


def details(result: dict) -> list[str]:
    name, out = result["system"], []
    for key in ("sweep", "peak_runs", "latency_runs"):
        if result.get(key):
            out.append(f"{name} {key}: " + "; ".join(
                f"{r['inflight']} in flight {r['ops_s']:.0f} ops/s p50 {r['p50_ms']:.2f} "
                f"p99 {r['p99_ms']:.2f} ms" for r in result[key]))
    if "loadgen_peak" in result:
        out.append(f"{name} peak by zauction.tools.loadgen.run_load (cross-check, no warmup): "
                   f"{result['loadgen_peak']:.0f} ops/s")
    if result.get("search"):
        out.append(f"{name} open-loop grid: " + "; ".join(
            f"{p['rate']:.0f}/s p99 {p['p99_ms']:.2f} ms" for p in result["search"]))
    if "overload" in result:
        o = result["overload"]
        out.append(f"{name} 1.5x peak: offered {o['offered']} at {o['rate']:.0f}/s, committed "
                   f"{o['committed']}, unfinished {o['unfinished']}, failed {o['failed']}")
    if "failover_s" in result:
        out.append(f"{name} failovers, ms: " + ", ".join(
            "none" if t is None else f"{t * 1000:.0f}" for t in result["failover_s"]))
    return out


# --- main -----------------------------------------------------------------------------------------

PHASES = ("peak", "latency", "search", "overload", "failover")
# PySyncObj's two best configurations (see the report): batching with a short append period
# for throughput, and appendEntriesUseBatch=False (every command sent at once) for latency.
PSO_BATCH = "--append-period=0.02 --tick-period=0.005"
PSO_NOBATCH = "--no-batch"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few seconds per point")
    p.add_argument("--phases", default=",".join(PHASES), help="subset of " + ",".join(PHASES))
    p.add_argument("--durability", default="always", choices=("always", "batch", "off"),
                   help="zauction's fsync policy (default always: fsync per batch)")
    p.add_argument("--pso-batch", default=PSO_BATCH, help="pso_node.py flags, batching config")
    p.add_argument("--pso-nobatch", default=PSO_NOBATCH, help="pso_node.py flags, latency config")
    p.add_argument("--inflight", type=int, default=None,
                   help="one in-flight level for the peak instead of the sweep")
    p.add_argument("--with-zauction-batch", action="store_true",
                   help="also measure zauction with durability=batch (grouped fsyncs)")
    p.add_argument("--json", type=Path, default=None, help="also write every number here")
    p.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    return p.parse_args(argv)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def starters(args: argparse.Namespace, base: Path) -> dict[str, Callable[[], NodeSet]]:
    extra: dict[str, Callable[[], NodeSet]] = {}
    if args.with_zauction_batch:
        extra["zauction-batch"] = lambda: start_zauction(base / "zauction-batch", 3, "batch",
                                                         "zauction-batch")
    return {
        "zauction": lambda: start_zauction(base / "zauction", 3, args.durability),
        **extra,
        "pso-batch": lambda: start_pso(base / "pso-batch", 3, args.pso_batch.split(),
                                       "pso-batch"),
        "pso-nobatch": lambda: start_pso(base / "pso-nobatch", 3, args.pso_nobatch.split(),
                                         "pso-nobatch"),
    }


def run(args: argparse.Namespace, plan: Plan, base: Path) -> Results:
    """Start every cluster, measure them in turn, and stop every process in any case."""
    clusters: dict[str, NodeSet] = {}
    worker = Worker()
    try:
        for name, start in starters(args, base).items():
            clusters[name] = start()
            say(f"{name}: started {', '.join(clusters[name].servers)}")
        for nodes in clusters.values():
            wait_leader(nodes, worker, 60.0)
        return measure_all(clusters, worker, plan, set(args.phases.split(",")))
    finally:
        stop_all(list(clusters.values()), worker)


def stop_all(clusters: list[NodeSet], worker: Worker) -> None:
    """The nodes first (they must not outlive us), then the worker; one failure stops no other."""
    for nodes in clusters:
        try:
            local.stop_cluster(nodes.handle, STOP_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError, local.ClusterError) as exc:
            say(f"{nodes.name}: could not stop every node: {exc}")
    try:
        worker.close()
    except OSError as exc:
        say(f"could not stop the load process: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Even when started with SIGINT ignored (a background job of a script), Ctrl-C / kill -INT
    # must stop the run and its nodes.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    plan = QUICK if args.quick else FULL
    if args.inflight:
        plan = dataclasses.replace(plan, levels=(args.inflight,))
    base = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    load_before = os.getloadavg()
    res: Results = {}
    keep = args.keep  # and whenever something failed: the node logs say why
    try:
        with sigterm_as_interrupt():
            res = run(args, plan, base)
        keep = keep or any("error" in r or "crashes" in r for r in res.values())
    except KeyboardInterrupt:
        say("interrupted: every node started was stopped")
        return 130
    except BenchError as exc:
        keep = True
        say(f"error: {exc} (data directories and logs kept in {base})")
        return 1
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    print(report(res, plan, args, load_before))
    if keep:
        print(f"\ndata directories and node logs kept in {base}")
    if args.json:
        doc = {"plan": dataclasses.asdict(plan), "args": vars(args), "results": res}
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    return 0


def report(res: Results, plan: Plan, args: argparse.Namespace,
           load_before: tuple[float, float, float]) -> str:
    mode = "quick" if args.quick else "full"
    lines = [
        f"zauction: 3 nodes, durability={args.durability}.  PySyncObj 0.3.17: 3 nodes, journal "
        f"file, pso-batch = [{args.pso_batch}], pso-nobatch = [{args.pso_nobatch}].",
        f"{mode} run: {plan.seconds:g} s per point ({plan.search_seconds:g} s in the rate grid), "
        f"peak over in-flight levels {', '.join(map(str, plan.levels))}, medians of "
        f"{plan.runs} run(s), {plan.kills} kills each; {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "", table(res, plan), ""]
    for result in res.values():
        lines += details(result)
        for crash in result.get("crashes", []):
            lines.append(f"{result['system']} NODE EXITED BY ITSELF (restarted): {crash}")
        if "error" in result:
            lines.append(f"{result['system']} DROPPED: {result['error']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
