"""Safety properties checked after every simulated step."""

from __future__ import annotations

from brokerless.types import NodeId, Role


class SafetyViolation(AssertionError):
    pass


class Checker:
    def __init__(self) -> None:
        self.leaders: dict[int, NodeId] = {}  # term -> the one leader of that term
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data), commands
        self.highest_applied: dict[NodeId, int] = {}
        self.max_term: dict[NodeId, int] = {}
        self.max_persisted: dict[NodeId, tuple[int, int]] = {}  # durable (term, commit)

    def leader_seen(self, node: NodeId, term: int) -> None:
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise SafetyViolation(f"two leaders in term {term}: {other} and {node}")

    def term_seen(self, node: NodeId, term: int) -> None:
        if term < self.max_term.get(node, 0):
            raise SafetyViolation(f"{node} term went back from {self.max_term[node]} to {term}")
        self.max_term[node] = term

    def persisted(self, node: NodeId, term: int, commit: int) -> None:
        old_term, old_commit = self.max_persisted.get(node, (0, 0))
        if term < old_term or commit < old_commit:
            raise SafetyViolation(
                f"{node} durable state went back: term {old_term}->{term}, "
                f"commit {old_commit}->{commit}"
            )
        self.max_persisted[node] = (term, commit)

    def applied(self, node: NodeId, entries: list[tuple[int, int, bytes]]) -> None:
        """Every node applies the same command at the same index, none twice."""
        for index, term, data in entries:
            if index <= self.highest_applied.get(node, 0):
                raise SafetyViolation(f"{node} applied index {index} again")
            self.highest_applied[node] = index
            known = self.committed.setdefault(index, (term, data))
            if known != (term, data):
                raise SafetyViolation(
                    f"{node} applied {(term, data)!r} at {index}, another node {known!r}"
                )

    def restarted(self, node: NodeId, applied_index: int) -> None:
        self.highest_applied[node] = applied_index

    def applied_prefix(self, node: NodeId, entries: list[tuple[int, int, bytes]]) -> None:
        """What a node restored from its snapshot agrees with what was committed."""
        for index, term, data in entries:
            known = self.committed.get(index)
            if known is not None and known != (term, data):
                raise SafetyViolation(f"{node} restored {(term, data)!r} at {index}: {known!r}")

    def leader_complete(self, node: NodeId, role: Role, log) -> None:
        """A leader's log holds every command committed so far (Leader Completeness)."""
        if role != Role.LEADER:
            return
        for index in range(log.first_index, log.last_index + 1):
            known = self.committed.get(index)
            if known is not None and log.term(index) != known[0]:
                raise SafetyViolation(f"leader {node} lacks committed entry {index}")
        top = max(self.committed, default=0)
        if top > log.last_index:
            raise SafetyViolation(f"leader {node} ends at {log.last_index}, {top} is committed")
