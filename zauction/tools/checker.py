"""Is a recorded history of bids (and reads) explained by the auction's sequential rules?

The model, per auction: a bid is accepted iff its amount is >= reserve (no bid yet) or >= the
highest bid + increment; otherwise it is rejected with `below_reserve` or `below_increment`.
The state is the sequence of accepted (bidder, amount) pairs, which a read returns.

Checked per auction (P-compositionality: auctions share nothing, so each is checked alone):
  * every acknowledged bid is in the auction's final history, else it is *lost*;
  * the final history holds only bids somebody made and that were not rejected, each once,
    and follows the rules (so nothing was accepted below the high);
  * the history is linearizable. An "unknown" op (the client gave up) may take effect at any
    moment after its invoke, or never.

Two linearizability checkers answer the same question:
  * `search_linearizable`: the general one, a Wing & Gong search in the form of Lowe's
    just-in-time tree search (the algorithm Porcupine uses): call/return events in time order
    in a linked list, linearize a pending call, backtrack at a return that was not linearized,
    and memoize (linearized set, state) pairs; bounded by `max_states`.
  * the fast path used when the final history is known: accepted bids strictly increase, so any
    linearization applies them in exactly that order; each then needs a point inside its own
    interval, in that order, and every rejection or read constrains where those points may lie.
    A greedy earliest-point sweep decides it in O(n log n).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zauction.tools.history import OK, REJECTED, UNKNOWN, BidOp, BidTuple, Op, ReadOp

BELOW_RESERVE = "below_reserve"
BELOW_INCREMENT = "below_increment"
MODEL_REASONS = frozenset({BELOW_RESERVE, BELOW_INCREMENT})
DEFAULT_MAX_STATES = 1_000_000
State = tuple[BidTuple, ...]


class CheckerInputError(ValueError):
    """The history cannot be checked as given (e.g. two ops with the same bidder and amount)."""


@dataclass(frozen=True, slots=True)
class Rules:
    reserve: int = 1
    increment: int = 1

    def __post_init__(self) -> None:
        if type(self.reserve) is not int or type(self.increment) is not int or min(
                self.reserve, self.increment) < 1:
            raise CheckerInputError("reserve and increment must be integers >= 1")


@dataclass(frozen=True, slots=True)
class FinalState:
    """An auction's accepted bids after the run, as the leader reported them (linearizable
    read), with its rules and, optionally, what each replica reported (stale reads)."""

    bids: tuple[BidTuple, ...]
    rules: Rules = Rules()
    replicas: Mapping[str, tuple[BidTuple, ...]] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: Any) -> FinalState:
        """From a list of bids, or {"bids", "reserve"?, "increment"?, "replicas"?}; bids are
        [bidder, amount] pairs or {"bidder", "amount"} maps (the `history` reply)."""
        if isinstance(doc, FinalState):
            return doc
        if isinstance(doc, (list, tuple)):
            return cls(_bid_tuples(doc))
        if not isinstance(doc, Mapping) or "bids" not in doc:
            raise CheckerInputError("a final state is a list of bids or a map with 'bids'")
        replicas = {str(k): _bid_tuples(v) for k, v in (doc.get("replicas") or {}).items()}
        rules = Rules(doc.get("reserve", 1), doc.get("increment", 1))
        return cls(_bid_tuples(doc["bids"]), rules, replicas)


def _bid_tuples(raw: Iterable[Any]) -> tuple[BidTuple, ...]:
    out = []
    for bid in raw:
        if isinstance(bid, Mapping):
            bid = (bid.get("bidder"), bid.get("amount"))
        if (not isinstance(bid, (list, tuple)) or len(bid) != 2 or type(bid[0]) is not str
                or type(bid[1]) is not int):
            raise CheckerInputError(f"a bid must be (bidder, amount), not {bid!r}")
        out.append((bid[0], bid[1]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    lost: int
    violations: tuple[str, ...]
    checked_ops: int

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "lost": self.lost, "violations": list(self.violations),
                "checked_ops": self.checked_ops}


# --- the sequential model ----------------------------------------------------------------------


def judge(state: State, amount: int, rules: Rules) -> str | None:
    """The model's verdict on a bid of `amount`: None (accepted) or the rejection reason."""
    if not state:
        return BELOW_RESERVE if amount < rules.reserve else None
    return BELOW_INCREMENT if amount < state[-1][1] + rules.increment else None


def step(state: State, op: Op, rules: Rules) -> tuple[bool, State]:
    """Can `op` take effect in `state` with the outcome it recorded? And the state after it."""
    if isinstance(op, ReadOp):
        return state == op.bids, state
    verdict = judge(state, op.amount, rules)
    if op.outcome == OK:
        return verdict is None, state + (op.key,)
    if op.outcome == REJECTED:
        return verdict == op.reason, state
    return True, (state + (op.key,) if verdict is None else state)  # unknown: whatever happens


def in_model(op: Op) -> bool:
    """Rejections for reasons outside the model (closed auction, bad request...) change no
    state and say nothing about the order of bids: they are left out of the check."""
    return not (isinstance(op, BidOp) and op.outcome == REJECTED and op.reason not in MODEL_REASONS)


# --- the general checker ---------------------------------------------------------------------


class _Events:
    """Call and return events in time order, as a doubly linked list we can lift ops out of
    and put back (in LIFO order, like dancing links)."""

    def __init__(self, ops: Sequence[Op], end_ns: float) -> None:
        events = []
        for i, op in enumerate(ops):
            done = end_ns if isinstance(op, BidOp) and op.outcome == UNKNOWN else op.complete_ns
            events.append((op.invoke_ns, 0, i))
            events.append((done, 1, i))
        events.sort()  # at equal times calls come first: touching intervals overlap
        self.is_call = [e[1] == 0 for e in events]
        self.op_of = [e[2] for e in events]
        self.ret_pos = {e[2]: pos for pos, e in enumerate(events) if e[1] == 1}
        self.head = len(events)
        n = len(events)
        self.nxt: list[int | None] = [*range(1, n), None, 0 if n else None]
        self.prv: list[int] = [n, *range(0, n - 1), n]

    def first(self) -> int | None:
        return self.nxt[self.head]

    def lift(self, call: int) -> None:
        for pos in (call, self.ret_pos[self.op_of[call]]):
            nxt, prv = self.nxt[pos], self.prv[pos]
            self.nxt[prv] = nxt
            if nxt is not None:
                self.prv[nxt] = prv

    def unlift(self, call: int) -> None:
        for pos in (self.ret_pos[self.op_of[call]], call):
            nxt, prv = self.nxt[pos], self.prv[pos]
            self.nxt[prv] = pos
            if nxt is not None:
                self.prv[nxt] = pos


def search_linearizable(ops: Sequence[Op], rules: Rules = Rules(),
                        max_states: int = DEFAULT_MAX_STATES) -> bool | None:
    """True/False: the ops of ONE auction are/are not linearizable; None: gave up after
    `max_states` distinct (linearized set, state) pairs. Unknown bids are pending forever."""
    ops = [op for op in ops if in_model(op)]
    events = _Events(ops, math.inf)
    seen: set[tuple[int, State]] = set()
    stack: list[tuple[int, State]] = []
    state: State = ()
    linearized = 0
    entry = events.first()
    while entry is not None:
        index = events.op_of[entry]
        if not events.is_call[entry]:  # an op returned before we could linearize it
            if not stack:
                return False
            entry, state = stack.pop()
            linearized &= ~(1 << events.op_of[entry])
            events.unlift(entry)
            entry = events.nxt[entry]
            continue
        fits, after = step(state, ops[index], rules)
        key = (linearized | (1 << index), after)
        if fits and key not in seen:
            if len(seen) >= max_states:
                return None
            seen.add(key)
            stack.append((entry, state))
            state, linearized = after, key[0]
            events.lift(entry)
            entry = events.first()
        else:
            entry = events.nxt[entry]
    return True


def with_final_read(ops: Sequence[Op], auction: str, bids: Sequence[BidTuple]) -> list[Op]:
    """`ops` plus the final state as a read after every known op returned: unknown ops can
    still take effect before it (they appear in it) or after it (never seen)."""
    times = [op.complete_ns for op in ops] + [op.invoke_ns for op in ops] + [0]
    last = max(times)
    return [*ops, ReadOp(auction, last + 1, last + 2, tuple(bids))]


# --- the fast path -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Bounds:
    """Where each accepted bid's linearization point may lie: after lo[k], before hi[k]
    (k = 1..n, in final-history order), with a note of which op set each bound."""

    n: int
    lo: list[float] = field(init=False)
    hi: list[float] = field(init=False)
    lo_why: list[str] = field(init=False)
    hi_why: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.lo = [-math.inf] * (self.n + 2)
        self.hi = [math.inf] * (self.n + 2)
        self.lo_why = [""] * (self.n + 2)
        self.hi_why = [""] * (self.n + 2)

    def after(self, k: int, t: float, why: str) -> None:
        if 1 <= k <= self.n and t > self.lo[k]:
            self.lo[k], self.lo_why[k] = t, why

    def before(self, k: int, t: float, why: str) -> None:
        if 1 <= k <= self.n and t < self.hi[k]:
            self.hi[k], self.hi_why[k] = t, why


def fast_violations(ops: Sequence[Op], final: Sequence[BidTuple], rules: Rules = Rules(),
                    auction: str = "") -> list[str]:
    """Linearizability of ONE auction's ops given its final history (assumed already checked
    for membership: every ok op is in it, nothing else but unknown ops is). [] means ok."""
    position = {bid: k for k, bid in enumerate(final, start=1)}
    amounts = [amount for _, amount in final]
    bounds = _Bounds(len(final))
    problems: list[str] = []
    for op in ops:
        if in_model(op):
            _constrain(op, position, amounts, rules, bounds, problems)
    point = -math.inf
    for k in range(1, len(final) + 1):
        if bounds.lo[k] > point:
            point, pushed_by = bounds.lo[k], bounds.lo_why[k]
        if point > bounds.hi[k]:
            problems.append(f"{final[k - 1][0]}'s bid of {final[k - 1][1]} (#{k} in the final "
                            f"history) cannot take effect: {bounds.hi_why[k]} needs it earlier, "
                            f"but {pushed_by} needs it (or a bid before it) later")
            break
    return [f"auction {auction}: {p}" if auction else p for p in problems]


def _constrain(op: Op, position: dict[BidTuple, int], amounts: list[int], rules: Rules,
               bounds: _Bounds, problems: list[str]) -> None:
    if isinstance(op, ReadOp):
        _constrain_read(op, position, bounds, problems)
        return
    who = f"{op.bidder}'s bid of {op.amount}"
    k = position.get(op.key)
    if k is not None:  # accepted: it takes effect inside its own interval
        bounds.after(k, op.invoke_ns, f"{who} (invoked at {op.invoke_ns})")
        if op.outcome == OK:
            bounds.before(k, op.complete_ns, f"{who} (acknowledged at {op.complete_ns})")
    elif op.outcome == REJECTED and op.reason == BELOW_INCREMENT:
        # Needs, before it returned, an accepted bid within one increment below it or higher.
        need = bisect.bisect_right(amounts, op.amount - rules.increment) + 1
        if need > len(amounts):
            problems.append(f"{who} was rejected as below_increment, but no accepted bid "
                            "was ever high enough to refuse it")
        bounds.before(need, op.complete_ns, f"the below_increment rejection of {who} "
                                            f"(returned at {op.complete_ns})")
    elif op.outcome == REJECTED and op.reason == BELOW_RESERVE:
        if op.amount >= rules.reserve:
            problems.append(f"{who} was rejected as below_reserve, but the reserve is "
                            f"{rules.reserve}")
        bounds.after(1, op.invoke_ns, f"the below_reserve rejection of {who} "
                                      f"(invoked at {op.invoke_ns})")


def _constrain_read(op: ReadOp, position: dict[BidTuple, int], bounds: _Bounds,
                    problems: list[str]) -> None:
    seen = len(op.bids)
    if any(position.get(bid) != k for k, bid in enumerate(op.bids, start=1)):
        problems.append(f"a read (returned at {op.complete_ns}) saw {seen} bids that are not "
                        "a prefix of the final history")
        return
    why = f"a read that saw {seen} bids (invoked at {op.invoke_ns}, returned at {op.complete_ns})"
    bounds.before(seen, op.complete_ns, why)
    bounds.after(seen + 1, op.invoke_ns, why)


# --- membership: lost, phantom, rejected-but-present, replicas -------------------------------


def membership_violations(ops: Sequence[Op], final: FinalState,
                          auction: str) -> tuple[int, list[str]]:
    """(lost, violations) for one auction."""
    by_key: dict[BidTuple, BidOp] = {}
    for op in ops:
        if isinstance(op, BidOp):
            if op.key in by_key:
                raise CheckerInputError(f"auction {auction}: two bids of {op.amount} by "
                                        f"{op.bidder}: bids cannot be told apart")
            by_key[op.key] = op
    problems = _history_rule_violations(final)
    in_final = set(final.bids)
    lost = [op for op in by_key.values() if op.outcome == OK and op.key not in in_final]
    problems += [f"LOST: {op.bidder}'s bid of {op.amount} (client {op.client} seq {op.seq}) "
                 "was acknowledged but is not in the final history" for op in lost]
    for bidder, amount in in_final:
        op = by_key.get((bidder, amount))
        if op is None:
            problems.append(f"{bidder}'s bid of {amount} is in the final history but nobody "
                            "made it")
        elif op.outcome == REJECTED:
            problems.append(f"{bidder}'s bid of {amount} was rejected ({op.reason}) yet is in "
                            "the final history")
    for node, bids in sorted(final.replicas.items()):
        if bids != final.bids:
            problems.append(f"replica {node} holds {len(bids)} bids that differ from the "
                            f"leader's {len(final.bids)}")
    return len(lost), [f"auction {auction}: {p}" for p in problems]


def _history_rule_violations(final: FinalState) -> list[str]:
    problems, state = [], ()
    if len(set(final.bids)) != len(final.bids):
        problems.append("the final history holds the same bid twice (applied more than once)")
    for bidder, amount in final.bids:
        reason = judge(state, amount, final.rules)
        if reason is not None:
            problems.append(f"{bidder}'s bid of {amount} was accepted below the minimum "
                            f"({reason}; the high was {state[-1][1] if state else None})")
        state = ((bidder, amount),)  # only the last bid matters to judge the next
    return problems


# --- the entry point ----------------------------------------------------------------------------


def check(history_ops: Iterable[Op], final_state_per_auction: Mapping[str, Any], *,
          method: str = "auto", max_states: int = DEFAULT_MAX_STATES) -> Verdict:
    """Check a whole history. `final_state_per_auction` maps auction -> FinalState (or what
    FinalState.from_doc accepts). `method`: "auto" (fast path where the final state is known,
    search elsewhere), "fast", or "search" (the general checker everywhere)."""
    if method not in ("auto", "fast", "search"):
        raise CheckerInputError(f"unknown method {method!r}")
    per_auction: dict[str, list[Op]] = defaultdict(list)
    for op in history_ops:
        per_auction[op.auction].append(op)
    finals = {a: FinalState.from_doc(doc) for a, doc in final_state_per_auction.items()}
    lost, problems, checked = 0, [], 0
    for auction in sorted(set(per_auction) | set(finals)):
        ops = per_auction.get(auction, [])
        checked += len(ops)
        one_lost, one_problems = _check_auction(auction, ops, finals.get(auction), method,
                                                max_states)
        lost += one_lost
        problems += one_problems
    return Verdict(not problems, lost, tuple(problems), checked)


def _check_auction(auction: str, ops: list[Op], final: FinalState | None, method: str,
                   max_states: int) -> tuple[int, list[str]]:
    if final is None:
        if method == "fast":
            raise CheckerInputError(f"auction {auction}: the fast path needs its final state")
        return 0, _search_verdict(auction, ops, Rules(), max_states)
    lost, problems = membership_violations(ops, final, auction)
    if method == "search":
        return lost, problems + _search_verdict(
            auction, with_final_read(ops, auction, final.bids), final.rules, max_states)
    if problems:  # the order check assumes clean membership; the reported problems suffice
        return lost, problems
    return lost, fast_violations(ops, final.bids, final.rules, auction)


def _search_verdict(auction: str, ops: Sequence[Op], rules: Rules,
                    max_states: int) -> list[str]:
    found = search_linearizable(ops, rules, max_states)
    if found is None:
        return [f"auction {auction}: inconclusive: the linearizability search gave up after "
                f"{max_states} states"]
    return [] if found else [f"auction {auction}: the history is not linearizable"]

