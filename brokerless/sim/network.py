"""A simulated network: delay, loss, duplication, reordering and partitions, all seeded."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from brokerless.messages import Message, destination
from brokerless.types import NodeId


@dataclass(slots=True)
class Faults:
    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability a message is delivered twice
    max_delay: int = 0  # ticks; random delays also reorder messages


@dataclass(order=True, slots=True)
class _InFlight:
    due: int
    seq: int
    msg: Message = field(compare=False)
    dst: NodeId = field(compare=False)


class Network:
    def __init__(self, nodes: list[NodeId], rng: random.Random, faults: Faults):
        self.nodes = nodes
        self.rng = rng
        self.faults = faults
        self.blocked: set[tuple[NodeId, NodeId]] = set()  # one-way links that drop everything
        self._queue: list[_InFlight] = []
        self._seq = 0
        self.sent = 0
        self.dropped = 0

    # --- partitions ----------------------------------------------------------------------

    def heal(self) -> None:
        self.blocked.clear()

    def cut(self, a: NodeId, b: NodeId, both_ways: bool = True) -> None:
        self.blocked.add((a, b))
        if both_ways:
            self.blocked.add((b, a))

    def split(self, groups: list[list[NodeId]]) -> None:
        """Only nodes in the same group hear each other."""
        self.heal()
        group_of = {n: i for i, g in enumerate(groups) for n in g}
        for a in self.nodes:
            for b in self.nodes:
                if a != b and group_of.get(a) != group_of.get(b):
                    self.blocked.add((a, b))

    def ring(self) -> None:
        """Each node hears only its two neighbours."""
        self.heal()
        n = len(self.nodes)
        for i, a in enumerate(self.nodes):
            near = {self.nodes[(i - 1) % n], self.nodes[(i + 1) % n]}
            for b in self.nodes:
                if b != a and b not in near:
                    self.blocked.add((a, b))

    # --- traffic -------------------------------------------------------------------------

    def send(self, msg: Message, now: int) -> None:
        dst = destination(msg)
        targets = [n for n in self.nodes if n != msg.src] if dst is None else [dst]
        for target in targets:
            self.sent += 1
            if (msg.src, target) in self.blocked or self.rng.random() < self.faults.drop:
                self.dropped += 1
                continue
            copies = 2 if self.rng.random() < self.faults.duplicate else 1
            for _ in range(copies):
                self._seq += 1
                due = now + self.rng.randint(0, self.faults.max_delay)
                heapq.heappush(self._queue, _InFlight(due, self._seq, msg, target))

    def due(self, now: int) -> list[tuple[NodeId, Message]]:
        out = []
        while self._queue and self._queue[0].due <= now:
            item = heapq.heappop(self._queue)
            if (item.msg.src, item.dst) not in self.blocked:  # a cut also catches what is in flight
                out.append((item.dst, item.msg))
        return out

    def drop_to(self, node: NodeId) -> None:
        """A crashed node loses everything in flight to it."""
        self._queue = [m for m in self._queue if m.dst != node]
        heapq.heapify(self._queue)
