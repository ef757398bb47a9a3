"""A real cluster for tests: N `zauction node` processes on free 127.0.0.1 ports, one log
file each, run through zauction.tools.cluster (the API `zauction cluster up` uses too).

Every wait is a condition polled until a deadline (`wait_until`); nothing sleeps to
synchronize. `stop_all()` ends every process it started, by PID (SIGTERM, then SIGKILL after
a deadline); the tests call it from a fixture finalizer (or leave a `with Cluster(...)` block)
so that no node outlives its test.

Also shared by the real-process tests: `running_cluster` (started, led, default auction open),
`Bidders` (threads that bid under load and record every outcome) and the checks
`agreed_history` and `assert_acked_present`.
"""

from __future__ import annotations

import functools
import itertools
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from zauction.client.client import (
    AuctionClient,
    BidRejected,
    ClientError,
    ClusterUnavailable,
    UnknownAuctionError,
)
from zauction.tools import cluster as local
from zauction.tools.cluster import NodeProcess as Node
from zauction.tools.ports import free_ports

__all__ = ["REPO", "Bidders", "BindFailed", "Cluster", "HarnessError", "Node", "Outcome",
           "agreed_history", "assert_acked_present", "free_ports", "repo_env",
           "running_cluster", "shows_logs", "wait_until"]

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.02  # the interval at which conditions are polled
LOG_TAIL_LINES = 40

T = TypeVar("T")


class HarnessError(AssertionError):
    """The cluster did not reach a state the test waited for (logs are in the message)."""


class BindFailed(HarnessError):
    """A node could not bind its port: another process took it between pick and start."""


def wait_until(condition: Callable[[], T], deadline_s: float, what: str,
               explain: Callable[[], str] = lambda: "") -> T:
    """Poll `condition` until it returns something truthy; raise HarnessError at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= end:
            raise HarnessError(f"timed out after {deadline_s:.1f}s waiting for {what}\n{explain()}")
        # Polling a condition with a deadline (the house rule), not a synchronizing sleep.
        time.sleep(POLL_S)


def repo_env() -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH, for children that
    must import this checkout (installed or not)."""
    return local.child_env(REPO)


class Cluster:
    def __init__(self, workdir: Path, size: int = 3, *, auction_duration_ms: int = 100_000,
                 start_attempts: int = 3, node_args: Sequence[str] = (),
                 prepare: Callable[[Node], None] | None = None):
        """`node_args` are extra `zauction node` options for every node (--snapshot-every 50);
        `prepare(node)` runs before a node's first start, to seed its data directory."""
        self.workdir = workdir
        self.size = size
        self.auction_duration_ms = auction_duration_ms
        self.start_attempts = start_attempts
        self.node_args = tuple(node_args)
        self.prepare = prepare
        self.handle: local.ClusterHandle | None = None
        self._clients: list[AuctionClient] = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    @property
    def nodes(self) -> dict[str, Node]:
        """Each node by address, in start order (empty before start())."""
        return {n.addr: n for n in self.handle.nodes} if self.handle else {}

    # --- starting ---------------------------------------------------------------------------

    def start(self, ready_deadline_s: float = 10.0) -> Cluster:
        """Start every node on fresh ports; retry on new ports if one could not bind."""
        for attempt in range(1, self.start_attempts + 1):
            try:
                self.handle = local.start_cluster(
                    self.workdir / f"attempt{attempt}", ports=free_ports(self.size),
                    host="127.0.0.1", auction_duration_ms=self.auction_duration_ms,
                    node_args=self.node_args, prepare=self.prepare)
                self._wait_serving(ready_deadline_s)
                return self
            except (BindFailed, local.PortInUse):  # taken between free_ports() and start
                self.stop_all()
        raise HarnessError(f"no free ports after {self.start_attempts} attempts\n{self.logs()}")

    def _wait_serving(self, deadline_s: float, addrs: Iterable[str] | None = None) -> None:
        """Until the nodes answer a status request (their ROUTER is bound)."""
        try:
            local.wait_serving(self.handle, time.monotonic() + deadline_s, addrs)
        except local.PortTaken as exc:
            raise BindFailed(f"{exc}\n{self.logs()}") from None
        except (local.ClusterError, ClusterUnavailable) as exc:
            raise HarnessError(f"{exc}\n{self.logs()}") from None

    # --- observing ----------------------------------------------------------------------------

    def client(self, servers: Iterable[str] | None = None, **options: Any) -> AuctionClient:
        """A client of `servers` (default: every node), closed by stop_all()."""
        options.setdefault("timeout", 10.0)
        client = AuctionClient(list(servers or self.nodes), **options)
        self._clients.append(client)
        return client

    def _forget(self, client: AuctionClient) -> None:
        client.close()
        self._clients.remove(client)

    def statuses(self, addrs: Iterable[str] | None = None) -> dict[str, dict]:
        """Each node's status (role "unreachable" when it does not answer in time)."""
        addrs = list(addrs or self.serving())
        probe = self.client(addrs, attempt_timeout=0.3)
        try:
            return {s["addr"]: s for s in probe.status()}
        finally:
            self._forget(probe)

    def status(self, addr: str) -> dict:
        """One node's status (role "unreachable" when it does not answer in time)."""
        return self.statuses([addr])[addr]

    def serving(self) -> list[str]:
        """Nodes whose process runs and is not paused by SIGSTOP."""
        return [addr for addr, node in self.nodes.items() if node.serving]

    def others(self, addr: str) -> list[str]:
        return [a for a in self.nodes if a != addr]

    def wait_for_leader(self, deadline_s: float = 10.0,
                        addrs: Iterable[str] | None = None) -> str:
        """The leader once exactly one of `addrs` (default: the serving nodes) leads and all
        of them agree on it and on the term."""
        addrs = list(addrs or self.serving())
        try:
            return local.wait_for_leader(addrs, time.monotonic() + deadline_s, self.handle,
                                         agreed=True)
        except (local.ClusterError, ClusterUnavailable) as exc:
            raise HarnessError(f"timed out after {deadline_s:.1f}s waiting for one leader "
                               f"agreed by {addrs} ({exc})\n{self.explain()}") from None

    def leader(self) -> str:
        return self.wait_for_leader()

    def wait_for_default_auction(self, deadline_s: float = 10.0) -> dict:
        """The default auction's result, once the leader has opened it."""
        probe = self.client(timeout=1.0)

        def opened() -> dict | None:
            try:
                return probe.result()
            except (UnknownAuctionError, ClientError):  # not opened yet, or no leader yet
                return None

        try:
            return wait_until(opened, deadline_s, "the default auction", self.explain)
        finally:
            self._forget(probe)

    def wait_applied_equal(self, addrs: Iterable[str], deadline_s: float = 10.0) -> int:
        """Until every node in `addrs` has applied everything committed, at the same index."""
        addrs = list(addrs)

        def settled() -> int | None:
            statuses = self.statuses(addrs).values()
            applied = {(s.get("applied_index"), s.get("commit_index")) for s in statuses}
            if len(applied) == 1:
                index, commit = applied.pop()
                return index if index is not None and index == commit else None
            return None

        return wait_until(settled, deadline_s, f"equal applied index on {addrs}", self.explain)

    # --- faults --------------------------------------------------------------------------------

    def kill(self, addr: str, sig: signal.Signals = signal.SIGKILL,
             deadline_s: float = 5.0) -> None:
        """SIGKILL (a crash), SIGTERM (a clean stop), SIGSTOP (pause) or SIGCONT (resume)."""
        if not self.nodes[addr].alive:
            raise HarnessError(f"{addr} is not running")
        if sig == signal.SIGKILL:
            local.kill_node(self.handle, addr, deadline_s)
        elif sig == signal.SIGTERM:
            local.stop_node(self.handle, addr, deadline_s)
        elif sig == signal.SIGSTOP:
            local.pause_node(self.handle, addr)
        elif sig == signal.SIGCONT:
            local.resume_node(self.handle, addr)
        else:
            raise HarnessError(f"no fault for signal {sig!r}")

    def restart(self, addr: str, ready_deadline_s: float = 10.0) -> None:
        """Start a stopped node again on its address and data directory."""
        if self.nodes[addr].alive:
            raise HarnessError(f"{addr} is still running")
        local.restart_node(self.handle, addr)
        self._wait_serving(ready_deadline_s, [addr])

    def stop_all(self, deadline_s: float = 5.0) -> None:
        """SIGTERM every node, wait until the deadline, then SIGKILL; close every client."""
        for client in list(self._clients):
            self._forget(client)
        if self.handle is not None:
            local.stop_cluster(self.handle, deadline_s)

    # --- explaining failures ---------------------------------------------------------------

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of every node's log, for assertion messages."""
        parts = []
        for addr, node in self.nodes.items():
            state = "paused" if node.paused else "alive" if node.alive else "down"
            tail = local.log_tail(node, lines) or "(no log)"
            parts.append(f"==== {addr} ({state}) {node.log_file}\n{tail}")
        return "\n".join(parts)

    def log_of(self, addr: str) -> str:
        return self.nodes[addr].log_file.read_text(errors="replace")

    def explain(self) -> str:
        try:
            statuses = self.statuses(self.serving())
        except Exception as exc:  # noqa: BLE001 (explaining a failure must not fail)
            statuses = {"error": repr(exc)}
        summary = "\n".join(f"  {a}: {_brief(s)}" for a, s in statuses.items())
        return f"statuses:\n{summary}\n{self.logs()}"


def _brief(status: Any) -> str:
    if not isinstance(status, dict):
        return str(status)
    keys = ("role", "term", "leader", "commit_index", "applied_index", "last_index")
    return " ".join(f"{k}={status.get(k)}" for k in keys)


def shows_logs(test: Callable[..., None]) -> Callable[..., None]:
    """Decorate a test taking a `cluster` fixture: a failure carries the nodes' logs."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            test(*args, **kwargs)
        except BaseException as exc:
            cluster = kwargs.get("cluster")
            if isinstance(cluster, Cluster):
                explanation = cluster.explain()
                if hasattr(exc, "add_note"):  # Python 3.11+
                    exc.add_note(explanation)
                else:  # captured, and shown with the failure
                    print(explanation, file=sys.stderr)
            raise

    return wrapper


@contextmanager
def running_cluster(workdir: Path, **options: Any) -> Iterator[Cluster]:
    """A started Cluster(workdir, **options) with an agreed leader and the default auction
    open; every process is stopped by PID when the block ends, however it ends."""
    with Cluster(workdir, **options) as nodes:
        nodes.start()
        nodes.wait_for_leader()
        nodes.wait_for_default_auction()
        yield nodes


# --- bidders: threads that bid rising amounts and record every outcome -----------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One bid and the cluster's answer; `sent` and `done` are time.monotonic() readings."""

    bidder: str
    amount: int
    sent: float
    done: float
    verdict: str  # "ok" (acknowledged), "rejected" (judged and refused) or "unknown"
    reason: str | None = None


class Bidders:
    """`count` threads, each with its own AuctionClient, bidding the next amount of `amounts`
    (default: 1, 2, 3 ...) until the `with` block ends.

    Concurrent bidders race, so some bids arrive below the highest and are rejected: that is a
    verdict too, and a rejected amount must never appear in the history. A bid that times out
    (the node died, the cluster is electing) has an unknown outcome. `amounts` may be shared by
    several Bidders in turn, so that a later round bids above an earlier one.
    """

    def __init__(self, servers: Sequence[str], count: int = 3, *, timeout: float = 10.0,
                 amounts: Iterator[int] | None = None, stop_deadline_s: float = 15.0):
        """`timeout` is each client's per-request budget; the threads must all have stopped
        `stop_deadline_s` after the block ends."""
        self.servers = list(servers)
        self.timeout = timeout
        self.stop_deadline_s = stop_deadline_s
        self.outcomes: list[Outcome] = []
        self.errors: list[BaseException] = []
        self._amounts = amounts if amounts is not None else itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(f"bidder{i}",),
                                          name=f"bidder{i}", daemon=True)
                         for i in range(count)]

    def __enter__(self) -> Bidders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop(self.stop_deadline_s, check=exc_type is None)  # keep the test's own failure

    def stop(self, deadline_s: float = 15.0, check: bool = True) -> None:
        """Stop every thread; with `check`, assert that they stopped and none failed."""
        self._stop.set()
        end = time.monotonic() + deadline_s
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        if not check:
            return
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"bidder threads did not stop: {stuck}"
        assert not self.errors, f"bidders failed: {self.errors!r}"

    def next_amount(self) -> int:
        with self._lock:
            return next(self._amounts)

    def _run(self, name: str) -> None:
        client = AuctionClient(self.servers, timeout=self.timeout)
        try:
            while not self._stop.is_set():
                self.bid_once(client, name)
        except BaseException as exc:  # noqa: BLE001 (reported by stop() and wait_acked())
            self.errors.append(exc)
        finally:
            client.close()

    def bid_once(self, client: AuctionClient, name: str) -> Outcome:
        """One bid of the next amount, its outcome recorded (any thread, its own client)."""
        amount, sent = self.next_amount(), time.monotonic()
        try:
            client.bid(amount, name)
            outcome = Outcome(name, amount, sent, time.monotonic(), "ok")
        except BidRejected as exc:
            outcome = Outcome(name, amount, sent, time.monotonic(), "rejected", exc.reason)
        except ClusterUnavailable:
            outcome = Outcome(name, amount, sent, time.monotonic(), "unknown")
        self.outcomes.append(outcome)
        return outcome

    def acked(self, after: float = 0.0) -> list[Outcome]:
        """The acknowledged bids sent at or after `after` (a time.monotonic() reading)."""
        return [o for o in list(self.outcomes) if o.verdict == "ok" and o.sent >= after]

    def wait_acked(self, count: int, deadline_s: float, after: float = 0.0) -> None:
        """Until `count` bids sent since `after` are acknowledged; fails if a bidder failed."""
        wait_until(lambda: len(self.acked(after)) >= count or self.errors, deadline_s,
                   f"{count} acknowledged bids")
        assert not self.errors, f"bidders failed: {self.errors!r}"


# --- checks -------------------------------------------------------------------------------------


def agreed_history(cluster: Cluster, addrs: list[str], deadline_s: float = 10.0) -> list[dict]:
    """Once `addrs` applied the same index (waited for up to `deadline_s`), each node's own
    (stale) result and history must be identical. Returns that history."""
    cluster.wait_applied_equal(addrs, deadline_s)
    seen = {}
    for addr in addrs:
        local = cluster.client([addr])
        seen[addr] = (local.result(stale=True), local.history(stale=True))
    first = addrs[0]
    for addr in addrs[1:]:
        assert seen[addr][0] == seen[first][0], f"{addr} and {first} disagree on the result"
        assert seen[addr][1] == seen[first][1], f"{addr} and {first} disagree on the history"
    return seen[first][1]


def assert_acked_present(history: list[dict], outcomes: list[Outcome]) -> None:
    """The history is strictly increasing, holds every acknowledged bid (by its bidder) and no
    rejected one, and invents nothing: each amount in it was sent with an ok or unknown
    outcome."""
    in_history = {h["amount"]: h["bidder"] for h in history}
    amounts = [h["amount"] for h in history]
    assert amounts == sorted(set(amounts)), "the history is not strictly increasing"
    for o in outcomes:
        if o.verdict == "ok":
            assert in_history.get(o.amount) == o.bidder, f"acknowledged bid lost: {o}"
        elif o.verdict == "rejected":
            assert o.amount not in in_history, f"rejected bid in the history: {o}"
    sent = {o.amount for o in outcomes if o.verdict in ("ok", "unknown")}
    invented = set(in_history) - sent
    assert not invented, f"bids in history that nobody made or whose rejection we saw: {invented}"
