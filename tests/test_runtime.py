"""The runtime's ordering rules, with the in-memory transport and in-memory storage:
persist before send (votes, follower acknowledgements), apply after commit, and the two
exceptions that are safe: a leader's appends leave before its own save, and a commit-only
hard state change waits for the next write."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from brokerless.application import Inbound, PeerReply
from brokerless.core import Config, Core
from brokerless.messages import Append, AppendResponse, VoteRequest, VoteResponse
from brokerless.runtime import Overloaded, Runtime, Timing
from brokerless.storage import MemoryStorage
from brokerless.transport import FromPeer, FromRouter, MemoryNetwork, MemoryTransport, Outgoing
from brokerless.types import MAX_TERM, MAX_TERM_JUMP, Entry, EntryKind, HardState, Role
from brokerless.wire import decode_message, encode_message

IDS = ("a", "b", "c")


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
        self.proposed: list[object] = []
        self.inbound: list[Inbound | PeerReply] = []

    def apply(self, entry: Entry, proposed: object = None):
        self.applied.append(entry)
        self.proposed.append(proposed)
        return entry.index

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass

    def on_inbound(self, frame: Inbound) -> None:
        self.inbound.append(frame)

    def on_peer_reply(self, reply: PeerReply) -> None:
        self.inbound.append(reply)

    def on_role_change(self, soft) -> None:
        pass

    def before_ready(self, now: float) -> bool:
        return False

    def after_iteration(self) -> None:
        pass


@dataclass
class Rig:
    """A runtime and the parts it was built with, as a test sees them."""

    rt: Runtime
    core: Core
    app: Recorder
    storage: RecordingStorage
    transport: MemoryTransport
    journal: list


def make(node: str = "a", **options) -> Rig:
    journal: list = []
    config = Config(node, IDS)
    core = Core(config, random.Random(1))

    def record(out: Outgoing) -> None:
        journal.append((out.channel, decode_message(out.payload)))

    storage, app = RecordingStorage(journal), Recorder()
    transport = MemoryTransport(node, IDS, observe=record)
    rt = Runtime(config, core, storage, transport, app, Timing(), **options)
    return Rig(rt, core, app, storage, transport, journal)


def test_a_vote_is_saved_before_it_is_sent():
    rig = make("b")
    rig.core.step(VoteRequest(1, "a", "b", 0, 0))
    rig.rt.process_ready()
    save_at = next(i for i, j in enumerate(rig.journal) if j[0] == "save")
    vote_at = next(i for i, j in enumerate(rig.journal) if j[0] == "send" and isinstance(j[1], VoteResponse))
    assert rig.journal[save_at][1] == HardState(term=1, vote="a", commit=0)
    assert save_at < vote_at
    assert rig.journal[vote_at][1].granted


def test_a_follower_saves_entries_before_acknowledging_them():
    rig = make("b")
    entries = (Entry(1, 1, b"", EntryKind.NOOP), Entry(1, 2, b"x"))
    rig.core.step(Append(1, "a", "b", 0, 0, entries, 0))
    rig.rt.process_ready()
    save_at = next(i for i, j in enumerate(rig.journal) if j[0] == "save" and j[2])
    ack_at = next(i for i, j in enumerate(rig.journal) if j[0] == "send" and isinstance(j[1], AppendResponse))
    assert [e.index for e in rig.journal[save_at][2]] == [1, 2]
    assert save_at < ack_at and rig.journal[ack_at][1].index == 2
    assert rig.app.applied == []  # nothing is applied before it is committed


def elect(rig: Rig) -> None:
    rig.core.campaign()
    rig.rt.process_ready()
    term = rig.core.term + 1  # a granted pre-vote carries the term asked about
    for peer in ("b", "c"):
        rig.core.step(VoteResponse(term, peer, "a", True, pre=True))
    rig.rt.process_ready()
    term = rig.core.term
    for peer in ("b", "c"):
        rig.core.step(VoteResponse(term, peer, "a", True))
    rig.rt.process_ready()
    assert rig.core.role == Role.LEADER
    for peer in ("b", "c"):  # answer the leader's first probe: replication is pipelined from now
        rig.core.step(AppendResponse(rig.core.term, peer, "a", True, rig.core.log.last_index))
    rig.rt.process_ready()
    rig.journal.clear()


def test_a_leader_sends_appends_before_its_own_save_and_applies_only_after_commit():
    rig = make("a")
    elect(rig)
    results = []
    index = rig.rt.propose(b"bid", lambda result, error: results.append((result, error)))
    rig.rt.process_ready()
    first_append = next(i for i, j in enumerate(rig.journal) if j[0] == "send" and isinstance(j[1], Append))
    save_at = next(i for i, j in enumerate(rig.journal) if j[0] == "save" and j[2])
    assert first_append < save_at  # the leader's disk write overlaps the followers'
    assert results == [] and rig.app.applied[-1].index < index
    rig.core.step(AppendResponse(rig.core.term, "b", "a", True, index))
    rig.rt.process_ready()
    assert results == [(index, None)]
    assert rig.app.applied[-1].data == b"bid"


def test_a_commit_only_change_costs_no_save_of_its_own_but_is_kept():
    rig = make("a")
    elect(rig)
    index = rig.rt.propose(b"bid", lambda r, e: None)
    rig.rt.process_ready()
    rig.journal.clear()
    rig.core.step(AppendResponse(rig.core.term, "b", "a", True, index))
    rig.rt.process_ready()
    assert rig.core.commit == index
    assert not [j for j in rig.journal if j[0] == "save"]
    rig.rt.flush()
    assert rig.storage.load().hard_state.commit == index


def test_a_leader_refuses_proposals_beyond_max_pending_until_some_are_applied():
    rig = make("a", max_pending=3)
    elect(rig)
    results = []
    indexes = [rig.rt.propose(b"bid%d" % n, lambda r, e: results.append(r)) for n in range(3)]
    with pytest.raises(Overloaded) as refused:
        rig.rt.propose(b"one too many", lambda r, e: results.append(r))
    assert refused.value.limit == 3 and rig.rt.status().loop["overloaded"] == 1
    rig.rt.process_ready()
    assert b"one too many" not in [e.data for e in rig.core.log.slice(1, indexes[-1] + 1)]
    rig.core.step(AppendResponse(rig.core.term, "b", "a", True, indexes[-1]))
    rig.rt.process_ready()
    assert results == indexes  # applied, so there is room again
    assert rig.rt.propose(b"next", lambda r, e: None) == indexes[-1] + 1


def test_max_pending_must_be_a_positive_int():
    config = Config("a", IDS)
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ValueError):
            Runtime(config, Core(config, random.Random(1)), MemoryStorage(),
                    MemoryTransport("a", IDS), Recorder(), Timing(), max_pending=bad)


def test_housekeeping_proposals_are_admitted_even_when_saturated():
    rig = make("a", max_pending=1)
    elect(rig)
    first = rig.rt.propose(b"client write", lambda r, e: None)
    assert rig.rt.saturated
    with pytest.raises(Overloaded):
        rig.rt.propose(b"another client write", lambda r, e: None)
    assert rig.rt.propose(b"close auction", lambda r, e: None, admit_always=True) == first + 1


def test_a_committed_entry_carries_the_very_payload_object_the_leader_proposed():
    # zauction's leader relies on it to skip decoding its own proposals at apply.
    rig = make("a")
    elect(rig)
    payload = b"bid" * 10
    index = rig.rt.propose(payload, lambda r, e: None)
    rig.rt.process_ready()
    rig.core.step(AppendResponse(rig.core.term, "b", "a", True, index))
    rig.rt.process_ready()
    assert rig.app.applied[-1].index == index and rig.app.applied[-1].data is payload


def test_apply_gets_back_what_was_proposed_alongside_the_very_payload():
    rig = make("a")
    elect(rig)
    decoded = object()
    index = rig.rt.propose(b"bid" * 10, lambda r, e: None, proposed=decoded)
    rig.rt.process_ready()
    rig.core.step(AppendResponse(rig.core.term, "b", "a", True, index))
    rig.rt.process_ready()
    assert rig.app.applied[-1].index == index and rig.app.proposed[-1] is decoded
    assert rig.app.proposed[0] is None  # the term's NOOP was nobody's proposal


# --- the loop itself, over the in-memory network and a clock the test turns --------------


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cluster_in_memory(clock: ManualClock) -> dict[str, Rig]:
    network = MemoryNetwork()
    rigs = {}
    for node in IDS:
        config = Config(node, IDS, election_ticks=10, heartbeat_ticks=2)
        core = Core(config, random.Random(IDS.index(node)))
        storage, app = RecordingStorage([]), Recorder()
        transport = MemoryTransport(node, IDS, network=network)
        rt = Runtime(config, core, storage, transport, app, Timing(), clock=clock)
        rigs[node] = Rig(rt, core, app, storage, transport, [])
    return rigs


def turn(rigs: dict[str, Rig], clock: ManualClock, until, max_ticks: int = 2000) -> None:
    """Advance time tick by tick, every node running one loop iteration per tick."""
    for _ in range(max_ticks):
        if until():
            return
        clock.now += Timing().tick_ms / 1000
        for rig in rigs.values():
            rig.rt.run_once(0)
    raise AssertionError("the condition never held")


def test_the_loop_elects_replicates_and_applies_without_sockets_or_wall_time():
    clock = ManualClock()
    rigs = cluster_in_memory(clock)

    def leaders() -> list[str]:
        return [n for n, r in rigs.items() if r.rt.role == Role.LEADER]

    turn(rigs, clock, lambda: len(leaders()) == 1)
    leader = rigs[leaders()[0]]
    results: list = []
    index = leader.rt.propose(b"bid", lambda r, e: results.append((r, e)))
    turn(rigs, clock, lambda: all(r.rt.status().core.applied >= index for r in rigs.values()))
    assert results == [(index, None)]
    assert all(r.app.applied[-1].data == b"bid" for r in rigs.values())
    assert {r.rt.leader for r in rigs.values()} == {leaders()[0]}


def test_the_loop_hands_client_frames_to_the_application_and_knows_members_by_id():
    clock = ManualClock()
    rigs = cluster_in_memory(clock)
    a = rigs["a"]
    a.transport.deliver(FromRouter(b"\x00client", b"C", b"hello"))
    a.transport.deliver(FromRouter(b"b", b"F", b"forwarded"))
    a.transport.deliver(FromPeer("c", b"FR", b"answer"))
    a.rt.run_once(0)
    assert a.app.inbound == [Inbound(b"\x00client", None, b"C", b"hello"),
                             Inbound(b"b", "b", b"F", b"forwarded"),
                             PeerReply("c", b"FR", b"answer")]
    assert a.rt.reply(b"\x00client", b"C", b"back")
    assert a.transport.sent[-1] == Outgoing("reply", b"\x00client", b"C", b"back")


def test_a_follower_that_hears_no_leader_campaigns_when_its_clock_says_so():
    clock = ManualClock()
    rigs = cluster_in_memory(clock)
    a = rigs["a"]
    for _ in range(5):  # five iterations in the same instant: no tick, no election
        a.rt.run_once(0)
    assert a.rt.term == 0
    turn({"a": a}, clock, lambda: a.rt.term > 0 or a.transport.sent != [], max_ticks=100)
    assert any(o.channel == "send" and isinstance(decode_message(o.payload), VoteRequest)
               for o in a.transport.sent)


# --- what a non-member or a forger can do ---------------------------------------------------


def test_a_consensus_frame_from_a_non_member_is_refused_before_it_is_decoded(monkeypatch):
    rig = make("a")
    decoded = []
    import brokerless.runtime as runtime_module
    real_decode = runtime_module.decode_message
    monkeypatch.setattr(runtime_module, "decode_message",
                        lambda payload: decoded.append(payload) or real_decode(payload))
    big = b"\x93" + b"\x00" * 1_000_000  # never looked at, whatever it holds
    rig.transport.deliver(FromRouter(b"\x00outsider", b"P", big))
    rig.rt.run_once(0)
    assert decoded == []
    assert rig.rt.status().rejected_peer_messages == 1
    # A member's frame is still decoded and stepped.
    rig.transport.deliver(FromRouter(b"b", b"P", encode_message(VoteRequest(1, "b", "a", 0, 0))))
    rig.rt.run_once(0)
    assert len(decoded) == 1 and rig.core.term == 1


def test_a_forged_huge_term_changes_nothing_and_the_cluster_still_elects():
    clock = ManualClock()
    rigs = cluster_in_memory(clock)
    turn(rigs, clock, lambda: any(r.rt.role == Role.LEADER for r in rigs.values()))
    term = max(r.rt.term for r in rigs.values())
    forged = VoteRequest(MAX_TERM, "b", "a", 10**12, MAX_TERM, transfer=True)
    rigs["a"].transport.deliver(FromRouter(b"b", b"P", encode_message(forged)))
    rigs["a"].rt.run_once(0)
    assert rigs["a"].rt.term == term  # refused: beyond any honest jump
    # Within the bound, a term jump is honoured, and elections go on from there.
    jumped = term + MAX_TERM_JUMP
    rigs["a"].transport.deliver(FromRouter(b"b", b"P", encode_message(
        VoteRequest(jumped, "b", "a", 0, 0, transfer=True))))
    rigs["a"].rt.run_once(0)
    assert rigs["a"].rt.term == jumped
    turn(rigs, clock, lambda: any(r.rt.role == Role.LEADER and r.rt.term > jumped
                                  for r in rigs.values()))
