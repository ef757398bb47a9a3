"""The auction state machine that brokerless replicates.

Pure and deterministic: no clock, no randomness, no I/O. Time arrives only as the
`ts_ms` the leader stamped on each request, so every replica that applies the same
log reaches byte-identical state, the same replies and the same events.
"""

from __future__ import annotations

import sys
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import msgpack

from zauction.commands import (
    MAX_SEQ,
    MAX_TIMESTAMP_MS,
    REASONS,
    Bid,
    CloseAuction,
    EnsureDefault,
    InvalidCommand,
    OpenAuction,
    Reason,
    ZauctionError,
    check_amount,
    check_int,
    check_name,
    decode_request_fields,
)

MAX_SESSIONS = 100_000
MAX_PENDING_EVENTS = 100_000
SNAPSHOT_VERSION = 1


class UnknownAuction(ZauctionError, LookupError):
    """A query named an auction that was never opened."""


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

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self, "auction_opened")


@dataclass(frozen=True, slots=True)
class BidAccepted:
    index: int
    term: int
    auction: str
    bidder: str
    amount: int

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self, "bid_accepted")


@dataclass(frozen=True, slots=True)
class AuctionClosed:
    index: int
    term: int
    auction: str
    winner: str | None
    amount: int | None

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self, "auction_closed")


Event = AuctionOpened | BidAccepted | AuctionClosed
_EVENT_TYPES: dict[str, type] = {
    "auction_opened": AuctionOpened,
    "bid_accepted": BidAccepted,
    "auction_closed": AuctionClosed,
}
_NULLABLE_EVENT_FIELDS = frozenset({"winner", "amount"})


def _event_dict(event: Event, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {"index": event.index, "term": event.term, "type": kind}
    for f in fields(event):
        out.setdefault(f.name, getattr(event, f.name))
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
    """One auction's mutable state. Accepted bids strictly increase, so the last is high."""

    __slots__ = ("auction", "item", "reserve", "increment", "opens_at_ms", "closes_at_ms",
                 "closed", "bids")

    def __init__(self, spec: OpenAuction, closed: bool = False,
                 bids: list[BidRecord] | None = None) -> None:
        self.auction = spec.auction
        self.item = spec.item
        self.reserve = spec.reserve
        self.increment = spec.increment
        self.opens_at_ms = spec.opens_at_ms
        self.closes_at_ms = spec.closes_at_ms
        self.closed = closed
        self.bids: list[BidRecord] = bids if bids is not None else []

    @property
    def high(self) -> BidRecord | None:
        return self.bids[-1] if self.bids else None

    @property
    def high_amount(self) -> int | None:
        return self.bids[-1][2] if self.bids else None

    def min_next_at(self, ts_ms: int) -> int | None:
        """The smallest bid accepted at `ts_ms`; None once bidding has ended."""
        if self.closed or ts_ms >= self.closes_at_ms:
            return None
        bids = self.bids
        return bids[-1][2] + self.increment if bids else self.reserve

    def refusal(self, ts_ms: int, amount: int) -> str | None:
        """Why a bid of `amount` at `ts_ms` is refused, or None if it is accepted."""
        if self.closed or ts_ms >= self.closes_at_ms:
            return Reason.AUCTION_CLOSED
        if ts_ms < self.opens_at_ms:
            return Reason.NOT_OPEN_YET
        if not self.bids:
            return Reason.BELOW_RESERVE if amount < self.reserve else None
        if amount < self.bids[-1][2] + self.increment:
            return Reason.BELOW_INCREMENT
        return None

    def summary(self) -> dict[str, Any]:
        high = self.high
        highest = {"bidder": high[1], "amount": high[2]} if high else None
        return {
            "auction": self.auction,
            "state": "closed" if self.closed else "open",
            "highest": highest,
            "winner": dict(highest) if (self.closed and highest) else None,
            "item": self.item,
            "reserve": self.reserve,
            "increment": self.increment,
            "opens_at_ms": self.opens_at_ms,
            "closes_at_ms": self.closes_at_ms,
            "bids": len(self.bids),
        }

    def to_wire(self) -> list[Any]:
        return [self.auction, self.item, self.reserve, self.increment, self.opens_at_ms,
                self.closes_at_ms, self.closed, [list(b) for b in self.bids]]


# --- sessions --------------------------------------------------------------------------

# client_id -> (last seq, log index of the client's last activity, reply to that seq).
# A plain tuple because one is written for every client request.
Session = tuple[int, int, Reply]


# --- the state machine -----------------------------------------------------------------

Handler = Callable[[int, int, int, Any], Reply]


class AuctionState:
    """Auctions, bids and client sessions, changed only by `apply`.

    `max_sessions` is configuration, not state, and must be the same on every replica
    (eviction decides which retries are still recognised).
    """

    def __init__(self, max_sessions: int = MAX_SESSIONS,
                 max_pending_events: int = MAX_PENDING_EVENTS) -> None:
        if type(max_sessions) is not int or max_sessions < 1:
            raise ValueError("max_sessions must be a positive int")
        self._max_sessions = max_sessions
        self._applied_index = 0
        self._auctions: dict[str, _Auction] = {}
        self._open: set[str] = set()
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
        }

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    # --- applying the log ---

    def apply(self, index: int, term: int, payload: bytes) -> Reply:
        """Apply the committed entry at `index` and return its reply.

        Never raises on bad payloads (they get an "invalid" reply and change nothing but
        applied_index). A client request whose seq equals the client's last one is a retry
        and gets the stored reply again; an older seq gets "stale_request".
        Raises ApplyOrderError if `index` does not increase: that is the caller's bug.
        """
        if type(index) is not int or index <= self._applied_index:
            raise ApplyOrderError(f"index {index!r} is not after {self._applied_index}")
        self._applied_index = index
        try:
            client, seq, ts_ms, cmd = decode_request_fields(payload)
        except InvalidCommand as exc:
            return Reply(ok=False, reason=exc.reason, detail=str(exc))
        if not client:  # internal command from the leader: nothing to de-duplicate
            return self._handlers[type(cmd)](index, term, ts_ms, cmd)
        session = self._sessions.get(client)
        if session is not None:
            last_seq, _, last_reply = session
            if seq == last_seq:  # a retry: same answer, no second effect
                self._remember(client, seq, index, last_reply)
                return last_reply
            if seq < last_seq:
                return Reply(ok=False, reason=Reason.STALE_REQUEST,
                             detail=f"seq {seq} is older than {last_seq}")
        reply = self._handlers[type(cmd)](index, term, ts_ms, cmd)
        self._remember(client, seq, index, reply)
        return reply

    def _remember(self, client: str, seq: int, index: int, reply: Reply) -> None:
        """Record the client's latest request; evict the least recently active beyond the cap."""
        sessions = self._sessions
        sessions[client] = (seq, index, reply)
        sessions.move_to_end(client)
        if len(sessions) > self._max_sessions:
            sessions.popitem(last=False)

    def _bid(self, index: int, term: int, ts_ms: int, cmd: Bid) -> Reply:
        name, bidder, amount = cmd.auction, cmd.bidder, cmd.amount
        auction = self._auctions.get(name)
        if auction is None:
            return Reply(ok=False, reason=Reason.UNKNOWN_AUCTION, auction=name,
                         bidder=bidder, amount=amount)
        refusal = auction.refusal(ts_ms, amount)
        if refusal is None:
            # Interned: a bidder's name is then stored once, not once per bid.
            auction.bids.append((index, sys.intern(bidder), amount, ts_ms))
            self._events.append(BidAccepted(index, term, name, bidder, amount))
        # Positional arguments (ok, reason, auction, bidder, amount, high, min_next) because
        # this line runs for every bid and keyword passing costs a measurable 0.5 us.
        return Reply(refusal is None, refusal, name, bidder, amount, auction.high_amount,
                     auction.min_next_at(ts_ms))

    def _open_auction(self, index: int, term: int, ts_ms: int, cmd: OpenAuction) -> Reply:
        if cmd.auction in self._auctions:
            return Reply(ok=False, reason=Reason.DUPLICATE_AUCTION, auction=cmd.auction)
        self._auctions[cmd.auction] = _Auction(cmd)
        self._open.add(cmd.auction)
        self._events.append(AuctionOpened(index, term, cmd.auction, cmd.item, cmd.reserve,
                                          cmd.increment, cmd.opens_at_ms, cmd.closes_at_ms))
        return Reply(ok=True, auction=cmd.auction, min_next=cmd.reserve)

    def _close(self, index: int, term: int, ts_ms: int, cmd: CloseAuction) -> Reply:
        auction = self._auctions.get(cmd.auction)
        if auction is None:
            return Reply(ok=False, reason=Reason.UNKNOWN_AUCTION, auction=cmd.auction)
        high = auction.high
        winner, amount = (high[1], high[2]) if high else (None, None)
        if auction.closed:
            return Reply(ok=True, auction=cmd.auction, winner=winner, amount=amount,
                         high=amount, detail="already closed")
        auction.closed = True
        self._open.discard(cmd.auction)
        self._events.append(AuctionClosed(index, term, cmd.auction, winner, amount))
        return Reply(ok=True, auction=cmd.auction, winner=winner, amount=amount, high=amount)

    def _ensure_default(self, index: int, term: int, ts_ms: int, cmd: EnsureDefault) -> Reply:
        if cmd.auction in self._auctions:
            return Reply(ok=True, auction=cmd.auction, detail="already exists")
        try:  # the deadline is computed here, so it is validated here
            spec = OpenAuction(cmd.auction, cmd.item, cmd.reserve, cmd.increment,
                               ts_ms, ts_ms + cmd.duration_ms)
        except InvalidCommand as exc:
            return Reply(ok=False, reason=exc.reason, auction=cmd.auction, detail=str(exc))
        return self._open_auction(index, term, ts_ms, spec)

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
        """Accepted bids so far (cheap: the feed numbers its events with it)."""
        return len(self._get(auction).bids)

    def history(self, auction: str) -> list[dict[str, Any]]:
        return [{"index": i, "bidder": b, "amount": a, "ts_ms": t}
                for i, b, a, t in self._get(auction).bids]

    def auctions(self) -> list[dict[str, Any]]:
        """Every auction ever opened, sorted by id."""
        return [self._auctions[name].summary() for name in sorted(self._auctions)]

    def due_to_close(self, now_ms: int) -> list[str]:
        """Open auctions whose deadline has passed, for the leader to close (sorted)."""
        return sorted(a for a in self._open if self._auctions[a].closes_at_ms <= now_ms)

    def _get(self, auction: str) -> _Auction:
        found = self._auctions.get(auction)
        if found is None:
            raise UnknownAuction(f"unknown auction {auction!r}")
        return found

    # --- snapshots ---

    def snapshot(self) -> bytes:
        """The whole state as msgpack; byte-identical on replicas with the same log."""
        auctions = [self._auctions[name].to_wire() for name in sorted(self._auctions)]
        sessions = [[client, seq, last_index, reply_to_dict(reply)]
                    for client, (seq, last_index, reply) in self._sessions.items()]
        return msgpack.packb([SNAPSHOT_VERSION, self._applied_index, auctions, sessions])

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's; on InvalidSnapshot nothing changes."""
        applied, auctions, sessions = _parse_snapshot(data)
        self._applied_index = applied
        self._auctions = auctions
        self._open = {name for name, a in auctions.items() if not a.closed}
        self._sessions = sessions
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)
        self._events.clear()

    @classmethod
    def from_snapshot(cls, data: bytes, max_sessions: int = MAX_SESSIONS) -> AuctionState:
        state = cls(max_sessions=max_sessions)
        state.restore(data)
        return state


# --- snapshot parsing --------------------------------------------------------------------

_Parsed = tuple[int, dict[str, _Auction], "OrderedDict[str, Session]"]


def _parse_snapshot(data: bytes) -> _Parsed:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        version, applied, auctions, sessions = obj
        if type(version) is not int or version != SNAPSHOT_VERSION:
            raise InvalidSnapshot(f"unsupported snapshot version {version!r}")
        check_int(applied, "applied_index", 0, MAX_SEQ)
        return applied, _parse_auctions(auctions), _parse_sessions(sessions)
    except InvalidSnapshot:
        raise
    except (InvalidCommand, InvalidReply) as exc:
        raise InvalidSnapshot(f"invalid snapshot: {exc}") from None
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise InvalidSnapshot(f"invalid snapshot ({type(exc).__name__})") from None


def _parse_auctions(rows: list[Any]) -> dict[str, _Auction]:
    auctions: dict[str, _Auction] = {}
    for name, item, reserve, increment, opens, closes, closed, bids in rows:
        spec = OpenAuction(name, item, reserve, increment, opens, closes)
        if type(closed) is not bool or name in auctions:
            raise InvalidSnapshot(f"bad auction record {name!r}")
        auctions[name] = _Auction(spec, closed, [_parse_bid(bid) for bid in bids])
    return auctions


def _parse_bid(row: list[Any]) -> BidRecord:
    index, bidder, amount, ts_ms = row
    check_int(index, "bid index", 1, MAX_SEQ)
    check_name(bidder, "bidder")
    check_amount(amount, "amount")
    check_int(ts_ms, "ts_ms", 0, MAX_TIMESTAMP_MS)
    return (index, sys.intern(bidder), amount, ts_ms)


def _parse_sessions(rows: list[Any]) -> OrderedDict[str, Session]:
    sessions: OrderedDict[str, Session] = OrderedDict()
    previous = 0
    for client, seq, last_index, reply in rows:
        check_name(client, "client_id")
        check_int(seq, "seq", 0, MAX_SEQ)
        check_int(last_index, "last_index", 1, MAX_SEQ)
        # Eviction order must survive the round trip, so it is checked, not re-derived.
        if last_index <= previous or client in sessions:
            raise InvalidSnapshot("sessions must be ordered by last_index, without repeats")
        previous = last_index
        sessions[client] = (seq, last_index, reply_from_dict(reply))
    return sessions
