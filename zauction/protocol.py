"""The client protocol: request and reply maps exchanged over ROUTER/DEALER.

A client DEALER sends `[b"C", msgpack(request)]` to any node's ROUTER and receives
`[b"C", msgpack(reply)]`. docs/protocol.md is the specification; this module is its
single implementation in Python (node and client both use it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from brokerless.wire import WireError, pack, unpack, unpack_stream

CLIENT_KIND = b"C"  # client request / reply
FORWARD_KIND = b"F"  # a node forwards a client request to the leader
FORWARD_REPLY_KIND = b"FR"  # the leader's answer to a forwarded request
FEED_PREFIX = b"feed/"  # PUB topic prefix of the live feed: feed/<auction>\0
# A topic ends with a NUL byte, which no auction name may hold (names are printable), so a
# subscription to one auction's topic never also matches another's under ZeroMQ's prefix
# matching (feed/a\0 is not a prefix of feed/ab\0).
TOPIC_END = b"\x00"
CLUSTER_TOPIC = b"feed/~cluster" + TOPIC_END  # leader changes ("~" starts no auction name)


def feed_topic(auction: str) -> bytes:
    """The PUB topic of one auction's events."""
    return FEED_PREFIX + auction.encode() + TOPIC_END

MAX_REQUEST_BYTES = 64 * 1024  # one request frame, whether it holds one request or several
MAX_REQUESTS_PER_FRAME = 1024
# One reply frame. A follower relays the leader's answer inside a peer message, whose frame
# limit is 16 MiB; paged reads keep every answer far below this.
MAX_REPLY_BYTES = 8 << 20
MAX_RID = 2**63 - 1
_FLAGS = ("stale", "stream")  # optional booleans of every request

WRITE_OPS = frozenset({"bid", "open", "close", "forget"})
READ_OPS = frozenset({"result", "history", "auctions", "events"})
LOCAL_OPS = frozenset({"status"})
OPS = WRITE_OPS | READ_OPS | LOCAL_OPS


class ErrorCode:
    """Why a request failed. `rejected` is a domain verdict; the rest are about delivery."""

    REJECTED = "rejected"  # the bid or command was judged and refused: see `reason`
    BAD_REQUEST = "bad_request"  # malformed request or invalid field: see `reason`/`message`
    UNKNOWN_OP = "unknown_op"
    UNKNOWN_AUCTION = "unknown_auction"
    NOT_LEADER = "not_leader"  # retry at `leader` (if given) with the same client id and seq
    UNAVAILABLE = "unavailable"  # no leader known right now: retry later or elsewhere
    OUTCOME_UNKNOWN = "outcome_unknown"  # leadership changed mid-write: retry with the same seq
    TIMEOUT = "timeout"  # the node gave up waiting (forwarding, commit): retry, same seq
    BUSY = "busy"  # the leader has too many writes in flight: retry after `retry_after_ms`
    INTERNAL = "internal"  # the node failed handling this request (a bug): counted, logged


class ProtocolError(Exception):
    """A request or reply that does not follow the protocol. `rid`: the request's id when
    it could be read (0 otherwise), for the error reply."""

    def __init__(self, message: str, rid: int = 0):
        super().__init__(message)
        self.rid = rid


@dataclass(frozen=True, slots=True)
class ClientRequest:
    op: str
    rid: int
    body: dict[str, Any]


def decode_request(payload: bytes) -> ClientRequest:
    """Parse untrusted request bytes; raises ProtocolError with a readable message."""
    try:
        body = unpack(payload, MAX_REQUEST_BYTES)
    except WireError as exc:
        raise ProtocolError(f"undecodable request: {exc}") from None
    return request_from(body)


def decode_requests(payload: bytes) -> list[ClientRequest | ProtocolError]:
    """Parse a request frame holding one request or several back to back (a msgpack
    stream). Raises ProtocolError when the frame itself is unreadable; a readable frame gives
    one item per request: the request, or the ProtocolError that answers it."""
    try:
        bodies = unpack_stream(payload, MAX_REQUEST_BYTES, MAX_REQUESTS_PER_FRAME)
    except WireError as exc:
        raise ProtocolError(f"undecodable request: {exc}") from None
    items: list[ClientRequest | ProtocolError] = []
    for body in bodies:
        try:
            items.append(request_from(body))
        except ProtocolError as exc:
            items.append(exc)
    return items


def request_frames(payloads: list[bytes]) -> Iterator[bytes]:
    """Join encoded requests into frames within the protocol's limits (count and bytes)."""
    start, size = 0, 0
    for end, payload in enumerate(payloads):
        if end > start and (end - start >= MAX_REQUESTS_PER_FRAME
                            or size + len(payload) > MAX_REQUEST_BYTES):
            yield b"".join(payloads[start:end])
            start, size = end, 0
        size += len(payload)
    if start < len(payloads):
        yield b"".join(payloads[start:])


def request_from(body: Any) -> ClientRequest:
    """Check one decoded request map's envelope (op and rid); raises ProtocolError."""
    if type(body) is not dict:
        raise ProtocolError("a request must be a msgpack map")
    op, rid = body.get("op"), body.get("rid")
    if type(rid) is not int or not 0 <= rid <= MAX_RID:
        # Required: a reply with a guessed rid could be matched to the wrong request.
        raise ProtocolError("'rid' is required: an integer in 0..2**63-1")
    if type(op) is not str:
        raise ProtocolError("'op' must be a string", rid)
    for flag in _FLAGS:
        value = body.get(flag)
        if value is not None and type(value) is not bool:
            raise ProtocolError(f"{flag!r} must be true or false when given", rid)
    return ClientRequest(op, rid, body)


def rid_of(payload: bytes) -> int:
    """Best-effort request id of a payload, for answering even a malformed request."""
    try:
        body = unpack(payload, MAX_REQUEST_BYTES)
        rid = body.get("rid", 0) if type(body) is dict else 0
        return rid if type(rid) is int and 0 <= rid <= MAX_RID else 0
    except WireError:
        return 0


def ok_reply(rid: int, result: Any) -> bytes:
    return pack({"rid": rid, "ok": True, "result": result})


def page_reply(rid: int, result: list[Any], next_cursor: Any) -> bytes:
    """One page of a paged read: `next` is the cursor of the following page, None at the end."""
    return pack({"rid": rid, "ok": True, "result": result, "next": next_cursor})


def error_reply(rid: int, code: str, message: str, *, reason: str | None = None,
                leader: str | None = None, result: Any = None,
                retry_after_ms: int | None = None) -> bytes:
    body: dict[str, Any] = {"rid": rid, "ok": False, "error": code, "message": message}
    if reason is not None:
        body["reason"] = reason
    if leader is not None:
        body["leader"] = leader
    if result is not None:
        body["result"] = result
    if retry_after_ms is not None:
        body["retry_after_ms"] = retry_after_ms
    return pack(body)


def decode_reply(payload: bytes) -> dict[str, Any]:
    try:
        body = unpack(payload, MAX_REPLY_BYTES)
    except WireError as exc:
        raise ProtocolError(f"undecodable reply: {exc}") from None
    return _check_reply(body)


def decode_replies(payload: bytes) -> list[dict[str, Any]]:
    """Every reply in a reply frame: one, or several back to back when the requests asked
    for `stream` (see docs/protocol.md). Raises ProtocolError."""
    try:
        bodies = unpack_stream(payload, MAX_REPLY_BYTES, MAX_REPLY_BYTES)
    except WireError as exc:
        raise ProtocolError(f"undecodable reply: {exc}") from None
    return [_check_reply(body) for body in bodies]


def _check_reply(body: Any) -> dict[str, Any]:
    if type(body) is not dict or type(body.get("ok")) is not bool:
        raise ProtocolError("a reply must be a map with a boolean 'ok'")
    return body
