"""The errors a client of the cluster raises, apart from the modules that raise them, so the
request client and the feed watcher can both use them without importing each other."""

from __future__ import annotations

from zauction.client.replies import Failed, Rejected
from zauction.protocol import ErrorCode


class ClientError(Exception):
    """Base of the errors AuctionClient raises."""


class BidRejected(ClientError):
    """The cluster judged the request and refused it; `reason` is a code such as below_increment."""

    def __init__(self, reason: str, message: str, result: dict | None = None):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.result = result or {}


class BadRequest(ClientError):
    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or "invalid"


class UnknownAuctionError(ClientError):
    pass


class ClusterUnavailable(ClientError):
    """No node answered, or none knew a leader, before the deadline."""


class RequestTimeout(ClusterUnavailable):
    """Nodes answered but the request did not complete in time; its outcome is unknown."""


def error_for(verdict: Rejected | Failed) -> ClientError:
    """The exception that reports a final refusal to the caller."""
    if isinstance(verdict, Rejected):
        return BidRejected(str(verdict.reason), verdict.message, verdict.result)
    if verdict.code == ErrorCode.UNKNOWN_AUCTION:
        return UnknownAuctionError(verdict.message)
    return BadRequest(verdict.message, verdict.reason)
