"""The load generator and `zauction load`.

Fast tests run the generator against fake nodes (a ROUTER in a thread that plays a tiny
auction, or misbehaves on purpose); one test runs `zauction load --check` against a real
3-node cluster while its leader is killed with SIGKILL.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
import typer
import zmq
from typer.testing import CliRunner

from zauction.cli.load import register
from zauction.client.client import AuctionClient, ClientError
from zauction.tools import cluster
from zauction.tools.history import UNKNOWN, read_history
from zauction.tools.loadgen import LoadError, run_load

RESULT_KEYS = {"acked", "rejected", "failed", "throughput", "latency_ms", "lost",
               "leader_changes", "errors", "duration_s"}
LATENCY_KEYS = {"p50", "p90", "p99", "p999", "max"}


# --- a fake node ---------------------------------------------------------------------------------


@dataclass
class FakeNode:
    """A ROUTER on an ephemeral port answering the client protocol from a thread.

    `policy(body)` returns a reply map (without rid), or None to stay silent; by default the
    node is a leader running one auction rule (accept if amount > high, once per client seq).
    Replies wait `delay_s` before they are sent."""

    ctx: zmq.Context
    leader: str | None = None  # what `status` says leads (None: nobody known)
    status: object = None  # if set, the `status` result as is (to send garbage)
    delay_s: float = 0.0
    policy: Callable[[dict], dict | None] | None = None
    seen: list[tuple[str, int, int]] = field(default_factory=list)  # (client, seq, rid) of bids
    applied: list[tuple[str, int]] = field(default_factory=list)  # accepted (bidder, amount)
    addr: str = ""

    def __post_init__(self) -> None:
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.addr = self.sock.getsockopt_string(zmq.LAST_ENDPOINT).removeprefix("tcp://")
        self.high = 0
        self.sessions: dict[str, tuple[int, dict]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> FakeNode:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close(linger=0)

    def _serve(self) -> None:
        later: list[tuple[float, int, list[bytes]]] = []
        count = 0
        while not self.stop.is_set():
            if self.sock.poll(5):
                ident, kind, payload = self.sock.recv_multipart()
                unpacker = msgpack.Unpacker()  # a frame may hold several requests
                unpacker.feed(payload)
                for body in unpacker:
                    reply = self._answer(body)
                    if reply is not None:
                        count += 1
                        frames = [ident, kind, msgpack.packb(reply)]
                        heapq.heappush(later, (time.monotonic() + self.delay_s, count, frames))
            while later and later[0][0] <= time.monotonic():
                self.sock.send_multipart(heapq.heappop(later)[2])

    def _answer(self, body: dict) -> dict | None:
        op, rid = body["op"], body["rid"]
        if op == "status" and self.status is not None:
            return {"rid": rid, "ok": True, "result": self.status}
        if op == "status":
            return {"rid": rid, "ok": True, "result": {"addr": self.addr, "role": "follower",
                                                       "term": 1, "leader": self.leader}}
        if op == "open":
            return {"rid": rid, "ok": True, "result": {"ok": True}}
        if op == "bid":
            self.seen.append((body["client"], body["seq"], rid))
        reply = self.policy(body) if self.policy else self._bid(body)
        return None if reply is None else {"rid": rid, **reply}

    def _bid(self, body: dict) -> dict:
        client, seq = body["client"], body["seq"]
        if client in self.sessions and self.sessions[client][0] == seq:
            return self.sessions[client][1]
        if body["amount"] > self.high:
            self.high = body["amount"]
            self.applied.append((body["bidder"], body["amount"]))
            reply = {"ok": True, "result": {"ok": True, "high": self.high}}
        else:
            reply = {"ok": False, "error": "rejected", "reason": "below_increment",
                     "message": "too low", "result": {"ok": False, "high": self.high}}
        self.sessions[client] = (seq, reply)
        return reply


@pytest.fixture
def fake_nodes() -> Iterator[Callable[..., FakeNode]]:
    ctx = zmq.Context()
    made: list[FakeNode] = []

    def make(**kwargs: object) -> FakeNode:
        node = FakeNode(ctx, **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()
    ctx.term()


# --- the generator against fake nodes ---------------------------------------------------------


def test_a_not_leader_answer_moves_the_same_seq_to_the_hinted_leader(fake_nodes):
    leader = fake_nodes()
    follower = fake_nodes(policy=lambda body: {"ok": False, "error": "not_leader",
                                               "message": "no", "leader": leader.addr})
    leader.start()
    follower.start()
    result = run_load([follower.addr, leader.addr], bidders=5, concurrency=5, duration_s=0.3,
                      keep_ops=True)
    assert result.errors.get("not_leader", 0) >= 1
    assert result.acked == len(leader.applied) > 0
    # Every bid the follower bounced reached the leader with the same client and seq.
    bounced = {(c, s) for c, s, _ in follower.seen}
    assert bounced <= {(c, s) for c, s, _ in leader.seen}
    assert result.acked + result.rejected == len(result.ops)


def test_an_unanswered_bid_is_retried_with_its_seq_then_recorded_unknown(fake_nodes, tmp_path):
    silent = fake_nodes(leader=None, policy=lambda body: None).start()
    path = tmp_path / "history.jsonl"
    result = run_load([silent.addr], bidders=2, concurrency=2, duration_s=0.1,
                      attempt_timeout_s=0.1, op_timeout_s=0.45, history_path=str(path))
    ops = read_history(path)
    assert result.failed == len(ops) == 2 and result.acked == 0
    assert all(op.outcome == UNKNOWN for op in ops)
    assert result.errors["attempt_timeout"] >= 4
    attempts: dict[tuple[str, int], set[int]] = {}
    for client, seq, rid in silent.seen:
        attempts.setdefault((client, seq), set()).add(rid)
    assert len(attempts) == 2  # two ops, several attempts (distinct rids) each, seq unchanged
    assert all(len(rids) >= 3 for rids in attempts.values())


def test_a_failure_answered_with_rid_0_retries_at_once_not_at_the_attempt_timeout(fake_nodes):
    first_tries: set[tuple[str, int]] = set()
    node: FakeNode

    def forget_rid_once(body: dict) -> dict:
        key = (body["client"], body["seq"])
        if key in first_tries:
            return node._bid(body)
        first_tries.add(key)  # like a follower whose leader changed mid-forward
        return {"rid": 0, "ok": False, "error": "outcome_unknown", "message": "leader changed"}

    node = fake_nodes(policy=forget_rid_once).start()
    result = run_load([node.addr], bidders=3, concurrency=3, duration_s=0.3,
                      attempt_timeout_s=5.0, op_timeout_s=10.0)
    assert result.errors["unmatched_reply"] >= 3
    assert result.acked + result.rejected >= 3 and result.failed == 0
    assert result.latency_ms["max"] < 1000  # nobody waited for the 5 s attempt timeout


def test_open_loop_latency_counts_lateness_but_closed_loop_does_not(fake_nodes):
    slow = fake_nodes(delay_s=0.05).start()  # every answer takes 50 ms
    # One bidder offered 100 bids/s: a slot every 10 ms, but each bid holds it 50 ms.
    open_loop = run_load([slow.addr], bidders=1, rate=100, duration_s=1.0)
    closed_loop = run_load([slow.addr], bidders=1, concurrency=1, duration_s=0.5)
    assert closed_loop.latency_ms["p99"] < 150
    assert open_loop.latency_ms["max"] > 500  # the last sends were ~0.8 s late
    assert open_loop.errors["not_sent"] > 50  # about 100 slots, at most 20 of them served
    assert open_loop.to_dict()["offered_rate"] == 100


def test_malformed_status_replies_are_ignored(fake_nodes):
    odd = fake_nodes(status={"role": "leader", "term": "seven", "leader": 5}).start()
    worse = fake_nodes(status=["not", "a", "map"]).start()
    result = run_load([odd.addr, worse.addr], bidders=2, concurrency=2, duration_s=0.2)
    assert result.acked >= 1 and result.leader_changes == 0


def test_bad_parameters_raise_a_typed_error_and_send_nothing(fake_nodes):
    node = fake_nodes().start()
    for bad in ({"rate": 10, "concurrency": 2}, {}, {"rate": -1}, {"concurrency": 0},
                {"concurrency": 1, "bidders": 0}, {"concurrency": 1, "duration_s": 0}):
        with pytest.raises(LoadError):
            run_load([node.addr], **{"duration_s": 0.1, **bad})
    assert node.seen == []


# --- the CLI ------------------------------------------------------------------------------------


def load_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so that `load` is a subcommand as in zauction's app
        pass

    register(app)
    return app


def test_cli_usage_errors_exit_2():
    runner = CliRunner()
    both = runner.invoke(load_app(), ["load", "--rate", "5", "--concurrency", "2"])
    assert both.exit_code == 2 and "not both" in both.output
    bad = runner.invoke(load_app(), ["load", "--duration", "soon"])
    assert bad.exit_code == 2 and "not a duration" in bad.output


def test_cli_json_has_the_documented_keys(fake_nodes):
    node = fake_nodes().start()
    run = CliRunner().invoke(load_app(), ["load", "--servers", node.addr, "--duration", "300ms",
                                          "--concurrency", "3", "--json"])
    assert run.exit_code == 0, run.output
    doc = json.loads(run.output.strip().splitlines()[-1])
    assert RESULT_KEYS <= set(doc) and "concurrency" in doc
    assert set(doc["latency_ms"]) == LATENCY_KEYS
    assert doc["acked"] == len(node.applied) > 0


# --- a real cluster, its leader killed mid-run ---------------------------------------------------


@pytest.fixture
def real_cluster(tmp_path: Path) -> Iterator[cluster.ClusterHandle]:
    handle = cluster.start_cluster(tmp_path / "cluster", base_port=cluster.free_port_run(3),
                                   host="127.0.0.1", auction_duration_ms=600_000)
    try:
        cluster.wait_for_leader(handle.servers, time.monotonic() + 20, handle)
        yield handle
    finally:
        cluster.stop_cluster(handle)


def _bids_flowing(servers: list[str], minimum: int) -> bool:
    try:
        with AuctionClient(servers, timeout=1.0, attempt_timeout=0.3) as client:
            return any(a["auction"].startswith("load-") and a["bids"] >= minimum
                       for a in client.auctions(stale=True))
    except ClientError:
        return False


@pytest.mark.processes
@pytest.mark.timeout(90)
def test_load_check_survives_a_leader_kill(real_cluster):
    servers = real_cluster.servers
    runner = CliRunner()
    outcome: dict[str, object] = {}
    args = ["load", "--servers", ",".join(servers), "--duration", "5s", "--bidders", "20",
            "--concurrency", "20", "--check", "--json"]
    thread = threading.Thread(target=lambda: outcome.update(run=runner.invoke(load_app(), args)))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not _bids_flowing(servers, 50):
            assert time.monotonic() < deadline, "no load reached the cluster"
            time.sleep(0.05)  # polling a condition with a deadline
        leader = cluster.wait_for_leader(servers, time.monotonic() + 5, real_cluster)
        cluster.kill_node(real_cluster, leader)
    finally:
        thread.join(timeout=60)
    run = outcome["run"]
    assert run.exit_code == 0, run.output
    doc = json.loads(run.output.strip().splitlines()[-1])
    assert RESULT_KEYS <= set(doc) and set(doc["latency_ms"]) == LATENCY_KEYS
    assert doc["lost"] == 0
    assert doc["check"]["ok"] is True, doc["check"]["violations"]
    assert doc["check"]["unreachable"] == [leader]
    assert doc["check"]["checked_ops"] == doc["acked"] + doc["rejected"] + doc["failed"] > 0
    assert doc["leader_changes"] >= 1
    assert doc["acked"] > 50
