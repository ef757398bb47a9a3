"""The read queries (`result`, `history`, `auctions`, `events`) against a node's replica.

Every answer is bounded: `history`, `auctions` and `events` return one page of at most `limit`
items (default and maximum below) and a cursor, `next`, to ask for the one after it (null on
the last page). Request fields are untrusted: each is checked for type and range here, before
it reaches the state, and a wrong one is a ProtocolError (answered `bad_request`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zauction.auction.commands import DEFAULT_AUCTION, MAX_ID_LEN, MAX_SEQ
from zauction.auction.domain import AuctionState
from zauction.protocol import ProtocolError

# Items per page. The largest possible page still fits a reply frame with room to spare: an
# auction summary is at most about 1.4 KB (a 256-character item in 4-byte UTF-8), a bid
# record or event about 0.4 KB.
PAGE_LIMITS = {"history": (1000, 10_000), "events": (1000, 10_000), "auctions": (100, 1000)}


@dataclass(frozen=True, slots=True)
class Answer:
    result: Any
    paged: bool = False  # the reply carries `next`
    next: Any = None  # the cursor of the next page, None on the last one


def answer(state: AuctionState, op: str, body: dict[str, Any]) -> Answer:
    """Run read `op` with the request's fields; raises ProtocolError or UnknownAuction."""
    if op == "auctions":
        after = _after_name(body)
        limit = _limit(op, body)
        page = state.auctions(after, limit + 1)
        return _page(page, limit, lambda item: item["auction"])
    auction = body.get("auction", DEFAULT_AUCTION)
    if type(auction) is not str:
        raise ProtocolError("'auction' must be a string")
    if op == "result":
        return Answer(state.result(auction))
    limit = _limit(op, body)
    if op == "history":
        after = _after_seq(body, lowest=0)
        return _page(state.history(auction, after, limit + 1), limit, lambda item: item["seq"])
    # events: after_seq -1 asks for the opening too (seq 0), so a new subscriber starts there.
    after = _after_seq(body, lowest=-1)
    return _page(state.events_after(auction, after, limit + 1), limit,
                 lambda item: item["seq"])


def _page(items: list[Any], limit: int, cursor) -> Answer:
    """`items` holds up to limit + 1: one more than the page says whether another follows."""
    if len(items) > limit:
        items = items[:limit]
        return Answer(items, True, cursor(items[-1]))
    return Answer(items, True, None)


def _limit(op: str, body: dict[str, Any]) -> int:
    default, most = PAGE_LIMITS[op]
    limit = body.get("limit", default)
    if type(limit) is not int or not 1 <= limit <= most:
        raise ProtocolError(f"'limit' must be an integer in 1..{most} (default {default})")
    return limit


def _after_seq(body: dict[str, Any], lowest: int) -> int:
    after = body.get("after_seq", 0)
    if type(after) is not int or not lowest <= after <= MAX_SEQ:
        raise ProtocolError(f"'after_seq' must be an integer in {lowest}..{MAX_SEQ}")
    return after


def _after_name(body: dict[str, Any]) -> str:
    after = body.get("after", "")
    if type(after) is not str or len(after) > MAX_ID_LEN:
        raise ProtocolError(f"'after' must be an auction id (a string of at most "
                            f"{MAX_ID_LEN} characters)")
    return after
