"""Classic Raft scenarios, driven deterministically through the simulator.

Every scenario runs the real cores inside `brokerless.sim.Simulation` with its chaos
switched off: the test alone decides partitions, crashes, message loss and proposals.
The simulator's Checker still checks safety after every step (one leader per term,
the same command at the same index everywhere, terms and durable state never going
back, leader completeness), so each scenario also proves "nothing unsafe happened".
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from brokerless.core import NotLeader, Ready
from brokerless.core.raft import Core
from brokerless.messages import (
    Append,
    AppendResponse,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
)
from brokerless.sim import Faults, SimOptions, Simulation
from brokerless.sim.node import SimNode
from brokerless.types import NodeId, Role

NEVER = 10**12  # a chaos cycle so long that the simulator's own fault phases never start
ELECTION = 10  # election_ticks; timeouts are drawn from [ELECTION, 2 * ELECTION)
HEARTBEAT = 2


class PinnedRng:
    """Always draws the longest election timeout, so a test's explicit campaign() wins
    the race against the nodes' own timers."""

    def randrange(self, start: int, stop: int) -> int:
        return stop - 1


class Cluster:
    """N simulated nodes with chaos off; the test decides every fault.

    `SimOptions` with an endless cycle and `calm == cycle` keeps the simulator out of its
    chaos phase (no random partitions, crashes or crash-mid-Ready) and out of its calm
    checks; `propose_chance=0` leaves all proposals to the test.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        seed: int = 0,
        faults: Faults | None = None,
        snapshot_every: int = 0,
        pinned: bool = False,
        **config: object,
    ):
        self.trace_lines: list[str] = []
        opts = SimOptions(
            nodes=n, seed=seed, steps=0, faults=faults or Faults(), crashes=False,
            snapshot_every=snapshot_every, election_ticks=ELECTION, heartbeat_ticks=HEARTBEAT,
            propose_chance=0.0, chaos_every=NEVER, cycle=NEVER, calm=NEVER,
        )
        self.sim = Simulation(opts, self.trace_lines.append)
        self.ids = list(self.sim.ids)
        for node in self.sim.nodes.values():
            self._reconfigure(node, pinned, config)
        self.sent: list[Message] = []  # every message a node handed to the network
        self.drop: Callable[[Message], bool] | None = None  # messages the network must lose
        self.readies: dict[NodeId, list[Ready]] = {nid: [] for nid in self.ids}
        self._hook_network()
        self._hook_observer()

    @staticmethod
    def _reconfigure(node: SimNode, pinned: bool, config: dict) -> None:
        if config:
            node.config = replace(node.config, **config)
        if pinned:
            node.rng = PinnedRng()
        node.start()  # nothing has happened yet: a fresh core with the new settings

    def _hook_network(self) -> None:
        send = self.sim.net.send

        def filtered_send(msg: Message, now: int) -> None:
            self.sent.append(msg)
            if self.drop is None or not self.drop(msg):
                send(msg, now)

        self.sim.net.send = filtered_send

    def _hook_observer(self) -> None:
        observe = self.sim._observe

        def recording_observe(nid: NodeId, rd: Ready) -> None:
            observe(nid, rd)
            self.readies[nid].append(rd)

        self.sim._observe = recording_observe

    # --- access --------------------------------------------------------------------------

    def core(self, nid: NodeId) -> Core:
        return self.sim.nodes[nid].core

    def alive(self) -> list[NodeId]:
        return [nid for nid in self.ids if self.sim.nodes[nid].alive]

    def applied(self, nid: NodeId) -> list[bytes]:
        return [data for (_, _, data) in self.sim.nodes[nid].applied]

    def leaders(self) -> list[NodeId]:
        return [nid for nid in self.alive() if self.core(nid).role == Role.LEADER]

    def agreed_leader(self, among: list[NodeId]) -> NodeId | None:
        """The one leader of `among` whom every other member follows in its term."""
        live = [nid for nid in among if self.sim.nodes[nid].alive]
        leaders = [nid for nid in live if self.core(nid).role == Role.LEADER]
        if len(leaders) != 1:
            return None
        term = self.core(leaders[0]).term
        for nid in live:
            core = self.core(nid)
            if core.term != term or core.leader != leaders[0]:
                return None
        return leaders[0]

    # --- time ----------------------------------------------------------------------------

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.sim.step()

    def run_until(self, done: Callable[[], object], limit: int, what: str) -> int:
        """Step until `done()` holds; returns the ticks it took. The deadline is in ticks."""
        for ticks in range(limit + 1):
            if done():
                return ticks
            self.sim.step()
        tail = "\n".join(self.trace_lines[-15:])
        raise AssertionError(f"{what}: not within {limit} ticks (t={self.sim.now})\n{tail}")

    def wait_leader(self, among: list[NodeId] | None = None, limit: int = 20 * ELECTION) -> NodeId:
        group = among or self.ids
        self.run_until(lambda: self.agreed_leader(group), limit, f"one leader among {group}")
        leader = self.agreed_leader(group)
        assert leader is not None
        return leader

    def elect(self, nid: NodeId, limit: int = 4 * ELECTION) -> None:
        """Make `nid` campaign (again, after a lost round) until it leads."""

        def leads() -> bool:
            core = self.core(nid)
            if core.role == Role.FOLLOWER:
                core.campaign()
            return core.role == Role.LEADER

        self.run_until(leads, limit, f"{nid} elected")

    def wait_applied(self, values: list[bytes], nodes: list[NodeId], limit: int = 400) -> None:
        def everywhere() -> bool:
            return all(set(values) <= set(self.applied(nid)) for nid in nodes)

        self.run_until(everywhere, limit, f"{len(values)} values applied on {nodes}")

    # --- faults and work -----------------------------------------------------------------

    def split(self, *groups: list[NodeId]) -> None:
        rest = [nid for nid in self.ids if not any(nid in g for g in groups)]
        self.sim.net.split([list(g) for g in groups] + ([rest] if rest else []))

    def heal(self) -> None:
        self.sim.net.heal()

    def crash(self, nid: NodeId) -> None:
        self.sim._crash(nid, "by the test")

    def restart(self, nid: NodeId) -> None:
        self.sim._restart(nid)

    def propose(self, *values: bytes, at: NodeId | None = None) -> list[int]:
        nid = at or self.leaders()[0]
        return [self.core(nid).propose(v) for v in values]

    def commit_one(self, value: bytes, limit: int = 60 * ELECTION) -> None:
        """Propose `value` at whoever leads, retrying after leader changes, until every
        live node applied it."""
        deadline = self.sim.now + limit
        while self.sim.now < deadline:
            leader = self.agreed_leader(self.alive())
            if leader is None:
                self.sim.step()
                continue
            core = self.core(leader)
            core.propose(value)
            attempt_end = min(deadline, self.sim.now + 4 * ELECTION)
            while self.sim.now < attempt_end:
                if all(value in self.applied(nid) for nid in self.alive()):
                    return
                if core.role != Role.LEADER or not self.sim.nodes[leader].alive:
                    break
                self.sim.step()
        raise AssertionError(f"{value!r} not applied everywhere within {limit} ticks")

    def read_states(self, nid: NodeId) -> list:
        return [rs for rd in self.readies[nid] for rs in rd.read_states]


def values(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]


def assert_all_agree(cluster: Cluster, nodes: list[NodeId] | None = None) -> list[bytes]:
    nodes = nodes or cluster.ids
    logs = {nid: cluster.applied(nid) for nid in nodes}
    first = logs[nodes[0]]
    assert all(log == first for log in logs.values()), logs
    return first


# --- elections -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 7])
def test_initial_election_elects_exactly_one_stable_leader(n: int) -> None:
    c = Cluster(n, seed=n)
    ticks = c.run_until(lambda: c.agreed_leader(c.ids), 10 * ELECTION, "first leader")
    assert ticks < 4 * ELECTION
    leader = c.agreed_leader(c.ids)
    term = c.core(leader).term
    c.run(20 * ELECTION)  # heartbeats keep everyone quiet: no new election, no new term
    assert c.agreed_leader(c.ids) == leader
    assert {c.core(nid).term for nid in c.ids} == {term}
    assert c.sim.stats["elections"] == 1


@pytest.mark.parametrize("isolate_leader", [True, False], ids=["leader", "follower"])
def test_isolated_node_does_not_inflate_terms_and_rejoins_quietly(isolate_leader: bool) -> None:
    c = Cluster(3, seed=11)
    leader = c.wait_leader()
    term = c.core(leader).term
    lone = leader if isolate_leader else next(n for n in c.ids if n != leader)
    others = [n for n in c.ids if n != lone]
    c.split([lone])
    new_leader = c.wait_leader(others)
    if isolate_leader:
        assert c.core(new_leader).term > term
    else:  # the leader keeps its majority and its term
        assert (new_leader, c.core(new_leader).term) == (leader, term)
    c.run(10 * ELECTION)  # the lone node times out again and again, pre-voting in vain
    assert c.core(lone).term == term, "pre-vote must keep an isolated node's term"
    assert c.core(lone).role != Role.LEADER
    new_term = c.core(new_leader).term
    c.heal()
    c.run_until(lambda: c.core(lone).leader == new_leader, 4 * ELECTION, "rejoin")
    c.run(5 * ELECTION)
    assert c.agreed_leader(c.ids) == new_leader, "the rejoining node disrupted the leader"
    assert {c.core(nid).term for nid in c.ids} == {new_term}


def test_without_pre_vote_an_isolated_node_inflates_its_term() -> None:
    """The control for the test above: the property comes from pre-vote."""
    c = Cluster(3, seed=11, pre_vote=False)
    leader = c.wait_leader()
    term = c.core(leader).term
    lone = next(n for n in c.ids if n != leader)
    c.split([lone])
    c.run(10 * ELECTION)
    assert c.core(lone).term > term + 2


def test_many_elections_with_seven_nodes() -> None:
    c = Cluster(7, seed=7)
    rng = random.Random(7)
    leader = c.wait_leader()
    terms = [c.core(leader).term]
    for _ in range(8):
        others = [n for n in c.ids if n != leader]
        cut = [leader, *rng.sample(others, 2)]  # 3 of 7 cut off: 4 remain, a majority
        c.split(cut)
        rest = [n for n in c.ids if n not in cut]
        leader = c.wait_leader(rest)
        assert c.core(leader).term > terms[-1]
        terms.append(c.core(leader).term)
        c.run(2 * ELECTION)
        assert all(c.core(n).role != Role.LEADER for n in cut), "check-quorum: old leader"
        c.heal()
        assert c.wait_leader(c.ids) == leader
        assert c.core(leader).term == terms[-1], "a rejoining minority raised the term"
    assert len(c.sim.checker.leaders) == len(terms)


# --- replication -----------------------------------------------------------------------


def test_basic_agreement_applies_proposals_in_the_same_order_everywhere() -> None:
    c = Cluster(5, seed=3)
    leader = c.wait_leader()
    vals = values("v", 20)
    indexes = c.propose(*vals, at=leader)
    assert indexes == list(range(indexes[0], indexes[0] + 20))
    c.wait_applied(vals, c.ids)
    assert assert_all_agree(c) == vals
    applied = c.sim.nodes[c.ids[0]].applied
    assert [index for (index, _, _) in applied] == indexes


def test_follower_failure_still_commits_and_the_follower_catches_up() -> None:
    c = Cluster(3, seed=4)
    leader = c.wait_leader()
    down = next(n for n in c.ids if n != leader)
    up = [n for n in c.ids if n != down]
    c.crash(down)
    c.propose(*values("a", 10), at=leader)
    c.wait_applied(values("a", 10), up)
    c.run(2 * ELECTION)
    assert c.agreed_leader(up) == leader
    c.restart(down)
    c.wait_applied(values("a", 10), c.ids)
    assert assert_all_agree(c) == values("a", 10)


def test_leader_failure_elects_a_new_leader_and_commits_continue() -> None:
    c = Cluster(3, seed=5)
    old = c.wait_leader()
    c.commit_one(b"before")
    old_term = c.core(old).term
    c.crash(old)
    survivors = [n for n in c.ids if n != old]
    new = c.wait_leader(survivors)
    assert c.core(new).term > old_term
    c.propose(*values("after", 5), at=new)
    c.wait_applied(values("after", 5), survivors)
    c.restart(old)
    c.wait_applied(values("after", 5), c.ids)
    assert assert_all_agree(c) == [b"before", *values("after", 5)]


@pytest.mark.parametrize(
    ("isolation", "survives"), [(ELECTION // 2, True), (4 * ELECTION, False)], ids=["short", "long"]
)
def test_no_commit_without_a_majority(isolation: int, survives: bool) -> None:
    c = Cluster(3, seed=6)
    leader = c.wait_leader()
    c.commit_one(b"base")
    commit = c.core(leader).commit
    c.split([leader])
    lonely = values("lonely", 5)
    c.propose(*lonely, at=leader)
    c.run(isolation)
    assert c.core(leader).commit == commit
    assert not any(v in c.applied(n) for n in c.ids for v in lonely)
    c.heal()
    new = c.wait_leader()
    c.commit_one(b"after")
    log = assert_all_agree(c)
    # Healed before any timeout can fire (the shortest is ELECTION ticks, and the last
    # heartbeat was at most HEARTBEAT ticks before the cut), the leader keeps its term and
    # commits them; after a new election they are overwritten. Either way: all of them
    # everywhere, or none anywhere.
    assert (new == leader) is survives
    expected = [b"base", *lonely, b"after"] if survives else [b"base", b"after"]
    assert log == expected


def test_a_stale_leaders_uncommitted_tail_is_overwritten_on_rejoin() -> None:
    c = Cluster(3, seed=8)
    old = c.wait_leader()
    c.commit_one(b"base")
    old_term = c.core(old).term
    c.split([old])
    stale = c.propose(*values("stale", 3), at=old)
    rest = [n for n in c.ids if n != old]
    new = c.wait_leader(rest)
    c.propose(*values("fresh", 3), at=new)
    c.wait_applied(values("fresh", 3), rest)
    c.heal()
    c.wait_applied(values("fresh", 3), c.ids)
    for index in stale:
        assert c.core(old).log.term(index) == c.core(new).log.term(index) > old_term
    assert assert_all_agree(c) == [b"base", *values("fresh", 3)]


def test_backup_over_many_divergent_entries_takes_few_round_trips() -> None:
    divergent = 60
    c = Cluster(3, seed=9, max_batch_entries=4096)
    old = c.wait_leader()
    c.commit_one(b"base")
    c.split([old])
    c.propose(*values("old", divergent), at=old)
    rest = [n for n in c.ids if n != old]
    new = c.wait_leader(rest)
    c.propose(*values("new", divergent), at=new)
    c.wait_applied(values("new", divergent), rest)
    # `old` now hears only the other follower, which takes over by transfer: the new
    # leader's first probe reaches `old` at its own last index, deep in the divergent part.
    c.heal()
    c.sim.net.cut(old, new)
    successor = next(n for n in rest if n != new)
    mark = len(c.sent)
    c.core(new).transfer_leadership(successor)
    c.run_until(lambda: c.agreed_leader(rest) == successor, 2 * ELECTION, "transfer")
    new = successor
    c.wait_applied(values("new", divergent), [old])
    after = c.sent[mark:]
    appends = [m for m in after if isinstance(m, Append) and m.dst == old]
    rejected = [
        m for m in after if isinstance(m, AppendResponse) and m.src == old and not m.success
    ]
    assert 1 <= len(rejected) <= 3, rejected  # one per divergent term, not one per entry
    assert len(appends) <= 8, len(appends)
    assert c.core(old).log.slice(1, 10**6) == c.core(new).log.slice(1, 10**6)
    assert assert_all_agree(c) == [b"base", *values("new", divergent)]


def test_unreliable_network_still_agrees() -> None:
    c = Cluster(5, seed=12, faults=Faults(drop=0.1, duplicate=0.05, max_delay=3))
    c.wait_leader()
    vals = values("u", 30)
    for v in vals:
        c.commit_one(v)
    log = assert_all_agree(c)
    first_seen = list(dict.fromkeys(log))  # a retried proposal may commit twice
    assert first_seen == vals
    assert c.sim.net.dropped > 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_churn_with_crashes_and_restarts(seed: int) -> None:
    c = Cluster(5, seed=seed, faults=Faults(drop=0.02, max_delay=2), snapshot_every=15)
    rng = random.Random(seed)
    proposed = 0
    for _ in range(40):
        dead = [n for n in c.ids if n not in c.alive()]
        if dead and rng.random() < 0.5:
            c.restart(rng.choice(dead))
        elif len(dead) < 2:
            c.crash(rng.choice(c.alive()))
        for leader in c.leaders():
            for _ in range(rng.randint(0, 3)):
                proposed += 1
                c.core(leader).propose(f"c{proposed}".encode())
        c.run(rng.randint(1, 3 * ELECTION))
    for nid in c.ids:
        if nid not in c.alive():
            c.restart(nid)
    c.commit_one(b"final")
    log = assert_all_agree(c)
    assert len(set(log) - {b"final"}) >= 10, "churn let almost nothing commit"
    assert c.sim.stats["crashes"] >= 10


def durable_view(core) -> tuple:
    """Term, vote, snapshot index and the log after the snapshot: what storage keeps. (The
    catch-up tail a core keeps in memory behind its snapshot is not stored.)"""
    return core.term, core.vote, core.snapshot_index, core.log.slice(core.snapshot_index + 1,
                                                                     10**6)


@pytest.mark.parametrize("snapshot_every", [0, 7])
def test_whole_cluster_restart_keeps_term_vote_and_log(snapshot_every: int) -> None:
    c = Cluster(3, seed=13, snapshot_every=snapshot_every)
    c.wait_leader()
    for v in values("p", 20):
        c.commit_one(v)
    before = {n: durable_view(c.core(n)) for n in c.ids}
    for nid in c.ids:
        c.crash(nid)
    for nid in c.ids:
        c.restart(nid)
        assert durable_view(c.core(nid)) == before[nid]
    leader = c.wait_leader()
    assert c.core(leader).term > max(t for (t, *_) in before.values())
    c.commit_one(b"after restart")
    assert assert_all_agree(c)[-21:] == [*values("p", 20), b"after restart"]


def test_lagging_follower_installs_a_snapshot_and_agrees() -> None:
    c = Cluster(3, seed=14, snapshot_every=10, snapshot_chunk_bytes=64)
    leader = c.wait_leader()
    lagging = next(n for n in c.ids if n != leader)
    c.crash(lagging)
    vals = values("s", 45)
    c.propose(*vals, at=leader)
    up = [n for n in c.ids if n != lagging]
    c.wait_applied(vals, up)
    assert c.core(leader).log.offset >= 30, "the leader should have compacted several times"
    mark = len(c.sent)
    c.restart(lagging)
    c.wait_applied(vals, c.ids)
    installed = [rd.snapshot for rd in c.readies[lagging] if rd.snapshot is not None]
    assert len(installed) == 1 and installed[0].meta.index >= 30
    chunks = [m for m in c.sent[mark:] if isinstance(m, InstallSnapshot) and m.dst == lagging]
    assert len(chunks) > 1, "a 64-byte chunk size must split the snapshot"
    assert c.sim.stats["snapshots_installed"] == 1
    c.commit_one(b"after snapshot")
    assert assert_all_agree(c) == [*vals, b"after snapshot"]


# --- Figure 8 ------------------------------------------------------------------------------


def _figure8_prefix(c: Cluster) -> tuple[int, int]:
    """Steps (a) to (c) of the Raft paper's Figure 8 on n1..n5.

    Returns (k, t1): the index and term of n1's old entry, which ends up stored on a
    majority (n1, n2, n3) while n1 leads a later term. It must not be committed then.
    """
    c.elect("n1")
    c.wait_leader()
    c.commit_one(b"base")
    t1 = c.core("n1").term
    # (a) n1 replicates `a` to n2 only.
    c.split(["n1", "n2"])
    (k,) = c.propose(b"a", at="n1")
    c.run_until(lambda: c.core("n2").log.last_index == k, 10, "a reaches n2")
    # (b) n1 crashes; n5 wins with n3, n4 and stores an entry at k alone.
    c.crash("n1")
    c.split(["n2"])
    c.drop = lambda m: isinstance(m, Append) and m.src == "n5"
    c.run_until(lambda: c.core("n3").election_elapsed >= ELECTION, 2 * ELECTION, "lease over")
    c.elect("n5")
    c.propose(b"b", at="n5")
    c.run(2)
    assert c.core("n5").log.term(k) > t1 and c.core("n3").log.last_index == k - 1
    # (c) n5 crashes; n1 restarts and wins. It learns that n2 has `a` (n2 also takes its
    # new-term no-op), and brings `a` to n3 but not the no-op: `a` is on a majority, the
    # no-op on two nodes only.
    c.crash("n5")
    c.restart("n1")
    c.heal()
    # n3 is denied only the appends that would actually store a new-term entry (ones whose
    # prev entry it holds); the probes it would reject anyway still reach it.
    c.drop = lambda m: isinstance(m, Append) and m.src == "n1" and (
        m.dst == "n4" or (m.dst == "n3" and any(e.term > t1 for e in m.entries)
                          and c.core("n3").log.term(m.prev_index) == m.prev_term)
    )
    c.run_until(lambda: c.core("n3").election_elapsed >= ELECTION, 2 * ELECTION, "lease over")
    c.elect("n1")
    c.run_until(lambda: c.core("n3").log.term(k) == t1, 10, "a reaches n3")
    c.run(4 * HEARTBEAT)
    assert c.core("n1").progress["n2"].match == k + 1, "n1 knows `a` is on a majority"
    return k, t1


def _assert_stored_on_majority_but_not_committed(c: Cluster, k: int, t1: int) -> None:
    holders = [n for n in ("n1", "n2", "n3", "n4") if c.core(n).log.term(k) == t1]
    assert holders == ["n1", "n2", "n3"]
    assert c.core("n1").term > t1 + 1
    assert all(c.core(n).commit < k for n in ("n1", "n2", "n3", "n4"))
    assert k not in c.sim.checker.committed
    assert not any(b"a" in c.applied(n) for n in c.ids)


def test_figure8_old_entry_on_a_majority_is_overwritten_by_a_later_leader() -> None:
    c = Cluster(5, pinned=True, max_batch_entries=1)
    k, t1 = _figure8_prefix(c)
    _assert_stored_on_majority_but_not_committed(c, k, t1)
    # (d) n1 crashes before its own-term entry spreads; n5 returns and wins with n3 and
    # n4, replacing `a` at k. Had n1 counted replicas to commit `a`, the checker would fail.
    c.crash("n1")
    c.restart("n5")
    c.drop = None
    c.run_until(
        lambda: min(c.core(n).election_elapsed for n in ("n3", "n4")) >= ELECTION,
        2 * ELECTION,
        "lease over",
    )
    c.elect("n5")
    c.wait_applied([b"b"], ["n2", "n3", "n4", "n5"])
    c.restart("n1")
    c.commit_one(b"after")
    log = assert_all_agree(c)
    assert log == [b"base", b"b", b"after"]
    assert c.core("n1").log.term(k) > t1


def test_figure8_old_entry_commits_only_with_an_entry_of_the_current_term() -> None:
    c = Cluster(5, pinned=True, max_batch_entries=1)
    k, t1 = _figure8_prefix(c)
    _assert_stored_on_majority_but_not_committed(c, k, t1)
    # (e) n1's own-term no-op at k + 1 reaches a majority: now both commit, together.
    c.drop = None
    c.wait_applied([b"a"], c.alive())
    first = next(rd for rd in c.readies["n1"] if any(e.index == k for e in rd.committed))
    assert first.committed[-1].index > k and first.committed[-1].term > t1
    assert c.sim.checker.committed[k] == (t1, b"a")


# --- leader safety and liveness mechanisms --------------------------------------------------


def test_check_quorum_steps_down_a_leader_cut_off_from_all_followers() -> None:
    c = Cluster(3, seed=15)
    leader = c.wait_leader()
    c.split([leader])
    ticks = c.run_until(
        lambda: c.core(leader).role != Role.LEADER, 3 * ELECTION, "cut-off leader steps down"
    )
    assert ticks <= 2 * ELECTION


def test_without_check_quorum_a_cut_off_leader_stays_leader() -> None:
    """The control for the test above: the step-down comes from check-quorum."""
    c = Cluster(3, seed=15, check_quorum=False)
    leader = c.wait_leader()
    c.split([leader])
    c.run(5 * ELECTION)
    assert c.core(leader).role == Role.LEADER


def test_read_index_waits_for_a_quorum_to_acknowledge_a_heartbeat_round() -> None:
    c = Cluster(5, seed=16)
    leader = c.wait_leader()
    c.commit_one(b"x")
    commit = c.core(leader).commit
    followers = [n for n in c.ids if n != leader]
    # Only one follower's acknowledgements reach the leader: 2 of 5 is no quorum.
    c.drop = lambda m: isinstance(m, HeartbeatResponse) and m.src != followers[0]
    c.core(leader).read_index("r1")
    c.run(ELECTION // 2)  # check-quorum still counts the acknowledgements before the cut
    assert c.core(leader).role == Role.LEADER
    assert c.read_states(leader) == []
    c.drop = lambda m: isinstance(m, HeartbeatResponse) and m.src not in followers[:2]
    c.run_until(lambda: c.read_states(leader), 3 * HEARTBEAT, "read confirmed by 3 of 5")
    (state,) = c.read_states(leader)
    assert (state.ctx, state.index) == ("r1", commit)


def test_an_isolated_leaders_read_never_completes() -> None:
    c = Cluster(3, seed=17)
    leader = c.wait_leader()
    c.commit_one(b"x")
    c.split([leader])
    c.core(leader).read_index("r2")
    c.run(4 * ELECTION)
    assert c.read_states(leader) == []
    dropped = [ctx for rd in c.readies[leader] for ctx in rd.dropped_reads]
    assert dropped == ["r2"], "a deposed leader must tell the reader to retry elsewhere"


def test_leadership_transfer_makes_the_target_leader_in_the_next_term() -> None:
    c = Cluster(5, seed=18)
    leader = c.wait_leader()
    c.commit_one(b"x")
    term = c.core(leader).term
    target = next(n for n in c.ids if n != leader)
    c.core(leader).transfer_leadership(target)
    with pytest.raises(NotLeader) as exc:
        c.core(leader).propose(b"during transfer")
    assert exc.value.leader == target
    ticks = c.run_until(lambda: c.agreed_leader(c.ids) == target, 2 * ELECTION, "transfer")
    assert ticks < ELECTION, "faster than any election timeout"
    assert c.core(target).term == term + 1
    c.commit_one(b"y")


def test_a_follower_rejects_proposals_and_reads_with_a_leader_hint() -> None:
    c = Cluster(3, seed=19)
    with pytest.raises(NotLeader) as before:
        c.core("n1").propose(b"too early")
    assert before.value.leader is None
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    with pytest.raises(NotLeader) as exc:
        c.core(follower).propose(b"x")
    assert exc.value.leader == leader
    with pytest.raises(NotLeader) as read:
        c.core(follower).read_index("r")
    assert read.value.leader == leader
    assert c.core(follower).log.last_index == c.core(leader).log.last_index


def test_the_harness_keeps_the_simulators_own_chaos_off() -> None:
    c = Cluster(3, seed=20)
    c.run(30 * ELECTION)
    assert c.sim.stats["crashes"] == 0 and not c.sim.net.blocked
    assert c.sim.proposed == 0 and c.sim.net.dropped == 0


def test_rejoining_follower_missing_a_few_entries_is_not_sent_a_snapshot() -> None:
    c = Cluster(3, seed=21, snapshot_every=10)
    leader = c.wait_leader()
    before = values("b", 25)
    c.propose(*before, at=leader)
    c.wait_applied(before, c.ids)
    lagging, successor = (n for n in c.ids if n != leader)
    c.split([lagging])  # it misses the new leader's first probe, and three entries
    c.core(leader).transfer_leadership(successor)
    c.run_until(lambda: c.agreed_leader([leader, successor]) == successor, 20, "transfer")
    c.propose(*values("a", 3), at=successor)
    c.wait_applied(values("a", 3), [leader, successor])
    assert c.core(lagging).log.last_index >= c.core(successor).log.offset  # entries suffice
    mark = len(c.sent)
    c.heal()
    c.wait_applied(values("a", 3), [lagging])
    snapshots = [m for m in c.sent[mark:] if isinstance(m, InstallSnapshot)]
    assert snapshots == [], f"{len(snapshots)} snapshot chunks for 3 missing entries"
