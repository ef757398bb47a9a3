"""The leader's half of the core: replication, commit, heartbeats, reads, transfer.

A mixin of `Core` (see raft.py); it shares the core's state and only reads and writes
it through plain attributes, so the whole algorithm stays in these two files.
"""

from __future__ import annotations

from dataclasses import dataclass

from brokerless.core.progress import Progress, ReplState
from brokerless.core.ready import ReadState
from brokerless.messages import (
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
)
from brokerless.types import Entry, EntryKind, NodeId, Role


@dataclass(slots=True)
class PendingRead:
    ctx: object
    seq: int | None = None  # the heartbeat round that must be acknowledged by a quorum
    index: int | None = None  # commit index to wait for; None until we committed in our term


class LeaderMixin:
    # --- becoming leader -------------------------------------------------------------

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader = self.id
        self.heartbeat_elapsed = 0
        self.election_elapsed = 0
        self.transferee = None
        self.progress = {p: Progress(self.log.last_index + 1) for p in self.peers}
        # A no-op of our own term lets us commit everything before it (Raft section 5.4.2).
        self.log.append(Entry(self.term, self.log.last_index + 1, b"", EntryKind.NOOP))
        self._maybe_commit()
        self._broadcast_heartbeat()
        self.append_pending = True

    # --- ticks -------------------------------------------------------------------------

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            self.transferee = None  # a transfer that did not finish in time is abandoned
            if self.cfg.check_quorum and not self._quorum_recently_active():
                self._become_follower(self.term, None)
                return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_recently_active(self) -> bool:
        active = 1 + sum(1 for pr in self.progress.values() if pr.recent_active)
        for pr in self.progress.values():
            pr.recent_active = False
        return active >= self.cfg.quorum

    # --- proposals ---------------------------------------------------------------------

    def _append_proposal(self, data: bytes) -> int:
        index = self.log.last_index + 1
        self.log.append(Entry(self.term, index, data))
        self.append_pending = True
        if not self.peers:
            self._maybe_commit()
        return index

    def _flush_leader_work(self) -> None:
        """Send what proposals and commit advances since the last Ready require."""
        if self.read_heartbeat_needed:
            self.read_heartbeat_needed = False
            self._broadcast_heartbeat()
        if self.append_pending or self.commit_dirty:
            for peer in self.peers:
                self._send_append(peer, allow_empty=self.commit_dirty)
            self.append_pending = self.commit_dirty = False

    # --- replication -------------------------------------------------------------------

    def _send_append(self, peer: NodeId, allow_empty: bool = True) -> None:
        pr = self.progress[peer]
        if not pr.can_send(self.cfg.max_inflight):
            return
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:  # compacted away: only a snapshot can bring this follower on
            self._start_snapshot(peer, pr)
            return
        entries = self._batch(pr.next)
        if not entries and not allow_empty:
            return
        self.msgs.append(
            Append(self.term, self.id, peer, prev, prev_term, tuple(entries), self.commit)
        )
        pr.sent(entries[-1].index if entries else prev, bool(entries))

    def _batch(self, start: int) -> list[Entry]:
        """The entries of one append from `start`: at most max_batch_entries, and no more
        bytes of data than max_batch_bytes unless a single entry is larger."""
        entries = self.log.slice(start, start + self.cfg.max_batch_entries)
        limit = self.cfg.max_batch_bytes
        if len(entries) < 2 or sum(len(e.data) for e in entries) <= limit:
            return entries
        size = 0
        for n, entry in enumerate(entries):
            size += len(entry.data)
            if size > limit:
                return entries[: max(n, 1)]
        return entries

    def _on_append_response(self, msg: AppendResponse) -> None:
        pr = self.progress.get(msg.src)
        if self.role != Role.LEADER or pr is None or msg.index > self.log.last_index:
            self.ignored += 1
            return
        pr.recent_active = True
        if not msg.success:
            hint, _ = self.log.hint_for(msg.hint_index, msg.hint_term)
            if pr.back_off(msg.index, hint):
                self._send_append(msg.src)
            return
        pr.acknowledge(msg.index)
        if pr.catching_up and pr.match >= self.commit:
            pr.catching_up = False
        if pr.state == ReplState.PROBE:
            pr.become_replicate()
        elif pr.state == ReplState.SNAPSHOT and pr.match >= pr.snap_index:
            pr.become_probe()
        if self._maybe_commit():
            self.commit_dirty = True
        self._maybe_finish_transfer(msg.src)
        self._send_append(msg.src, allow_empty=False)

    def _maybe_commit(self) -> bool:
        """Commit the highest index stored on a quorum, if it is of our own term."""
        matches = sorted([pr.match for pr in self.progress.values()] + [self.log.last_index])
        candidate = matches[len(matches) - self.cfg.quorum]
        # Entries of earlier terms commit only indirectly (Raft Figure 8).
        if candidate <= self.commit or self.log.term(candidate) != self.term:
            return False
        self.commit = candidate
        self._assign_read_indexes()
        return True

    # --- snapshots ---------------------------------------------------------------------

    def _start_snapshot(self, peer: NodeId, pr: Progress) -> None:
        if self.snapshot is None:
            return
        pr.become_snapshot(self.snapshot)
        self._send_snapshot_chunk(peer, pr)

    def _send_snapshot_chunk(self, peer: NodeId, pr: Progress) -> None:
        # Finish the snapshot we started even if a newer one exists: restarting on every
        # compaction would never let a slow follower finish.
        snap = pr.snap
        if snap is None:
            return
        start = pr.snap_offset
        chunk = snap.data[start : start + self.cfg.snapshot_chunk_bytes]
        done = start + len(chunk) >= len(snap.data)
        self.msgs.append(
            InstallSnapshot(
                self.term, self.id, peer, snap.meta.index, snap.meta.term, start, chunk, done
            )
        )

    def _on_snapshot_response(self, msg: SnapshotResponse) -> None:
        pr = self.progress.get(msg.src)
        if self.role != Role.LEADER or pr is None:
            self.ignored += 1
            return
        pr.recent_active = True
        if msg.done:
            if msg.index <= self.log.last_index:
                pr.acknowledge(msg.index)
            if pr.state == ReplState.SNAPSHOT:
                pr.become_probe()
            self._send_append(msg.src)
            return
        if pr.state != ReplState.SNAPSHOT or msg.index != pr.snap_index or pr.snap is None:
            return
        if not 0 <= msg.next_offset <= len(pr.snap.data):
            self.ignored += 1  # an offset outside the snapshot is nonsense, never a slice
            return
        # The follower's answer says where it is. An answer equal to where we are is a
        # duplicate (or an answer to a resend) and sends nothing, so chunks never multiply.
        if msg.next_offset != pr.snap_offset:
            pr.snap_offset = msg.next_offset
            self._send_snapshot_chunk(msg.src, pr)

    # --- heartbeats and reads ----------------------------------------------------------

    def _broadcast_heartbeat(self) -> None:
        self.heartbeat_seq += 1
        for read in self.pending_reads:
            if read.seq is None:
                read.seq = self.heartbeat_seq
        self.msgs.append(Heartbeat(self.term, self.id, self.commit, self.heartbeat_seq))

    def _on_heartbeat_response(self, msg: HeartbeatResponse) -> None:
        pr = self.progress.get(msg.src)
        if self.role != Role.LEADER or pr is None:
            return
        pr.recent_active = True
        if msg.seq <= self.heartbeat_seq:
            pr.ack_seq = max(pr.ack_seq, msg.seq)
        self._confirm_reads()
        if pr.stalled(self.log.last_index):
            self._resend_after_stall(msg.src, pr)

    def _resend_after_stall(self, peer: NodeId, pr: Progress) -> None:
        if pr.state == ReplState.SNAPSHOT:
            self._send_snapshot_chunk(peer, pr)
            return
        if pr.match > 0:
            pr.become_probe()  # resend from the last acknowledged index
        else:
            # Nothing acknowledged yet in this term: probe again where we were, rather than
            # from index 1 (which would resend the whole log, or a snapshot).
            pr.paused = False
        self._send_append(peer)

    def _queue_read(self, ctx: object) -> None:
        read = PendingRead(ctx)
        if self._committed_in_term():
            read.index = self.commit
        self.pending_reads.append(read)
        if self.peers:
            self.read_heartbeat_needed = True
        else:
            read.seq = self.heartbeat_seq
            self._confirm_reads()

    def _committed_in_term(self) -> bool:
        return self.log.term(self.commit) == self.term

    def _assign_read_indexes(self) -> None:
        for read in self.pending_reads:
            if read.index is None:
                read.index = self.commit
        self._confirm_reads()

    def _confirm_reads(self) -> None:
        """Release reads whose heartbeat round a quorum has acknowledged, in order."""
        if not self.pending_reads:
            return
        acks = sorted([pr.ack_seq for pr in self.progress.values()] + [self.heartbeat_seq])
        confirmed_seq = acks[len(acks) - self.cfg.quorum]
        while self.pending_reads:
            read = self.pending_reads[0]
            if read.seq is None or read.index is None or read.seq > confirmed_seq:
                return
            self.pending_reads.pop(0)
            self.read_states.append(ReadState(read.ctx, read.index))

    # --- leadership transfer -----------------------------------------------------------

    def _start_transfer(self, target: NodeId) -> None:
        self.transferee = target
        self.election_elapsed = 0
        if not self._maybe_finish_transfer(target):
            self._send_append(target)

    def _maybe_finish_transfer(self, peer: NodeId) -> bool:
        if self.transferee != peer or self.progress[peer].match != self.log.last_index:
            return False
        self.msgs.append(TimeoutNow(self.term, self.id, peer))
        return True
