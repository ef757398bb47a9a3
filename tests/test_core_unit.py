"""Unit tests of Core, RaftLog and Progress with hand-built messages.

The core is a pure state machine: every test builds one, feeds it messages, and looks at
its state and at the Ready it hands out. Peer input is untrusted, so a large part of this
file checks that bad messages never raise and change nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokerless.core import Config, Core, NotLeader, Ready
from brokerless.core.log import RaftLog
from brokerless.core.progress import Progress, ReplState
from brokerless.messages import (
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from brokerless.types import Entry, EntryKind, HardState, Role, Snapshot, SnapshotMeta

VOTERS = ("n1", "n2", "n3")


class PinnedRng:
    def randrange(self, start: int, stop: int) -> int:
        return stop - 1


def entries(*terms: int, start: int = 1) -> list[Entry]:
    """A log whose entry at index `start + i` has term `terms[i]`."""
    return [Entry(t, start + i, f"e{start + i}".encode()) for i, t in enumerate(terms)]


def make(
    hard: HardState | None = None,
    log: list[Entry] | None = None,
    snapshot: Snapshot | None = None,
    **config: object,
) -> Core:
    cfg = Config("n1", VOTERS, election_ticks=10, heartbeat_ticks=1, **config)
    return Core(cfg, PinnedRng(), hard, snapshot, log or [])


def drain(core: Core) -> Ready:
    rd = core.ready()
    core.advance(rd)
    return rd


def elect(core: Core) -> Core:
    """Make n1 leader with n2's votes (pre-vote, then the real vote)."""
    core.campaign()
    core.step(VoteResponse(core.term + 1, "n2", "n1", True, pre=True))
    core.step(VoteResponse(core.term, "n2", "n1", True))
    assert core.role == Role.LEADER
    drain(core)
    return core


def snapshot_of(core: Core) -> tuple:
    """Everything bad input must leave alone."""
    log = core.log
    return (
        core.term, core.vote, core.commit, core.role, core.leader, core.applied,
        log.offset, log.offset_term, tuple(log.entries),
        tuple((p, pr.match, pr.next, pr.state) for p, pr in core.progress.items()),
    )


# --- votes ---------------------------------------------------------------------------------


def test_the_vote_is_in_the_hard_state_of_the_ready_that_carries_the_response() -> None:
    core = make()
    core.step(VoteRequest(1, "n2", "n1", last_index=0, last_term=0))
    rd = core.ready()
    assert rd.hard_state == HardState(term=1, vote="n2", commit=0)
    assert rd.messages == [VoteResponse(1, "n1", "n2", granted=True)]


def test_one_vote_per_term_even_across_a_restart() -> None:
    core = make()
    core.step(VoteRequest(1, "n2", "n1", 0, 0))
    persisted = drain(core).hard_state
    core.step(VoteRequest(1, "n3", "n1", 0, 0))
    rd = drain(core)
    assert rd.messages == [VoteResponse(1, "n1", "n3", granted=False)]
    assert rd.hard_state is None
    restarted = make(hard=persisted)
    restarted.step(VoteRequest(1, "n3", "n1", 0, 0))
    restarted.step(VoteRequest(1, "n2", "n1", 0, 0))  # a retry from the one we voted for
    granted = [m.granted for m in drain(restarted).messages]
    assert granted == [False, True]


def test_a_pre_vote_changes_neither_term_nor_vote() -> None:
    core = make(hard=HardState(2))
    core.step(VoteRequest(3, "n2", "n1", 0, 0, pre=True))
    rd = drain(core)
    assert rd.messages == [VoteResponse(3, "n1", "n2", granted=True, pre=True)]
    assert rd.hard_state is None and (core.term, core.vote) == (2, None)


@pytest.mark.parametrize("pre", [False, True], ids=["vote", "pre-vote"])
@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [(9, 1, False), (1, 2, False), (2, 2, True), (5, 2, True), (1, 3, True), (0, 0, False)],
)
def test_a_vote_needs_a_log_at_least_as_up_to_date(
    last_index: int, last_term: int, granted: bool, pre: bool
) -> None:
    core = make(hard=HardState(2), log=entries(1, 2))
    core.step(VoteRequest(3, "n2", "n1", last_index, last_term, pre=pre))
    (reply,) = drain(core).messages
    assert reply.granted is granted
    assert core.vote == ("n2" if granted and not pre else None)


def test_a_follower_in_a_leaders_lease_ignores_a_disruptive_candidate() -> None:
    core = make(hard=HardState(2), log=entries(1, 2))
    core.step(Heartbeat(2, "n2", commit=0, seq=1))
    drain(core)
    core.step(VoteRequest(3, "n3", "n1", 9, 3))
    assert (core.term, core.leader) == (2, "n2")
    assert drain(core).messages == []


# --- replication and commit ------------------------------------------------------------------


def test_a_leader_commits_an_old_term_entry_only_with_one_of_its_own_term() -> None:
    core = elect(make(hard=HardState(2), log=entries(1, 2)))
    assert core.term == 3 and core.log.last_index == 3  # its no-op at index 3
    core.step(AppendResponse(3, "n2", "n1", success=True, index=2))
    assert core.commit == 0, "an entry of term 2 on a majority is not yet committed"
    core.step(AppendResponse(3, "n2", "n1", success=True, index=3))
    assert core.commit == 3
    assert [e.index for e in drain(core).committed] == [1, 2, 3]


def test_a_follower_truncates_a_conflicting_suffix() -> None:
    core = make(hard=HardState(2), log=entries(1, 1, 2, 2))
    new = (Entry(3, 3, b"x"), Entry(3, 4, b"y"))
    core.step(Append(3, "n2", "n1", prev_index=2, prev_term=1, entries=new, commit=3))
    rd = drain(core)
    assert core.log.slice(1, 10) == [*entries(1, 1), *new]
    assert rd.entries == list(new)  # handed out for persistence, replacing the old 3..4
    assert rd.messages == [AppendResponse(3, "n1", "n2", True, 4)]
    assert core.commit == 3


def test_a_reordered_older_append_never_truncates_newer_entries() -> None:
    core = make(hard=HardState(2), log=entries(1))
    long = Append(2, "n2", "n1", 1, 1, tuple(entries(2, 2, 2, start=2)), 0)
    short = Append(2, "n2", "n1", 1, 1, tuple(entries(2, start=2)), 0)
    core.step(long)
    core.step(short)
    assert core.log.last_index == 4


def test_a_rejection_carries_a_hint_that_skips_a_whole_divergent_term() -> None:
    core = make(hard=HardState(5), log=entries(1, 2, 2, 2, 2, 2))
    core.step(Append(5, "n2", "n1", prev_index=6, prev_term=4, entries=(), commit=0))
    (reply,) = drain(core).messages
    assert (reply.success, reply.index) == (False, 6)
    assert (reply.hint_index, reply.hint_term) == (6, 2)  # leader skips its term-4 entries
    core.step(Append(5, "n2", "n1", prev_index=6, prev_term=1, entries=(), commit=0))
    (reply,) = drain(core).messages
    assert (reply.hint_index, reply.hint_term) == (1, 1)  # all of term 2 skipped at once


# --- bad input from peers --------------------------------------------------------------------


def follower() -> Core:
    """n1 at term 2 following n2, log terms [1, 1, 2], commit 2."""
    core = make(hard=HardState(2, None, 2), log=entries(1, 1, 2))
    core.step(Heartbeat(2, "n2", commit=2, seq=1))
    drain(core)
    return core


def _e(term: int, index: int, kind: object = EntryKind.COMMAND) -> Entry:
    return Entry(term, index, b"?", kind)  # type: ignore[arg-type]


BAD_FOR_FOLLOWER: dict[str, object] = {
    "unknown src": Heartbeat(9, "zz", commit=3, seq=5),
    "unknown src, append": Append(9, "zz", "n1", 3, 2, (_e(9, 4),), 4),
    "from itself": Append(9, "n1", "n1", 3, 2, (_e(9, 4),), 4),
    "to another node": Append(2, "n2", "n3", 3, 2, (_e(2, 4),), 4),
    "vote request for another": VoteRequest(9, "n3", "n2", 9, 9),
    "non-contiguous entries": Append(2, "n2", "n1", 3, 2, (_e(2, 4), _e(2, 6)), 4),
    "entries out of order": Append(2, "n2", "n1", 3, 2, (_e(2, 5), _e(2, 4)), 4),
    "entry term above msg term": Append(2, "n2", "n1", 3, 2, (_e(3, 4),), 4),
    "entry term below prev term": Append(2, "n2", "n1", 3, 2, (_e(1, 4),), 4),
    "prev term above msg term": Append(2, "n2", "n1", 3, 3, (), 3),
    "prev index 0 with a term": Append(2, "n2", "n1", 0, 1, (_e(2, 1),), 1),
    "entry of unknown kind": Append(2, "n2", "n1", 3, 2, (_e(2, 4, 7),), 4),
    "snapshot term above msg term": InstallSnapshot(2, "n2", "n1", 9, 3, 0, b"x", True),
    "not a message": "garbage",
    "none": None,
}


@pytest.mark.parametrize("msg", BAD_FOR_FOLLOWER.values(), ids=BAD_FOR_FOLLOWER.keys())
def test_bad_input_at_a_follower_is_ignored_and_changes_nothing(msg: object) -> None:
    core = follower()
    before, ignored = snapshot_of(core), core.ignored
    core.step(msg)  # type: ignore[arg-type]
    assert core.ignored == ignored + 1
    assert snapshot_of(core) == before
    rd = drain(core)
    assert (rd.messages, rd.entries, rd.hard_state, rd.committed) == ([], [], None, [])


STALE: dict[str, Message] = {
    "append": Append(1, "n3", "n1", 3, 1, (_e(1, 4),), 4),
    "heartbeat": Heartbeat(1, "n3", commit=3, seq=7),
    "install snapshot": InstallSnapshot(1, "n3", "n1", 9, 1, 0, b"x", True),
    "vote request": VoteRequest(1, "n3", "n1", 9, 1),
    "vote response": VoteResponse(1, "n3", "n1", True),
    "timeout now": TimeoutNow(1, "n3", "n1"),
}


@pytest.mark.parametrize("msg", STALE.values(), ids=STALE.keys())
def test_a_stale_term_changes_nothing_and_a_stale_leader_learns_the_term(msg: Message) -> None:
    core = follower()
    before = snapshot_of(core)
    core.step(msg)
    assert snapshot_of(core) == before
    replies = drain(core).messages
    assert all(r.term == 2 and r.dst == "n3" for r in replies)
    if isinstance(msg, (Append, Heartbeat, InstallSnapshot)):
        assert replies, "a deposed leader must hear of the newer term"


def test_an_append_far_beyond_the_log_is_rejected_with_a_hint_inside_the_log() -> None:
    core = follower()
    before = snapshot_of(core)
    core.step(Append(2, "n2", "n1", prev_index=10**6, prev_term=2, entries=(), commit=10**6))
    assert snapshot_of(core) == before
    (reply,) = drain(core).messages
    assert not reply.success and reply.hint_index <= core.log.last_index


def test_a_heartbeat_never_commits_past_what_matches_the_leader() -> None:
    core = make(hard=HardState(2), log=entries(1, 1, 2))
    core.step(Heartbeat(2, "n2", commit=3, seq=1))
    assert core.commit == 0, "nothing is known to match n2's log yet"


def leader() -> Core:
    """n1 leading term 3 over a log [1, 2] plus its no-op; nothing acknowledged yet."""
    return elect(make(hard=HardState(2), log=entries(1, 2)))


BAD_FOR_LEADER: dict[str, object] = {
    "append response beyond the log": AppendResponse(3, "n2", "n1", True, 99),
    "rejection beyond the log": AppendResponse(3, "n2", "n1", False, 99, 50, 3),
    "append from a same-term rival": Append(3, "n2", "n1", 3, 3, (), 3),
    "heartbeat from a same-term rival": Heartbeat(3, "n2", commit=3, seq=1),
    "snapshot chunk from a rival": InstallSnapshot(3, "n2", "n1", 9, 3, 0, b"x", True),
    "response from unknown src": AppendResponse(3, "zz", "n1", True, 3),
}


@pytest.mark.parametrize("msg", BAD_FOR_LEADER.values(), ids=BAD_FOR_LEADER.keys())
def test_bad_input_at_a_leader_is_ignored_and_changes_nothing(msg: object) -> None:
    core = leader()
    before, ignored = snapshot_of(core), core.ignored
    core.step(msg)  # type: ignore[arg-type]
    assert core.ignored == ignored + 1
    assert snapshot_of(core) == before
    assert drain(core).committed == []


GARBAGE_SNAPSHOT_RESPONSES = {
    "no snapshot in flight": SnapshotResponse(3, "n2", "n1", 99, -5, False),
    "negative offset": SnapshotResponse(3, "n2", "n1", 2, -5, False),
    "offset zero, wrong index": SnapshotResponse(3, "n2", "n1", 7, 0, False),
}


@pytest.mark.parametrize(
    "msg", GARBAGE_SNAPSHOT_RESPONSES.values(), ids=GARBAGE_SNAPSHOT_RESPONSES.keys()
)
def test_a_garbage_snapshot_response_changes_nothing(msg: SnapshotResponse) -> None:
    core = leader()
    before = snapshot_of(core)
    core.step(msg)
    assert snapshot_of(core) == before
    assert drain(core).messages == []


def leader_sending_a_snapshot() -> Core:
    """n1 leads with a snapshot at 2; n2 is behind it and is being sent 4-byte chunks."""
    snap = Snapshot(SnapshotMeta(2, 2), b"0123456789")
    core = elect(make(hard=HardState(2, None, 2), snapshot=snap, snapshot_chunk_bytes=4))
    core.step(AppendResponse(3, "n2", "n1", False, 2, hint_index=0, hint_term=0))
    chunks = [m for m in drain(core).messages if isinstance(m, InstallSnapshot)]
    assert chunks and chunks[0].offset == 0 and core.progress["n2"].state == ReplState.SNAPSHOT
    return core


def test_a_negative_snapshot_offset_is_not_trusted() -> None:
    core = leader_sending_a_snapshot()
    core.step(SnapshotResponse(3, "n2", "n1", 2, -5, False))
    sent = [m for m in drain(core).messages if isinstance(m, InstallSnapshot)]
    assert all(m.offset >= 0 for m in sent), sent
    assert core.progress["n2"].snap_offset >= 0


def test_a_snapshot_resumes_where_the_follower_says() -> None:
    core = leader_sending_a_snapshot()
    core.step(SnapshotResponse(3, "n2", "n1", 2, 4, False))
    core.step(SnapshotResponse(3, "n2", "n1", 2, 4, False))  # a duplicate sends nothing more
    sent = [m for m in drain(core).messages if isinstance(m, InstallSnapshot)]
    assert [(m.offset, m.chunk) for m in sent] == [(4, b"4567")]


# --- compaction keeps what followers catching up still need ------------------------------


def leader_with_a_follower_behind(**config: object) -> Core:
    """n1 leads with a snapshot at 2 and n2 receiving it; n3 acknowledged 20 more entries,
    so n1 committed and applied up to 23."""
    snap = Snapshot(SnapshotMeta(2, 2), b"0123456789")
    core = elect(make(hard=HardState(2, None, 2), snapshot=snap, snapshot_chunk_bytes=4,
                      **config))
    core.step(AppendResponse(3, "n2", "n1", False, 2, hint_index=0, hint_term=0))
    for n in range(20):
        core.propose(b"p%d" % n)
    drain(core)
    core.step(AppendResponse(3, "n3", "n1", True, core.log.last_index))
    drain(core)
    assert core.applied == core.log.last_index == 23
    assert core.progress["n2"].state == ReplState.SNAPSHOT
    return core


def test_compaction_keeps_a_catch_up_tail_behind_the_snapshot() -> None:
    core = leader_with_a_follower_behind(catchup_entries=5)
    core.progress["n2"].recent_active = False  # it stopped answering: no hold for it
    core.compact(23, b"state@23")
    assert (core.snapshot_index, core.log.first_index) == (23, 19)
    assert core.status().snapshot_index == 23 and core.status().first_index == 19


def test_compaction_never_drops_what_a_follower_receiving_a_snapshot_needs() -> None:
    core = leader_with_a_follower_behind(catchup_entries=0)
    core.compact(23, b"state@23")
    assert core.snapshot_index == 23 and core.log.first_index == 3  # n2 needs 3.. after 2
    core.step(SnapshotResponse(3, "n2", "n1", 2, 10, True))  # n2 installed the one at 2
    sent = [m for m in drain(core).messages if m.dst == "n2"]
    assert sent and all(isinstance(m, Append) for m in sent), sent
    assert sent[0].prev_index == 2 and [e.index for e in sent[0].entries][:1] == [3]


def test_a_follower_that_caught_up_or_went_silent_holds_nothing() -> None:
    core = leader_with_a_follower_behind(catchup_entries=0)
    core.step(SnapshotResponse(3, "n2", "n1", 2, 10, True))
    drain(core)
    core.step(AppendResponse(3, "n2", "n1", True, 23))  # caught up with the commit
    assert not core.progress["n2"].catching_up
    core.compact(23, b"state@23")
    assert core.log.first_index == 24


def test_the_hold_for_a_follower_catching_up_is_bounded() -> None:
    core = leader_with_a_follower_behind(catchup_entries=0, max_catchup_hold=6)
    core.compact(23, b"state@23")
    assert core.log.first_index == 18  # 23 - 6 + 1: beyond that it gets a newer snapshot


def test_catch_up_settings_must_not_be_negative() -> None:
    for bad in ({"catchup_entries": -1}, {"max_catchup_hold": -1}):
        with pytest.raises(ValueError):
            Config("n1", VOTERS, **bad)


def test_a_follower_assembles_a_chunked_snapshot_and_resumes_after_a_gap() -> None:
    core = make(hard=HardState(3), log=entries(1))
    core.step(InstallSnapshot(3, "n2", "n1", 5, 3, 0, b"abcd", False))
    core.step(InstallSnapshot(3, "n2", "n1", 5, 3, 8, b"ij", True))  # gap: 4..7 lost
    rd = drain(core)
    assert rd.snapshot is None
    assert rd.messages[-1] == SnapshotResponse(3, "n1", "n2", 5, 4, False)
    core.step(InstallSnapshot(3, "n2", "n1", 5, 3, 4, b"efgh", False))
    core.step(InstallSnapshot(3, "n2", "n1", 5, 3, 8, b"ij", True))
    rd = drain(core)
    assert rd.snapshot == Snapshot(SnapshotMeta(5, 3), b"abcdefghij")
    assert (core.commit, core.log.offset, core.log.last_index) == (5, 5, 5)


# --- API misuse raises our typed errors ---------------------------------------------------


def test_api_misuse_raises_typed_errors_and_changes_nothing() -> None:
    core = follower()
    before = snapshot_of(core)
    for call in (lambda: core.propose(b"x"), lambda: core.read_index("r"),
                 lambda: core.transfer_leadership("n3")):
        with pytest.raises(NotLeader) as exc:
            call()
        assert exc.value.leader == "n2"
    with pytest.raises(ValueError):
        core.compact(3, b"state")  # nothing applied yet
    assert snapshot_of(core) == before
    lead = leader()
    with pytest.raises(ValueError):
        lead.transfer_leadership("zz")
    with pytest.raises(ValueError):
        Config("n9", VOTERS)


# --- RaftLog ---------------------------------------------------------------------------------


def test_raft_log_terms_and_slices_around_a_snapshot() -> None:
    log = RaftLog(offset=3, offset_term=2, entries=entries(2, 3, start=4))
    assert (log.first_index, log.last_index, log.last_term) == (4, 5, 3)
    assert [log.term(i) for i in range(2, 7)] == [None, 2, 2, 3, None]
    assert [e.index for e in log.slice(1, 99)] == [4, 5]
    assert log.slice(6, 9) == []


def test_raft_log_merge_skips_duplicates_and_truncates_on_conflict() -> None:
    log = RaftLog(entries=entries(1))
    assert log.take_unstable() == [], "entries loaded from storage are already durable"
    log.merge(entries(1, 1, 1))
    assert log.take_unstable() == entries(1, 1, start=2)
    log.merge(entries(1, 1, start=2))
    assert log.take_unstable() == [] and log.last_index == 3
    log.merge([Entry(2, 3, b"new")])
    assert log.take_unstable() == [Entry(2, 3, b"new")]
    assert [log.term(i) for i in (1, 2, 3)] == [1, 1, 2]


def test_raft_log_hint_for_and_up_to_date() -> None:
    log = RaftLog(entries=entries(1, 1, 4, 4, 4))
    assert log.hint_for(5, 3) == (2, 1)
    assert log.hint_for(99, 4) == (5, 4)
    assert log.hint_for(5, 0) == (0, 0)
    assert log.is_up_to_date(5, 4) and log.is_up_to_date(1, 5)
    assert not log.is_up_to_date(9, 3) and not log.is_up_to_date(4, 4)


def test_raft_log_compact_and_restore() -> None:
    log = RaftLog(entries=entries(1, 1, 2, 2))
    log.compact(2)
    assert (log.offset, log.offset_term, log.first_index) == (2, 1, 3)
    log.restore(3, 2)  # matches: the suffix after it is kept
    assert (log.offset, log.last_index) == (3, 4)
    log.restore(7, 5)  # no match: everything goes
    assert (log.offset, log.offset_term, log.last_index, log.entries) == (7, 5, 7, [])
    with pytest.raises(ValueError):
        log.compact(9)


# --- Progress --------------------------------------------------------------------------------


def test_progress_probe_backs_off_to_the_hint_and_ignores_stale_rejections() -> None:
    pr = Progress(next_index=50)
    pr.sent(49, had_entries=False)
    assert pr.paused and not pr.can_send(8)
    assert not pr.back_off(rejected=10, hint=3), "not the probe in flight: stale"
    assert pr.back_off(rejected=49, hint=3)
    assert (pr.next, pr.paused) == (4, False)


def test_progress_replicate_pipelines_up_to_the_window() -> None:
    pr = Progress(next_index=5)
    pr.acknowledge(4)
    pr.become_replicate()
    for last in (6, 8, 10):
        pr.sent(last, had_entries=True)
    assert pr.next == 11 and not pr.can_send(3) and pr.can_send(4)
    assert pr.acknowledge(8) and pr.match == 8 and list(pr.inflight) == [10]
    assert not pr.acknowledge(6), "an old acknowledgement moves nothing"
    assert pr.back_off(rejected=9, hint=0)
    assert (pr.state, pr.next) == (ReplState.PROBE, 9)


def test_progress_detects_a_stalled_round() -> None:
    pr = Progress(next_index=5)
    assert not pr.stalled(leader_last=9)  # first round: nothing to compare with yet
    assert pr.stalled(leader_last=9)
    pr.acknowledge(9)
    assert not pr.stalled(leader_last=9)


# --- random input never breaks the core --------------------------------------------------------

NODES = st.sampled_from(["n1", "n2", "n3", "zz"])
TERMS = st.integers(0, 6)
INDEXES = st.integers(-2, 12)
KINDS = st.one_of(st.sampled_from(list(EntryKind)), st.integers(-1, 3))
ENTRY = st.builds(Entry, TERMS, INDEXES, st.binary(max_size=3), KINDS)

MESSAGES = st.one_of(
    st.builds(VoteRequest, TERMS, NODES, NODES, INDEXES, TERMS, st.booleans(), st.booleans()),
    st.builds(VoteResponse, TERMS, NODES, NODES, st.booleans(), st.booleans()),
    st.builds(
        Append, TERMS, NODES, NODES, INDEXES, TERMS,
        st.lists(ENTRY, max_size=4).map(tuple), INDEXES,
    ),
    st.builds(AppendResponse, TERMS, NODES, NODES, st.booleans(), INDEXES, INDEXES, TERMS),
    st.builds(Heartbeat, TERMS, NODES, INDEXES, INDEXES),
    st.builds(HeartbeatResponse, TERMS, NODES, NODES, INDEXES, INDEXES),
    st.builds(
        InstallSnapshot, TERMS, NODES, NODES, INDEXES, TERMS, st.integers(-3, 8),
        st.binary(max_size=6), st.booleans(),
    ),
    st.builds(SnapshotResponse, TERMS, NODES, NODES, INDEXES, st.integers(-3, 8), st.booleans()),
    st.builds(TimeoutNow, TERMS, NODES, NODES),
)

ACTIONS = st.one_of(
    MESSAGES.map(lambda m: ("step", m)),
    st.just(("tick", None)),
    st.just(("campaign", None)),
    st.binary(max_size=3).map(lambda d: ("propose", d)),
    st.integers().map(lambda ctx: ("read", ctx)),
    NODES.map(lambda n: ("transfer", n)),
)

STARTS: dict[str, Callable[[], Core]] = {
    "fresh": lambda: make(snapshot_chunk_bytes=3),
    "follower": follower,
    "leader": leader,
    "leader with snapshot": lambda: elect(
        make(hard=HardState(2, None, 2), snapshot=Snapshot(SnapshotMeta(2, 2), b"snapdata"),
             snapshot_chunk_bytes=3)
    ),
}


def apply_action(core: Core, kind: str, arg: object) -> None:
    try:
        if kind == "step":
            core.step(arg)  # type: ignore[arg-type]
        elif kind == "tick":
            core.tick()
        elif kind == "campaign":
            core.campaign()
        elif kind == "propose":
            core.propose(arg)  # type: ignore[arg-type]
        elif kind == "read":
            core.read_index(arg)
        else:
            core.transfer_leadership(arg)  # type: ignore[arg-type]
    except NotLeader:
        pass  # our own misuse, typed; peers' messages never get here
    except ValueError:
        assert kind == "transfer"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.sampled_from(sorted(STARTS)), actions=st.lists(ACTIONS, max_size=40))
def test_random_input_never_raises_and_never_moves_term_or_commit_back(
    start: str, actions: list[tuple[str, object]]
) -> None:
    core = STARTS[start]()
    term, commit = core.term, core.commit
    for kind, arg in actions:
        apply_action(core, kind, arg)
        drain(core)
        assert core.term >= term and core.commit >= commit
        assert core.log.offset <= core.commit <= core.log.last_index
        indexes = [e.index for e in core.log.entries]
        assert indexes == list(range(core.log.offset + 1, core.log.last_index + 1))
        term, commit = core.term, core.commit


def test_an_append_carries_at_most_max_batch_bytes_of_entries_but_always_one() -> None:
    core = elect(make(max_batch_bytes=1000))
    for peer in ("n2", "n3"):  # acknowledge the leader's first entry: replication pipelines
        core.step(AppendResponse(core.term, peer, "n1", True, core.log.last_index))
    drain(core)
    start = core.log.last_index + 1
    for _ in range(5):
        core.propose(b"x" * 400)
    core.propose(b"y" * 3000)  # larger than the limit on its own
    core.propose(b"z" * 10)
    sent = [m for m in drain(core).messages if isinstance(m, Append) and m.dst == "n2"]
    covered = []
    while True:
        for m in sent:
            assert len(m.entries) == 1 or sum(len(e.data) for e in m.entries) <= 1000
            covered.extend(e.index for e in m.entries)
        if not sent or covered[-1] == core.log.last_index:
            break
        core.step(AppendResponse(core.term, "n2", "n1", True, covered[-1]))
        sent = [m for m in drain(core).messages if isinstance(m, Append) and m.dst == "n2"]
    assert covered == list(range(start, core.log.last_index + 1))
