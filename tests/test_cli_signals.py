"""Signals: `zauction cluster up` and `zauction demo` stop every node they started when they get
SIGTERM, SIGINT or SIGHUP (SIGTERM to each node, SIGKILL after a deadline, and a second signal
does not cut that short), and a single `zauction node` exits promptly on SIGTERM.

Each test starts real processes on free ports, waits on conditions with deadlines, and kills
whatever is left by PID however it ends."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from zauction.tools import cluster, ports

REPO = Path(__file__).resolve().parent.parent
STOPPED_WITHIN_S = 4.0  # the nodes must be gone this soon after the signal
START_DEADLINE_S = 30.0  # a 2-core machine shared with other work starts Python slowly
POLL_S = 0.05

pytestmark = pytest.mark.timeout(90)
processes = pytest.mark.processes


def child_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "200",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")]))}


def wait_until(condition: Callable[[], object], seconds: float, what: str) -> object:
    """Poll `condition` until it is true; fail naming `what` once `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {seconds:g}s waiting for {what}")
        time.sleep(POLL_S)  # a bounded poll of another process's state


def kill_by_pid(pids: Iterable[int]) -> None:
    for pid in pids:
        if cluster.is_alive(pid):
            os.kill(pid, signal.SIGKILL)


def alive(pids: Iterable[int]) -> list[int]:
    return [pid for pid in pids if cluster.is_alive(pid)]


def start_cli(args: list[str], tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    """`python -m zauction ARGS` in a session of its own, its output in `log` (a file: a pipe
    nobody reads could block it)."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "zauction", *args], cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=child_env(tmp_path), start_new_session=True)


def handle_of(pids: list[int], base: int, host: str = "127.0.0.1") -> cluster.ClusterHandle:
    return cluster.ClusterHandle(Path("."), tuple(
        cluster.NodeProcess(f"{host}:{base + i}", base + i, pid, "d", "l")
        for i, pid in enumerate(pids)))


def end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# --- cluster up ----------------------------------------------------------------------------------


@processes
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_cluster_up_stops_every_node_when_it_is_signalled(tmp_path, sig) -> None:
    base = ports.free_port_run(3)
    root = tmp_path / "cluster"
    log = tmp_path / "cli.log"
    proc = start_cli(["cluster", "up", "--nodes", "3", "--base-port", str(base), "--host",
                      "127.0.0.1", "--data-dir", str(root), "--durability", "off"], tmp_path, log)
    pids: list[int] = []
    try:
        def recorded() -> cluster.ClusterHandle | None:
            try:
                return cluster.load_cluster(root)
            except cluster.ClusterError:
                assert proc.poll() is None, log.read_text()
                return None

        handle = wait_until(recorded, START_DEADLINE_S, "cluster.json")
        pids = [n.pid for n in handle.nodes]
        cluster.wait_serving(handle, time.monotonic() + START_DEADLINE_S)
        assert proc.poll() is None, log.read_text()

        os.kill(proc.pid, sig)
        wait_until(lambda: not alive(pids), STOPPED_WITHIN_S,
                   f"nodes {alive(pids)} to stop after {sig.name}")
        assert proc.wait(timeout=15) in (0, 130), log.read_text()
        assert not (root / cluster.CLUSTER_FILE).exists()
        assert log.read_text().count(": stopped") == 3, log.read_text()
    finally:
        end(proc)
        kill_by_pid(pids)


# --- demo -----------------------------------------------------------------------------------------


@processes
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_demo_stops_every_node_when_it_is_signalled(tmp_path, sig) -> None:
    base = ports.free_port_run(3)
    demo_tmp = tmp_path / "tmp"
    demo_tmp.mkdir()
    log = tmp_path / "demo.log"
    # Enough bids that the demo is still running when the signal comes.
    proc = start_cli(["demo", "--base-port", str(base), "--bids", "10000"], demo_tmp, log)
    pids: list[int] = []
    try:
        def started() -> list[int]:
            assert proc.poll() is None, log.read_text()
            text = log.read_text()
            return [int(p) for p in re.findall(r"pid (\d+)", text)] if "started" in text else []

        pids = wait_until(lambda: len(started()) == 3 and started(), START_DEADLINE_S,
                          "the demo's nodes")
        cluster.wait_serving(handle_of(pids, base, "localhost"),
                             time.monotonic() + START_DEADLINE_S)
        assert proc.poll() is None, log.read_text()

        os.kill(proc.pid, sig)
        wait_until(lambda: not alive(pids), STOPPED_WITHIN_S,
                   f"nodes {alive(pids)} to stop after {sig.name}")
        assert proc.wait(timeout=15) == 130, log.read_text()
        assert list(demo_tmp.iterdir()) == []  # its cluster directory is gone too
    finally:
        end(proc)
        kill_by_pid(pids)


# --- the stop itself: SIGKILL after the deadline, whatever signals come meanwhile --------------

# A node that does not stop on SIGTERM: it notes the signal in its log and carries on.
STUBBORN = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM", flush=True))
print("ready", flush=True)
while True:
    signal.pause()
"""

# A command that runs nodes the way `cluster up` does: interrupted, it stops them.
RUNNER = """
import signal, sys
from pathlib import Path
from zauction.tools import cluster

root = Path(sys.argv[1])
nodes = tuple(cluster.NodeProcess(f"stub:{i}", i, 0, root / f"d{i}", root / f"n{i}.log",
                                  (sys.executable, "-c", sys.argv[2]))
              for i in (1, 2))
with cluster.sigterm_as_interrupt():
    handle = cluster.launch(cluster.ClusterHandle(root, nodes))
    print("launched", *(n.pid for n in handle.nodes), flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        reports = cluster.stop_cluster(handle, timeout=2.0)
        print("stopped", *(r.outcome for r in reports), flush=True)
"""


@processes
def test_a_second_signal_does_not_cut_the_stop_short(tmp_path) -> None:
    log = tmp_path / "runner.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path), STUBBORN],
                                stdout=out, stderr=subprocess.STDOUT, env=child_env(tmp_path),
                                start_new_session=True)
    pids: list[int] = []
    node_logs = [tmp_path / "n1.log", tmp_path / "n2.log"]

    def all_logs_say(text: str) -> bool:
        return all(p.exists() and text in p.read_text() for p in node_logs)

    try:
        def launched() -> list[int]:
            assert proc.poll() is None, log.read_text()
            found = re.search(r"launched (\d+) (\d+)", log.read_text())
            return [int(p) for p in found.groups()] if found else []

        pids = wait_until(launched, START_DEADLINE_S, "the runner's nodes")
        wait_until(lambda: all_logs_say("ready"), START_DEADLINE_S, "the nodes to be ready")

        os.kill(proc.pid, signal.SIGTERM)
        wait_until(lambda: all_logs_say("got SIGTERM"), 10, "the stop to signal the nodes")
        os.kill(proc.pid, signal.SIGTERM)  # impatient: again, while the stop waits for them

        wait_until(lambda: not alive(pids), 2.0 + STOPPED_WITHIN_S,
                   f"nodes {alive(pids)} to be killed after the stop's deadline")
        assert proc.wait(timeout=15) == 0, log.read_text()
        assert "stopped killed killed" in log.read_text()
    finally:
        end(proc)
        kill_by_pid(pids)


@processes
def test_an_interrupt_while_a_node_starts_waits_until_its_pid_is_recorded(tmp_path, monkeypatch):
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):  # the signal lands while Popen runs
        child = real_popen([sys.executable, "-c", "import signal; signal.pause()"],
                           start_new_session=True)
        started.append(child)
        os.kill(os.getpid(), signal.SIGTERM)
        return child

    node = cluster.NodeProcess("stub:1", 1, 0, tmp_path / "d", tmp_path / "n.log", ("true",))
    try:
        with cluster.sigterm_as_interrupt():
            monkeypatch.setattr(cluster.subprocess, "Popen", popen)
            with pytest.raises(KeyboardInterrupt):
                cluster.launch(cluster.ClusterHandle(tmp_path, (node,)))
            monkeypatch.undo()
        assert node.pid == started[0].pid  # recorded, so launch could stop it
        assert started[0].wait(timeout=10) == -signal.SIGTERM
    finally:
        for child in started:
            end(child)


def test_cluster_up_stops_a_cluster_interrupted_while_it_starts(tmp_path, monkeypatch):
    from test_cli import run

    handle = cluster.ClusterHandle(tmp_path, ())
    stopped: list[cluster.ClusterHandle] = []

    def start_cluster(root, **kwargs):  # SIGTERM lands while the nodes are being started
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes run: the handler has had its chance
            pass
        return handle

    monkeypatch.setattr(cluster, "start_cluster", start_cluster)
    monkeypatch.setattr(cluster, "stop_cluster", lambda h, *a, **k: stopped.append(h) or [])
    res = run("cluster", "up", "--data-dir", str(tmp_path))
    assert stopped == [handle], res.output
    assert res.exit_code == 130


def test_deferred_interrupts_raise_once_the_block_ends() -> None:
    reached = False
    before = signal.getsignal(signal.SIGTERM)
    with cluster.sigterm_as_interrupt():
        with pytest.raises(KeyboardInterrupt):
            with cluster.deferred_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # bytecodes run: the handler has had its chance
                    pass
                reached = True
    assert reached
    assert signal.getsignal(signal.SIGTERM) == before


# --- a single node ----------------------------------------------------------------------------------


@processes
@pytest.mark.parametrize("peers", [0, 2], ids=["alone", "peers-down"])
def test_a_node_exits_promptly_on_sigterm(tmp_path, peers) -> None:
    port, *others = ports.free_ports(1 + peers)
    addr = f"127.0.0.1:{port}"
    log = tmp_path / "node.log"
    proc = start_cli(["node", "--addr", addr, "--peers",
                      ",".join(f"127.0.0.1:{p}" for p in others), "--data-dir",
                      str(tmp_path / "data"), "--durability", "off"], tmp_path, log)
    try:
        node = cluster.NodeProcess(addr, port, proc.pid, "d", "l", proc=proc)
        cluster.wait_serving(cluster.ClusterHandle(tmp_path, (node,)),
                             time.monotonic() + START_DEADLINE_S)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=STOPPED_WITHIN_S) == 0, log.read_text()
        assert f"node {addr} stopped" in log.read_text()
    finally:
        end(proc)
