"""The client protocol: request and reply maps exchanged over ROUTER/DEALER.

A client DEALER sends `[b"C", msgpack(request)]` to any node's ROUTER and receives
`[b"C", msgpack(reply)]`. docs/protocol.md is the specification; this module is its
single implementation in Python (node and client both use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from brokerless.wire import WireError, pack, unpack

CLIENT_KIND = b"C"  # client request / reply
FORWARD_KIND = b"F"  # a node forwards a client request to the leader
FORWARD_REPLY_KIND = b"FR"  # the leader's answer to a forwarded request
FEED_PREFIX = b"feed/"  # PUB topic prefix of the live feed: feed/<auction>
CLUSTER_TOPIC = b"feed/~cluster"  # leader changes

MAX_REQUEST_BYTES = 64 * 1024

WRITE_OPS = frozenset({"bid", "open", "close"})
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


class ProtocolError(Exception):
    """A request or reply that does not follow the protocol."""


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
    if type(body) is not dict:
        raise ProtocolError("a request must be a msgpack map")
    op, rid = body.get("op"), body.get("rid", 0)
    if type(rid) is not int or not 0 <= rid < 2**63:
        raise ProtocolError("'rid' must be an integer in [0, 2**63)")
    if type(op) is not str:
        raise ProtocolError("'op' must be a string")
    return ClientRequest(op, rid, body)


def rid_of(payload: bytes) -> int:
    """Best-effort request id of a payload, for answering even a malformed request."""
    try:
        body = unpack(payload, MAX_REQUEST_BYTES)
        rid = body.get("rid", 0) if type(body) is dict else 0
        return rid if type(rid) is int and 0 <= rid < 2**63 else 0
    except WireError:
        return 0


def ok_reply(rid: int, result: Any) -> bytes:
    return pack({"rid": rid, "ok": True, "result": result})


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
        body = unpack(payload, 64 << 20)
    except WireError as exc:
        raise ProtocolError(f"undecodable reply: {exc}") from None
    if type(body) is not dict or type(body.get("ok")) is not bool:
        raise ProtocolError("a reply must be a map with a boolean 'ok'")
    return body
