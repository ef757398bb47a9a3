"""The auction state machine that brokerless replicates.

Pure and deterministic: no clock, no randomness, no I/O. Time arrives only as the
`ts_ms` the leader stamped on each request, so every replica that applies the same
log reaches byte-identical state, the same replies and the same events.
"""

from __future__ import annotations

import heapq
import io
import sys
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from itertools import islice, pairwise
from typing import Any

import msgpack

from zauction.auction.commands import (
    COMMAND_TAGS,
    MAX_SEQ,
    MAX_TIMESTAMP_MS,
    REASONS,
    Bid,
    CloseAuction,
    EnsureDefault,
    ForgetAuction,
    InvalidCommand,
    OpenAuction,
    Reason,
    Request,
    ZauctionError,
    check_amount,
    check_auction_fields,
    check_int,
    check_name,
    decode_request_fields,
    tag_of,
)

MAX_SESSIONS = 100_000
MAX_PENDING_EVENTS = 100_000
MAX_RETAINED_BIDS = 2_000_000
MAX_AUCTIONS = 100_000  # known at once, open or closed: beyond it an open is refused
MAX_OPEN_AUCTIONS_PER_CLIENT = 1_000
MAX_DUE_PER_CALL = 1_000  # the most auctions one due_to_close call returns
# 3: each auction's opener (client id) and the log index of its opening;
# 2: retention (closed_index, bids_total and high per auction). Version 2 still restores.
SNAPSHOT_VERSION = 3


class UnknownAuction(ZauctionError, LookupError):
    """A query named an auction that was never opened, or closed and since forgotten
    (ForgetAuction)."""


class InvalidLimit(ZauctionError, ValueError):
    """An AuctionState limit (max_sessions, max_retained_bids, ...) is not a positive int."""


class ApplyOrderError(ZauctionError, ValueError):
    """The caller applied log indexes out of order: a bug in the caller, not bad input."""


class InvalidSnapshot(ZauctionError, ValueError):
    """Snapshot bytes could not be restored; the state was left as it was."""


class InvalidReply(ZauctionError, ValueError):
    """A reply dict (e.g. received from the network) is malformed."""


class InvalidEvent(ZauctionError, ValueError):
    """An event dict (e.g. received from the feed) is malformed."""


# --- replies -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """The result of applying one request; stored per client for retries.

    `high` is the auction's highest bid after the command and `min_next` the smallest
    bid that would be accepted next (None once closed). For a close, `winner` and
    `amount` are the winning bid. `detail` explains an "invalid" reply or a no-op.
    """

    ok: bool
    reason: str | None = None
    auction: str | None = None
    bidder: str | None = None
    amount: int | None = None
    high: int | None = None
    min_next: int | None = None
    winner: str | None = None
    detail: str | None = None


_REPLY_FIELDS = tuple(f.name for f in fields(Reply))
_REPLY_INT_FIELDS = frozenset({"amount", "high", "min_next"})


def reply_to_dict(reply: Reply) -> dict[str, Any]:
    """Compact dict for msgpack: `ok` always, other fields only when set."""
    out: dict[str, Any] = {"ok": reply.ok}
    for name in _REPLY_FIELDS[1:]:
        value = getattr(reply, name)
        if value is not None:
            out[name] = value
    return out


def reply_from_dict(data: object) -> Reply:
    """Inverse of reply_to_dict; validates untrusted input, raising InvalidReply."""
    if type(data) is not dict or type(data.get("ok")) is not bool:
        raise InvalidReply("a reply must be a dict with a bool 'ok'")
    unknown = set(data) - set(_REPLY_FIELDS)
    if unknown:
        raise InvalidReply(f"unknown reply fields: {sorted(map(str, unknown))}")
    for name, value in data.items():
        if name == "ok" or value is None:
            continue
        wanted = int if name in _REPLY_INT_FIELDS else str
        if type(value) is not wanted:
            raise InvalidReply(f"reply field {name!r} must be {wanted.__name__}")
    if data.get("reason") is not None and data["reason"] not in REASONS:
        raise InvalidReply(f"unknown reason {data['reason']!r}")
    return Reply(**data)


# --- events for the live feed --------------------------------------------------------

# Each auction numbers its feed events: the opening is 0, the accepted bids 1..n in order,
# the close n + 1. A subscriber detects a gap when a seq skips one (docs/protocol.md). The
# events carry their seq from the moment they are made, and events_after numbers rebuilt
# events the same way, so this numbering exists only here.
OPENED_SEQ = 0


def closed_seq(bids_total: int) -> int:
    """The seq of the close of an auction that accepted `bids_total` bids."""
    return bids_total + 1


def last_feed_seq(summary: dict[str, Any]) -> int:
    """The seq of the last event of an auction, from its result() map (the feed compares it
    with the last seq it delivered)."""
    return closed_seq(summary["bids"]) if summary["state"] == "closed" else summary["bids"]


@dataclass(frozen=True, slots=True)
class AuctionOpened:
    index: int
    term: int
    auction: str
    item: str
    reserve: int
    increment: int
    opens_at_ms: int
    closes_at_ms: int
    seq: int  # always OPENED_SEQ; kept so that every event has one

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self, "auction_opened")


@dataclass(frozen=True, slots=True)
class BidAccepted:
    index: int
    term: int
    auction: str
    bidder: str
    amount: int
    seq: int

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self, "bid_accepted")


@dataclass(frozen=True, slots=True)
class AuctionClosed:
    index: int
    term: int
    auction: str
    winner: str | None
    amount: int | None
    seq: int

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self, "auction_closed")


Event = AuctionOpened | BidAccepted | AuctionClosed
_EVENT_TYPES: dict[str, type] = {
    "auction_opened": AuctionOpened,
    "bid_accepted": BidAccepted,
    "auction_closed": AuctionClosed,
}
_NULLABLE_EVENT_FIELDS = frozenset({"winner", "amount"})
# Each event type's fields after index and term, in declaration order (the dict's key order:
# seq last, where the feed has always put it).
_EVENT_PAYLOAD_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls) if f.name not in ("index", "term"))
    for cls in _EVENT_TYPES.values()
}


def _event_dict(event: Event, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {"index": event.index, "term": event.term, "type": kind}
    for name in _EVENT_PAYLOAD_FIELDS[type(event)]:  # fields() per call cost more than a bid
        out[name] = getattr(event, name)
    return out


def event_from_dict(data: object) -> Event:
    """Inverse of Event.to_dict, for feed subscribers; raises InvalidEvent."""
    if type(data) is not dict:
        raise InvalidEvent("an event must be a dict")
    kind = data.get("type")
    cls = _EVENT_TYPES.get(kind) if type(kind) is str else None
    if cls is None:
        raise InvalidEvent(f"unknown event type {data.get('type')!r}")
    names = [f.name for f in fields(cls)]
    if set(data) != {"type", *names}:
        raise InvalidEvent(f"{data['type']} needs exactly the fields {names}")
    for name in names:
        value = data[name]
        nullable = cls is AuctionClosed and name in _NULLABLE_EVENT_FIELDS
        wanted = str if name in ("auction", "item", "bidder", "winner") else int
        if not (value is None and nullable) and type(value) is not wanted:
            raise InvalidEvent(f"event field {name!r} must be {wanted.__name__}")
    return cls(*(data[name] for name in names))


# --- auctions --------------------------------------------------------------------------

BidRecord = tuple[int, str, int, int]  # (log index, bidder, amount, ts_ms): compact on purpose


class _Auction:
    """One auction's mutable state.

    `bids` is the retained tail of the accepted bids (the oldest may have been evicted, see
    _Retention); `bids_total` counts every bid ever accepted and `high` is the last one,
    kept apart from `bids` so that eviction can never lose what the rules judge against.
    `opened_index` and `closed_index` are the log indexes of the open and close entries
    (closed_index 0 while open; opened_index 0 if unknown: restored from a version 2
    snapshot). `opener` is the client id that opened it, "" for the leader's own opens (and
    for auctions restored from version 2): the per-client quota counts its open auctions.
    """

    __slots__ = ("auction", "item", "reserve", "increment", "opens_at_ms", "closes_at_ms",
                 "closed_index", "bids_total", "high", "bids", "opened_index", "opener")

    def __init__(self, auction: str, item: str, reserve: int, increment: int,
                 opens_at_ms: int, closes_at_ms: int, opened_index: int, opener: str) -> None:
        self.auction = auction
        self.item = item
        self.reserve = reserve
        self.increment = increment
        self.opens_at_ms = opens_at_ms
        self.closes_at_ms = closes_at_ms
        self.opened_index = opened_index
        self.opener = opener
        self.closed_index = 0
        self.bids_total = 0
        self.high: BidRecord | None = None
        self.bids: deque[BidRecord] = deque()

    @property
    def closed(self) -> bool:
        return self.closed_index > 0

    @property
    def high_amount(self) -> int | None:
        high = self.high
        return high[2] if high is not None else None

    @property
    def first_retained_seq(self) -> int:
        """Feed seq of the oldest retained bid (bids_total + 1 when none is retained)."""
        return self.bids_total - len(self.bids) + 1

    def min_next_at(self, ts_ms: int) -> int | None:
        """The smallest bid accepted at `ts_ms`; None once bidding has ended."""
        if self.closed_index or ts_ms >= self.closes_at_ms:
            return None
        high = self.high
        return high[2] + self.increment if high is not None else self.reserve

    def refusal(self, ts_ms: int, amount: int) -> str | None:
        """Why a bid of `amount` at `ts_ms` is refused, or None if it is accepted."""
        if self.closed_index or ts_ms >= self.closes_at_ms:
            return Reason.AUCTION_CLOSED
        if ts_ms < self.opens_at_ms:
            return Reason.NOT_OPEN_YET
        high = self.high
        if high is None:
            return Reason.BELOW_RESERVE if amount < self.reserve else None
        if amount < high[2] + self.increment:
            return Reason.BELOW_INCREMENT
        return None

    def summary(self) -> dict[str, Any]:
        high = self.high
        highest = {"bidder": high[1], "amount": high[2]} if high else None
        return {
            "auction": self.auction,
            "state": "closed" if self.closed_index else "open",
            "highest": highest,
            "winner": dict(highest) if (self.closed_index and highest) else None,
            "item": self.item,
            "reserve": self.reserve,
            "increment": self.increment,
            "opens_at_ms": self.opens_at_ms,
            "closes_at_ms": self.closes_at_ms,
            "bids": self.bids_total,
            "retained_bids": len(self.bids),
        }

    def pack_into(self, packer: msgpack.Packer) -> None:
        """Append this auction's snapshot row: [auction, item, reserve, increment, opens_at_ms,
        closes_at_ms, closed_index, bids_total, high, bids, opened_index, opener], each bid
        [index, bidder, amount, ts_ms]. (Version 2 rows end at bids: the two fields added
        in version 3 come last so that the others keep their positions.) Tuples pack as
        msgpack arrays, so no list is built per record: the forked snapshot child then
        allocates next to nothing beyond the output buffer."""
        packer.pack_array_header(_AUCTION_ROW_LEN)
        for value in (self.auction, self.item, self.reserve, self.increment, self.opens_at_ms,
                      self.closes_at_ms, self.closed_index, self.bids_total, self.high):
            packer.pack(value)
        packer.pack_array_header(len(self.bids))
        pack = packer.pack
        for record in self.bids:
            pack(record)
        pack(self.opened_index)
        pack(self.opener)


_AUCTION_ROW_LEN = 12
_ROW_LEN_BY_VERSION = {2: 10, SNAPSHOT_VERSION: _AUCTION_ROW_LEN}


# --- retention: what is kept, decided identically on every replica -----------------------

# Stale entries (of auctions closed or forgotten since) tolerated in a lazily cleaned
# structure beyond twice the live ones, before it is rebuilt: rebuilding then costs O(1)
# amortized per change.
_STALE_SLACK = 1024


class _Retention:
    """Bounds the retained bid records.

    Beyond `max_bids` retained records, the oldest record of the oldest-closed auction that
    still has any is evicted, else the oldest record (by log index) of any open auction.
    Auctions themselves are never dropped here: AuctionState refuses opens beyond its caps
    instead, and ForgetAuction removes a closed auction (see `forget`).
    Every structure is derived from the auctions alone (see `rebuild`), so a snapshot
    restores exactly the decisions a replica that never restarted would make.
    """

    __slots__ = ("max_bids", "retained", "open_retained", "open_order", "closed_count",
                 "closed_with_bids", "forgotten_with_bids")

    def __init__(self, max_bids: int) -> None:
        self.max_bids = max_bids
        self.retained = 0  # records in every auction's `bids`
        self.open_retained = 0  # of which in open auctions
        # One entry per retained record of an open auction, in log order; entries of auctions
        # closed since are stale and skipped (each open auction's entries match its `bids`).
        self.open_order: deque[_Auction] = deque()
        self.closed_count = 0  # closed auctions known (not forgotten)
        # The closed auctions with records, oldest-closed first. Forgotten ones stay until
        # they reach the front or the deque is compacted: they have no records left, and
        # `forgotten_with_bids` counts them.
        self.closed_with_bids: deque[_Auction] = deque()
        self.forgotten_with_bids = 0

    def accept(self, auction: _Auction, record: BidRecord) -> None:
        """Record an accepted bid (the hot path: O(1), evicting at most one record)."""
        auction.high = record
        auction.bids_total += 1
        auction.bids.append(record)
        self.open_order.append(auction)
        self.open_retained += 1
        self.retained += 1
        if self.retained > self.max_bids:
            self._evict_one()

    def _evict_one(self) -> None:
        closed = self.closed_with_bids
        while closed and not closed[0].bids:  # forgotten since it was queued
            closed.popleft()
            self.forgotten_with_bids -= 1
        if closed:
            oldest = closed[0]
            oldest.bids.popleft()
            if not oldest.bids:
                closed.popleft()
        else:
            order = self.open_order
            while order[0].closed_index:
                order.popleft()
            order.popleft().bids.popleft()
            self.open_retained -= 1
        self.retained -= 1

    def on_close(self, auction: _Auction) -> None:
        """Account for an auction just closed."""
        self.open_retained -= len(auction.bids)
        self.closed_count += 1
        if auction.bids:
            self.closed_with_bids.append(auction)
        if len(self.open_order) > 2 * self.open_retained + _STALE_SLACK:
            self.open_order = deque(a for a in self.open_order if not a.closed_index)

    def forget(self, auction: _Auction) -> None:
        """Account for a closed auction removed from the state: its records go with it."""
        self.closed_count -= 1
        if not auction.bids:
            return
        self.retained -= len(auction.bids)
        auction.bids.clear()  # its entry in closed_with_bids is now stale: skipped
        self.forgotten_with_bids += 1
        closed = self.closed_with_bids
        if 2 * self.forgotten_with_bids > len(closed) + _STALE_SLACK:
            self.closed_with_bids = deque(a for a in closed if a.bids)
            self.forgotten_with_bids = 0

    def rebuild(self, auctions: list[_Auction]) -> None:
        """Derive every structure from restored auctions, then apply the bid cap (a snapshot
        taken with a larger cap shrinks)."""
        opened = [a for a in auctions if not a.closed_index]
        closed = sorted((a for a in auctions if a.closed_index), key=lambda a: a.closed_index)
        self.closed_count = len(closed)
        self.closed_with_bids = deque(a for a in closed if a.bids)
        self.forgotten_with_bids = 0
        streams = [[(record[0], n) for record in a.bids] for n, a in enumerate(opened)]
        self.open_order = deque(opened[n] for _, n in heapq.merge(*streams))
        self.open_retained = len(self.open_order)
        self.retained = sum(len(a.bids) for a in auctions)
        while self.retained > self.max_bids:
            self._evict_one()


# --- sessions --------------------------------------------------------------------------

# client_id -> (last seq, log index of the client's last activity, reply to that seq, the
# tag of that request's command: "" when unknown, restored from a version 2 snapshot).
# A plain tuple because one is written for every client request.
Session = tuple[int, int, Reply, str]  # ..., and the tag of the command that reply answers


def _answers(cmd: Any, reply: Reply, tag: str) -> bool:
    """Whether the stored `reply` (to a command tagged `tag`) was made for a request like
    `cmd`: the same command on the same auction, and for a bid the same bidder and amount
    (see commands.identity_of; times are not compared)."""
    if (tag and tag != tag_of(cmd)) or reply.auction != getattr(cmd, "auction", None):
        return False
    if isinstance(cmd, Bid):
        return reply.bidder == cmd.bidder and reply.amount == cmd.amount
    return reply.bidder is None


# --- the state machine -----------------------------------------------------------------

# (index, term, client_id, ts_ms, command): the client id is "" for the leader's own entries.
Handler = Callable[[int, int, str, int, Any], Reply]
# An open auction's entry in the deadline queue: (closes_at_ms, auction, opened_index). The
# opened_index tells a reopened name (after ForgetAuction) from the entry of its predecessor.
Deadline = tuple[int, str, int]


def _check_limit(value: object, name: str) -> int:
    if type(value) is not int or value < 1:
        raise InvalidLimit(f"{name} must be a positive int, not {value!r}")
    return value


class AuctionState:
    """Auctions, bids and client sessions, changed only by `apply`.

    The `max_*` limits are configuration, not state, and must be the same on every replica:
    they decide which retries are still recognised (sessions), which bid records are kept
    (retained bids), and which opens are refused (`quota_exceeded`): beyond `max_auctions`
    auctions known (open or closed), or beyond `max_open_auctions_per_client` open auctions
    opened by one client id. Nothing is forgotten without a ForgetAuction.
    """

    def __init__(self, max_sessions: int = MAX_SESSIONS,
                 max_pending_events: int = MAX_PENDING_EVENTS,
                 max_retained_bids: int = MAX_RETAINED_BIDS,
                 max_auctions: int = MAX_AUCTIONS,
                 max_open_auctions_per_client: int = MAX_OPEN_AUCTIONS_PER_CLIENT) -> None:
        self._max_sessions = _check_limit(max_sessions, "max_sessions")
        self._retention = _Retention(_check_limit(max_retained_bids, "max_retained_bids"))
        self._max_auctions = _check_limit(max_auctions, "max_auctions")
        self._max_open_per_client = _check_limit(max_open_auctions_per_client,
                                                 "max_open_auctions_per_client")
        self._applied_index = 0
        self._auctions: dict[str, _Auction] = {}
        self._names: list[str] | None = None  # sorted ids, rebuilt after an open or forget
        # Derived from the open auctions (rebuilt on restore, never snapshotted):
        self._open_count = 0
        self._open_by_client: dict[str, int] = {}  # opener -> its open auctions, if any
        # A heap of the open auctions' deadlines, so that due_to_close costs nothing while
        # none is due. Closing does not search it: entries of auctions closed or forgotten
        # since are stale, dropped when they reach the top or when they outnumber the rest.
        self._deadlines: list[Deadline] = []
        # Ordered by last activity (log index), oldest first: O(1) touch and eviction.
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        # Events wait here until the node drains them; if nobody drains, the oldest are
        # dropped, and feed subscribers recover the gap by index like any other loss.
        self._events: deque[Event] = deque(maxlen=max_pending_events)
        self._handlers: dict[type, Handler] = {
            Bid: self._bid,
            OpenAuction: self._open_auction,
            CloseAuction: self._close,
            EnsureDefault: self._ensure_default,
            ForgetAuction: self._forget,
        }

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def retained_bid_count(self) -> int:
        """Bid records held across all auctions (at most max_retained_bids)."""
        return self._retention.retained

    @property
    def auction_count(self) -> int:
        """Auctions known, open or closed (at most max_auctions, unless a snapshot restored
        more: then opens are refused until enough are forgotten)."""
        return len(self._auctions)

    @property
    def open_auction_count(self) -> int:
        return self._open_count

    @property
    def closed_auction_count(self) -> int:
        """Closed auctions still known (not forgotten)."""
        return self._retention.closed_count

    def open_auctions_of(self, client: str) -> int:
        """Open auctions that `client` opened: what max_open_auctions_per_client bounds."""
        return self._open_by_client.get(client, 0)

    @property
    def max_auctions(self) -> int:
        return self._max_auctions

    @property
    def max_open_auctions_per_client(self) -> int:
        return self._max_open_per_client

    # --- applying the log ---

    def apply(self, index: int, term: int, payload: bytes) -> Reply:
        """Apply the committed entry at `index` and return its reply.

        Never raises on bad payloads (they get an "invalid" reply and change nothing but
        applied_index). A client request whose seq equals the client's last one is a retry
        and gets the stored reply again; an older seq gets "stale_request".
        Raises ApplyOrderError if `index` does not increase: that is the caller's bug.
        """
        self._advance(index)
        try:
            client, seq, ts_ms, cmd = decode_request_fields(payload)
        except InvalidCommand as exc:
            return Reply(ok=False, reason=exc.reason, detail=str(exc))
        return self._apply_fields(index, term, client, seq, ts_ms, cmd)

    def apply_request(self, index: int, term: int, request: Request) -> Reply:
        """apply() for an entry whose payload is `encode_request(request)`, already decoded
        and validated (the leader built it): skips decoding its own bytes again."""
        self._advance(index)
        return self._apply_fields(index, term, request.client_id, request.seq, request.ts_ms,
                                  request.cmd)

    def _advance(self, index: int) -> None:
        if type(index) is not int or index <= self._applied_index:
            raise ApplyOrderError(f"index {index!r} is not after {self._applied_index}")
        self._applied_index = index

    def _apply_fields(self, index: int, term: int, client: str, seq: int, ts_ms: int,
                      cmd: Any) -> Reply:
        if not client:  # internal command from the leader: nothing to de-duplicate
            return self._handlers[type(cmd)](index, term, client, ts_ms, cmd)
        session = self._sessions.get(client)
        if session is not None:
            last_seq, _, last_reply, last_tag = session
            if seq == last_seq:
                if not _answers(cmd, last_reply, last_tag):
                    # Not a retry but a different request under a used seq: answering with
                    # the stored reply would tell the client its new request was judged.
                    return Reply(ok=False, reason=Reason.SEQ_REUSED,
                                 auction=getattr(cmd, "auction", None),
                                 detail=f"seq {seq} was used for a different request")
                self._remember(client, seq, index, last_reply, last_tag)  # a retry
                return last_reply
            if seq < last_seq:
                return Reply(ok=False, reason=Reason.STALE_REQUEST,
                             detail=f"seq {seq} is older than {last_seq}")
        reply = self._handlers[type(cmd)](index, term, client, ts_ms, cmd)
        self._remember(client, seq, index, reply, tag_of(cmd))
        return reply

    def _remember(self, client: str, seq: int, index: int, reply: Reply, tag: str) -> None:
        """Record the client's latest request; evict the least recently active beyond the cap."""
        sessions = self._sessions
        sessions[client] = (seq, index, reply, tag)
        sessions.move_to_end(client)
        if len(sessions) > self._max_sessions:
            sessions.popitem(last=False)

    def _bid(self, index: int, term: int, client: str, ts_ms: int, cmd: Bid) -> Reply:
        name, bidder, amount = cmd.auction, cmd.bidder, cmd.amount
        auction = self._auctions.get(name)
        if auction is None:
            return Reply(ok=False, reason=Reason.UNKNOWN_AUCTION, auction=name,
                         bidder=bidder, amount=amount)
        refusal = auction.refusal(ts_ms, amount)
        if refusal is None:
            # Interned: a bidder's name is then stored once, not once per bid.
            self._retention.accept(auction, (index, sys.intern(bidder), amount, ts_ms))
            # The bid's seq is its rank among the auction's accepted bids.
            self._events.append(BidAccepted(index, term, name, bidder, amount,
                                            auction.bids_total))
        # Positional arguments (ok, reason, auction, bidder, amount, high, min_next) because
        # this line runs for every bid and keyword passing costs a measurable 0.5 us.
        return Reply(refusal is None, refusal, name, bidder, amount, auction.high_amount,
                     auction.min_next_at(ts_ms))

    def _open_auction(self, index: int, term: int, client: str, ts_ms: int,
                      cmd: OpenAuction) -> Reply:
        name = cmd.auction
        if name in self._auctions:
            return Reply(ok=False, reason=Reason.DUPLICATE_AUCTION, auction=name)
        over = self._quota_refusal(client)
        if over is not None:
            return Reply(ok=False, reason=Reason.QUOTA_EXCEEDED, auction=name, detail=over)
        opener = sys.intern(client)  # stored once per client, not once per auction
        self._names = None
        self._auctions[name] = _Auction(name, cmd.item, cmd.reserve, cmd.increment,
                                        cmd.opens_at_ms, cmd.closes_at_ms, index, opener)
        self._open_count += 1
        if opener:
            self._open_by_client[opener] = self._open_by_client.get(opener, 0) + 1
        heapq.heappush(self._deadlines, (cmd.closes_at_ms, name, index))
        self._events.append(AuctionOpened(index, term, name, cmd.item, cmd.reserve,
                                          cmd.increment, cmd.opens_at_ms, cmd.closes_at_ms,
                                          OPENED_SEQ))
        return Reply(ok=True, auction=name, min_next=cmd.reserve)

    def _quota_refusal(self, client: str) -> str | None:
        """Why one more auction opened by `client` would be over a cap (O(1)), or None."""
        if len(self._auctions) >= self._max_auctions:
            return (f"{len(self._auctions)} auctions are known, the most allowed "
                    f"({self._max_auctions}): forget closed ones to make room")
        opened = self._open_by_client.get(client, 0) if client else 0
        if opened >= self._max_open_per_client:
            return (f"client {client!r} has {opened} open auctions, the most allowed "
                    f"({self._max_open_per_client})")
        return None

    def _close(self, index: int, term: int, client: str, ts_ms: int,
               cmd: CloseAuction) -> Reply:
        auction = self._auctions.get(cmd.auction)
        if auction is None:
            return Reply(ok=False, reason=Reason.UNKNOWN_AUCTION, auction=cmd.auction)
        high = auction.high
        winner, amount = (high[1], high[2]) if high else (None, None)
        if auction.closed:
            return Reply(ok=True, auction=cmd.auction, winner=winner, amount=amount,
                         high=amount, detail="already closed")
        auction.closed_index = index
        self._open_count -= 1
        opener = auction.opener
        if opener:
            left = self._open_by_client[opener] - 1
            if left:
                self._open_by_client[opener] = left
            else:
                del self._open_by_client[opener]
        if len(self._deadlines) > 2 * self._open_count + _STALE_SLACK:
            self._rebuild_deadlines()
        self._retention.on_close(auction)
        self._events.append(AuctionClosed(index, term, cmd.auction, winner, amount,
                                          closed_seq(auction.bids_total)))
        return Reply(ok=True, auction=cmd.auction, winner=winner, amount=amount, high=amount)

    def _forget(self, index: int, term: int, client: str, ts_ms: int,
                cmd: ForgetAuction) -> Reply:
        name = cmd.auction
        auction = self._auctions.get(name)
        if auction is None:
            return Reply(ok=False, reason=Reason.UNKNOWN_AUCTION, auction=name)
        if not auction.closed_index:
            return Reply(ok=False, reason=Reason.AUCTION_OPEN, auction=name,
                         detail="only a closed auction can be forgotten")
        del self._auctions[name]
        self._names = None
        self._retention.forget(auction)
        # Its deadline entry went stale at its close already. The final result goes back
        # to the client, the last word on it the cluster will give.
        high = auction.high
        winner, amount = (high[1], high[2]) if high else (None, None)
        return Reply(ok=True, auction=name, winner=winner, amount=amount)

    def _ensure_default(self, index: int, term: int, client: str, ts_ms: int,
                        cmd: EnsureDefault) -> Reply:
        if cmd.auction in self._auctions:
            return Reply(ok=True, auction=cmd.auction, detail="already exists")
        try:  # the deadline is computed here, so it is validated here
            spec = OpenAuction(cmd.auction, cmd.item, cmd.reserve, cmd.increment,
                               ts_ms, ts_ms + cmd.duration_ms)
        except InvalidCommand as exc:
            return Reply(ok=False, reason=exc.reason, auction=cmd.auction, detail=str(exc))
        return self._open_auction(index, term, client, ts_ms, spec)

    # --- events ---

    def drain_events(self) -> list[Event]:
        """The committed events produced since the last drain, in log order."""
        events = list(self._events)
        self._events.clear()
        return events

    # --- queries ---

    def result(self, auction: str) -> dict[str, Any]:
        return self._get(auction).summary()

    def bid_count(self, auction: str) -> int:
        """Accepted bids ever, retained or not (cheap: no summary is built)."""
        return self._get(auction).bids_total

    def history(self, auction: str, after_seq: int = 0,
                limit: int | None = None) -> list[dict[str, Any]]:
        """The retained bids with feed seq > after_seq, oldest first, at most `limit`.
        Retained are the last `result()["retained_bids"]` of all `result()["bids"]`, from
        `history_start_seq`; each carries its feed `seq`, the cursor for the next page."""
        found = self._get(auction)
        # Clamped: a huge after_seq (untrusted) must not reach islice, which refuses ints
        # beyond sys.maxsize.
        start = found.first_retained_seq
        skip = min(len(found.bids), max(0, after_seq - start + 1))
        stop = None if limit is None else skip + min(limit, len(found.bids))
        return [{"index": i, "bidder": b, "amount": a, "ts_ms": t, "seq": start + skip + n}
                for n, (i, b, a, t) in enumerate(islice(found.bids, skip, stop))]

    def history_start_seq(self, auction: str) -> int:
        """Feed seq of history(auction)[0]; bid_count + 1 when no bid is retained."""
        return self._get(auction).first_retained_seq

    def events_after(self, auction: str, after_seq: int,
                     limit: int | None = None) -> list[dict[str, Any]]:
        """The auction's feed events with seq > after_seq, rebuilt from the state, for a
        subscriber filling a gap (the `events` request; survives snapshots).

        Each rebuilt event has the keys of the live one: `term` is None (it is not kept) and
        `index` is the log index of the entry that made it (None for the opening of an
        auction restored from a version 2 snapshot, which did not keep it). The opening,
        seq 0, is included when after_seq < 0 (-1: nothing of the auction delivered yet);
        after_seq 0 means the opening was delivered, as for every other seq.

        When bids after `after_seq` are no longer retained, a "snapshot" event comes first
        (after the opening, if included): {"type": "snapshot", "auction", "seq", "state_seq",
        "state"}. `seq` is the last bid not retained, so the events that follow continue at
        seq + 1. `state` is the auction's CURRENT result(): it already includes every event
        with seq <= `state_seq` (the auction's last seq), which are all the bids and the
        close returned after it. So a subscriber resets to `state` and then applies only
        events with seq > state_seq; the ones returned after the snapshot event are for the
        record (history), not to be applied again.
        """
        found = self._get(auction)
        after = max(after_seq, OPENED_SEQ - 1)  # below -1 asks for nothing more than -1
        events: list[dict[str, Any]] = []
        if after < OPENED_SEQ:
            events.append(_rebuilt_opening(found))
        start = found.first_retained_seq
        first_bid = max(after, OPENED_SEQ) + 1  # bid seqs start at 1
        if start > first_bid:
            summary = found.summary()
            events.append({"type": "snapshot", "auction": auction, "seq": start - 1,
                           "state_seq": last_feed_seq(summary), "state": summary})
        seq = max(start, first_bid)
        # Clamped like history(): after_seq is untrusted and may be beyond sys.maxsize.
        skip = min(seq - start, len(found.bids))
        room = None if limit is None else max(0, min(limit - len(events), len(found.bids)))
        for index, bidder, amount, _ in islice(found.bids, skip,
                                               None if room is None else skip + room):
            # The live event's keys, in its order (BidAccepted.to_dict).
            events.append({"index": index, "term": None, "type": "bid_accepted",
                           "auction": auction, "bidder": bidder, "amount": amount, "seq": seq})
            seq += 1
        if limit is not None and len(events) >= limit:
            return events[:limit]
        if found.closed_index and closed_seq(found.bids_total) > after:
            high = found.high
            events.append({"index": found.closed_index, "term": None,
                           "type": "auction_closed", "auction": auction,
                           "winner": high[1] if high else None,
                           "amount": high[2] if high else None,
                           "seq": closed_seq(found.bids_total)})
        return events

    def auctions(self, after: str = "", limit: int | None = None) -> list[dict[str, Any]]:
        """The auctions known (open, or closed and not forgotten) with an id after `after`,
        by id, at most `limit`."""
        names = self._sorted_names()
        start = bisect_right(names, after)
        stop = len(names) if limit is None else min(len(names), start + limit)
        return [self._auctions[name].summary() for name in names[start:stop]]

    def _sorted_names(self) -> list[str]:
        # Sorted once per change of the set of auctions, not once per page.
        if self._names is None:
            self._names = sorted(self._auctions)
        return self._names

    def due_to_close(self, now_ms: int, limit: int = MAX_DUE_PER_CALL) -> list[str]:
        """Open auctions whose deadline is at or before `now_ms`, for the leader to close: at
        most `limit`, earliest deadline first (then by name).

        A peek: the deadline queue keeps every open auction until it is closed, so one whose
        close proposal fails is due again at the next call. One being closed is returned
        again too: the caller skips those it has in flight. Costs O(1) while none is due
        (the leader asks every 50 ms), O(k log k) for the k due entries looked at.
        """
        heap = self._deadlines
        while heap and not self._pending_deadline(heap[0]):
            heapq.heappop(heap)
        if not heap or heap[0][0] > now_ms:
            return []
        # The due entries form a subtree at the root (no entry is due before its parent):
        # walk it in key order with a small frontier heap of (entry, position), so the
        # queue itself is not changed.
        due: list[str] = []
        frontier = [(heap[0], 0)]
        size = len(heap)
        while frontier and len(due) < limit:
            entry, at = heapq.heappop(frontier)
            if self._pending_deadline(entry):
                due.append(entry[1])
            for child in (2 * at + 1, 2 * at + 2):
                if child < size and heap[child][0] <= now_ms:
                    heapq.heappush(frontier, (heap[child], child))
        return due

    def _pending_deadline(self, entry: Deadline) -> bool:
        """Whether a queue entry is still that of an open auction (not a stale one)."""
        found = self._auctions.get(entry[1])
        return found is not None and not found.closed_index and found.opened_index == entry[2]

    def _rebuild_deadlines(self) -> None:
        self._deadlines = [e for e in self._deadlines if self._pending_deadline(e)]
        heapq.heapify(self._deadlines)

    def _get(self, auction: str) -> _Auction:
        found = self._auctions.get(auction)
        if found is None:
            raise UnknownAuction(f"unknown auction {auction!r}")
        return found

    # --- snapshots ---

    def snapshot(self) -> bytes:
        """The whole state as msgpack; byte-identical on replicas with the same log.

        [version, applied_index, [auction row, ...] by name, [[client, seq, last_index,
        reply, command tag], ...] oldest activity first], packed piece by piece into one buffer (the
        auction row: _Auction.pack_into)."""
        packer = msgpack.Packer(autoreset=False)
        packer.pack_array_header(4)
        packer.pack(SNAPSHOT_VERSION)
        packer.pack(self._applied_index)
        packer.pack_array_header(len(self._auctions))
        for name in sorted(self._auctions):
            self._auctions[name].pack_into(packer)
        packer.pack_array_header(len(self._sessions))
        for client, (seq, last_index, reply, tag) in self._sessions.items():
            packer.pack((client, seq, last_index, reply_to_dict(reply), tag))
        return packer.bytes()

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's; on InvalidSnapshot nothing changes.

        Every auction is kept, even beyond max_auctions or a client's quota (a snapshot
        taken with larger caps): opens are then refused until enough are forgotten."""
        applied, auctions, sessions = _parse_snapshot(data)
        self._retention.rebuild(list(auctions.values()))
        self._applied_index = applied
        self._auctions = auctions
        self._names = None
        opened = [a for a in auctions.values() if not a.closed_index]
        self._open_count = len(opened)
        self._open_by_client = {}
        for auction in opened:
            if auction.opener:
                count = self._open_by_client.get(auction.opener, 0)
                self._open_by_client[auction.opener] = count + 1
        self._deadlines = [(a.closes_at_ms, a.auction, a.opened_index) for a in opened]
        heapq.heapify(self._deadlines)
        self._sessions = sessions
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)
        self._events.clear()

    @classmethod
    def from_snapshot(cls, data: bytes, max_sessions: int = MAX_SESSIONS,
                      max_retained_bids: int = MAX_RETAINED_BIDS,
                      max_auctions: int = MAX_AUCTIONS,
                      max_open_auctions_per_client: int = MAX_OPEN_AUCTIONS_PER_CLIENT
                      ) -> AuctionState:
        state = cls(max_sessions=max_sessions, max_retained_bids=max_retained_bids,
                    max_auctions=max_auctions,
                    max_open_auctions_per_client=max_open_auctions_per_client)
        state.restore(data)
        return state


def _rebuilt_opening(auction: _Auction) -> dict[str, Any]:
    """The auction_opened event of `auction`, with the live event's keys in its order."""
    return {"index": auction.opened_index or None, "term": None, "type": "auction_opened",
            "auction": auction.auction, "item": auction.item, "reserve": auction.reserve,
            "increment": auction.increment, "opens_at_ms": auction.opens_at_ms,
            "closes_at_ms": auction.closes_at_ms, "seq": OPENED_SEQ}


# --- snapshot parsing --------------------------------------------------------------------

_Parsed = tuple[int, dict[str, _Auction], "OrderedDict[str, Session]"]
_READ_SIZE = 1 << 20


class _SnapshotReader:
    """Reads a snapshot one msgpack value at a time from a stream.

    Not msgpack.unpackb of the whole: that builds every bid row as a list before the records
    are made, and frees them after. CPython then keeps the arenas those rows left half used,
    so a node restored from 2M retained bids held about twice the memory of a live node with
    the same state (719 MB against 371 MB, scripts/mem_domain.py) for the rest of its life.
    Row by row, each temporary row is freed before the next is read, and its memory reused.
    """

    __slots__ = ("_unpacker", "_size")

    def __init__(self, data: object) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidSnapshot(f"a snapshot is bytes, not {type(data).__name__}")
        self._size = memoryview(data).nbytes
        self._unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=True,
                                          read_size=_READ_SIZE)

    def array(self, what: str, length: int | None = None) -> int:
        """The next value's array length (the items follow); checked against `length`."""
        found = self._unpacker.read_array_header()
        if length is not None and found != length:
            raise InvalidSnapshot(f"{what} has {found} fields, not {length}")
        return found

    def value(self) -> Any:
        return self._unpacker.unpack()

    def end(self) -> None:
        if self._unpacker.tell() != self._size:
            raise InvalidSnapshot("the snapshot has trailing bytes")


def _parse_snapshot(data: object) -> _Parsed:
    try:
        reader = _SnapshotReader(data)
        length = reader.array("the snapshot")
        version = reader.value() if length else None
        if type(version) is not int or version not in _ROW_LEN_BY_VERSION:
            raise InvalidSnapshot(f"unsupported snapshot version {version!r}")
        if length != 4:
            raise InvalidSnapshot(f"the snapshot has {length} fields, not 4")
        applied = reader.value()
        check_int(applied, "applied_index", 0, MAX_SEQ)
        auctions = _parse_auctions(reader, applied, _ROW_LEN_BY_VERSION[version])
        parsed = applied, auctions, _parse_sessions(reader, version)
        reader.end()
        return parsed
    except InvalidSnapshot:
        raise
    except (InvalidCommand, InvalidReply) as exc:
        raise InvalidSnapshot(f"invalid snapshot: {exc}") from None
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise InvalidSnapshot(f"invalid snapshot ({type(exc).__name__})") from None


def _parse_auctions(reader: _SnapshotReader, applied: int,
                    row_len: int) -> dict[str, _Auction]:
    auctions: dict[str, _Auction] = {}
    closed_at: set[int] = set()
    for _ in range(reader.array("the auctions")):
        auction = _parse_auction(reader, applied, row_len)
        # Close indexes order the eviction of closed auctions, so they must be distinct.
        if auction.auction in auctions or auction.closed_index in closed_at:
            raise InvalidSnapshot(f"auction {auction.auction!r} repeats a name or close index")
        if auction.closed_index:
            closed_at.add(auction.closed_index)
        auctions[auction.auction] = auction
    return auctions


def _parse_auction(reader: _SnapshotReader, applied: int, row_len: int) -> _Auction:
    reader.array("an auction row", row_len)
    name, item, reserve, increment, opens, closes, closed_index, total, high = (
        reader.value() for _ in range(9))
    # Not OpenAuction(...): its reserved-name rule is newer than some auctions' names.
    check_auction_fields(name, item, reserve, increment, opens, closes)
    check_int(closed_index, "closed_index", 0, applied)
    check_int(total, "bids_total", 0, MAX_SEQ)
    retained = deque(_parse_bid(reader.value()) for _ in range(reader.array("the bids")))
    opened_index, opener = (0, "") if row_len < _AUCTION_ROW_LEN else (reader.value(),
                                                                      reader.value())
    check_int(opened_index, "opened_index", 0, applied)  # 0: unknown (from version 2)
    if opener != "":
        check_name(opener, "opener")
    parsed_high = None if high is None else _parse_bid(high)
    first_index = retained[0][0] if retained else closed_index or applied + 1
    consistent = (
        (parsed_high is None) == (total == 0)
        and len(retained) <= total
        and (not retained or retained[-1] == parsed_high)
        and all(a[0] < b[0] for a, b in pairwise(retained))
        and opened_index < first_index  # opened before its first retained bid or close
    )
    if not consistent:
        raise InvalidSnapshot(f"auction {name!r}: bids, bids_total and high disagree, or it "
                              "opened after them")
    auction = _Auction(name, item, reserve, increment, opens, closes, opened_index,
                       sys.intern(opener))
    auction.closed_index, auction.bids_total, auction.bids = closed_index, total, retained
    auction.high = retained[-1] if retained else parsed_high  # one tuple, not two
    return auction


def _parse_bid(row: list[Any]) -> BidRecord:
    index, bidder, amount, ts_ms = row
    check_int(index, "bid index", 1, MAX_SEQ)
    check_name(bidder, "bidder")
    check_amount(amount, "amount")
    check_int(ts_ms, "ts_ms", 0, MAX_TIMESTAMP_MS)
    return (index, sys.intern(bidder), amount, ts_ms)


def _parse_sessions(reader: _SnapshotReader, version: int) -> OrderedDict[str, Session]:
    sessions: OrderedDict[str, Session] = OrderedDict()
    previous = 0
    for _ in range(reader.array("the sessions")):
        row = reader.value()
        if type(row) is not list or len(row) != (4 if version == 2 else 5):
            raise InvalidSnapshot("a session is [client, seq, last_index, reply, tag]")
        client, seq, last_index, reply = row[:4]
        tag = row[4] if version > 2 else ""
        if tag not in _SESSION_TAGS:
            raise InvalidSnapshot(f"unknown command tag {tag!r} in a session")
        check_name(client, "client_id")
        check_int(seq, "seq", 0, MAX_SEQ)
        check_int(last_index, "last_index", 1, MAX_SEQ)
        # Eviction order must survive the round trip, so it is checked, not re-derived.
        if last_index <= previous or client in sessions:
            raise InvalidSnapshot("sessions must be ordered by last_index, without repeats")
        previous = last_index
        sessions[client] = (seq, last_index, reply_from_dict(reply), tag)
    return sessions


# A session's tag: its command's, or "" (unknown, from a version 2 snapshot).
_SESSION_TAGS = COMMAND_TAGS | {""}
