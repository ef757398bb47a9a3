"""Drive N cores through a seeded storm of faults and check safety after every step.

Time alternates between chaos (partitions of every shape, loss, duplication, delay,
crashes mid-Ready, restarts, leadership transfers) and calm (network healed, every node
up). Safety is checked always; liveness at the end of every calm window: one leader, every
proposal it accepted committed, every node applied up to the same index.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from brokerless.core import Config, NotLeader, Ready
from brokerless.executor import Save
from brokerless.messages import Message
from brokerless.sim.checker import Checker, SafetyViolation
from brokerless.sim.network import Faults, Network
from brokerless.sim.node import SimNode
from brokerless.types import NodeId, Role


@dataclass(slots=True)
class SimOptions:
    nodes: int = 3
    seed: int = 0
    steps: int = 5000
    faults: Faults = field(default_factory=lambda: Faults(drop=0.05, duplicate=0.02, max_delay=3))
    crashes: bool = True
    snapshot_every: int = 40  # applied entries between snapshots; 0 disables them
    snapshot_chunk_bytes: int = 1024  # small, so snapshots travel in many chunks
    catchup_entries: int = 10  # short, so followers behind a snapshot still need one
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    propose_chance: float = 0.3
    chaos_every: int = 40  # mean ticks between fault events during chaos
    cycle: int = 1000  # a chaos phase then a calm phase of `calm` ticks, repeated
    calm: int = 400


class LivenessViolation(AssertionError):
    pass


class _Crash(Exception):
    """The node dies at this point of executing its Ready."""


class SimIO:
    """A simulated node's ReadyIO: messages into the network, saves into its storage, and
    an optional crash before step number `crash_at` (each send or save is a step)."""

    def __init__(self, sim: Simulation, node: SimNode, crash_at: int | None = None):
        self._sim = sim
        self._node = node
        self._crash_at = crash_at
        self._steps = 0

    def step(self) -> None:
        if self._crash_at is not None and self._steps >= self._crash_at:
            raise _Crash
        self._steps += 1

    def send(self, msg: Message) -> None:
        self.step()
        self._sim.net.send(msg, self._sim.now)

    def save(self, save: Save) -> None:
        self.step()
        self._node.storage.save(save.hard_state, save.entries, save.snapshot)


class Simulation:
    DRAIN = 100  # calm ticks at the end of a cycle without proposals, to let every node catch up

    def __init__(self, opts: SimOptions, trace: Callable[[str], None] | None = None):
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.ids: list[NodeId] = [f"n{i + 1}" for i in range(opts.nodes)]
        self.nodes = {nid: self._make_node(nid, i) for i, nid in enumerate(self.ids)}
        self.net = Network(self.ids, random.Random(opts.seed + 1), opts.faults)
        self.checker = Checker()
        self.trace = trace or (lambda line: None)
        self.now = 0
        self.proposed = 0
        self.calm_proposals: list[tuple[int, bytes]] = []  # (term, data) accepted while calm
        self.stats = {"elections": 0, "crashes": 0, "snapshots_installed": 0, "calm_checks": 0}
        self._roles: dict[NodeId, tuple[Role, int]] = {}

    def _make_node(self, nid: NodeId, i: int) -> SimNode:
        o = self.opts
        cfg = Config(
            nid,
            tuple(f"n{k + 1}" for k in range(o.nodes)),
            election_ticks=o.election_ticks,
            heartbeat_ticks=o.heartbeat_ticks,
            snapshot_chunk_bytes=o.snapshot_chunk_bytes,
            catchup_entries=o.catchup_entries,
            max_batch_entries=16,
            max_inflight=8,
        )
        return SimNode(cfg, o.seed * 1000 + i, o.snapshot_every)

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(self.opts.steps):
            self.step()

    def step(self) -> None:
        self.now += 1
        phase = self.now % self.opts.cycle
        calm_start = self.opts.cycle - self.opts.calm
        if phase == calm_start:
            self._begin_calm()
        elif phase == 0:
            self._end_calm()
        elif phase < calm_start:
            self._maybe_chaos()
        for node in self._alive():
            node.core.tick()
        for dst, msg in self.net.due(self.now):
            if self.nodes[dst].alive:
                self.nodes[dst].core.step(msg)
        draining = phase == 0 or phase >= self.opts.cycle - self.DRAIN
        if not draining:
            self._maybe_propose(calm=phase >= calm_start)
        for nid in self.ids:
            if self.nodes[nid].alive:
                self._process(nid)

    def _alive(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def _process(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        rd = node.core.ready()
        self._observe(nid, rd)
        crash_mid_ready = self._chaos_on() and self.rng.random() < 0.002
        # A crash mid-Ready stops it at a random step: before or after the save, after
        # some of the sends (the leader's early ones included), or before applying.
        steps = len(rd.messages) + 1
        io = SimIO(self, node, self.rng.randint(0, steps) if crash_mid_ready else None)
        try:
            node.executor.execute(rd, io)  # the runtime's own order: early sends, save, rest
            io.step()
        except _Crash:
            # Nothing of a term that never became durable has left the node (a new term
            # is saved before any message of it is sent), so only the durable term counts.
            self._record_durable(nid)
            self.checker.term_seen(nid, node.durable.term)
            self._crash(nid, "in the middle of a Ready")
            return
        self._record_durable(nid)
        self.checker.term_seen(nid, rd.soft_state.term)
        if rd.snapshot is not None:
            self.stats["snapshots_installed"] += 1
            self.trace(f"t={self.now} {nid} installed snapshot at {rd.snapshot.meta.index}")
        new = node.apply(rd, SimIO(self, node))  # ... then apply.
        self.checker.applied(nid, new)

    def _record_durable(self, nid: NodeId) -> None:
        durable = self.nodes[nid].durable
        self.checker.persisted(nid, durable.term, durable.commit)

    def _observe(self, nid: NodeId, rd: Ready) -> None:
        role, term = rd.soft_state.role, rd.soft_state.term
        if role == Role.LEADER:
            self.checker.leader_seen(nid, term)
        if self._roles.get(nid) != (role, term):
            self._roles[nid] = (role, term)
            if role == Role.LEADER:
                self.stats["elections"] += 1
                self.trace(f"t={self.now} {nid} became leader in term {term}")
                self.checker.leader_complete(nid, role, self.nodes[nid].core.log)

    # --- workload ------------------------------------------------------------------------

    def _maybe_propose(self, calm: bool) -> None:
        if self.rng.random() >= self.opts.propose_chance:
            return
        leaders = [n for n in self._alive() if n.core.role == Role.LEADER]
        if not leaders:
            return
        node = self.rng.choice(leaders)
        self.proposed += 1
        data = f"v{self.proposed}".encode()
        try:
            node.core.propose(data)
        except NotLeader:
            return
        if calm:
            self.calm_proposals.append((node.core.term, data))

    # --- faults --------------------------------------------------------------------------

    def _chaos_on(self) -> bool:
        return self.now % self.opts.cycle < self.opts.cycle - self.opts.calm

    def _maybe_chaos(self) -> None:
        if self.rng.random() >= 1 / self.opts.chaos_every:
            return
        events = [
            self._isolate_leader,
            self._split,
            self._ring,
            self._one_way,
            self._clog,
            self._unclog,
            self._heal,
            self._transfer,
        ]
        if len(self.ids) < 2:  # one node: no links to cut, nobody to transfer to
            events = [self._heal]
        if self.opts.crashes:
            events += [self._crash_random, self._restart_random]
        self.rng.choice(events)()

    def _leader(self) -> NodeId | None:
        live = [n for n in self._alive() if n.core.role == Role.LEADER]
        return max(live, key=lambda n: n.core.term).config.id if live else None

    def _isolate_leader(self) -> None:
        leader = self._leader()
        if leader:
            self.net.split([[leader], [n for n in self.ids if n != leader]])
            self.trace(f"t={self.now} partition: leader {leader} isolated")

    def _split(self) -> None:
        ids = self.ids[:]
        self.rng.shuffle(ids)
        k = self.rng.randint(1, len(ids) // 2)
        self.net.split([ids[:k], ids[k:]])
        self.trace(f"t={self.now} partition: {ids[:k]} | {ids[k:]}")

    def _ring(self) -> None:
        self.net.ring()
        self.trace(f"t={self.now} partition: ring")

    def _one_way(self) -> None:
        a, b = self.rng.sample(self.ids, 2)
        self.net.cut(a, b, both_ways=False)
        self.trace(f"t={self.now} partition: {a} -> {b} cut one way")

    def _clog(self) -> None:
        a, b = self.rng.sample(self.ids, 2)
        self.net.cut(a, b)
        self.trace(f"t={self.now} partition: link {a} <-> {b} clogged")

    def _unclog(self) -> None:
        if self.net.blocked:
            a, b = self.rng.choice(sorted(self.net.blocked))
            self.net.blocked.discard((a, b))
            self.net.blocked.discard((b, a))
            self.trace(f"t={self.now} partition: link {a} <-> {b} unclogged")

    def _heal(self) -> None:
        self.net.heal()
        self.trace(f"t={self.now} network healed")

    def _transfer(self) -> None:
        leader = self._leader()
        if leader:
            target = self.rng.choice([n for n in self.ids if n != leader])
            try:
                self.nodes[leader].core.transfer_leadership(target)
                self.trace(f"t={self.now} {leader} transfers leadership to {target}")
            except NotLeader:
                pass

    def _crash_random(self) -> None:
        alive = [n.config.id for n in self._alive()]
        if alive:
            self._crash(self.rng.choice(alive), "")

    def _crash(self, nid: NodeId, how: str) -> None:
        self.nodes[nid].crash()
        self.net.drop_to(nid)
        self._roles.pop(nid, None)
        self.stats["crashes"] += 1
        self.trace(f"t={self.now} {nid} crashed {how}".rstrip())

    def _restart_random(self) -> None:
        dead = [nid for nid, n in self.nodes.items() if not n.alive]
        if dead:
            self._restart(self.rng.choice(dead))

    def _restart(self, nid: NodeId) -> None:
        node = self.nodes[nid]
        node.start()
        self.checker.restarted(nid, node.applied_index)
        self.checker.applied_prefix(nid, node.applied)
        self.trace(
            f"t={self.now} {nid} restarted at term {node.core.term}, "
            f"log {node.core.log.first_index}..{node.core.log.last_index}"
        )

    # --- calm windows: liveness ------------------------------------------------------------

    def _begin_calm(self) -> None:
        self.net.heal()
        for nid, node in self.nodes.items():
            if not node.alive:
                self._restart(nid)
        self._saved_faults = self.net.faults
        self.net.faults = Faults(max_delay=self.net.faults.max_delay)
        self.calm_proposals = []
        self.trace(f"t={self.now} calm: network healed, every node up")

    def _end_calm(self) -> None:
        self.net.faults = self._saved_faults
        leader = self._leader()
        if leader is None:
            raise LivenessViolation(f"no leader after {self.opts.calm} calm ticks")
        core = self.nodes[leader].core
        applied = {d for n in self.nodes.values() for (_, _, d) in n.applied}
        lost = [d for t, d in self.calm_proposals if t == core.term and d not in applied]
        if lost:
            raise LivenessViolation(f"calm proposals never applied: {lost[:5]}")
        lagging = {
            nid: n.applied_index
            for nid, n in self.nodes.items()
            if n.applied_index != core.log.last_index
        }
        if core.commit != core.log.last_index or lagging:
            raise LivenessViolation(f"nodes behind leader commit {core.commit}: {lagging}")
        self.stats["calm_checks"] += 1


def run_seed(opts: SimOptions, trace: Callable[[str], None] | None = None) -> Simulation:
    sim = Simulation(opts, trace)
    try:
        sim.run()
    except (SafetyViolation, LivenessViolation) as exc:
        raise type(exc)(f"seed {opts.seed}, nodes {opts.nodes}, step {sim.now}: {exc}") from exc
    return sim
