"""The leader's view of one follower's replication."""

from __future__ import annotations

from collections import deque
from enum import Enum


class ReplState(str, Enum):
    PROBE = "probe"  # finding where logs match: one append in flight at a time
    REPLICATE = "replicate"  # logs match: pipelined appends up to the in-flight window
    SNAPSHOT = "snapshot"  # sending a snapshot; appends wait until it is installed


class Progress:
    __slots__ = (
        "match", "next", "state", "inflight", "paused", "recent_active",
        "snap_index", "snap_offset", "snap", "ack_seq", "match_at_last_heartbeat",
        "catching_up",
    )

    def __init__(self, next_index: int):
        self.match = 0
        self.next = next_index
        self.state = ReplState.PROBE
        self.inflight: deque[int] = deque()  # last index of each append not yet acknowledged
        self.paused = False
        self.recent_active = False
        self.snap_index = 0
        self.snap_offset = 0
        self.snap = None  # the snapshot being sent; kept even if a newer one is taken meanwhile
        self.ack_seq = 0  # highest heartbeat seq this follower acknowledged in our term
        self.match_at_last_heartbeat = -1  # detects a follower that made no progress in a round
        # From the start of a snapshot transfer until the follower reaches our commit index:
        # while it answers, compaction keeps what it still needs (Core._compaction_point).
        self.catching_up = False

    def become_probe(self) -> None:
        # After a snapshot the follower holds everything up to it, whatever match says.
        floor = self.snap_index + 1 if self.state == ReplState.SNAPSHOT else 0
        self.next = max(self.match + 1, floor)
        self.snap = None
        self.state = ReplState.PROBE
        self.inflight.clear()
        self.paused = False

    def become_replicate(self) -> None:
        self.state = ReplState.REPLICATE
        self.next = self.match + 1
        self.inflight.clear()
        self.paused = False

    def become_snapshot(self, snap) -> None:
        self.state = ReplState.SNAPSHOT
        self.inflight.clear()
        self.snap = snap
        self.snap_index = snap.meta.index
        self.snap_offset = 0
        self.catching_up = True

    def needed_from(self) -> int:
        """The first index this follower still needs from our log: after the snapshot it is
        receiving, else after what it matches."""
        if self.state == ReplState.SNAPSHOT:
            return self.snap_index + 1
        return self.match + 1

    def acknowledge(self, index: int) -> bool:
        """A successful append up to `index`; returns whether anything advanced."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        self.paused = False
        return True

    def back_off(self, rejected: int, hint: int) -> bool:
        """A rejected append at prev_index `rejected`; returns False when it is stale."""
        if self.state == ReplState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            self.state = ReplState.PROBE
            self.inflight.clear()
            self.paused = False
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1, 1)
        self.paused = False
        return True

    def can_send(self, window: int) -> bool:
        if self.state == ReplState.PROBE:
            return not self.paused
        if self.state == ReplState.REPLICATE:
            return len(self.inflight) < window
        return False

    def sent(self, last: int, had_entries: bool) -> None:
        if self.state == ReplState.REPLICATE and had_entries:
            self.next = last + 1
            self.inflight.append(last)
        elif self.state == ReplState.PROBE:
            self.paused = True

    def stalled(self, leader_last: int) -> bool:
        """Called on each heartbeat acknowledgement: no progress over a whole round while
        behind means our appends (or snapshot chunk) were lost and must be resent."""
        stuck = self.match < leader_last and self.match == self.match_at_last_heartbeat
        self.match_at_last_heartbeat = self.match
        return stuck
