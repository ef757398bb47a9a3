"""The consensus core: Raft with pre-vote, check-quorum, read index, snapshots and
leadership transfer, as a pure state machine.

Inputs are `tick()`, `step(message)`, `propose(data)`, `read_index(ctx)`; output is a
`Ready` batch the runtime executes (persist, send, apply) before calling `advance()`.
Nothing here touches sockets, clocks, files, threads or global randomness, so the
simulator can run whole clusters deterministically from a seed.

Peer input is untrusted: a message that is stale, misaddressed or internally
inconsistent is ignored (and counted in `ignored`); `step` never raises for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from brokerless.core.leader import LeaderMixin, PendingRead
from brokerless.core.log import RaftLog
from brokerless.core.progress import Progress
from brokerless.core.ready import (
    Config,
    CoreStatus,
    IncomingSnapshot,
    NotLeader,
    ReadState,
    Ready,
    Rng,
    SoftState,
)
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
from brokerless.types import (
    MAX_TERM,
    MAX_TERM_JUMP,
    Entry,
    EntryKind,
    HardState,
    NodeId,
    Role,
    Snapshot,
    SnapshotMeta,
)

_FROM_LEADER = (Append, Heartbeat, InstallSnapshot)


class Core(LeaderMixin):
    def __init__(
        self,
        config: Config,
        rng: Rng,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
    ):
        self.cfg = config
        self.rng = rng
        self.id = config.id
        self.peers = tuple(v for v in config.voters if v != config.id)
        hard_state = hard_state or HardState()
        meta = snapshot.meta if snapshot else SnapshotMeta()
        self.log = RaftLog(meta.index, meta.term, entries)
        self.snapshot = snapshot  # the latest, sent to followers that fell behind it
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.commit = min(max(hard_state.commit, meta.index), self.log.last_index)
        self.applied = meta.index  # the runtime restores the application from the snapshot
        self.handed_commit = meta.index  # committed entries handed out for applying
        self.persisted_hard_state = HardState(self.term, self.vote, self.commit)
        self.role = Role.FOLLOWER
        self.leader: NodeId | None = None
        self.leader_match = 0  # our last index known to match the current leader's log
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.timeout = self._random_timeout()
        self.votes: dict[NodeId, bool] = {}
        self.progress: dict[NodeId, Progress] = {}
        self.transferee: NodeId | None = None
        self.heartbeat_seq = 0
        self.pending_reads: list[PendingRead] = []
        self.read_states: list[ReadState] = []
        self.dropped_reads: list[object] = []
        self.incoming_snapshot: IncomingSnapshot | None = None
        self.received_snapshot: Snapshot | None = None
        self.msgs: list[Message] = []
        self.append_pending = False
        self.commit_dirty = False
        self.read_heartbeat_needed = False
        self.ignored = 0

    # --- the API -----------------------------------------------------------------------

    def tick(self) -> None:
        if self.role == Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.election_elapsed >= self.timeout:
            self._campaign(pre=self.cfg.pre_vote)

    def step(self, msg: Message) -> None:
        if not self._addressed_to_us(msg):
            self.ignored += 1
            return
        if msg.term > self.term and not self._accept_higher_term(msg):
            return
        if msg.term < self.term:
            self._answer_stale(msg)
            return
        self._HANDLERS[type(msg)](self, msg)

    def propose(self, data: bytes) -> int:
        """Append a command; returns its index. Raises NotLeader at a non-leader."""
        if self.role != Role.LEADER or self.transferee is not None:
            raise NotLeader(self.leader if self.role != Role.LEADER else self.transferee)
        return self._append_proposal(data)

    def read_index(self, ctx: object) -> None:
        """Ask for a linearizable read; a ReadState with `ctx` appears in a later Ready."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        self._queue_read(ctx)

    def transfer_leadership(self, target: NodeId) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if target not in self.peers:
            raise ValueError(f"cannot transfer leadership to {target!r}: not a peer")
        self._start_transfer(target)

    def campaign(self) -> None:
        """Start an election now (operators and tests; normally the timer does it)."""
        if self.role != Role.LEADER:
            self._campaign(pre=self.cfg.pre_vote)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """The application snapshotted its state at applied `index`: the snapshot replaces
        the log up to there, and the log drops what no follower should still need."""
        if index > self.applied:
            raise ValueError(f"cannot snapshot at {index}: only {self.applied} is applied")
        term = self.log.term(index)
        if index <= self.snapshot_index or term is None:
            raise ValueError(f"cannot snapshot at {index}: already compacted")
        self.snapshot = Snapshot(SnapshotMeta(index, term), data)
        self.log.compact(self._compaction_point(index))
        return self.snapshot

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    def _compaction_point(self, index: int) -> int:
        """How far the log may be dropped after a snapshot at `index`: a catch-up tail
        behind it, and (as leader) nothing that a follower catching up from a snapshot still
        needs while it answers, within max_catchup_hold."""
        keep_after = index - self.cfg.catchup_entries
        if self.role == Role.LEADER:
            floor = index - self.cfg.max_catchup_hold
            for pr in self.progress.values():
                if pr.catching_up and pr.recent_active:
                    keep_after = min(keep_after, max(pr.needed_from() - 1, floor))
        return max(keep_after, self.log.offset)

    def status(self) -> CoreStatus:
        """What the node's state is now, for everyone outside the core (read-only)."""
        return CoreStatus(self.role, self.term, self.leader, self.commit, self.applied,
                          self.log.first_index, self.log.last_index, self.snapshot_index)

    def ready(self) -> Ready:
        if self.role == Role.LEADER:
            self._flush_leader_work()
        hard = HardState(self.term, self.vote, self.commit)
        rd = Ready(
            soft_state=SoftState(self.role, self.leader, self.term),
            hard_state=hard if hard != self.persisted_hard_state else None,
            entries=self.log.take_unstable(),
            snapshot=self.received_snapshot,
            messages=self.msgs,
            committed=self.log.slice(self.handed_commit + 1, self.commit + 1),
            read_states=self.read_states,
            dropped_reads=self.dropped_reads,
        )
        self.persisted_hard_state = hard
        self.handed_commit = self.commit
        self.received_snapshot = None
        self.msgs, self.read_states, self.dropped_reads = [], [], []
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.committed:
            self.applied = rd.committed[-1].index

    # --- state changes -----------------------------------------------------------------

    def _random_timeout(self) -> int:
        e = self.cfg.election_ticks
        return self.rng.randrange(e, 2 * e)

    def _reset_timer(self) -> None:
        self.election_elapsed = 0
        self.timeout = self._random_timeout()

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        if term != self.term:
            self.term, self.vote = term, None
        if leader != self.leader or self.role != Role.FOLLOWER:
            self.leader_match = 0
        self.role = Role.FOLLOWER
        self.leader = leader
        self.votes = {}
        self.progress = {}
        self.transferee = None
        self.dropped_reads.extend(r.ctx for r in self.pending_reads)
        self.pending_reads = []
        self._reset_timer()

    def _campaign(self, pre: bool, transfer: bool = False) -> None:
        if self.term >= MAX_TERM:
            return  # no term left to ask for (unreachable: see MAX_TERM_JUMP)
        if pre:
            self.role = Role.PRE_CANDIDATE
            vote_term = self.term + 1  # asked for, not adopted: a lost pre-vote changes nothing
        else:
            self._become_follower(self.term + 1, None)
            self.role = Role.CANDIDATE
            self.vote = self.id
            vote_term = self.term
        self.leader = None
        self._reset_timer()
        self.votes = {self.id: True}
        if self._tally_votes():
            return
        last_index, last_term = self.log.last_index, self.log.last_term
        for peer in self.peers:
            self.msgs.append(
                VoteRequest(vote_term, self.id, peer, last_index, last_term, pre, transfer)
            )

    def _tally_votes(self) -> bool:
        """Act on a decided election; returns whether it was decided."""
        granted = sum(1 for g in self.votes.values() if g)
        if granted >= self.cfg.quorum:
            if self.role == Role.PRE_CANDIDATE:
                self._campaign(pre=False)
            else:
                self._become_leader()
            return True
        if len(self.votes) - granted >= self.cfg.quorum:
            self._become_follower(self.term, None)
            return True
        return False

    # --- message filtering -------------------------------------------------------------

    def _addressed_to_us(self, msg: Message) -> bool:
        if type(msg) not in self._HANDLERS or msg.src not in self.peers:
            return False
        return getattr(msg, "dst", self.id) == self.id

    def _in_lease(self) -> bool:
        """We heard from a live leader within the minimum election timeout."""
        return (
            self.cfg.check_quorum
            and self.leader is not None
            and self.election_elapsed < self.cfg.election_ticks
        )

    def _accept_higher_term(self, msg: Message) -> bool:
        if msg.term - self.term > MAX_TERM_JUMP:
            self.ignored += 1  # see MAX_TERM_JUMP: only a forged or corrupt message does this
            return False
        if isinstance(msg, VoteRequest):
            if self._in_lease() and not msg.transfer:
                return False  # a live leader exists: do not let a rejoining node disrupt it
            if not msg.pre:
                self._become_follower(msg.term, None)
            return True
        if isinstance(msg, VoteResponse) and msg.pre and msg.granted:
            return True  # a granted pre-vote carries the term we asked about
        self._become_follower(msg.term, msg.src if isinstance(msg, _FROM_LEADER) else None)
        return True

    def _answer_stale(self, msg: Message) -> None:
        """Tell a deposed leader or a stale pre-candidate about our newer term."""
        if isinstance(msg, _FROM_LEADER):
            self.msgs.append(
                HeartbeatResponse(self.term, self.id, msg.src, 0, self.log.last_index)
            )
        elif isinstance(msg, VoteRequest) and msg.pre:
            self.msgs.append(VoteResponse(self.term, self.id, msg.src, False, True))

    # --- handlers ------------------------------------------------------------------------

    def _on_vote_request(self, msg: VoteRequest) -> None:
        can_vote = (
            self.vote == msg.src
            or (self.vote is None and self.leader is None)
            or (msg.pre and msg.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(msg.last_index, msg.last_term):
            if not msg.pre:
                self.vote = msg.src  # persisted (Ready.hard_state) before the reply leaves
                self._reset_timer()
            self.msgs.append(VoteResponse(msg.term, self.id, msg.src, True, msg.pre))
        else:
            self.msgs.append(VoteResponse(self.term, self.id, msg.src, False, msg.pre))

    def _on_vote_response(self, msg: VoteResponse) -> None:
        expected = Role.PRE_CANDIDATE if msg.pre else Role.CANDIDATE
        if self.role != expected or msg.src in self.votes:
            return
        if msg.granted and msg.term != (self.term + 1 if msg.pre else self.term):
            return
        self.votes[msg.src] = msg.granted
        self._tally_votes()

    def _follow(self, leader: NodeId) -> None:
        if self.role != Role.FOLLOWER or self.leader != leader:
            self._become_follower(self.term, leader)
        self.election_elapsed = 0

    def _on_append(self, msg: Append) -> None:
        if self.role == Role.LEADER or not self._entries_consistent(msg):
            self.ignored += 1
            return
        self._follow(msg.src)
        if msg.prev_index < self.commit:
            # Our committed prefix matches every leader's log; report it and let the
            # leader continue from there.
            self.leader_match = max(self.leader_match, self.commit)
            self._reply_append(msg.src, True, self.commit)
            return
        if self.log.term(msg.prev_index) != msg.prev_term:
            hint_index, hint_term = self.log.hint_for(msg.prev_index, msg.prev_term)
            self._reply_append(msg.src, False, msg.prev_index, hint_index, hint_term)
            return
        self.log.merge(msg.entries)
        last_new = msg.prev_index + len(msg.entries)
        self.leader_match = max(self.leader_match, last_new)
        self._commit_to(min(msg.commit, last_new))
        self._reply_append(msg.src, True, last_new)

    def _entries_consistent(self, msg: Append) -> bool:
        prev_index, prev_term = msg.prev_index, msg.prev_term
        if prev_term > msg.term or (prev_index == 0 and prev_term != 0):
            return False
        for entry in msg.entries:
            if entry.index != prev_index + 1 or not prev_term <= entry.term <= msg.term:
                return False
            if not isinstance(entry.kind, EntryKind):
                return False
            prev_index, prev_term = entry.index, entry.term
        return True

    def _reply_append(self, to: NodeId, ok: bool, index: int, hint_i: int = 0, hint_t: int = 0):
        self.msgs.append(AppendResponse(self.term, self.id, to, ok, index, hint_i, hint_t))

    def _commit_to(self, index: int) -> None:
        if index > self.commit:
            self.commit = min(index, self.log.last_index)

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        if self.role == Role.LEADER:
            self.ignored += 1  # two leaders in one term cannot happen; never trust it
            return
        self._follow(msg.src)
        self._commit_to(min(msg.commit, self.leader_match))
        self.msgs.append(
            HeartbeatResponse(self.term, self.id, msg.src, msg.seq, self.log.last_index)
        )

    def _on_install_snapshot(self, msg: InstallSnapshot) -> None:
        if self.role == Role.LEADER or msg.snap_term > msg.term:
            self.ignored += 1
            return
        self._follow(msg.src)
        if msg.index <= self.commit:
            self.incoming_snapshot = None
            self._reply_snapshot(msg.src, msg.index, 0, True)
            return
        buf = self._snapshot_buffer(msg)
        if buf is None:
            return
        buf += msg.chunk
        if msg.done:
            self._install_snapshot(Snapshot(SnapshotMeta(msg.index, msg.snap_term), bytes(buf)))
        self._reply_snapshot(msg.src, msg.index, len(buf), msg.done)

    def _snapshot_buffer(self, msg: InstallSnapshot) -> bytearray | None:
        """The buffer a chunk extends; on a gap, ask the leader to resume where we are."""
        inc = self.incoming_snapshot
        if msg.offset == 0 and not (inc and inc.is_for(msg)):
            inc = self.incoming_snapshot = IncomingSnapshot(msg.index, msg.snap_term)
        if inc and inc.is_for(msg) and len(inc.data) == msg.offset:
            return inc.data
        resume = len(inc.data) if inc and inc.index == msg.index else 0
        self._reply_snapshot(msg.src, msg.index, resume, False)
        return None

    def _install_snapshot(self, snap: Snapshot) -> None:
        self.incoming_snapshot = None
        self.log.restore(snap.meta.index, snap.meta.term)
        self.snapshot = self.received_snapshot = snap
        self.commit = self.applied = self.handed_commit = snap.meta.index
        self.leader_match = snap.meta.index

    def _reply_snapshot(self, to: NodeId, index: int, next_offset: int, done: bool) -> None:
        self.msgs.append(SnapshotResponse(self.term, self.id, to, index, next_offset, done))

    def _on_timeout_now(self, msg: TimeoutNow) -> None:
        if self.role != Role.LEADER:
            self._campaign(pre=False, transfer=True)

    _HANDLERS = {
        VoteRequest: _on_vote_request,
        VoteResponse: _on_vote_response,
        Append: _on_append,
        AppendResponse: LeaderMixin._on_append_response,
        Heartbeat: _on_heartbeat,
        HeartbeatResponse: LeaderMixin._on_heartbeat_response,
        InstallSnapshot: _on_install_snapshot,
        SnapshotResponse: LeaderMixin._on_snapshot_response,
        TimeoutNow: _on_timeout_now,
    }
