"""The runtime's ordering rules, with a recording transport and in-memory storage:
persist before send (votes, follower acknowledgements), apply after commit, and the two
exceptions that are safe: a leader's appends leave before its own save, and a commit-only
hard state change waits for the next write."""

from __future__ import annotations

import random

import pytest

from brokerless.core import Config, Core
from brokerless.messages import Append, AppendResponse, VoteRequest, VoteResponse
from brokerless.runtime import Overloaded, Runtime, Timing
from brokerless.storage import MemoryStorage
from brokerless.types import Entry, EntryKind, HardState, Role
from brokerless.wire import decode_message

IDS = ("a", "b", "c")


class RecordingTransport:
    def __init__(self, journal: list):
        self.journal = journal

    def subscribe(self, topic: bytes) -> None:
        pass

    def send(self, dst: str, kind: bytes, payload: bytes) -> bool:
        self.journal.append(("send", decode_message(payload)))
        return True

    def publish(self, topic: bytes, payload: bytes) -> None:
        self.journal.append(("publish", decode_message(payload)))


class RecordingStorage(MemoryStorage):
    def __init__(self, journal: list):
        super().__init__()
        self.journal = journal

    def save(self, hard_state, entries, snapshot=None) -> None:
        self.journal.append(("save", hard_state, list(entries)))
        super().save(hard_state, entries, snapshot)


class Recorder:
    def __init__(self) -> None:
        self.applied: list[Entry] = []

    def apply(self, entry: Entry):
        self.applied.append(entry)
        return entry.index

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass

    def on_message(self, msg) -> None:
        pass

    def on_tick(self) -> None:
        pass

    def on_role_change(self, soft) -> None:
        pass

    def on_applied(self) -> None:
        pass


def make(node: str = "a", **options):
    journal: list = []
    config = Config(node, IDS)
    core = Core(config, random.Random(1))
    rt = Runtime(config, core, RecordingStorage(journal), RecordingTransport(journal), Timing(),
                 **options)
    rt.app = Recorder()
    return rt, journal


def test_a_vote_is_saved_before_it_is_sent():
    rt, journal = make("b")
    rt.core.step(VoteRequest(1, "a", "b", 0, 0))
    rt.process_ready()
    save_at = next(i for i, j in enumerate(journal) if j[0] == "save")
    vote_at = next(i for i, j in enumerate(journal) if j[0] == "send" and isinstance(j[1], VoteResponse))
    assert journal[save_at][1] == HardState(term=1, vote="a", commit=0)
    assert save_at < vote_at
    assert journal[vote_at][1].granted


def test_a_follower_saves_entries_before_acknowledging_them():
    rt, journal = make("b")
    entries = (Entry(1, 1, b"", EntryKind.NOOP), Entry(1, 2, b"x"))
    rt.core.step(Append(1, "a", "b", 0, 0, entries, 0))
    rt.process_ready()
    save_at = next(i for i, j in enumerate(journal) if j[0] == "save" and j[2])
    ack_at = next(i for i, j in enumerate(journal) if j[0] == "send" and isinstance(j[1], AppendResponse))
    assert [e.index for e in journal[save_at][2]] == [1, 2]
    assert save_at < ack_at and journal[ack_at][1].index == 2
    assert rt.app.applied == []  # nothing is applied before it is committed


def elect(rt: Runtime, journal: list) -> None:
    rt.core.campaign()
    rt.process_ready()
    term = rt.core.term + 1  # a granted pre-vote carries the term asked about
    for peer in ("b", "c"):
        rt.core.step(VoteResponse(term, peer, "a", True, pre=True))
    rt.process_ready()
    term = rt.core.term
    for peer in ("b", "c"):
        rt.core.step(VoteResponse(term, peer, "a", True))
    rt.process_ready()
    assert rt.core.role == Role.LEADER
    for peer in ("b", "c"):  # answer the leader's first probe: replication is pipelined from now
        rt.core.step(AppendResponse(rt.core.term, peer, "a", True, rt.core.log.last_index))
    rt.process_ready()
    journal.clear()


def test_a_leader_sends_appends_before_its_own_save_and_applies_only_after_commit():
    rt, journal = make("a")
    elect(rt, journal)
    results = []
    index = rt.propose(b"bid", lambda result, error: results.append((result, error)))
    rt.process_ready()
    first_append = next(i for i, j in enumerate(journal) if j[0] == "send" and isinstance(j[1], Append))
    save_at = next(i for i, j in enumerate(journal) if j[0] == "save" and j[2])
    assert first_append < save_at  # the leader's disk write overlaps the followers'
    assert results == [] and rt.app.applied[-1].index < index
    rt.core.step(AppendResponse(rt.core.term, "b", "a", True, index))
    rt.process_ready()
    assert results == [(index, None)]
    assert rt.app.applied[-1].data == b"bid"


def test_a_commit_only_change_costs_no_save_of_its_own_but_is_kept():
    rt, journal = make("a")
    elect(rt, journal)
    index = rt.propose(b"bid", lambda r, e: None)
    rt.process_ready()
    journal.clear()
    rt.core.step(AppendResponse(rt.core.term, "b", "a", True, index))
    rt.process_ready()
    assert rt.core.commit == index
    assert not [j for j in journal if j[0] == "save"]
    rt.flush()
    assert rt.storage.load().hard_state.commit == index


def test_a_leader_refuses_proposals_beyond_max_pending_until_some_are_applied():
    rt, journal = make("a", max_pending=3)
    elect(rt, journal)
    results = []
    indexes = [rt.propose(b"bid%d" % n, lambda r, e: results.append(r)) for n in range(3)]
    with pytest.raises(Overloaded) as refused:
        rt.propose(b"one too many", lambda r, e: results.append(r))
    assert refused.value.limit == 3 and rt.stats["overloaded"] == 1
    rt.process_ready()
    assert b"one too many" not in [e.data for e in rt.core.log.slice(1, indexes[-1] + 1)]
    rt.core.step(AppendResponse(rt.core.term, "b", "a", True, indexes[-1]))
    rt.process_ready()
    assert results == indexes  # applied, so there is room again
    assert rt.propose(b"next", lambda r, e: None) == indexes[-1] + 1


def test_max_pending_must_be_a_positive_int():
    config = Config("a", IDS)
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ValueError):
            Runtime(config, Core(config, random.Random(1)), MemoryStorage(),
                    RecordingTransport([]), Timing(), max_pending=bad)


def test_housekeeping_proposals_are_admitted_even_when_saturated():
    rt, journal = make("a", max_pending=1)
    elect(rt, journal)
    first = rt.propose(b"client write", lambda r, e: None)
    assert rt.saturated
    with pytest.raises(Overloaded):
        rt.propose(b"another client write", lambda r, e: None)
    assert rt.propose(b"close auction", lambda r, e: None, admit_always=True) == first + 1


def test_a_committed_entry_carries_the_very_payload_object_the_leader_proposed():
    # zauction's leader relies on it to skip decoding its own proposals at apply.
    rt, journal = make("a")
    elect(rt, journal)
    payload = b"bid" * 10
    index = rt.propose(payload, lambda r, e: None)
    rt.process_ready()
    rt.core.step(AppendResponse(rt.core.term, "b", "a", True, index))
    rt.process_ready()
    assert rt.app.applied[-1].index == index and rt.app.applied[-1].data is payload
