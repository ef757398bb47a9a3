"""Operation histories of a load run: what each client did, when, and what it was told.

One JSON object per line. A bid (the key "op" may be left out):
    {"op": "bid", "client", "seq", "auction", "bidder", "amount",
     "invoke_ns", "complete_ns", "outcome": "ok"|"rejected"|"unknown", "reason"}
A linearizable read of an auction's accepted bids (optional; the checker verifies it too):
    {"op": "read", "auction", "invoke_ns", "complete_ns", "bids": [[bidder, amount], ...]}

Times are one process's monotonic clock in nanoseconds. `invoke_ns` is when the first attempt
was sent; `complete_ns` is when the answer arrived, or, for an "unknown" op, when the client gave
up (the checker treats an unknown op as possibly taking effect at any time after its invoke).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

OK = "ok"
REJECTED = "rejected"
UNKNOWN = "unknown"
OUTCOMES = frozenset({OK, REJECTED, UNKNOWN})

BidTuple = tuple[str, int]  # (bidder, amount): one accepted bid as the checker sees it


class HistoryError(ValueError):
    """A history record (or line) that is not well formed; `line` is its 1-based line number."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class BidOp:
    client: str
    seq: int
    auction: str
    bidder: str
    amount: int
    invoke_ns: int
    complete_ns: int
    outcome: str
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise HistoryError(f"outcome must be one of {sorted(OUTCOMES)}, not {self.outcome!r}")
        if self.complete_ns < self.invoke_ns:
            raise HistoryError(f"bid {self.client}/{self.seq} completes before it is invoked")

    @property
    def key(self) -> BidTuple:
        return (self.bidder, self.amount)


@dataclass(frozen=True, slots=True)
class ReadOp:
    auction: str
    invoke_ns: int
    complete_ns: int
    bids: tuple[BidTuple, ...]

    def __post_init__(self) -> None:
        if self.complete_ns < self.invoke_ns:
            raise HistoryError(f"read of {self.auction} completes before it is invoked")


Op = BidOp | ReadOp


def op_to_dict(op: Op) -> dict[str, Any]:
    if isinstance(op, ReadOp):
        return {"op": "read", "auction": op.auction, "invoke_ns": op.invoke_ns,
                "complete_ns": op.complete_ns, "bids": [list(b) for b in op.bids]}
    return {"op": "bid", "client": op.client, "seq": op.seq, "auction": op.auction,
            "bidder": op.bidder, "amount": op.amount, "invoke_ns": op.invoke_ns,
            "complete_ns": op.complete_ns, "outcome": op.outcome, "reason": op.reason}


def _field(doc: dict, name: str, kind: type, optional: bool = False) -> Any:
    value = doc.get(name)
    if value is None and optional:
        return None
    # bool is an int subclass: a true/false where a number belongs is malformed.
    if type(value) is not kind:
        raise HistoryError(f"field {name!r} must be {kind.__name__}, not {value!r}")
    return value


def op_from_dict(doc: object) -> Op:
    """Validate one decoded line; raises HistoryError (never KeyError/TypeError)."""
    if type(doc) is not dict:
        raise HistoryError("a history record must be a JSON object")
    kind = doc.get("op", "bid")
    if kind == "read":
        return ReadOp(_field(doc, "auction", str), _field(doc, "invoke_ns", int),
                      _field(doc, "complete_ns", int), _bids(_field(doc, "bids", list)))
    if kind != "bid":
        raise HistoryError(f"unknown record kind {kind!r}")
    return BidOp(_field(doc, "client", str), _field(doc, "seq", int), _field(doc, "auction", str),
                 _field(doc, "bidder", str), _field(doc, "amount", int),
                 _field(doc, "invoke_ns", int), _field(doc, "complete_ns", int),
                 _field(doc, "outcome", str), _field(doc, "reason", str, optional=True))


def _bids(raw: list) -> tuple[BidTuple, ...]:
    out = []
    for item in raw:
        if (type(item) not in (list, tuple) or len(item) != 2 or type(item[0]) is not str
                or type(item[1]) is not int):
            raise HistoryError(f"a bid must be [bidder, amount], not {item!r}")
        out.append((item[0], item[1]))
    return tuple(out)


def dumps(op: Op) -> str:
    return json.dumps(op_to_dict(op), separators=(",", ":"))


def parse_lines(lines: Iterable[str]) -> Iterator[Op]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise HistoryError(f"not JSON: {exc}", number) from None
        try:
            yield op_from_dict(doc)
        except HistoryError as exc:
            raise HistoryError(str(exc), number) from None


def read_history(path: Path | str) -> list[Op]:
    with open(path, encoding="utf-8") as f:
        return list(parse_lines(f))


class HistoryWriter:
    """Appends one line per operation; buffered, so it costs little on the load's hot path."""

    def __init__(self, path: Path | str) -> None:
        self._file: IO[str] = open(path, "w", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115

    def write(self, op: Op) -> None:
        self._file.write(dumps(op) + "\n")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
