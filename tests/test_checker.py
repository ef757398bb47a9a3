"""The history checker: hand-made histories with a known answer, and randomized small histories
on which the fast path, the general search and a brute force over all orders must agree."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zauction.tools.checker import (
    BELOW_INCREMENT,
    BELOW_RESERVE,
    CheckerInputError,
    FinalState,
    Rules,
    check,
    in_model,
    judge,
    search_linearizable,
    step,
    with_final_read,
)
from zauction.tools.history import (
    OK,
    REJECTED,
    UNKNOWN,
    BidOp,
    HistoryError,
    HistoryWriter,
    Op,
    ReadOp,
    read_history,
)

A = "auc"


def bid(bidder: str, amount: int, start: int, end: int, outcome: str = OK,
        reason: str | None = None, seq: int = 1) -> BidOp:
    return BidOp(f"c-{bidder}", seq, A, bidder, amount, start, end, outcome, reason)


def read(start: int, end: int, *bids: tuple[str, int]) -> ReadOp:
    return ReadOp(A, start, end, tuple(bids))


def both(ops: Sequence[Op], final: Sequence[tuple[str, int]], **rules: int):
    """The verdicts of the fast path and of the general search: they must agree."""
    state = FinalState(tuple(final), Rules(**rules))
    fast = check(ops, {A: state}, method="fast")
    search = check(ops, {A: state}, method="search")
    assert fast.ok == search.ok, (fast, search)
    assert fast.lost == search.lost
    return fast


# --- hand-made histories --------------------------------------------------------------------


def test_a_lost_acknowledged_bid_is_counted_and_fails():
    ops = [bid("a", 10, 0, 5), bid("b", 20, 6, 9)]
    verdict = both(ops, [("a", 10)])
    assert not verdict.ok
    assert verdict.lost == 1
    assert any("LOST" in v and "b's bid of 20" in v for v in verdict.violations)


def test_a_stale_read_after_an_acknowledged_bid_is_not_linearizable():
    ops = [bid("a", 10, 0, 5), read(6, 8)]  # the read began after the bid was acknowledged
    verdict = both(ops, [("a", 10)])
    assert not verdict.ok
    assert "read" in verdict.violations[0]


def test_a_read_concurrent_with_the_bid_may_miss_it():
    ops = [bid("a", 10, 0, 5), read(3, 8)]
    assert both(ops, [("a", 10)]).ok


def test_a_bid_accepted_below_the_high_is_a_violation():
    ops = [bid("a", 100, 0, 10), bid("b", 90, 20, 30)]
    verdict = both(ops, [("a", 100), ("b", 90)])
    assert not verdict.ok
    assert any("below the minimum" in v for v in verdict.violations)


def test_a_log_order_that_contradicts_real_time_is_a_violation():
    # b's bid of 90 was invoked after a's 100 was acknowledged, yet the log puts 90 first.
    ops = [bid("a", 100, 0, 10), bid("b", 90, 20, 30)]
    verdict = both(ops, [("b", 90), ("a", 100)])
    assert not verdict.ok
    assert "cannot take effect" in verdict.violations[0]


def test_overlapping_bids_are_valid_in_either_order():
    ops = [bid("a", 100, 0, 10), bid("b", 101, 5, 15)]
    assert both(ops, [("a", 100), ("b", 101)]).ok
    rejected_first = [bid("a", 100, 0, 10, REJECTED, BELOW_INCREMENT), bid("b", 101, 5, 15)]
    assert both(rejected_first, [("b", 101)]).ok


def test_a_rejection_needs_a_high_bid_before_it_returned():
    # a's 100 was refused below_increment and returned at 10, but the only higher bid began at 20.
    ops = [bid("a", 100, 0, 10, REJECTED, BELOW_INCREMENT), bid("b", 101, 20, 30)]
    assert not both(ops, [("b", 101)]).ok
    no_high = [bid("a", 100, 0, 10, REJECTED, BELOW_INCREMENT)]
    assert not both(no_high, []).ok


def test_below_reserve_must_happen_before_the_first_accepted_bid():
    ok = [bid("a", 3, 0, 10, REJECTED, BELOW_RESERVE), bid("b", 7, 5, 15)]
    assert both(ok, [("b", 7)], reserve=5).ok
    late = [bid("b", 7, 0, 4), bid("a", 3, 5, 10, REJECTED, BELOW_RESERVE)]
    assert not both(late, [("b", 7)], reserve=5).ok
    not_below = [bid("a", 6, 0, 10, REJECTED, BELOW_RESERVE)]
    assert not both(not_below, [], reserve=5).ok


def test_unknown_ops_may_be_present_or_absent():
    unknown = bid("a", 100, 0, 50, UNKNOWN)
    later = bid("b", 101, 60, 70)
    assert both([unknown, later], [("a", 100), ("b", 101)]).ok
    assert both([unknown, later], [("b", 101)]).ok
    # Present, an unknown op still obeys the rules: it cannot follow a higher bid.
    assert not both([unknown, later], [("b", 101), ("a", 100)]).ok


def test_rejected_or_phantom_bids_must_not_appear():
    rejected = [bid("a", 100, 0, 10, REJECTED, BELOW_INCREMENT), bid("b", 200, 0, 5)]
    verdict = both(rejected, [("b", 200), ("a", 100)])
    assert any("was rejected" in v for v in verdict.violations)
    phantom = both([bid("a", 100, 0, 10)], [("a", 100), ("zed", 500)])
    assert any("nobody made it" in v for v in phantom.violations)


def test_a_replica_that_differs_from_the_leader_is_a_violation():
    final = FinalState((("a", 10),), replicas={"n2": (("a", 10),), "n3": ()})
    verdict = check([bid("a", 10, 0, 5)], {A: final})
    assert verdict.violations == ("auction auc: replica n3 holds 0 bids that differ from the "
                                  "leader's 1",)


def test_rejections_outside_the_model_are_not_judged():
    closed = bid("a", 5, 0, 10, REJECTED, "auction_closed")
    verdict = check([closed], {A: []})
    assert verdict.ok and verdict.checked_ops == 1


def test_search_gives_up_at_its_bound_and_says_so():
    ops = [bid(f"b{i}", 100 + i, 0, 100, UNKNOWN) for i in range(12)]
    final = {A: [("b0", 100), ("b11", 111)]}  # only 2 of 12 applied: much backtracking
    verdict = check(ops, final, method="search", max_states=50)
    assert not verdict.ok
    assert "inconclusive" in verdict.violations[0]
    assert check(ops, final, method="search").ok
    assert check(ops, final, method="fast").ok


def test_without_a_final_state_auto_uses_the_search():
    ops = [bid("a", 10, 0, 5), read(6, 8)]
    assert not check(ops, {}).ok
    assert check([bid("a", 10, 0, 5), read(6, 8, ("a", 10))], {}).ok


def test_ambiguous_and_malformed_inputs_raise_typed_errors():
    with pytest.raises(CheckerInputError):
        check([bid("a", 10, 0, 5), bid("a", 10, 6, 9, seq=2)], {A: []})
    with pytest.raises(CheckerInputError):
        check([], {A: {"nobids": []}})
    with pytest.raises(CheckerInputError):
        check([], {A: [("a", "ten")]})
    with pytest.raises(CheckerInputError):
        check([], {A: {"bids": [], "increment": 0}})
    with pytest.raises(CheckerInputError):
        check([], {}, method="magic")
    with pytest.raises(HistoryError):
        bid("a", 10, 5, 4)  # completes before it is invoked


def test_final_state_accepts_the_history_reply_shape():
    doc = {"bids": [{"index": 7, "bidder": "a", "amount": 10, "ts_ms": 1}], "reserve": 5}
    state = FinalState.from_doc(doc)
    assert state.bids == (("a", 10),) and state.rules == Rules(5, 1)


def test_history_file_round_trip_and_bad_lines(tmp_path):
    ops = [bid("a", 10, 0, 5), bid("b", 11, 1, 9, REJECTED, BELOW_INCREMENT),
           bid("c", 12, 2, 3, UNKNOWN), read(10, 11, ("a", 10))]
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as writer:
        for op in ops:
            writer.write(op)
    assert read_history(path) == ops
    path.write_text('{"op": "bid", "client": "c", "seq": true}\n')
    with pytest.raises(HistoryError, match="line 1"):
        read_history(path)
    path.write_text("\n{not json\n")
    with pytest.raises(HistoryError, match="line 2"):
        read_history(path)


# --- randomized: fast path == search == brute force ------------------------------------------


def brute_force(ops: Sequence[Op], rules: Rules, final: Sequence[tuple[str, int]] | None) -> bool:
    """Every subset of the unknown ops (the others never happened) in every order that
    respects real time: does one replay through the model with the recorded outcomes?"""
    ops = [op for op in ops if in_model(op)]
    if final is not None:
        ops = with_final_read(ops, A, final)
    unknown = [op for op in ops if isinstance(op, BidOp) and op.outcome == UNKNOWN]
    known = [op for op in ops if op not in unknown]
    for r in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, r):
            for order in itertools.permutations([*known, *chosen]):
                if _respects_real_time(order) and _replays(order, rules):
                    return True
    return False


def _ends(op: Op) -> float:
    return math.inf if isinstance(op, BidOp) and op.outcome == UNKNOWN else op.complete_ns


def _respects_real_time(order: Sequence[Op]) -> bool:
    return all(not _ends(later) < earlier.invoke_ns
               for i, earlier in enumerate(order) for later in order[i + 1:])


def _replays(order: Sequence[Op], rules: Rules) -> bool:
    state: tuple = ()
    for op in order:
        fits, state = step(state, op, rules)
        if not fits:
            return False
    return True


def make_history(rng: random.Random, corrupt: bool) -> tuple[list[Op], tuple, Rules]:
    """A history produced by a real sequential execution (each op takes effect at a random
    point of its interval), then, if `corrupt`, one random corruption."""
    rules = Rules(rng.randint(1, 4), rng.randint(1, 3))
    count = rng.randint(1, 6)
    plan = []
    for i, amount in enumerate(rng.sample(range(1, 16), count)):
        start = rng.randint(0, 20)
        end = start + rng.randint(0, 12)
        plan.append((rng.randint(start, end), rng.random(), i, amount, start, end,
                     rng.random() < 0.2))
    state: tuple = ()
    ops: list[Op] = []
    for _, _, i, amount, start, end, is_read in sorted(plan):
        if is_read:
            ops.append(ReadOp(A, start, end, state))
            continue
        op = _executed_bid(rng, state, rules, f"b{i % 3}", amount, start, end, i)
        if op.outcome == UNKNOWN and rng.random() < 0.5:
            ops.append(op)  # an unknown op that never took effect
            continue
        ops.append(op)
        state = step(state, op, rules)[1]
    if corrupt:
        ops, state = _corrupt(rng, ops, state)
    return ops, state, rules


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Op], tuple, Rules]:
    return make_history(random.Random(draw(st.integers(0, 2**32))), draw(st.booleans()))


def _executed_bid(rng: random.Random, state: tuple, rules: Rules, bidder: str, amount: int,
                  start: int, end: int, i: int) -> BidOp:
    reason = judge(state, amount, rules)
    outcome = OK if reason is None else REJECTED
    if rng.random() < 0.2:
        outcome = UNKNOWN  # it took effect (or not) as judged, but the client never heard
    return BidOp(f"c{i}", i, A, bidder, amount, start, end, outcome,
                 reason if outcome == REJECTED else None)


def _corrupt(rng: random.Random, ops: list[Op], final: tuple) -> tuple[list[Op], tuple]:
    ops = list(ops)
    i = rng.randrange(len(ops))
    op = ops[i]
    choice = rng.randrange(5)
    if choice == 0 and final:
        final = tuple(b for b in final if b != rng.choice(final))
    elif choice == 1 and len(final) >= 2:
        final = (final[1], final[0], *final[2:])
    elif choice == 2 and isinstance(op, BidOp):
        flipped = {OK: (REJECTED, BELOW_INCREMENT), REJECTED: (OK, None),
                   UNKNOWN: (REJECTED, BELOW_RESERVE)}[op.outcome]
        ops[i] = BidOp(op.client, op.seq, A, op.bidder, op.amount, op.invoke_ns,
                       op.complete_ns, *flipped)
    elif choice == 3 and isinstance(op, ReadOp):
        ops[i] = ReadOp(A, op.invoke_ns, op.complete_ns, op.bids[:-1] or final)
    else:
        shift = rng.randint(-15, 15)
        ops[i] = _shifted(op, shift)
    return ops, final


def _shifted(op: Op, shift: int) -> Op:
    start, end = op.invoke_ns + shift, op.complete_ns + shift
    if isinstance(op, ReadOp):
        return ReadOp(A, start, end, op.bids)
    return BidOp(op.client, op.seq, A, op.bidder, op.amount, start, end, op.outcome, op.reason)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_fast_path_search_and_brute_force_agree(case):
    ops, final, rules = case
    expected = brute_force(ops, rules, final)
    state = FinalState(final, rules)
    assert check(ops, {A: state}, method="fast").ok == expected
    assert check(ops, {A: state}, method="search").ok == expected
    assert search_linearizable(with_final_read(ops, A, final), rules) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_search_without_a_final_state_agrees_with_brute_force(case):
    ops, _, rules = case
    assert search_linearizable(ops, rules) == brute_force(ops, rules, None)


def test_the_random_histories_exercise_both_answers():
    """Guard against a generator that only ever produces valid (or only invalid) histories."""
    answers = [brute_force(*_reordered(make_history(random.Random(seed), seed % 2 == 1)))
               for seed in range(200)]
    assert 40 <= sum(answers) <= 160


def _reordered(case: tuple[list[Op], tuple, Rules]) -> tuple[list[Op], Rules, tuple]:
    ops, final, rules = case
    return ops, rules, final
