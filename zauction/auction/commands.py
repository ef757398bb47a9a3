"""Auction commands, their request envelope, and their msgpack wire form.

Every command is a frozen dataclass that validates itself on construction, so a
`Bid` that exists is a valid bid: the decoder only reshapes untrusted bytes and lets
the constructors judge them. Invalid input raises `InvalidCommand`, which names the
offending field and carries a reason code from `Reason`.

Wire form (msgpack arrays, no maps, so decoding stays cheap and bounded):
    command: [tag, field1, field2, ...]           fields in dataclass order
    request: [WIRE_VERSION, client_id, seq, ts_ms, command]
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import msgpack

WIRE_VERSION = 1
MAX_AMOUNT = 10**15
MAX_ID_LEN = 64
MAX_ITEM_LEN = 256
MAX_TIMESTAMP_MS = 2**53  # about 285,000 years: generous, and exact in every JSON number
MAX_DURATION_MS = 10**12  # about 31 years
MAX_SEQ = 2**63 - 1
MAX_PAYLOAD_BYTES = 4096
DEFAULT_AUCTION = "default"
# Auction names starting with this are reserved: the feed's topic of an auction is
# "feed/<auction>", and "feed/~cluster" carries the leader changes.
RESERVED_PREFIX = "~"


class Reason:
    """The fixed vocabulary of rejection codes a Reply may carry."""

    UNKNOWN_AUCTION = "unknown_auction"
    AUCTION_CLOSED = "auction_closed"
    NOT_OPEN_YET = "not_open_yet"
    BELOW_RESERVE = "below_reserve"
    BELOW_INCREMENT = "below_increment"
    INVALID_AMOUNT = "invalid_amount"
    INVALID = "invalid"
    STALE_REQUEST = "stale_request"
    DUPLICATE_AUCTION = "duplicate_auction"
    QUOTA_EXCEEDED = "quota_exceeded"  # an open beyond max_auctions or the client's quota
    AUCTION_OPEN = "auction_open"  # only a closed auction can be forgotten
    SEQ_REUSED = "seq_reused"  # this seq was used for a different request of this client


REASONS: frozenset[str] = frozenset(
    value for name, value in vars(Reason).items() if not name.startswith("_")
)


class ZauctionError(Exception):
    """Base class of every error the auction application raises on purpose."""


class InvalidCommand(ZauctionError, ValueError):
    """A command, request or payload failed validation; nothing was changed."""

    def __init__(self, field: str, problem: str, reason: str = Reason.INVALID) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.reason = reason


# --- field validators: each raises InvalidCommand naming the field --------------------


def check_amount(value: object, field: str, reason: str = Reason.INVALID_AMOUNT) -> None:
    # `type(...) is int` on purpose: bool is an int subclass and must be refused.
    if type(value) is not int or not 1 <= value <= MAX_AMOUNT:
        raise InvalidCommand(field, f"must be an int in [1, 10**15], got {_show(value)}", reason)


def check_int(value: object, field: str, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise InvalidCommand(field, f"must be an int in [{low}, {high}], got {_show(value)}")


def check_name(value: object, field: str, max_len: int = MAX_ID_LEN) -> None:
    """Ids and names: non-empty, bounded, printable (no control characters)."""
    if type(value) is str and 0 < len(value) <= max_len and value.isprintable():
        return  # the fast path: this runs several times for every bid
    if type(value) is not str:
        raise InvalidCommand(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidCommand(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidCommand(field, f"must be at most {max_len} characters, got {len(value)}")
    if not value.isprintable():
        raise InvalidCommand(field, "must contain printable characters only")


def _show(value: object) -> str:
    """A short, safe rendering of a rejected value for error messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_auction_fields(auction: Any, item: Any, reserve: Any, increment: Any,
                         opens_at_ms: Any, closes_at_ms: Any) -> None:
    """An auction's own fields (OpenAuction's, and a snapshot row's), without the reserved
    name rule: an auction opened before that rule existed must still restore."""
    check_name(auction, "auction")
    check_name(item, "item", MAX_ITEM_LEN)
    check_amount(reserve, "reserve", Reason.INVALID)
    check_amount(increment, "increment", Reason.INVALID)
    check_int(opens_at_ms, "opens_at_ms", 0, MAX_TIMESTAMP_MS)
    check_int(closes_at_ms, "closes_at_ms", 0, MAX_TIMESTAMP_MS)
    if closes_at_ms <= opens_at_ms:
        raise InvalidCommand("closes_at_ms", "must be later than opens_at_ms")


# --- commands ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAuction:
    auction: str
    item: str
    reserve: int
    increment: int
    opens_at_ms: int
    closes_at_ms: int

    def __post_init__(self) -> None:
        check_auction_fields(self.auction, self.item, self.reserve, self.increment,
                             self.opens_at_ms, self.closes_at_ms)
        if self.auction.startswith(RESERVED_PREFIX):
            raise InvalidCommand("auction", f"names starting with {RESERVED_PREFIX!r} are "
                                 "reserved")


@dataclass(frozen=True, slots=True)
class Bid:
    auction: str
    bidder: str
    amount: int

    def __post_init__(self) -> None:
        check_name(self.auction, "auction")
        check_name(self.bidder, "bidder")
        check_amount(self.amount, "amount")


@dataclass(frozen=True, slots=True)
class CloseAuction:
    """Proposed by the leader once its clock passes closes_at_ms; idempotent."""

    auction: str

    def __post_init__(self) -> None:
        check_name(self.auction, "auction")


@dataclass(frozen=True, slots=True)
class EnsureDefault:
    """Proposed by each new leader: opens `auction` for `duration_ms` from the request's
    timestamp, unless an auction with that id was ever opened (so it is idempotent)."""

    auction: str = DEFAULT_AUCTION
    duration_ms: int = 60_000
    item: str = "default item"
    reserve: int = 1
    increment: int = 1

    def __post_init__(self) -> None:
        check_name(self.auction, "auction")
        check_int(self.duration_ms, "duration_ms", 1, MAX_DURATION_MS)
        check_name(self.item, "item", MAX_ITEM_LEN)
        check_amount(self.reserve, "reserve", Reason.INVALID)
        check_amount(self.increment, "increment", Reason.INVALID)


@dataclass(frozen=True, slots=True)
class ForgetAuction:
    """Removes a closed auction and its retained bids, freeing room under max_auctions;
    refused for an open auction (auction_open) or an unknown one (unknown_auction)."""

    auction: str

    def __post_init__(self) -> None:
        check_name(self.auction, "auction")


Command = OpenAuction | Bid | CloseAuction | EnsureDefault | ForgetAuction

_TAGS: dict[type, str] = {
    OpenAuction: "open",
    Bid: "bid",
    CloseAuction: "close",
    EnsureDefault: "default",
    ForgetAuction: "forget",
}
_BY_TAG: dict[str, type] = {tag: cls for cls, tag in _TAGS.items()}


COMMAND_TAGS: frozenset[str] = frozenset(_TAGS.values())


def tag_of(cmd: Command) -> str:
    """The command's wire tag ("bid", "open", ...)."""
    return _TAGS[type(cmd)]
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in _TAGS
}
_WIRE_LEN: dict[type, int] = {cls: 1 + len(names) for cls, names in _FIELDS.items()}


@dataclass(frozen=True, slots=True)
class Request:
    """The envelope of every replicated command.

    `client_id` + `seq` make writes exactly-once: the state machine keeps each client's
    last reply and answers a retry with it. An empty client_id marks an internal
    command proposed by the leader (CloseAuction, EnsureDefault): no de-duplication.
    `ts_ms` is the leader's clock when it proposed: the only time the domain ever sees.
    """

    client_id: str
    seq: int
    ts_ms: int
    cmd: Command

    def __post_init__(self) -> None:
        check_envelope(self.client_id, self.seq, self.ts_ms)
        if type(self.cmd) not in _TAGS:
            raise InvalidCommand("cmd", f"must be a command, got {type(self.cmd).__name__}")


def check_envelope(client_id: object, seq: object, ts_ms: object) -> None:
    """The request fields besides the command; shared by Request and the fast decoder."""
    if client_id != "":
        check_name(client_id, "client_id")
    check_int(seq, "seq", 0, MAX_SEQ)
    check_int(ts_ms, "ts_ms", 0, MAX_TIMESTAMP_MS)


# --- codec ---------------------------------------------------------------------------


def command_to_wire(cmd: Command) -> list[Any]:
    cls = type(cmd)
    if cls not in _TAGS:
        raise InvalidCommand("cmd", f"must be a command, got {cls.__name__}")
    return [_TAGS[cls], *(getattr(cmd, name) for name in _FIELDS[cls])]


def command_from_wire(body: object) -> Command:
    if type(body) is not list or not body:
        raise InvalidCommand("command", "must be a non-empty array")
    tag = body[0]
    cls = _BY_TAG.get(tag) if type(tag) is str else None
    if cls is None:
        raise InvalidCommand("command", f"unknown command {_show(tag)}")
    if len(body) != _WIRE_LEN[cls]:
        raise InvalidCommand("command", f"{tag!r} takes {_WIRE_LEN[cls] - 1} fields")
    return cls(*body[1:])


def encode_command(cmd: Command) -> bytes:
    return msgpack.packb(command_to_wire(cmd))


def decode_command(payload: bytes) -> Command:
    return command_from_wire(_unpack(payload))


def encode_request(request: Request) -> bytes:
    wire = [WIRE_VERSION, request.client_id, request.seq, request.ts_ms]
    wire.append(command_to_wire(request.cmd))
    return msgpack.packb(wire)


def decode_request(payload: bytes) -> Request:
    return Request(*decode_request_fields(payload))


def decode_request_fields(payload: bytes) -> tuple[str, int, int, Command]:
    """decode_request without building the envelope object: the state machine's hot path.

    Validates exactly as Request does (same check_envelope), so the result is a valid
    (client_id, seq, ts_ms, cmd).
    """
    obj = _unpack(payload)
    if type(obj) is not list or len(obj) != 5:
        raise InvalidCommand("request", "must be an array of 5 items")
    version, client_id, seq, ts_ms, body = obj
    if type(version) is not int or version != WIRE_VERSION:
        raise InvalidCommand("version", f"unsupported wire version {_show(version)}")
    check_envelope(client_id, seq, ts_ms)
    return client_id, seq, ts_ms, command_from_wire(body)


def _unpack(payload: object) -> object:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise InvalidCommand("payload", f"must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidCommand("payload", f"larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_ITEM_LEN * 4,  # utf-8 needs at most 4 bytes a character
            max_bin_len=0,
            max_array_len=16,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise InvalidCommand("payload", f"not valid msgpack ({type(exc).__name__})") from None


def identity_of(cmd: Command) -> tuple:
    """What tells two requests under one (client, seq) apart: the command, its auction, and a
    bid's bidder and amount. Times are not part of it: an `open` retried with a duration gets
    new times from the node that serves the retry, yet is the same request."""
    return (type(cmd), getattr(cmd, "auction", None), getattr(cmd, "bidder", None),
            getattr(cmd, "amount", None))

