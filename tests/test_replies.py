"""The one classification of a reply (zauction.client.replies): done, refused, retry, back
off, or failed, for every error code of the protocol, and the client errors it becomes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from zauction.client.errors import BadRequest, BidRejected, UnknownAuctionError, error_for
from zauction.client.replies import (
    MAX_BUSY_PAUSE_MS,
    RETRY_PAUSE_S,
    BackOff,
    Done,
    Failed,
    Rejected,
    Retry,
    backoff_s,
    busy_pause_s,
    classify,
    retry_after_s,
)
from zauction.protocol import ErrorCode


def failure(code: Any, **fields: Any) -> dict[str, Any]:
    return {"rid": 7, "ok": False, "error": code, "message": "why", **fields}


ALL_CODES = sorted(v for k, v in vars(ErrorCode).items() if k.isupper())

# What docs/protocol.md tells a client to do with each error code.
EXPECTED_KIND = {
    ErrorCode.REJECTED: Rejected,  # report it; do not retry
    ErrorCode.UNKNOWN_AUCTION: Failed,  # report it
    ErrorCode.BAD_REQUEST: Failed,  # fix the request
    ErrorCode.UNKNOWN_OP: Failed,  # fix the request
    ErrorCode.NOT_LEADER: Retry,  # retry at `leader` or another node, same seq
    ErrorCode.UNAVAILABLE: Retry,  # retry shortly, same seq
    ErrorCode.OUTCOME_UNKNOWN: Retry,  # retry with the same seq
    ErrorCode.TIMEOUT: Retry,  # retry, same seq
    ErrorCode.BUSY: BackOff,  # wait retry_after_ms, retry at the same node
    ErrorCode.INTERNAL: Failed,  # a bug at the node: report it (a write may or may not be in)
}


def test_every_error_code_has_an_expected_verdict() -> None:
    assert set(EXPECTED_KIND) == set(ALL_CODES)


@pytest.mark.parametrize("code", ALL_CODES)
def test_each_error_code_gets_its_documented_verdict(code: str) -> None:
    assert type(classify(failure(code))) is EXPECTED_KIND[code]


def test_a_success_is_done_with_its_result() -> None:
    assert classify({"rid": 1, "ok": True, "result": {"high": 5}}) == Done({"high": 5})
    assert classify({"rid": 1, "ok": True}) == Done(None)


def test_a_rejection_keeps_reason_message_and_result() -> None:
    verdict = classify(failure("rejected", reason="below_increment", result={"high": 9}))
    assert verdict == Rejected("below_increment", "why", {"high": 9})


@pytest.mark.parametrize("code", ["not_leader", "unavailable", "outcome_unknown", "timeout"])
def test_retries_name_the_leader_when_the_reply_does(code: str) -> None:
    assert classify(failure(code, leader="n2:8002")) == Retry(code, "n2:8002")
    assert classify(failure(code)) == Retry(code, None)


@pytest.mark.parametrize("leader", [5, None, ["n2"], {"a": 1}, b"n2"])
def test_a_leader_hint_that_is_not_a_string_is_ignored(leader: Any) -> None:
    assert classify(failure("not_leader", leader=leader)) == Retry("not_leader", None)


def test_busy_takes_the_nodes_hint_when_believable() -> None:
    assert classify(failure("busy", retry_after_ms=20)) == BackOff(0.02)
    assert classify(failure("busy", retry_after_ms=MAX_BUSY_PAUSE_MS)) == BackOff(5.0)


@pytest.mark.parametrize("hint", [None, 0, -5, MAX_BUSY_PAUSE_MS + 1, 2.5, "20", True])
def test_busy_without_a_believable_hint_pauses_the_default(hint: Any) -> None:
    reply = failure("busy") if hint is None else failure("busy", retry_after_ms=hint)
    assert classify(reply) == BackOff(RETRY_PAUSE_S)
    assert retry_after_s(reply) == RETRY_PAUSE_S


def test_busy_names_no_leader_even_when_the_reply_does() -> None:
    assert classify(failure("busy", leader="n2:8002", retry_after_ms=20)) == BackOff(0.02)


@pytest.mark.parametrize("code", ["something_new", None, 42])
def test_an_unknown_error_code_is_a_final_failure(code: Any) -> None:
    verdict = classify(failure(code, reason="x", result={"r": 1}))
    assert verdict == Failed(str(code), "x", "why", {"r": 1})


def test_failures_keep_reason_only_when_it_is_a_string() -> None:
    assert classify(failure("bad_request", reason=3)) == Failed("bad_request", None, "why", None)
    assert classify({"ok": False, "error": "bad_request"}).message == ""


def test_backoff_doubles_per_refusal_up_to_32x_with_jitter() -> None:
    class Low(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return a

    low = Low()
    assert [backoff_s(0.02, n, low) for n in (0, 1, 2, 3, 6, 7, 50)] == pytest.approx(
        [0.02, 0.02, 0.04, 0.08, 0.64, 0.64, 0.64])
    rng = random.Random(1)
    assert all(0.02 <= backoff_s(0.02, 1, rng) <= 0.04 for _ in range(100))


def test_busy_pause_s_is_backoff_of_the_replys_hint() -> None:
    reply = failure("busy", retry_after_ms=100)
    assert all(0.2 <= busy_pause_s(reply, 2) <= 0.4 for _ in range(100))


def test_final_verdicts_become_the_client_errors() -> None:
    rejected = error_for(Rejected("below_reserve", "too low", {"high": None}))
    assert isinstance(rejected, BidRejected) and rejected.reason == "below_reserve"
    assert rejected.result == {"high": None}
    assert str(error_for(Rejected(None, "m", None))) == "None: m"
    unknown = error_for(Failed("unknown_auction", None, "no such auction", None))
    assert isinstance(unknown, UnknownAuctionError)
    bad = error_for(Failed("bad_request", "invalid_amount", "amount", None))
    assert isinstance(bad, BadRequest) and bad.reason == "invalid_amount"
    assert error_for(Failed("unknown_op", None, "op", None)).reason == "invalid"
