"""The node loop: socket events and ticks into the core, each Ready executed in order.

One thread, one zmq.Poller (measured simpler and faster than zmq.asyncio for this loop:
no task switches on the hot path). Every loop iteration drains everything the sockets
have waiting before it asks the core for a Ready, so one append and one fsync carry every
request that arrived meanwhile (group commit).

For each Ready, in the order brokerless.executor fixes (the simulator runs the same code):
send what may leave early, persist (snapshot, entries, hard state), send the rest
(heartbeats are published on PUB), then apply committed entries, release confirmed reads,
advance.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from brokerless.application import Application, Inbound, PeerReply
from brokerless.core import Config, Core, CoreStatus, NotLeader, Ready, SoftState
from brokerless.executor import ReadyExecutor, Save
from brokerless.messages import Heartbeat, Message
from brokerless.snapshotter import Snapshotter
from brokerless.storage import Storage
from brokerless.transport import FromPeer, FromRouter, FromSub, Incoming, Transport, TransportStats
from brokerless.types import HardState, Role
from brokerless.wire import WireError, decode_message, encode_message

log = logging.getLogger("brokerless.runtime")

PEER_KIND = b"P"  # a consensus message on ROUTER/DEALER
HEARTBEAT_TOPIC = b"hb"  # heartbeats on PUB/SUB
# Proposals a leader holds unapplied before it refuses more (Overloaded). About 100-250 ms
# of work at this implementation's peak rate: deep enough to batch well, shallow enough that
# a flood cannot stretch the loop past an election timeout.
DEFAULT_MAX_PENDING = 2048


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
Clock = Callable[[], float]  # monotonic seconds


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal of this node's, waiting to be applied: its term, its payload (the committed
    entry must be this very object to be ours), its callback and what the application keeps
    of it to spare decoding it again."""

    term: int
    data: bytes
    callback: Callback
    proposed: Any = None


@dataclass(frozen=True, slots=True)
class ConfirmedRead:
    """A read the leader confirmed at `index`: served once that index is applied here."""

    index: int
    ctx: int


@dataclass(frozen=True, slots=True)
class RuntimeStatus:
    """What a node's loop can tell about itself (for status replies and operators)."""

    core: CoreStatus
    heartbeat_age_s: float  # since the last heartbeat from a current leader; 0 as leader
    rejected_peer_messages: int
    pub_endpoint: str
    loop: dict[str, int] = field(default_factory=dict)
    transport: TransportStats = field(default_factory=TransportStats)


@dataclass(frozen=True, slots=True)
class _RuntimeIO:
    """The runtime as the executor's ReadyIO: messages to the transport, saves to storage."""

    send: Callable[[Message], None]
    save: Callable[[Save], None]


class Runtime:
    """One node's loop around a core. Built with everything it drives (storage, transport,
    the application, a clock); offers the application propose, read, reply, send, publish
    and status, and nothing of its parts."""

    def __init__(self, config: Config, core: Core, storage: Storage, transport: Transport,
                 app: Application, timing: Timing = Timing(), *, snapshot_every: int = 100_000,
                 snapshotter: Snapshotter | None = None,
                 max_pending: int = DEFAULT_MAX_PENDING, clock: Clock = time.monotonic):
        if type(max_pending) is not int or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int, not {max_pending!r}")
        self.max_pending = max_pending
        self._config = config
        self._core = core
        self._storage = storage
        self._transport = transport
        self._app = app
        self._timing = timing
        self._clock = clock
        # Each node snapshots at its own point (up to a quarter later), so the nodes never all
        # write their snapshot into storage in the same moment.
        spread = snapshot_every // 4
        stagger = zlib.crc32(config.id.encode()) % spread if spread else 0
        self._snapshot_threshold = snapshot_every + stagger
        self._snapshotter = snapshotter or Snapshotter(fork=False)
        self._snapshot_started = 0.0
        self._proposals: dict[int, Proposal] = {}  # log index -> our proposal there
        self._reads: dict[int, Callback] = {}  # read ctx -> callback
        self._confirmed_reads: list[ConfirmedRead] = []  # waiting for their index to apply
        self._next_ctx = 0
        self._soft = SoftState(Role.FOLLOWER, None, core.term)
        self._executor = ReadyExecutor(HardState(core.term, core.vote, core.commit))
        self._io = _RuntimeIO(self._send_message, self._save)
        now = clock()
        self._last_leader_contact = now
        self._running = False
        self._rejected_peer_messages = 0
        self._peer_last_heard: dict[str, float] = {}
        self._silent_peers: set[str] = set()
        self._leader_since = now
        self._next_tick = now + timing.tick_ms / 1000
        self.stats = dict.fromkeys(
            ("readies", "messages_sent", "entries_saved", "entries_applied", "saves",
             "overloaded", "slow_iterations", "max_iteration_ms"), 0)
        self._last_slow_log = -1.0
        self._last_save_ms = 0.0
        self._last_reject_log = -1.0
        transport.subscribe(HEARTBEAT_TOPIC)

    # --- the application's API ---------------------------------------------------------

    def propose(self, data: bytes, callback: Callback, *, proposed: Any = None,
                admit_always: bool = False) -> int:
        """Replicate `data`; `callback(result, None)` runs once it is applied here.

        `proposed` is handed back to the application's apply() for this entry, if the
        entry committed at its index is still this very payload. Raises NotLeader at once
        at a non-leader (its `leader` is a hint), and Overloaded when `max_pending`
        proposals are already waiting to be applied (unless `admit_always`, for the
        application's own rare housekeeping entries)."""
        if self.saturated and not admit_always:
            self.stats["overloaded"] += 1
            raise Overloaded(self.max_pending)
        index = self._core.propose(data)
        self._proposals[index] = Proposal(self._core.term, data, callback, proposed)
        return index

    @property
    def saturated(self) -> bool:
        """True while propose() would raise Overloaded: lets a caller refuse a request
        before spending any work on it."""
        return len(self._proposals) >= self.max_pending and self._core.role == Role.LEADER

    def read(self, callback: Callback) -> None:
        """Run `callback` once a linearizable read may be served from local state."""
        self._next_ctx += 1
        self._core.read_index(self._next_ctx)
        self._reads[self._next_ctx] = callback

    @property
    def role(self) -> Role:
        return self._core.role

    @property
    def leader(self) -> str | None:
        return self._core.leader

    @property
    def term(self) -> int:
        return self._core.term

    def status(self) -> RuntimeStatus:
        core = self._core.status()
        age = 0.0 if core.role == Role.LEADER else self._clock() - self._last_leader_contact
        return RuntimeStatus(core, age, self._rejected_peer_messages,
                             self._transport.pub_endpoint, dict(self.stats),
                             self._transport.stats)

    def reply(self, origin: bytes, kind: bytes, payload: bytes) -> bool:
        """Answer an Inbound frame; False if the answer was dropped."""
        return self._transport.reply(origin, kind, payload)

    def send(self, peer: str, kind: bytes, payload: bytes) -> bool:
        """A frame of the application's own to a member (it answers as a PeerReply)."""
        return self._transport.send(peer, kind, payload)

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Broadcast to whoever subscribed to this node (lossy, like every PUB)."""
        self._transport.publish(topic, payload)

    # --- the loop ------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        self._running = True
        busy = False
        while self._running and not should_stop():
            busy = self.run_once(0 if busy else None)

    def run_once(self, wait_ms: int | None = None) -> bool:
        """One loop iteration: take what arrived (waiting up to `wait_ms`, by default until
        the next tick), tick if due, let the application work, execute the Ready. Returns
        True while the application has work queued (the next call should not wait)."""
        if wait_ms is None:
            wait_ms = max(0, int((self._next_tick - self._clock()) * 1000))
        events = self._transport.poll(wait_ms)
        started = self._clock()
        for event in events:
            self._dispatch(event)
        now = self._clock()
        if now >= self._next_tick:
            # Messages are handled before ticks, so a busy loop never mistakes its own
            # slowness for a silent leader.
            self._tick(now)
            self._next_tick = max(self._next_tick + self._timing.tick_ms / 1000, now)
        saved = self.stats["entries_saved"]
        busy = self._app.before_ready(now)
        self.process_ready()
        self._app.after_iteration()
        self._note_iteration(started, len(events), self.stats["entries_saved"] - saved)
        return busy

    def _note_iteration(self, started: float, events: int, entries: int) -> None:
        """Count and report iterations long enough to delay heartbeats towards an election."""
        now = self._clock()
        took_ms = (now - started) * 1000
        self.stats["max_iteration_ms"] = max(self.stats["max_iteration_ms"], round(took_ms))
        if took_ms < self._timing.election_ticks * self._timing.tick_ms / 2:
            return
        self.stats["slow_iterations"] += 1
        if now - self._last_slow_log >= 1.0:  # at most once a second
            self._last_slow_log = now
            log.warning("slow loop iteration: %.0f ms for %d messages and %d entries saved "
                        "(the save took %.0f ms; %d slow so far)", took_ms, events, entries,
                        self._last_save_ms if entries else 0.0, self.stats["slow_iterations"])

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        """Stop any snapshot child, write a deferred commit index, release the transport
        and the storage. Safe to call twice."""
        self._snapshotter.close()
        self.flush()
        self._transport.close()
        self._storage.close()

    def _watch_peers(self, now: float) -> None:
        """As leader (the one node every peer answers), log peers going silent and coming back."""
        if self._core.role != Role.LEADER:
            self._silent_peers.clear()
            return
        limit = 2 * self._timing.election_ticks * self._timing.tick_ms / 1000
        for peer in self._config.voters:
            if peer == self._config.id:
                continue
            silent_for = now - self._peer_last_heard.get(peer, self._leader_since)
            if silent_for > limit and peer not in self._silent_peers:
                self._silent_peers.add(peer)
                log.warning("peer %s looks down: nothing heard for %.1f s; replication to it "
                            "is paused", peer, silent_for)
            elif silent_for <= limit and peer in self._silent_peers:
                self._silent_peers.discard(peer)
                log.info("peer %s is back", peer)

    def _tick(self, now: float) -> None:
        self._watch_peers(now)
        self._core.tick()

    def _dispatch(self, event: Incoming) -> None:
        if isinstance(event, FromRouter):
            sender = self._transport.peer_of(event.identity)
            if event.kind == PEER_KIND:
                self._step_peer(event.payload, sender)
            else:
                self._app.on_inbound(Inbound(event.identity, sender, event.kind, event.payload))
        elif isinstance(event, FromPeer):
            self._app.on_peer_reply(PeerReply(event.peer, event.kind, event.payload))
        elif isinstance(event, FromSub) and event.topic == HEARTBEAT_TOPIC:
            self._step_peer(event.payload, event.peer)

    def _step_peer(self, payload: bytes, sender: str | None) -> None:
        if sender is None:
            # Only members may speak consensus, and the routing id says who is speaking:
            # refuse before decoding, so an outsider cannot make us decode 60 MB of entries.
            self._reject_peer_message("consensus frame of %d bytes from a non-member",
                                      len(payload))
            return
        try:
            msg = decode_message(payload)
        except WireError as exc:
            self._reject_peer_message("malformed peer message from %s: %s", sender, exc)
            return
        if msg.src != sender:
            # The routing id (or the SUB socket) says who sent it; a message claiming to be
            # from someone else is dropped.
            self._reject_peer_message("message from %s claiming to be from %s", sender, msg.src)
            return
        now = self._clock()
        self._peer_last_heard[sender] = now
        if isinstance(msg, Heartbeat) and msg.term >= self._core.term:
            self._last_leader_contact = now
        self._core.step(msg)

    def _reject_peer_message(self, fmt: str, *args: object) -> None:
        # Counted always, logged at most once a second: a hostile sender must not flood logs.
        self._rejected_peer_messages += 1
        now = self._clock()
        if now - self._last_reject_log >= 1.0:
            self._last_reject_log = now
            log.warning("dropped a " + fmt + " (%d dropped so far)", *args,
                        self._rejected_peer_messages)

    # --- executing a Ready -----------------------------------------------------------------

    def process_ready(self) -> None:
        rd = self._core.ready()
        if rd.is_empty() and rd.soft_state == self._soft:
            if self._snapshotter.busy:
                self._maybe_snapshot()  # pick up a finished snapshot even when idle
            return
        stats = self.stats
        stats["readies"] += 1
        stats["messages_sent"] += len(rd.messages)
        stats["entries_saved"] += len(rd.entries)
        stats["entries_applied"] += len(rd.committed)
        self._executor.execute(rd, self._io)  # send early, save, send the rest
        self._apply(rd)
        self._core.advance(rd)
        self._after_apply(rd)
        if rd.soft_state != self._soft:
            self._role_changed(rd.soft_state)
        self._maybe_snapshot()

    def flush(self) -> None:
        """Write a deferred commit index (before compaction, and at shutdown)."""
        self._executor.flush(self._io)

    # --- where the executor's sends and saves go ---------------------------------------

    def _send_message(self, msg: Message) -> None:
        data = encode_message(msg)
        if isinstance(msg, Heartbeat):
            self._transport.publish(HEARTBEAT_TOPIC, data)
        else:
            self._transport.send(msg.dst, PEER_KIND, data)

    def _save(self, save: Save) -> None:
        started = self._clock()
        self._storage.save(save.hard_state, save.entries, save.snapshot)
        self._last_save_ms = (self._clock() - started) * 1000
        self.stats["saves"] += 1

    def _apply(self, rd: Ready) -> None:
        app = self._app
        if rd.snapshot is not None:
            app.restore(rd.snapshot.data)
            log.info("installed snapshot at index %d", rd.snapshot.meta.index)
        for entry in rd.committed:
            ours = self._proposals.pop(entry.index, None)
            mine = ours is not None and ours.term == entry.term
            if mine and entry.data is ours.data and ours.proposed is not None:
                result = app.apply(entry, ours.proposed)
            else:
                result = app.apply(entry)  # a no-op too: it marks a new term to the application
            if ours is None:
                continue
            if mine:
                ours.callback(result, None)
            else:
                ours.callback(None, ProposalLost(f"entry {entry.index} was replaced by a new "
                                                 "leader"))

    def _after_apply(self, rd: Ready) -> None:
        for rs in rd.read_states:
            self._confirmed_reads.append(ConfirmedRead(rs.index, rs.ctx))
        for ctx in rd.dropped_reads:
            callback = self._reads.pop(ctx, None)
            if callback is not None:
                callback(None, NotLeader(self._core.leader))
        if self._confirmed_reads:
            applied = self._core.applied
            waiting = []
            for read in self._confirmed_reads:
                if read.index > applied:
                    waiting.append(read)
                    continue
                callback = self._reads.pop(read.ctx, None)
                if callback is not None:
                    callback(None, None)
            self._confirmed_reads = waiting

    def _role_changed(self, soft: SoftState) -> None:
        old, self._soft = self._soft, soft
        if soft.role == Role.LEADER:
            self._leader_since = self._clock()
        if old.role == Role.LEADER and soft.role != Role.LEADER:
            # Our uncommitted proposals may still commit under the next leader, or vanish:
            # tell their clients the outcome is unknown; they retry with the same request
            # id and the state machine answers a retry of an applied request from its cache.
            for proposal in self._proposals.values():
                proposal.callback(None, ProposalLost("leadership lost before the entry "
                                                     "committed"))
            self._proposals.clear()
        if soft.leader != old.leader or soft.term != old.term:
            log.info("term %d: %s, leader %s", soft.term, soft.role.value, soft.leader or "unknown")
        self._app.on_role_change(soft)

    def _maybe_snapshot(self) -> None:
        done = self._snapshotter.poll()
        core = self._core.status()
        if done is None and not self._snapshotter.busy and (
                core.applied - core.snapshot_index >= self._snapshot_threshold):
            self._snapshot_started = self._clock()
            done = self._snapshotter.start(core.applied, self._app.snapshot)
        if done is not None:
            self._compact(*done)

    def _compact(self, index: int, data: bytes) -> None:
        if index <= self._core.status().snapshot_index:
            return  # a snapshot from the leader overtook ours meanwhile
        stored_from = self._clock()
        self.flush()  # storage compacts only up to a durable commit index
        snap = self._core.compact(index, data)
        self._storage.compact(snap)
        now = self._clock()
        log.info("snapshot at index %d (%d bytes) in %.0f ms, of which %.0f ms storing it",
                 index, len(data), (now - self._snapshot_started) * 1000,
                 (now - stored_from) * 1000)
