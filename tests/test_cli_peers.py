"""`zauction node --peers`: the node's own address in the list is ignored, and said so, when
other peers remain; a list of only the node itself is refused; a one-node cluster is asked for
with --peers '' or no --peers at all."""

from __future__ import annotations

import logging

import pytest
from test_cli import run

from zauction.server import logs

A, B, C = "localhost:8001", "localhost:8002", "localhost:8003"


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list:
    """The NodeOptions of every node the command would start (none runs)."""
    import zauction.server.node

    seen: list = []

    class Recorder:
        def __init__(self, opts):
            seen.append(opts)

        def run(self):
            return None

    monkeypatch.setattr(zauction.server.node, "AuctionNode", Recorder)
    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)
    return seen


def node(tmp_path, *args: str):
    return run("node", "--addr", A, "--data-dir", str(tmp_path), *args,
               env={"COLUMNS": "300"})


@pytest.mark.parametrize("peers", [A, f"{A},{A}", f" {A} ,"])
def test_peers_naming_only_the_node_itself_are_refused(started, tmp_path, peers) -> None:
    res = node(tmp_path, "--peers", peers)
    assert res.exit_code == 2, res.output
    assert "names only this node" in res.output and "--peers ''" in res.output
    assert started == []


def test_the_nodes_own_address_among_others_is_ignored_and_said_so(started, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="zauction.cli.node"):
        res = node(tmp_path, "--peers", f"{A},{B},{C}")
    assert res.exit_code == 0, res.output
    assert started[0].peers == (B, C)
    assert started[0].members == (A, B, C)
    assert any("own address" in r.getMessage() and A in r.getMessage() for r in caplog.records)


def test_peers_without_the_node_itself_say_nothing(started, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="zauction.cli.node"):
        res = node(tmp_path, "--peers", f"{B},{C},{B}")
    assert res.exit_code == 0, res.output
    assert started[0].peers == (B, C)  # a repeated peer counts once
    assert not [r for r in caplog.records if r.name == "zauction.cli.node"]


@pytest.mark.parametrize("args", [(), ("--peers", ""), ("--peers", ",")])
def test_a_deliberate_one_node_cluster_still_works(started, tmp_path, args) -> None:
    res = node(tmp_path, *args)
    assert res.exit_code == 0, res.output
    assert started[0].peers == () and started[0].members == (A,)


def test_help_explains_the_peers_rule() -> None:
    res = run("node", "--help", env={"COLUMNS": "300"})
    assert "own address" in res.output and "one-node cluster" in res.output
