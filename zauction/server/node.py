"""An auction node: the auction state machine replicated by brokerless, a client service,
the live feed, and the leader's time-driven duties (opening the default auction, closing
auctions at their deadline by committing a close entry).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from brokerless.application import Inbound, PeerReply
from brokerless.core import DEFAULT_CATCHUP_ENTRIES, Config, Core, SoftState
from brokerless.runtime import DEFAULT_MAX_PENDING, Runtime, Timing
from brokerless.snapshotter import Snapshotter
from brokerless.storage import CorruptDataError, Durability
from brokerless.storage.sqlite import SqliteStorage
from brokerless.transport.zeromq import ZmqTransport
from brokerless.types import Entry, EntryKind, Role, Snapshot
from brokerless.wire import pack
from zauction.auction.commands import (
    DEFAULT_AUCTION,
    CloseAuction,
    EnsureDefault,
    Request,
    encode_request,
)
from zauction.auction.domain import (
    MAX_AUCTIONS,
    MAX_OPEN_AUCTIONS_PER_CLIENT,
    MAX_RETAINED_BIDS,
    AuctionState,
    InvalidSnapshot,
    Reply,
    UnknownAuction,
)
from zauction.protocol import CLUSTER_TOPIC, feed_topic
from zauction.server.service import Service, now_ms

log = logging.getLogger("zauction.server.node")

DUTY_INTERVAL_S = 0.05  # how often the leader looks for auctions to open or close


@dataclass(frozen=True, slots=True)
class NodeOptions:
    addr: str
    peers: tuple[str, ...]
    data_dir: Path
    auction_duration_ms: int = 100_000
    timing: Timing = Timing()
    durability: Durability = Durability.ALWAYS
    snapshot_every: int = 100_000
    catchup_entries: int = DEFAULT_CATCHUP_ENTRIES  # log entries kept behind each snapshot
    cluster_id: str = ""
    max_pending: int = DEFAULT_MAX_PENDING  # writes in flight at the leader before `busy`
    # Retention and quotas: configuration every replica must share (they decide what the
    # state keeps and which opens it refuses).
    max_retained_bids: int = MAX_RETAINED_BIDS
    max_auctions: int = MAX_AUCTIONS
    max_open_auctions_per_client: int = MAX_OPEN_AUCTIONS_PER_CLIENT

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(sorted({self.addr, *self.peers}))

    def resolved_cluster_id(self) -> str:
        if self.cluster_id:
            return self.cluster_id
        digest = hashlib.sha256(",".join(self.members).encode()).hexdigest()[:12]
        return f"zauction-{digest}"


class AuctionNode:
    """The auction state machine replicated by a brokerless Runtime: it is the runtime's
    Application, and owns the client service and the leader's duties."""

    def __init__(self, opts: NodeOptions):
        self.opts = opts
        self.cluster_id = opts.resolved_cluster_id()
        storage = SqliteStorage.open(opts.data_dir, opts.addr, self.cluster_id, opts.durability)
        persisted = storage.load()
        t = opts.timing
        config = Config(opts.addr, opts.members, election_ticks=t.election_ticks,
                        heartbeat_ticks=t.heartbeat_ticks, catchup_entries=opts.catchup_entries)
        core = Core(config, random.Random(), persisted.hard_state, persisted.snapshot,
                    persisted.entries)
        self.state = AuctionState(
            max_retained_bids=opts.max_retained_bids, max_auctions=opts.max_auctions,
            max_open_auctions_per_client=opts.max_open_auctions_per_client)
        if persisted.snapshot is not None:
            self._restore_stored(persisted.snapshot, storage)
        transport = ZmqTransport(opts.addr, {p: p for p in opts.peers},
                                 cluster_id=self.cluster_id)
        self.runtime = Runtime(config, core, storage, transport, self, t,
                               snapshot_every=opts.snapshot_every,
                               snapshotter=Snapshotter(opts.data_dir),
                               max_pending=opts.max_pending)
        self.service = Service(self.runtime, self.state, self.status)
        self._closing: set[str] = set()
        self._outbox: dict[bytes, list[dict]] = {}  # feed topic -> events of this Ready
        self._default_proposed_term = -1
        self._next_duty = 0.0
        self.started = time.monotonic()
        at = core.status()
        log.info("node %s starting: cluster %s, peers %s, data %s, term %d, log %d..%d",
                 opts.addr, self.cluster_id, ",".join(opts.peers), opts.data_dir, at.term,
                 at.first_index, at.last_index)

    def _restore_stored(self, snapshot: Snapshot, storage: SqliteStorage) -> None:
        try:
            self.state.restore(snapshot.data)
        except InvalidSnapshot as exc:
            storage.close()
            raise CorruptDataError(storage.path, f"the stored snapshot does not restore: "
                                   f"{exc}", snapshot.meta.index) from exc

    # --- the state machine (called by the runtime) -----------------------------------------

    def apply(self, entry: Entry, proposed: Request | None = None) -> Reply | None:
        if entry.kind == EntryKind.NOOP:
            # A new leader's first entry: every replica publishes the change at the same index.
            self._publish(CLUSTER_TOPIC, {"type": "leader_changed", "index": entry.index,
                                          "term": entry.term, "auction": None})
            return None
        if proposed is not None:  # our own proposal: no need to decode what we encoded
            reply = self.state.apply_request(entry.index, entry.term, proposed)
        else:
            reply = self.state.apply(entry.index, entry.term, entry.data)
        for event in self.state.drain_events():
            self._publish_event(event.to_dict())
        return reply

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def restore(self, data: bytes) -> None:
        self.state.restore(data)

    # --- loop hooks ----------------------------------------------------------------------------

    def on_inbound(self, frame: Inbound) -> None:
        self.service.on_inbound(frame)

    def on_peer_reply(self, reply: PeerReply) -> None:
        self.service.on_peer_reply(reply)

    def on_role_change(self, soft: SoftState) -> None:
        self._closing.clear()
        self.service.leader_changed(soft.leader)
        if soft.role == Role.LEADER:
            log.info("elected leader for term %d", soft.term)
            self._leader_duties()  # open the default auction without waiting for a tick

    def before_ready(self, now: float) -> bool:
        if now >= self._next_duty:
            self._next_duty = now + DUTY_INTERVAL_S
            self.service.expire_forwards()
            if self.runtime.role == Role.LEADER:
                self._leader_duties()
        self.service.serve_backlog()
        return self.service.has_backlog

    def after_iteration(self) -> None:
        # Events wait for the end of the iteration: one PUB message per topic carries all of
        # its events (a send per event cost more CPU than the rest of a bid).
        for topic, events in self._outbox.items():
            self.runtime.publish(topic, pack(events))
        self._outbox.clear()
        self.service.flush_replies()

    # --- the live feed -------------------------------------------------------------------------

    def _publish_event(self, event: dict) -> None:
        auction, kind = event["auction"], event["type"]  # the domain numbered it (seq)
        if kind == "bid_accepted":
            log.debug("bid accepted: %s %s on %s", event["bidder"], event["amount"], auction)
        elif kind == "auction_closed":
            log.info("auction %s closed: winner %s at %s", auction, event.get("winner"),
                     event.get("amount"))
        self._publish(feed_topic(auction), event)

    def _publish(self, topic: bytes, event: dict) -> None:
        self._outbox.setdefault(topic, []).append(event)

    # --- leader duties: time enters the log only through entries the leader commits -----------

    def _leader_duties(self) -> None:
        term = self.runtime.term
        if self._default_proposed_term != term and not self._has_default():
            self._default_proposed_term = term
            self._propose_internal(EnsureDefault(duration_ms=self.opts.auction_duration_ms))
        # due_to_close only peeks (at most MAX_DUE_PER_CALL, earliest first): the auctions
        # whose close is in flight come back until it is applied, and are skipped here; one
        # whose proposal failed is due again next time, since nothing took it off the queue.
        for auction in self.state.due_to_close(now_ms()):
            if auction not in self._closing:
                self._closing.add(auction)
                self._propose_internal(CloseAuction(auction))

    def _has_default(self) -> bool:
        try:
            self.state.result(DEFAULT_AUCTION)
            return True
        except UnknownAuction:
            return False

    def _propose_internal(self, cmd) -> None:
        data = encode_request(Request("", 0, now_ms(), cmd))

        def done(_, error) -> None:
            # Applied (the auction is no longer due) or failed (it is due again and will be
            # proposed anew): either way it is no longer being closed.
            if isinstance(cmd, CloseAuction):
                self._closing.discard(cmd.auction)

        # The leader's own duties are few and must not wait behind clients: no admission limit.
        self.runtime.propose(data, done, admit_always=True)

    # --- status ----------------------------------------------------------------------------------

    def status(self) -> dict:
        rt = self.runtime.status()
        core = rt.core
        return {
            "addr": self.opts.addr, "cluster": self.cluster_id, "role": core.role.value,
            "term": core.term, "leader": core.leader, "commit_index": core.commit,
            "applied_index": core.applied, "last_index": core.last_index,
            "snapshot_index": core.snapshot_index,
            "heartbeat_age_ms": round(rt.heartbeat_age_s * 1000, 1),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "pub": rt.pub_endpoint, "members": list(self.opts.members),
            "rejected_peer_messages": rt.rejected_peer_messages,
            "bad_requests": self.service.bad_requests,
            "busy_replies": self.service.busy_replies,
            "internal_errors": self.service.internal_errors,
            "client_requests": self.service.client_requests,
            "pending_writes": self.service.pending_writes,
            "loop": rt.loop,
            "transport": dataclasses.asdict(rt.transport),
        }

    # --- running ----------------------------------------------------------------------------------

    def run(self) -> None:
        stop = {"now": False}

        def on_signal(signum, _frame) -> None:
            stop["now"] = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_signal)  # the terminal of a foreground node closed
        try:
            self.runtime.run(lambda: stop["now"])
        finally:
            self.close()

    def close(self) -> None:
        self.runtime.close()
        log.info("node %s stopped", self.opts.addr)
