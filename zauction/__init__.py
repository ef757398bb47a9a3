"""zauction: a brokerless, replicated auction cluster.

The pure domain (commands and the replicated state machine) is re-exported here;
the node, client and CLI live in their own modules.
"""

from __future__ import annotations

from zauction.auction.commands import (
    Bid,
    CloseAuction,
    Command,
    EnsureDefault,
    ForgetAuction,
    InvalidCommand,
    OpenAuction,
    Reason,
    Request,
    ZauctionError,
    decode_command,
    decode_request,
    encode_command,
    encode_request,
)
from zauction.auction.domain import (
    ApplyOrderError,
    AuctionClosed,
    AuctionOpened,
    AuctionState,
    BidAccepted,
    Event,
    InvalidEvent,
    InvalidReply,
    InvalidSnapshot,
    Reply,
    UnknownAuction,
    event_from_dict,
    reply_from_dict,
    reply_to_dict,
)

__all__ = [
    "ApplyOrderError",
    "AuctionClosed",
    "AuctionOpened",
    "AuctionState",
    "Bid",
    "BidAccepted",
    "CloseAuction",
    "Command",
    "EnsureDefault",
    "Event",
    "ForgetAuction",
    "InvalidCommand",
    "InvalidEvent",
    "InvalidReply",
    "InvalidSnapshot",
    "OpenAuction",
    "Reason",
    "Reply",
    "Request",
    "UnknownAuction",
    "ZauctionError",
    "decode_command",
    "decode_request",
    "encode_command",
    "encode_request",
    "event_from_dict",
    "reply_from_dict",
    "reply_to_dict",
]
