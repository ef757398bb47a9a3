"""A garbage flood against a real 3-node cluster (zauction/tools/flood.py), bounded for CI.

Three floods, each on its own cluster, so that a failure says which attack surface broke:

  * what any client can send: random bytes, wrong frame counts, unknown kinds, msgpack bombs,
    typed-but-wrong requests of every op, request streams, forged forwards and HELLOs from
    random routing ids, large subscriptions on every PUB;
  * all of that plus peer impersonation: DEALERs reusing the members' routing ids, forged
    consensus messages (huge and plausible terms) and HELLOs that re-point a node's SUB;
  * the same while a follower is killed (-9) and restarted halfway: its routing id is free
    for a moment at the others' ROUTERs, and its fresh ROUTER knows nobody yet, which is
    when an impostor reusing a member's id can get in.

Meanwhile a polite client bids. After the flood every node must still run and answer, a
leader must be agreed, every polite bid must have been accepted (retryable errors retried),
and the auctions, on the cluster and on every replica, must be exactly what they were plus
the polite client's bids. Every check is evaluated and the failures reported together, with
the flood's seed (FloodConfig.seed reproduces the mix) and the nodes' logs.
"""

from __future__ import annotations

import math
import random
import signal
from collections.abc import Callable, Iterator

import pytest
from harness import Cluster, running_cluster, shows_logs, wait_until

from zauction.protocol import OPS, WRITE_OPS
from zauction.tools.flood import (
    BAD_VALUES,
    CATEGORIES,
    FloodConfig,
    FloodReport,
    PoliteReport,
    compare_auctions,
    percentile,
    run_flood,
    spec_allows,
    typed_requests,
)

DAY_MS = 24 * 3600 * 1000
CLIENT_CATEGORIES = tuple(c for c in CATEGORIES if c not in ("forged_consensus", "hello_hijack"))
MIN_POLITE_BIDS = 10  # the polite client must have done real work alongside the flood


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    # Auctions that outlive the test: nothing may close on its own while state is compared.
    with running_cluster(tmp_path, size=3, auction_duration_ms=DAY_MS) as nodes:
        yield nodes


def flood_problems(cluster: Cluster, report: FloodReport, frames: int) -> list[str]:
    """Every check of the module docstring that failed, in words."""
    problems = []
    for node in cluster.handle.nodes:
        if node.exit_code is not None:
            problems.append(f"node {node.addr} exited with code {node.exit_code}")
    if report.total_sent < frames // 4:
        problems.append(f"the flood sent only {report.total_sent} of {frames} messages")
    if report.errors:
        problems.append(f"the flood itself failed: {report.errors[:5]}")
    if report.unanswered_status:
        problems.append(f"no status answer after the flood from {report.unanswered_status}")
    if report.leader_after is None:
        problems.append("no leader agreed by every node after the flood: " + ", ".join(
            f"{a} {s.get('role')} term {s.get('term')} leader {s.get('leader')}"
            for a, s in report.after.items()))
    elif not report.settled:
        problems.append("the replicas did not reach equal applied = commit indexes")
    problems += polite_problems(report)
    problems += [f"cluster state: {d}" for d in report.state_diffs]
    for addr, diffs in report.node_state_diffs.items():
        problems += [f"{addr} replica: {d}" for d in diffs]
    return problems


def polite_problems(report: FloodReport) -> list[str]:
    problems = []
    polite = report.polite
    if not polite.opened:
        problems.append(f"the polite client could not open its auction: {polite.errors}")
    elif len(polite.accepted) < MIN_POLITE_BIDS:
        problems.append(f"only {len(polite.accepted)} polite bids were accepted")
    if polite.errors:
        problems.append(f"the polite client failed: {polite.errors}")
    if polite.failed or polite.rejected:
        problems.append(f"polite bids not accepted: {(polite.failed + polite.rejected)[:5]}")
    if report.garbage_accepted_count:
        problems.append(f"{report.garbage_accepted_count} malformed writes were accepted: "
                        f"{report.garbage_accepted[:8]}")
    return problems


def restart_a_follower(cluster: Cluster, done: list[str]) -> Callable[[], None]:
    def restart() -> None:
        statuses = cluster.statuses()
        follower = next(a for a, s in statuses.items() if s.get("role") != "leader")
        cluster.kill(follower, signal.SIGKILL)
        cluster.restart(follower)
        done.append(follower)

    return restart


def wait_links_up(cluster: Cluster) -> None:
    """Until every node's DEALER to every peer has had its HELLO answered: every link of the
    mesh is up and read. (A flood that starts earlier races the members for their routing ids
    at the ROUTERs, a different test: the restart below.)"""
    peers = len(cluster.nodes) - 1

    def linked() -> bool:
        statuses = cluster.statuses().values()
        return all(s.get("transport", {}).get("hello_acks_received", 0) >= peers
                   for s in statuses)

    wait_until(linked, 10.0, "every peer link up", cluster.explain)
    cluster.wait_applied_equal(list(cluster.nodes))


def run_and_check(cluster: Cluster, record_property, *, frames: int, seconds: float,
                  categories: tuple[str, ...], impersonate: bool,
                  restart: bool = False) -> None:
    wait_links_up(cluster)
    seed = random.randrange(2**32)
    restarted: list[str] = []
    config = FloodConfig(servers=list(cluster.nodes), frames=frames, seconds=seconds,
                         rate=frames / seconds * 1.25, seed=seed, categories=categories,
                         impersonate=impersonate, settle_s=15.0, polite_grace_s=20.0,
                         midway=restart_a_follower(cluster, restarted) if restart else None)
    report = run_flood(config)
    polite = report.polite
    for name, value in (("flood_seed", seed), ("flood_sent", report.total_sent),
                        ("flood_elapsed_s", report.elapsed_s),
                        ("polite_bids", len(polite.accepted)), ("polite_p50_ms", polite.p50_ms),
                        ("polite_p99_ms", polite.p99_ms),
                        ("polite_unanswered_calls", polite.unanswered_calls),
                        ("term_before", report.term_before), ("term_after", report.term_after)):
        record_property(name, value)
    problems = flood_problems(cluster, report, frames)
    if restart and not restarted:
        problems.append("the follower was not restarted midway")
    assert not problems, (
        f"flood seed {seed}{f', restarted {restarted}' if restart else ''}: "
        f"{report.total_sent} messages {report.sent}, polite bids "
        f"{len(polite.accepted)} (p50 {polite.p50_ms} ms, p99 {polite.p99_ms} ms), term "
        f"{report.term_before} -> {report.term_after}\n" + "\n".join(f"  - {p}" for p in problems))


@pytest.mark.processes
@pytest.mark.timeout(150)
@shows_logs
def test_a_client_garbage_flood_changes_nothing_but_the_polite_bids(
        cluster: Cluster, record_property) -> None:
    run_and_check(cluster, record_property, frames=12_000, seconds=8.0,
                  categories=CLIENT_CATEGORIES, impersonate=False)


@pytest.mark.processes
@pytest.mark.timeout(150)
@shows_logs
def test_a_flood_impersonating_members_changes_nothing_but_the_polite_bids(
        cluster: Cluster, record_property) -> None:
    run_and_check(cluster, record_property, frames=15_000, seconds=10.0,
                  categories=CATEGORIES, impersonate=True)


# Known to fail until members authenticate (CurveZMQ, the security issue): a follower that
# restarts while outsiders wear the members' routing ids meets them first on its fresh ROUTER,
# takes their forged messages as its peers' (a forged AppendResponse even counts towards the
# leader's commit) and stays behind. strict: once it passes, this marker must go.
@pytest.mark.xfail(strict=True, reason="needs authenticated members (CurveZMQ)")
@pytest.mark.processes
@pytest.mark.timeout(180)
@shows_logs
def test_a_flood_impersonating_members_while_a_follower_restarts_changes_nothing(
        cluster: Cluster, record_property) -> None:
    run_and_check(cluster, record_property, frames=18_000, seconds=12.0,
                  categories=CATEGORIES, impersonate=True, restart=True)


# --- the tool itself (no processes) -----------------------------------------------------------


def test_the_typed_requests_cover_every_op_and_send_only_forbidden_values() -> None:
    table = typed_requests("flood-test")
    assert {t.op for t in table} == set(OPS)
    for typed in table:
        assert not spec_allows(typed.field, BAD_VALUES[typed.value_index]), typed.label
        if typed.op in WRITE_OPS and typed.field not in ("client", "seq"):
            assert typed.body["client"] == "flood-test"
    opens = [t for t in table if t.op == "open" and t.field != "auction"]
    assert len({t.body["auction"] for t in opens}) == len(opens), "open ids name the request"
    assert all(len(t.body["auction"]) <= 64 for t in opens)


def test_compare_auctions_sees_every_change_but_a_close_on_time() -> None:
    def auction(name: str, **changes: object) -> dict:
        base = {"auction": name, "state": "open", "highest": None, "winner": None,
                "item": name, "reserve": 1, "increment": 1, "opens_at_ms": 0,
                "closes_at_ms": 1_000, "bids": 0, "retained_bids": 0}
        return {**base, **changes}

    polite = PoliteReport(auction="polite", opened=True, accepted=[1, 2])
    before = {"a": auction("a"), "b": auction("b", closes_at_ms=10**13)}
    mine = auction("polite", highest={"bidder": "polite", "amount": 2}, bids=2,
                   closes_at_ms=10**13)
    closed_a = auction("a", state="closed")
    assert compare_auctions(before, {**before, "a": closed_a, "polite": mine}, polite,
                            now_ms=2_000) == []
    diffs = compare_auctions(before, {"a": auction("a", bids=1), "x": auction("x"),
                                      "polite": auction("polite", bids=1)}, polite, 2_000)
    assert len(diffs) == 5, diffs  # a changed, b vanished, x appeared, polite: bids, highest
    early = compare_auctions(before, {**before, "b": auction("b", state="closed",
                                                             closes_at_ms=10**13),
                                      "polite": mine}, polite, 2_000)
    assert len(early) == 1 and "'b' changed" in early[0]


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert math.isclose(percentile(values, 100), 100.0)
