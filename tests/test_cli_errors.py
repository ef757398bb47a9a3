"""Failures as a script sees them: with --json every failure is one JSON object on stdout with
the documented exit code, and a data directory that cannot be used is one line and exit 5,
never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_cli import NODE, FakeClient, run

from zauction.cli import console
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


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    """test_cli's client double in place of every AuctionClient the CLI opens."""
    FakeClient.instances, FakeClient.next_raise, FakeClient.events = [], None, []
    FakeClient.statuses = [NODE]
    monkeypatch.setattr(cluster, "open_client", FakeClient)
    monkeypatch.setattr(FakeClient, "open_auction",
                        lambda self, auction, **kw: self._answer(("open", auction), {}),
                        raising=False)
    monkeypatch.setattr(FakeClient, "close_auction",
                        lambda self, auction: self._answer(("close", auction), {}),
                        raising=False)
    monkeypatch.setattr(FakeClient, "auctions",
                        lambda self, stale=False: self._answer(("auctions",), []),
                        raising=False)
    monkeypatch.delenv("ZAUCTION_SERVERS", raising=False)
    return FakeClient


def one_json_failure(res, code: int, error: str | None = None) -> dict:
    """The failure printed as exactly one JSON object on stdout, nothing on stderr."""
    assert res.exit_code == code, (res.stdout, res.stderr, res.exception)
    lines = res.stdout.splitlines()
    assert len(lines) == 1, res.stdout
    doc = json.loads(lines[0])
    assert doc["ok"] is False and doc["code"] == code and doc["message"]
    if error is not None:
        assert doc["error"] == error
    assert res.stderr == ""
    return doc


# Every command with --json that talks to the cluster.
CLUSTER_COMMANDS = [
    ["bid", "--amount", "5", "--bidder", "al"],
    ["result"],
    ["history"],
    ["status"],
    ["watch"],
    ["auction", "list"],
    ["auction", "open", "lamp", "--duration", "1m"],
    ["auction", "close", "lamp"],
]


@pytest.mark.parametrize("args", CLUSTER_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_an_unreachable_cluster_is_one_json_object_and_exit_3(args) -> None:
    port = ports.free_port_run(1)  # nothing listens there: the real client finds nobody
    res = run(*args, "--servers", f"127.0.0.1:{port}", "--timeout", "300ms", "--json")
    doc = one_json_failure(res, ExitCode.UNAVAILABLE, "unavailable")
    assert f"127.0.0.1:{port}" in doc["message"]


def test_cluster_status_of_an_unreachable_cluster_is_json_too(tmp_path) -> None:
    port = ports.free_port_run(1)
    cluster.write_cluster_file(cluster.ClusterHandle(tmp_path, (
        cluster.NodeProcess(f"127.0.0.1:{port}", port, 0, tmp_path / "n", tmp_path / "n.log"),)))
    res = run("cluster", "status", "--data-dir", str(tmp_path), "--timeout", "300ms", "--json")
    one_json_failure(res, ExitCode.UNAVAILABLE, "unavailable")


@pytest.mark.parametrize("error, code, kind", [
    (RequestTimeout("slow"), ExitCode.UNAVAILABLE, "timeout"),
    (ClusterUnavailable("nobody home"), ExitCode.UNAVAILABLE, "unavailable"),
    (UnknownAuctionError("unknown auction 'x'"), ExitCode.UNKNOWN_AUCTION, "unknown_auction"),
    (BadRequest("auction: must not be empty"), ExitCode.USAGE, "bad_request"),
    (BidRejected("closed", "auction closed", {}), ExitCode.REFUSED, "rejected"),
])
@pytest.mark.parametrize("args", [a for a in CLUSTER_COMMANDS if a[0] != "bid"],
                         ids=lambda a: " ".join(a[:2]))
def test_every_client_failure_is_json_with_its_exit_code(fake, args, error, code, kind):
    fake.next_raise = error
    one_json_failure(run(*args, "--json"), code, kind)


def test_a_rejected_bid_keeps_its_own_json_document(fake) -> None:
    fake.next_raise = BidRejected("closed", "auction closed", {})
    res = run("bid", "--amount", "5", "--bidder", "al", "--json")
    assert res.exit_code == ExitCode.REFUSED
    assert json.loads(res.stdout)["reason"] == "closed" and res.stderr == ""


@pytest.mark.parametrize("args", [
    ["bid", "--amount", " 7", "--bidder", "al"],
    ["status", "--timeout", "8d"],
    ["result", "--no-such-option"],
    ["result", "--servers", "nohost"],
    ["data", "inspect"],  # missing argument
    ["load", "--rate", "5", "--concurrency", "3"],
])
def test_usage_errors_are_json_when_json_is_asked_for(fake, args) -> None:
    doc = one_json_failure(run(*args, "--json"), ExitCode.USAGE, "usage")
    assert doc["message"].startswith("zauction ")
    assert all(not c.calls for c in fake.instances)


def test_without_json_a_usage_error_is_still_click_text(fake) -> None:
    res = run("status", "--timeout", "8d")
    assert res.exit_code == 2 and res.stdout == "" and "--timeout" in res.stderr


def test_the_new_json_outputs_of_open_close_and_down(fake, tmp_path) -> None:
    doc = json.loads(run("auction", "open", "lamp", "--duration", "90", "--reserve", "3",
                         "--json").stdout)
    assert doc == {"opened": True, "auction": "lamp", "item": "lamp", "duration_ms": 90_000,
                   "reserve": 3, "increment": 1}
    doc = json.loads(run("auction", "close", "lamp", "--json").stdout)
    assert doc == {"closed": True, "auction": "lamp", "winner": None, "amount": None}
    cluster.write_cluster_file(cluster.ClusterHandle(tmp_path, (
        cluster.NodeProcess("h:1", 1, 0, tmp_path / "n", tmp_path / "n.log"),)))
    res = run("cluster", "down", "--data-dir", str(tmp_path), "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout) == {"root": str(tmp_path.resolve()), "nodes": [
        {"addr": "h:1", "pid": 0, "outcome": "not running"}]}
    res = run("cluster", "down", "--data-dir", str(tmp_path), "--json")  # nothing recorded now
    one_json_failure(res, ExitCode.REFUSED, "cluster")


def test_the_exit_codes_help_documents_the_json_failure() -> None:
    assert '"ok": false' in console.EXIT_CODES_HELP
    assert "5 data directory refused or unusable" in console.EXIT_CODES_HELP


# --- data directories that cannot be used ----------------------------------------------------------


@pytest.fixture
def no_node(monkeypatch: pytest.MonkeyPatch) -> list:
    """AuctionNode replaced by a recorder that runs nothing."""
    import zauction.server.node

    started: list = []

    class Recorder:
        def __init__(self, opts):
            started.append(opts)

        def run(self):
            return None

    monkeypatch.setattr(zauction.server.node, "AuctionNode", Recorder)
    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)
    return started


def one_line_error(res, code: int) -> str:
    assert res.exit_code == code, (res.output, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception  # no traceback
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.fixture
def under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("not a directory")
    return tmp_path / "file" / "data"


WIDE = {"COLUMNS": "500"}  # one error line stays one line


def test_node_with_a_data_dir_under_a_file_exits_5(no_node, under_a_file) -> None:
    res = run("node", "--addr", "localhost:1", "--data-dir", str(under_a_file), env=WIDE)
    line = one_line_error(res, ExitCode.DATA_DIR)
    assert str(under_a_file) in line and "not a directory" in line
    assert no_node == []


def test_node_with_a_data_dir_that_is_a_file_exits_5(no_node, under_a_file) -> None:
    res = run("node", "--addr", "localhost:1", "--data-dir", str(under_a_file.parent), env=WIDE)
    assert "exists and is not a directory" in one_line_error(res, ExitCode.DATA_DIR)


def test_node_without_permission_for_its_data_dir_exits_5(no_node, tmp_path, monkeypatch):
    # Tests run as root, where chmod 000 stops nothing: the kernel's answer is simulated.
    target = tmp_path / "locked" / "data"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    res = run("node", "--addr", "localhost:1", "--data-dir", str(target), env=WIDE)
    assert "permission denied" in one_line_error(res, ExitCode.DATA_DIR)
    assert no_node == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_node_in_a_directory_without_permission_exits_5(no_node, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        res = run("node", "--addr", "localhost:1", "--data-dir", str(locked / "d"), env=WIDE)
        assert "permission denied" in one_line_error(res, ExitCode.DATA_DIR)
    finally:
        locked.chmod(0o700)


def test_an_oserror_of_the_store_while_the_node_opens_it_exits_5(monkeypatch, tmp_path):
    import zauction.server.node

    def refuse(opts):
        raise PermissionError(13, "Permission denied", str(opts.data_dir / "raft.db.lock"))

    monkeypatch.setattr(zauction.server.node, "AuctionNode", refuse)
    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)
    res = run("node", "--addr", "localhost:1", "--data-dir", str(tmp_path), env=WIDE)
    line = one_line_error(res, ExitCode.DATA_DIR)
    assert "permission denied" in line and "raft.db.lock" in line


def test_cluster_up_with_a_data_dir_under_a_file_exits_5(monkeypatch, under_a_file) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("nothing may start")

    monkeypatch.setattr(cluster, "start_cluster", refuse)
    res = run("cluster", "up", "--data-dir", str(under_a_file), env=WIDE)
    assert "not a directory" in one_line_error(res, ExitCode.DATA_DIR)


@pytest.mark.parametrize("command", [["cluster", "down"], ["cluster", "status"]])
def test_cluster_commands_with_a_data_dir_under_a_file_exit_5(command, under_a_file) -> None:
    res = run(*command, "--data-dir", str(under_a_file), env=WIDE)
    assert "not a directory" in one_line_error(res, ExitCode.DATA_DIR)
    res = run(*command, "--data-dir", str(under_a_file), "--json")
    one_json_failure(res, ExitCode.DATA_DIR, "data_dir")


def test_data_inspect_of_unusable_paths_exits_5(under_a_file, monkeypatch) -> None:
    for path in (under_a_file, under_a_file.parent):
        one_line_error(run("data", "inspect", str(path), env=WIDE), ExitCode.DATA_DIR)
        one_json_failure(run("data", "inspect", str(path), "--json"), ExitCode.DATA_DIR,
                         "data_dir")
    import zauction.cli.data

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(zauction.cli.data, "inspect_data_dir", denied)
    line = one_line_error(run("data", "inspect", str(under_a_file), env=WIDE), ExitCode.DATA_DIR)
    assert "Permission denied" in line


def test_a_300_character_host_is_a_usage_error_everywhere(no_node, fake) -> None:
    host = "h" * 300
    for args in (["node", "--addr", f"{host}:8001"],
                 ["node", "--addr", "localhost:1", "--peers", f"{host}:8002"],
                 ["cluster", "up", "--host", host], ["status", "--servers", f"{host}:1"]):
        res = run(*args, env=WIDE)
        assert res.exit_code == ExitCode.USAGE, (args, res.output)
        assert isinstance(res.exception, SystemExit) and "300 characters" in res.output
    assert no_node == [] and all(not c.calls for c in fake.instances)
