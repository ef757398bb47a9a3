"""The node loop: socket events and ticks into the core, each Ready executed in order.

One thread, one zmq.Poller (measured simpler and faster than zmq.asyncio for this loop:
no task switches on the hot path). Every loop iteration drains everything the sockets
have waiting before it asks the core for a Ready, so one append and one fsync carry every
request that arrived meanwhile (group commit).

For each Ready, in this order: persist (snapshot, entries, hard state), send (heartbeats
are published on PUB), apply committed entries, release confirmed reads, advance.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from brokerless.core import Config, Core, NotLeader, Ready, SoftState
from brokerless.messages import Append, Heartbeat, Message
from brokerless.snapshotter import Snapshotter
from brokerless.storage import Storage
from brokerless.transport.zeromq import FromPeer, FromRouter, FromSub, Transport
from brokerless.types import Entry, EntryKind, HardState, Role
from brokerless.wire import WireError, decode_message, encode_message

log = logging.getLogger("brokerless.runtime")

PEER_KIND = b"P"  # a consensus message on ROUTER/DEALER
HEARTBEAT_TOPIC = b"hb"  # heartbeats on PUB/SUB
_LEADER_OUTBOUND = (Append, Heartbeat)
# Proposals a leader holds unapplied before it refuses more (Overloaded). About 100-250 ms
# of work at this implementation's peak rate: deep enough to batch well, shallow enough that
# a flood cannot stretch the loop past an election timeout.
DEFAULT_MAX_PENDING = 2048


class StateMachine(Protocol):
    """What an application hands brokerless to replicate."""

    def apply(self, entry: Entry) -> Any: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class Application(StateMachine, Protocol):
    """The state machine plus the hooks the runtime calls from its loop."""

    def on_message(self, msg: FromRouter | FromPeer | FromSub) -> None: ...

    def on_tick(self) -> None: ...

    def on_role_change(self, soft: SoftState) -> None: ...

    def on_applied(self) -> None:
        """Once per Ready, after its committed entries were applied (batch side effects here)."""

    def before_ready(self) -> None:
        """Once per loop iteration, after the messages and before the Ready: do a bounded
        share of queued work (propose what should go into this Ready)."""

    @property
    def has_backlog(self) -> bool:
        """True while before_ready() has queued work left: the loop then does not wait."""

    def on_iteration_end(self) -> None:
        """At the end of every loop iteration: flush what was gathered during it."""


class Overloaded(Exception):
    """The leader already has `limit` proposals waiting to be applied: refuse more now,
    so a flood of writes waits at the client (which backs off) instead of in an ever longer
    log tail that delays heartbeats and every reply (backpressure instead of collapse)."""

    def __init__(self, limit: int):
        super().__init__(f"{limit} writes already in flight at the leader; retry shortly")
        self.limit = limit


class ProposalLost(Exception):
    """Leadership was lost before the entry committed; it may or may not commit later."""


@dataclass(frozen=True, slots=True)
class Timing:
    tick_ms: int = 10
    heartbeat_ticks: int = 3  # a heartbeat every 30 ms
    election_ticks: int = 15  # elections after 150..300 ms without a leader heartbeat


Callback = Callable[[Any, BaseException | None], None]


class Runtime:
    def __init__(self, config: Config, core: Core, storage: Storage, transport: Transport,
                 timing: Timing, snapshot_every: int = 100_000,
                 snapshotter: Snapshotter | None = None,
                 max_pending: int = DEFAULT_MAX_PENDING):
        if type(max_pending) is not int or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int, not {max_pending!r}")
        self.config = config
        self.max_pending = max_pending
        self.core = core
        self.storage = storage
        self.transport = transport
        self.timing = timing
        self.snapshot_every = snapshot_every
        # Each node snapshots at its own point (up to a quarter later), so the nodes never all
        # write their snapshot into storage in the same moment.
        spread = snapshot_every // 4
        stagger = zlib.crc32(config.id.encode()) % spread if spread else 0
        self._snapshot_threshold = snapshot_every + stagger
        self.snapshotter = snapshotter or Snapshotter(fork=False)
        self._snapshot_started = 0.0
        self.app: Application | None = None
        self._proposals: dict[int, tuple[int, Callback]] = {}  # index -> (term, callback)
        self._reads: dict[int, Callback] = {}  # read ctx -> callback
        self._confirmed_reads: list[tuple[int, int]] = []  # (index, ctx) waiting for apply
        self._next_ctx = 0
        self._soft = SoftState(Role.FOLLOWER, None, core.term)
        self._durable_term_vote = (core.term, core.vote)
        self._deferred_hard_state: HardState | None = None
        self.last_leader_contact = time.monotonic()
        self.running = False
        self.rejected_peer_messages = 0
        self.peer_last_heard: dict[str, float] = {}
        self._silent_peers: set[str] = set()
        self._leader_since = time.monotonic()
        self.stats = dict.fromkeys(
            ("readies", "messages_sent", "entries_saved", "entries_applied", "saves",
             "overloaded", "slow_iterations", "max_iteration_ms"), 0)
        self._last_slow_log = -1.0
        self._last_save_ms = 0.0
        self._last_reject_log = -1.0
        transport.subscribe(HEARTBEAT_TOPIC)

    # --- the application's API ---------------------------------------------------------

    def propose(self, data: bytes, callback: Callback, admit_always: bool = False) -> int:
        """Replicate `data`; `callback(result, None)` runs once it is applied here.

        Raises NotLeader at once at a non-leader (its `leader` is a hint), and Overloaded
        when `max_pending` proposals are already waiting to be applied (unless `admit_always`,
        for the application's own rare housekeeping entries)."""
        if self.saturated and not admit_always:
            self.stats["overloaded"] += 1
            raise Overloaded(self.max_pending)
        index = self.core.propose(data)
        self._proposals[index] = (self.core.term, callback)
        return index

    @property
    def saturated(self) -> bool:
        """True while propose() would raise Overloaded: lets a caller refuse a request
        before spending any work on it."""
        return len(self._proposals) >= self.max_pending and self.core.role == Role.LEADER

    def read(self, callback: Callback) -> None:
        """Run `callback` once a linearizable read may be served from local state."""
        self._next_ctx += 1
        self.core.read_index(self._next_ctx)
        self._reads[self._next_ctx] = callback

    @property
    def role(self) -> Role:
        return self.core.role

    @property
    def leader(self) -> str | None:
        return self.core.leader

    # --- the loop ------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.running = True
        tick_s = self.timing.tick_ms / 1000
        next_tick = time.monotonic() + tick_s
        while self.running and not should_stop():
            wait_ms = max(0, int((next_tick - time.monotonic()) * 1000))
            if self.app is not None and self.app.has_backlog:
                wait_ms = 0  # work is queued: only pick up what already arrived
            events = self.transport.poll(wait_ms)
            started = time.monotonic()
            for event in events:
                self._dispatch(event)
            now = time.monotonic()
            if now >= next_tick:
                # Messages are handled before ticks, so a busy loop never mistakes its own
                # slowness for a silent leader.
                self._tick()
                next_tick = max(next_tick + tick_s, now)
            saved = self.stats["entries_saved"]
            if self.app is not None:
                self.app.before_ready()
            self.process_ready()
            if self.app is not None:
                self.app.on_iteration_end()
            self._note_iteration(started, len(events), self.stats["entries_saved"] - saved)

    def _note_iteration(self, started: float, events: int, entries: int) -> None:
        """Count and report iterations long enough to delay heartbeats towards an election."""
        took_ms = (time.monotonic() - started) * 1000
        self.stats["max_iteration_ms"] = max(self.stats["max_iteration_ms"], round(took_ms))
        if took_ms < self.timing.election_ticks * self.timing.tick_ms / 2:
            return
        self.stats["slow_iterations"] += 1
        now = time.monotonic()
        if now - self._last_slow_log >= 1.0:  # at most once a second
            self._last_slow_log = now
            log.warning("slow loop iteration: %.0f ms for %d messages and %d entries saved "
                        "(the save took %.0f ms; %d slow so far)", took_ms, events, entries,
                        self._last_save_ms if entries else 0.0, self.stats["slow_iterations"])

    def stop(self) -> None:
        self.running = False

    def _watch_peers(self) -> None:
        """As leader (the one node every peer answers), log peers going silent and coming back."""
        if self.core.role != Role.LEADER:
            self._silent_peers.clear()
            return
        now = time.monotonic()
        limit = 2 * self.timing.election_ticks * self.timing.tick_ms / 1000
        for peer in self.core.peers:
            silent_for = now - self.peer_last_heard.get(peer, self._leader_since)
            if silent_for > limit and peer not in self._silent_peers:
                self._silent_peers.add(peer)
                log.warning("peer %s looks down: nothing heard for %.1f s; replication to it "
                            "is paused", peer, silent_for)
            elif silent_for <= limit and peer in self._silent_peers:
                self._silent_peers.discard(peer)
                log.info("peer %s is back", peer)

    def _tick(self) -> None:
        self._watch_peers()
        self.core.tick()
        if self.app is not None:
            self.app.on_tick()

    def _dispatch(self, event: FromRouter | FromPeer | FromSub) -> None:
        if isinstance(event, FromRouter) and event.kind == PEER_KIND:
            self._step_peer(event.payload, self.transport.peer_of(event.identity))
        elif isinstance(event, FromSub) and event.topic == HEARTBEAT_TOPIC:
            self._step_peer(event.payload, event.peer)
        elif self.app is not None:
            self.app.on_message(event)

    def _step_peer(self, payload: bytes, sender: str | None) -> None:
        try:
            msg = decode_message(payload)
        except WireError as exc:
            self._reject_peer_message("malformed peer message from %s: %s", sender, exc)
            return
        if sender is None or msg.src != sender:
            # The routing id (or the SUB socket) says who sent it; a message claiming to be
            # from someone else is dropped.
            self._reject_peer_message("message from %s claiming to be from %s", sender, msg.src)
            return
        now = time.monotonic()
        self.peer_last_heard[sender] = now
        if isinstance(msg, Heartbeat) and msg.term >= self.core.term:
            self.last_leader_contact = now
        self.core.step(msg)

    def _reject_peer_message(self, fmt: str, *args: object) -> None:
        # Counted always, logged at most once a second: a hostile sender must not flood logs.
        self.rejected_peer_messages += 1
        now = time.monotonic()
        if now - self._last_reject_log >= 1.0:
            self._last_reject_log = now
            log.warning("dropped a " + fmt + " (%d dropped so far)", *args,
                        self.rejected_peer_messages)

    # --- executing a Ready -----------------------------------------------------------------

    def process_ready(self) -> None:
        rd = self.core.ready()
        if rd.is_empty() and rd.soft_state == self._soft:
            if self.snapshotter.busy:
                self._maybe_snapshot()  # pick up a finished snapshot even when idle
            return
        stats = self.stats
        stats["readies"] += 1
        stats["messages_sent"] += len(rd.messages)
        stats["entries_saved"] += len(rd.entries)
        stats["entries_applied"] += len(rd.committed)
        early = self._early_sendable(rd)
        for msg in early:
            self._send(msg)
        self._persist(rd)
        for msg in rd.messages:
            if not early or not isinstance(msg, _LEADER_OUTBOUND):
                self._send(msg)
        self._apply(rd)
        if rd.committed and self.app is not None:
            self.app.on_applied()
        self.core.advance(rd)
        self._after_apply(rd)
        if rd.soft_state != self._soft:
            self._role_changed(rd.soft_state)
        self._maybe_snapshot()

    def _persist(self, rd: Ready) -> None:
        hs = rd.hard_state
        if hs is not None and not rd.entries and rd.snapshot is None and (
                (hs.term, hs.vote) == self._durable_term_vote):
            # Only the commit index moved. It need not be durable (a restarted node learns
            # it again from the leader), so it rides along with the next write instead of
            # costing an fsync of its own on every commit.
            self._deferred_hard_state = hs
            return
        if hs is None and (rd.entries or rd.snapshot is not None):
            hs = self._deferred_hard_state
        if hs is None and not rd.entries and rd.snapshot is None:
            return
        started = time.monotonic()
        self.storage.save(hs, rd.entries, rd.snapshot)
        self._last_save_ms = (time.monotonic() - started) * 1000
        self.stats["saves"] += 1
        self._deferred_hard_state = None
        if hs is not None:
            self._durable_term_vote = (hs.term, hs.vote)

    def flush(self) -> None:
        """Write a deferred commit index (before compaction, and at shutdown)."""
        if self._deferred_hard_state is not None:
            self.storage.save(self._deferred_hard_state, [])
            self._deferred_hard_state = None

    def _early_sendable(self, rd: Ready) -> list[Message]:
        """A leader's appends may leave before its own fsync (Raft thesis, 10.2.1): it counts
        itself towards a commit only in a later Ready, after this one's save returned, so the
        leader's disk write overlaps the followers' instead of preceding it. Only while its
        term and vote are already durable: everything else still waits for the save."""
        hs = rd.hard_state
        if rd.soft_state.role != Role.LEADER or rd.snapshot is not None:
            return []
        if hs is not None and (hs.term, hs.vote) != self._durable_term_vote:
            return []
        return [m for m in rd.messages if isinstance(m, _LEADER_OUTBOUND)]

    def _send(self, msg: Message) -> None:
        data = encode_message(msg)
        if isinstance(msg, Heartbeat):
            self.transport.publish(HEARTBEAT_TOPIC, data)
        else:
            self.transport.send(msg.dst, PEER_KIND, data)

    def _apply(self, rd: Ready) -> None:
        app = self.app
        if rd.snapshot is not None and app is not None:
            app.restore(rd.snapshot.data)
            log.info("installed snapshot at index %d", rd.snapshot.meta.index)
        for entry in rd.committed:
            result = None
            if entry.kind == EntryKind.COMMAND and app is not None:
                result = app.apply(entry)
            elif app is not None:
                app.apply(entry)  # a no-op still marks a new term to the application
            waiter = self._proposals.pop(entry.index, None)
            if waiter is None:
                continue
            term, callback = waiter
            if term == entry.term:
                callback(result, None)
            else:
                callback(None, ProposalLost(f"entry {entry.index} was replaced by a new leader"))

    def _after_apply(self, rd: Ready) -> None:
        for rs in rd.read_states:
            self._confirmed_reads.append((rs.index, rs.ctx))
        for ctx in rd.dropped_reads:
            callback = self._reads.pop(ctx, None)
            if callback is not None:
                callback(None, NotLeader(self.core.leader))
        if self._confirmed_reads:
            waiting = []
            for index, ctx in self._confirmed_reads:
                if index <= self.core.applied:
                    callback = self._reads.pop(ctx, None)
                    if callback is not None:
                        callback(None, None)
                else:
                    waiting.append((index, ctx))
            self._confirmed_reads = waiting

    def _role_changed(self, soft: SoftState) -> None:
        old, self._soft = self._soft, soft
        if soft.role == Role.LEADER:
            self._leader_since = time.monotonic()
        if old.role == Role.LEADER and soft.role != Role.LEADER:
            # Our uncommitted proposals may still commit under the next leader, or vanish:
            # tell their clients the outcome is unknown; they retry with the same request
            # id and the state machine answers a retry of an applied request from its cache.
            for _, callback in self._proposals.values():
                callback(None, ProposalLost("leadership lost before the entry committed"))
            self._proposals.clear()
        if soft.leader != old.leader or soft.term != old.term:
            log.info("term %d: %s, leader %s", soft.term, soft.role.value, soft.leader or "unknown")
        if self.app is not None:
            self.app.on_role_change(soft)

    def _maybe_snapshot(self) -> None:
        core, app = self.core, self.app
        done = self.snapshotter.poll()
        if done is None and app is not None and not self.snapshotter.busy and (
                core.applied - core.log.offset >= self._snapshot_threshold):
            self._snapshot_started = time.monotonic()
            done = self.snapshotter.start(core.applied, app.snapshot)
        if done is not None:
            self._compact(*done)

    def _compact(self, index: int, data: bytes) -> None:
        if index <= self.core.log.offset:
            return  # a snapshot from the leader overtook ours meanwhile
        stored_from = time.monotonic()
        self.flush()  # storage compacts only up to a durable commit index
        snap = self.core.compact(index, data)
        self.storage.compact(snap)
        now = time.monotonic()
        log.info("snapshot at index %d (%d bytes) in %.0f ms, of which %.0f ms storing it",
                 index, len(data), (now - self._snapshot_started) * 1000,
                 (now - stored_from) * 1000)
