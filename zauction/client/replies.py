"""What a client does with one reply: the retry rule of docs/protocol.md, in one place.

`classify(reply)` is pure: it reads a decoded reply map (untrusted: every field is checked)
and says whether the request is done, was judged and refused, should be retried (at the
leader the reply names, if any), should wait and ask the same node again, or failed for
good. The request client, the load generator and the benchmark driver all act on its
verdict, so they cannot disagree on which errors are safe to retry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from zauction.protocol import ErrorCode

RETRY_PAUSE_S = 0.05  # the pause before asking again when a node gives no better hint
MAX_BUSY_PAUSE_MS = 5_000  # a larger retry_after_ms from a node is not believed
MAX_BACKOFF_DOUBLINGS = 5  # a busy back-off grows to at most 32x the node's hint

# The write may or may not be in flight elsewhere: retrying with the same (client, seq) is
# safe because the cluster answers a repeated seq from its session cache.
RETRY_CODES = frozenset({ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE,
                         ErrorCode.OUTCOME_UNKNOWN, ErrorCode.TIMEOUT})


@dataclass(frozen=True, slots=True)
class Done:
    """The request completed; `result` is the reply's result, `next` the cursor of the next
    page of a paged read (None on its last page, and for every other request)."""

    result: Any
    next: Any = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """The cluster judged the command and refused it (`reason`, e.g. below_increment): final."""

    reason: str | None
    message: str
    result: Any


@dataclass(frozen=True, slots=True)
class Retry:
    """This node could not serve it now: ask again, same seq, at `leader` if it named one."""

    code: str
    leader: str | None


@dataclass(frozen=True, slots=True)
class BackOff:
    """The leader is saturated: wait about `pause_s` (see backoff_s), then ask it again."""

    pause_s: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The request itself is wrong (bad_request, unknown_op, unknown_auction, ...): final."""

    code: str
    reason: str | None
    message: str
    result: Any


Verdict = Done | Rejected | Retry | BackOff | Failed


def classify(reply: dict[str, Any]) -> Verdict:
    """The verdict on one decoded reply map (see docs/protocol.md, "Replies")."""
    if reply.get("ok") is True:
        return Done(reply.get("result"), reply.get("next"))
    code = str(reply.get("error"))
    if code in RETRY_CODES:
        return Retry(code, _str_or_none(reply.get("leader")))
    if code == ErrorCode.BUSY:
        return BackOff(retry_after_s(reply))
    reason, message = _str_or_none(reply.get("reason")), str(reply.get("message", ""))
    if code == ErrorCode.REJECTED:
        return Rejected(reason, message, reply.get("result"))
    return Failed(code, reason, message, reply.get("result"))


def retry_after_s(reply: dict[str, Any]) -> float:
    """The pause a `busy` reply asks for, when believable; RETRY_PAUSE_S otherwise."""
    hint = reply.get("retry_after_ms")
    return hint / 1000 if type(hint) is int and 0 < hint <= MAX_BUSY_PAUSE_MS else RETRY_PAUSE_S


def backoff_s(pause_s: float, refusals: int = 1, rng: random.Random | None = None) -> float:
    """The wait after the `refusals`-th `busy` answer to one request: the node's hint,
    doubled per earlier refusal (up to 32x) so a backlog of waiting clients does not keep
    a saturated leader busy refusing them, with jitter so they do not come back in step."""
    doublings = min(max(refusals, 1) - 1, MAX_BACKOFF_DOUBLINGS)
    jitter = (rng or random).uniform(1.0, 2.0)
    return pause_s * 2**doublings * jitter


def busy_pause_s(reply: dict[str, Any], refusals: int = 1) -> float:
    """backoff_s for a `busy` reply map, for callers that hold the reply, not its verdict."""
    return backoff_s(retry_after_s(reply), refusals)


def _str_or_none(value: Any) -> str | None:
    return value if type(value) is str else None
