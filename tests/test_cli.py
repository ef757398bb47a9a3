"""The command line: argument parsing, JSON shapes, exit codes, and one real demo run."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from brokerless.storage import CorruptDataError, IdentityMismatchError
from zauction.cli import console, params
from zauction.cli.app import app
from zauction.cli.console import ExitCode
from zauction.client.client import (
    BadRequest,
    BidRejected,
    ClusterUnavailable,
    RequestTimeout,
    UnknownAuctionError,
)
from zauction.server import logs
from zauction.tools import cluster, ports

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


# --- a client double ------------------------------------------------------------------------------


class FakeClient:
    """Stands in for AuctionClient: records calls, answers from canned data or raises."""

    instances: list[FakeClient] = []

    def __init__(self, servers, timeout=5.0, attempt_timeout=0.5):
        self.servers = list(servers)
        self.timeout = timeout
        self.calls: list[tuple] = []
        self.raises: BaseException | None = FakeClient.next_raise
        FakeClient.instances.append(self)

    next_raise: BaseException | None = None
    statuses: list[dict] = []
    events: list[dict] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def close(self):
        return None

    def _answer(self, call, value):
        self.calls.append(call)
        if self.raises is not None:
            raise self.raises
        return value

    def bid(self, amount, bidder, auction="default"):
        return self._answer(("bid", amount, bidder, auction),
                            {"ok": True, "high": amount, "min_next": amount + 1})

    def result(self, auction="default", stale=False):
        return self._answer(("result", auction, stale), {
            "auction": auction, "state": "open", "highest": {"bidder": "bob", "amount": 7},
            "winner": None, "item": "x", "reserve": 1, "increment": 1, "bids": 2,
            "opens_at_ms": 0, "closes_at_ms": 1})

    def history(self, auction="default", stale=False):
        return self._answer(("history", auction), [
            {"index": 3, "bidder": "al", "amount": 5, "ts_ms": 1},
            {"index": 4, "bidder": "bob", "amount": 7, "ts_ms": 2}])

    def status(self):
        return self._answer(("status",), FakeClient.statuses)

    def watch(self, auction=None):
        self.calls.append(("watch", auction))
        yield from FakeClient.events
        raise KeyboardInterrupt  # the user's Ctrl-C


NODE = {"addr": "h:1", "role": "leader", "term": 3, "leader": "h:1", "commit_index": 9,
        "applied_index": 9, "heartbeat_age_ms": 0.0}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    FakeClient.instances = []
    FakeClient.next_raise = None
    FakeClient.statuses = [NODE, {"addr": "h:2", "role": "unreachable"}]
    FakeClient.events = []
    monkeypatch.setattr(cluster, "open_client", FakeClient)
    monkeypatch.delenv("ZAUCTION_SERVERS", raising=False)
    return FakeClient


def run(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


# --- durations, addresses, timing ------------------------------------------------------------------


@pytest.mark.parametrize("text, ms", [
    ("100s", 100_000), ("1.5s", 1500), ("250ms", 250), ("2m", 120_000), ("1h", 3_600_000),
    ("30ms", 30), ("0.0015s", 2), ("1d", 86_400_000),
])
def test_durations_parse_to_milliseconds(text: str, ms: int) -> None:
    assert params.parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "10 parsecs", "-5s", "1e3s", "s", "0s", "0.1ms", "5 m s",
                                  " 30ms ", "10 s"])
def test_bad_durations_are_refused_with_a_clear_error(text: str) -> None:
    with pytest.raises(params.DurationError, match="duration|too short"):
        params.parse_duration_ms(text)


def test_a_bare_number_is_seconds_unless_a_default_unit_says_otherwise() -> None:
    assert params.parse_duration_ms("2") == 2000
    assert params.parse_duration_ms("2", default_unit="ms") == 2


def test_timing_rounds_to_ticks_and_keeps_elections_above_two_heartbeats() -> None:
    timing = params.timing_from(10, 34, 156)
    assert (timing.tick_ms, timing.heartbeat_ticks, timing.election_ticks) == (10, 3, 16)
    with pytest.raises(typer.BadParameter, match="at least 2 heartbeat"):
        params.timing_from(10, 30, 50)
    with pytest.raises(typer.BadParameter, match="shorter than a tick"):
        params.timing_from(10, 4, 150)


@pytest.mark.parametrize("bad", ["localhost", ":80", "h:0", "h:70000", "h:http", ""])
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises(typer.BadParameter):
        params.parse_addr(bad)


def test_node_rejects_bad_timing_with_usage_error() -> None:
    res = run("node", "--addr", "localhost:1", "--election-timeout", "40ms")
    assert res.exit_code == 2
    assert "--election-timeout" in res.output and "heartbeat" in res.output


def test_node_rejects_a_bad_duration_unit() -> None:
    res = run("node", "--addr", "localhost:1", "--tick", "5x")
    assert res.exit_code == 2 and "not a duration" in res.output


# --- bad input: exit 2, nothing sent ----------------------------------------------------------------


@pytest.mark.parametrize("amount, message", [
    ("abc", "not a whole number"), ("0", "[1, 10**15]"), ("-5", "[1, 10**15]"),
    (str(10**15 + 1), "[1, 10**15]"), ("1.5", "not a whole number"),
])
def test_bad_amounts_exit_2_and_send_nothing(fake, amount: str, message: str) -> None:
    res = run("bid", "--amount", amount, "--bidder", "al")
    assert res.exit_code == 2
    assert message in res.output
    assert all(not c.calls for c in fake.instances)


def test_bad_bidder_and_servers_exit_2(fake) -> None:
    assert run("bid", "--amount", "5", "--bidder", "").exit_code == 2
    assert run("bid", "--amount", "5", "--bidder", "a\x07b").exit_code == 2
    res = run("bid", "--amount", "5", "--bidder", "al", "--servers", "nohost")
    assert res.exit_code == 2 and "HOST:PORT" in res.output
    assert all(not c.calls for c in fake.instances)


def test_auction_open_validates_before_sending(fake) -> None:
    res = run("auction", "open", "lamp", "--duration", "soon")
    assert res.exit_code == 2 and "not a duration" in res.output
    assert run("auction", "open", "lamp", "--duration", "1m", "--reserve", "0").exit_code == 2
    assert not fake.instances or all(not c.calls for c in fake.instances)


# --- JSON shapes -----------------------------------------------------------------------------------


def test_bid_json_when_accepted(fake) -> None:
    res = run("bid", "--amount", "12", "--bidder", "al", "--auction", "lamp", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"accepted": True, "auction": "lamp", "bidder": "al",
                                      "amount": 12, "reason": None}
    assert fake.instances[0].calls == [("bid", 12, "al", "lamp")]


def test_bid_json_when_rejected_exits_1(fake) -> None:
    fake.next_raise = BidRejected("below_increment", "too low", {"high": 20, "min_next": 21})
    res = run("bid", "--amount", "12", "--bidder", "al", "--json")
    assert res.exit_code == 1
    assert json.loads(res.stdout) == {"accepted": False, "auction": "default", "bidder": "al",
                                      "amount": 12, "reason": "below_increment"}


def test_rejected_bid_prints_the_reason(fake) -> None:
    fake.next_raise = BidRejected("below_increment", "below_increment", {"high": 20, "min_next": 21})
    res = run("bid", "--amount", "12", "--bidder", "al")
    assert res.exit_code == 1
    assert "below_increment" in res.stderr and "at least 21" in res.stderr


def test_result_json_shape(fake) -> None:
    res = run("result", "--auction", "lamp", "--stale", "--json")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert {"auction", "state", "highest", "winner"} <= set(doc)
    assert doc["highest"] == {"bidder": "bob", "amount": 7} and doc["winner"] is None
    assert fake.instances[0].calls == [("result", "lamp", True)]


def test_history_json_lists_the_bids(fake) -> None:
    doc = json.loads(run("history", "--json").stdout)
    assert doc["auction"] == "default"
    assert [(b["bidder"], b["amount"]) for b in doc["bids"]] == [("al", 5), ("bob", 7)]


def test_status_json_names_the_leader_and_unreachable_nodes(fake) -> None:
    res = run("status", "--json", "--servers", "h:1,h:2")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["leader"] == "h:1"
    assert [n["role"] for n in doc["nodes"]] == ["leader", "unreachable"]
    assert {"addr", "role", "term", "commit_index", "applied_index"} <= set(doc["nodes"][0])


def test_status_table_shows_unreachable_nodes(fake) -> None:
    res = run("status", "--servers", "h:1,h:2")
    assert res.exit_code == 0
    assert "unreachable" in res.stdout and "leader" in res.stdout


def test_status_exits_3_when_no_node_answers(fake) -> None:
    fake.statuses = [{"addr": "h:1", "role": "unreachable"}]
    res = run("status", "--servers", "h:1")
    assert res.exit_code == 3 and "no node answered" in res.stderr


def test_watch_json_prints_one_object_per_line_and_ctrl_c_exits_0(fake) -> None:
    fake.events = [
        {"index": 5, "term": 2, "type": "bid_accepted", "auction": "a", "seq": 1,
         "bidder": "al", "amount": 3},
        {"index": 6, "term": 2, "type": "auction_closed", "auction": "a", "seq": 2,
         "winner": "al", "amount": 3},
    ]
    res = run("watch", "--json", "--auction", "a")
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert lines == fake.events
    assert ("watch", "a") in fake.instances[0].calls


def test_watch_text_has_a_line_per_event(fake) -> None:
    fake.events = [{"index": 5, "term": 2, "type": "bid_accepted", "auction": "a", "seq": 1,
                    "bidder": "al", "amount": 3}]
    res = run("watch")
    assert res.exit_code == 0
    assert "bid_accepted a al bids 3" in res.stdout


def test_servers_come_from_the_environment_then_the_default(fake) -> None:
    run("result", env={"ZAUCTION_SERVERS": "a:1,b:2"})
    run("result")
    assert fake.instances[0].servers == ["a:1", "b:2"]
    assert fake.instances[1].servers == ["localhost:8001", "localhost:8002", "localhost:8003"]


# --- the error path --------------------------------------------------------------------------------


@pytest.mark.parametrize("error, code, text", [
    (UnknownAuctionError("unknown auction 'x'"), ExitCode.UNKNOWN_AUCTION, "unknown auction"),
    (ClusterUnavailable("nobody home"), ExitCode.UNAVAILABLE, "cluster unavailable"),
    (RequestTimeout("slow"), ExitCode.UNAVAILABLE, "outcome unknown"),
    (BadRequest("auction: must not be empty"), ExitCode.USAGE, "bad request"),
])
def test_client_errors_map_to_exit_codes(fake, error, code, text) -> None:
    fake.next_raise = error
    res = run("result")
    assert res.exit_code == code
    assert text in res.stderr and res.stdout == ""


def test_unexpected_exceptions_are_not_swallowed() -> None:
    assert console.classify(RuntimeError("bug")) is None


@pytest.mark.parametrize("error", [
    IdentityMismatchError("/d", ("n1", "c1"), ("n2", "c2")),
    CorruptDataError("/d/raft.db", "bad checksum", 7),
])
def test_node_exits_5_when_its_data_directory_is_refused(monkeypatch, tmp_path, error) -> None:
    import zauction.server.node

    def refuse(opts):
        raise error

    monkeypatch.setattr(zauction.server.node, "AuctionNode", refuse)
    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)
    res = run("node", "--addr", "localhost:1", "--data-dir", str(tmp_path))
    assert res.exit_code == 5
    assert "data directory refused" in res.stderr


def test_unreachable_cluster_exits_3_with_a_real_client(tmp_path) -> None:
    port = ports.free_port_run(1)  # nothing listens there
    for args in (["result"], ["bid", "--amount", "5", "--bidder", "al"], ["status"]):
        res = run(*args, "--servers", f"127.0.0.1:{port}", "--timeout", "300ms")
        assert res.exit_code == 3, (args, res.output)
        assert "unavailable" in res.stderr and f"127.0.0.1:{port}" in res.stderr


# --- logging ------------------------------------------------------------------------------------------


@pytest.fixture
def root_logger():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield root
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_logs_are_one_object_per_line(root_logger) -> None:
    stream = io.StringIO()
    logs.setup_logging("json", "debug", stream)
    logging.getLogger("zauction.test").info("hello %s", "world")
    logging.getLogger("zauction.test").debug("second")
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [d["msg"] for d in docs] == ["hello world", "second"]
    assert set(docs[0]) == {"ts", "level", "logger", "msg"}
    assert docs[0]["level"] == "INFO" and docs[0]["logger"] == "zauction.test"


def test_text_logs_name_level_and_logger(root_logger) -> None:
    stream = io.StringIO()
    logs.setup_logging("text", "INFO", stream)
    logging.getLogger("brokerless.x").warning("careful")
    assert re.search(r"WARNING +brokerless\.x: careful$", stream.getvalue().strip())


def test_bad_log_settings_are_refused(root_logger) -> None:
    with pytest.raises(logs.LogConfigError):
        logs.setup_logging("xml")
    with pytest.raises(logs.LogConfigError):
        logs.setup_logging("text", "LOUD")


# --- cluster bookkeeping ---------------------------------------------------------------------------


def test_a_missing_or_broken_cluster_file_is_a_clear_error(tmp_path) -> None:
    res = run("cluster", "down", "--data-dir", str(tmp_path))
    assert res.exit_code == 1 and "no cluster recorded" in res.stderr
    (tmp_path / cluster.CLUSTER_FILE).write_text('{"nodes": [{"addr": 1}]}')
    with pytest.raises(cluster.ClusterError, match="not a valid cluster file"):
        cluster.load_cluster(tmp_path)


@pytest.mark.processes
def test_stop_cluster_never_signals_a_process_that_is_not_our_node(tmp_path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait(timeout=10)
        handle = cluster.ClusterHandle(tmp_path, (
            cluster.NodeProcess("h:1", 1, stranger.pid, "d", "l"),
            cluster.NodeProcess("h:2", 2, gone.pid, "d", "l")))
        cluster.write_cluster_file(handle)
        reports = cluster.stop_cluster(cluster.load_cluster(tmp_path), timeout=1)
        assert [r.outcome for r in reports] == ["not ours", "not running"]
        assert stranger.poll() is None  # untouched
    finally:
        stranger.kill()
        stranger.wait(timeout=10)


def test_ports_in_use_are_refused_before_anything_starts(tmp_path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(cluster.ClusterError, match=f"port {port}"):
            cluster.start_cluster(tmp_path, nodes=1, base_port=port, host="127.0.0.1")
    assert not (tmp_path / cluster.CLUSTER_FILE).exists()


# --- end to end -------------------------------------------------------------------------------------


@pytest.mark.processes
@pytest.mark.timeout(60)
def test_demo_runs_end_to_end_and_leaves_nothing_behind(tmp_path) -> None:
    base = ports.free_port_run(3)
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "zauction", "demo", "--base-port", str(base),
                             "--bids", "20"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        output, _ = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the demo stops its nodes on SIGTERM
        output, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    pids = {int(p) for p in re.findall(r"pid (\d+)", output)}
    leaked = [pid for pid in pids if cluster.is_alive(pid)]
    for pid in leaked:  # a failed run must not leak nodes into the next test
        os.kill(pid, 9)
    assert proc.returncode == 0, output
    assert len(pids) == 3, output
    assert leaked == []
    assert "20 placed, 20 accepted" in output
    assert output.count("agrees") == 2
    assert re.search(r"failover\s+\S+\s+\d+ ms from SIGKILL", output), output
    assert list(tmp_path.iterdir()) == []  # the demo's data directory is gone too


def test_node_passes_retention_and_backpressure_settings_to_the_node(monkeypatch, tmp_path) -> None:
    import zauction.server.node

    seen = []

    class RecordingNode:
        def __init__(self, opts):
            seen.append(opts)

        def run(self):
            return None

    monkeypatch.setattr(zauction.server.node, "AuctionNode", RecordingNode)
    res = run("node", "--addr", "localhost:1", "--data-dir", str(tmp_path),
              "--max-retained-bids", "7", "--max-auctions", "3",
              "--max-open-auctions-per-client", "2", "--max-pending", "9")
    assert res.exit_code == 0, res.output
    opts = seen[0]
    assert (opts.max_retained_bids, opts.max_auctions, opts.max_open_auctions_per_client,
            opts.max_pending) == (7, 3, 2, 9)
    assert run("node", "--addr", "localhost:1", "--max-retained-bids", "0").exit_code == 2


def test_a_node_keeps_only_as_many_bid_records_as_configured(tmp_path) -> None:
    from zauction.server.node import AuctionNode, NodeOptions

    node = AuctionNode(NodeOptions(addr=f"127.0.0.1:{ports.free_port_run(1)}", peers=(),
                                   data_dir=tmp_path, max_retained_bids=3,
                                   max_auctions=5, max_open_auctions_per_client=2))
    try:
        state = node.state
        assert state._retention.max_bids == 3
        assert (state.max_auctions, state.max_open_auctions_per_client) == (5, 2)
    finally:
        node.close()
