"""A garbage flood against a running cluster, with a polite client alongside.

`run_flood(FloodConfig(servers=[...]))` opens many sockets to every node and sends, rate
limited and bounded by a message count and/or a duration, a mix of hostile traffic:

    random_bytes      [kind, random bytes] for kinds C, F, P, FR, HELLO and random ones
    frame_count       messages of 1, 2 (bad kind), 3, 4 and 10 frames
    unknown_kind      empty, overlong and unknown kinds (HELLO_ACK and FR on a ROUTER too)
    bomb              msgpack bombs: deep nesting, lengths claiming gigabytes, maps with many
                      keys and arrays with many items within the size limits, big valid Appends
    typed_request     every op of zauction.protocol.OPS with each field (and envelope field)
                      set in turn to [], {}, "", None, True, 2**64-1, -1, huge strings, ...
    request_stream    frames of many requests back to back: up to and past 1,024, truncated
    forged_consensus  kind P frames built with brokerless.wire.encode_message, src = a member
                      id (sent from a DEALER wearing that member's routing id, or not), huge
                      terms (2**63-1) and indexes, and plausible ones (the current term + 1)
    forged_forward    kind F frames (forwarded requests) with odd fids and inner requests, FR
    hello             HELLOs from the wrong cluster, claiming a member's id, malformed
    hello_hijack      a HELLO in the right cluster from a DEALER wearing a member's routing
                      id, pointing the node's SUB for that member at our own PUB, which
                      publishes forged heartbeats
    subscription      SUB sockets on each node's PUB endpoint subscribing to large topics
                      (and a slow one that never reads); XSUB sending garbage upstream

DEALERs come in two kinds: some with random routing ids, and impersonators REUSING a
member's routing id (the node address string: that is how peers identify themselves).
Sockets are replaced now and then (connection churn), so routing ids are handed over
again and again.

A polite client (zauction.client.client.AuctionClient) runs in a thread meanwhile: it opens
its own auction and bids 1, 2, 3, ... with one write in flight, retrying an unanswered bid
with the same (client, seq); it records the latency of every answered request and counts the
unanswered ones. Before and after the flood the cluster's state is read (`auctions`, each
node's replica, `status`), so the report says whether anything but the polite client's bids
changed. Nothing here prints; pure pyzmq + msgpack + the project's codecs and client.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from brokerless.messages import (
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from brokerless.types import Entry, EntryKind
from brokerless.wire import MAX_INT, encode_message
from zauction.client.client import (
    AuctionClient,
    BadRequest,
    BidRejected,
    ClientError,
    ClusterUnavailable,
    UnknownAuctionError,
)
from zauction.protocol import (
    CLIENT_KIND,
    FORWARD_KIND,
    FORWARD_REPLY_KIND,
    MAX_REQUEST_BYTES,
    MAX_REQUESTS_PER_FRAME,
    OPS,
    WRITE_OPS,
    ProtocolError,
    decode_replies,
    decode_reply,
)

PEER_KIND = b"P"
HELLO, HELLO_ACK = b"HELLO", b"HELLO_ACK"
HEARTBEAT_TOPIC = b"hb"

CATEGORIES = ("random_bytes", "frame_count", "unknown_kind", "bomb", "typed_request",
              "request_stream", "forged_consensus", "forged_forward", "hello", "hello_hijack",
              "subscription")
# Relative weights of the categories in the mix.
WEIGHTS = {"random_bytes": 10, "frame_count": 8, "unknown_kind": 8, "bomb": 3,
           "typed_request": 30, "request_stream": 2, "forged_consensus": 15,
           "forged_forward": 10, "hello": 8, "hello_hijack": 1, "subscription": 2}

POLITE_BIDDER = "polite"
POLITE_AUCTION_MS = 24 * 3600 * 1000  # the polite auction stays open for a day
DAY_MS = 24 * 3600 * 1000
BAD_VALUES: tuple[Any, ...] = (
    [], {}, "", None, True, False, 2**64 - 1, -1, -(2**63), 2**63, 1.5, float("nan"),
    "x" * 65, "x" * 300, "x" * 60_000, "x" * 70_000, b"bytes", "\x00\x07ctrl", "\U0001f642" * 65,
    [1, 2], {"a": 1},
)
ENVELOPE_FIELDS = ("rid", "stale", "stream", "op")
WRITE_ENVELOPE_FIELDS = ("client", "seq")
_FIELDS = {  # the fields of each op that the flood corrupts (see docs/protocol.md)
    "bid": ("auction", "bidder", "amount"),
    "open": ("auction", "duration_ms", "opens_at_ms", "closes_at_ms", "item", "reserve",
             "increment"),
    "close": ("auction",),
    "forget": ("auction",),
    "result": ("auction",),
    "history": ("auction", "after_seq", "limit"),
    "auctions": ("after", "limit"),
    "events": ("auction", "after_seq", "limit"),
    "status": (),
}  # an op not listed here (a new one) gets its envelope fields corrupted only
MISSING_AUCTION = "flood-no-such-auction"
# libzmq 4.3.5 overflows the stack (a segfault, in our process) unsubscribing a topic of about
# 128 KiB: its subscription trie recurses once per byte. 48 KiB is still 48x a node's bound.
MAX_TOPIC_BYTES = 48 * 1024


# --- configuration and report ---------------------------------------------------------------------


@dataclass(slots=True)
class FloodConfig:
    servers: Sequence[str]
    frames: int | None = 50_000  # messages (multipart sends) to send at most; None: no bound
    seconds: float | None = None  # stop after this long at most; None: no bound
    rate: float = 2_000.0  # messages per second at most (0: as fast as possible)
    seed: int | None = None
    categories: Sequence[str] = CATEGORIES
    random_dealers: int = 4  # per node, with random routing ids
    impersonate: bool = True  # also DEALERs wearing each member's routing id
    churn_every: int = 400  # messages between replacing one socket (0: never)
    max_bomb_bytes: int = 256 * 1024  # the largest bomb payload (C frames: 64 KiB at most)
    subs_per_node: int = 2
    topics_per_sub: int = 12
    max_topic_bytes: int = 32 * 1024  # at most MAX_TOPIC_BYTES (see there)
    hwm: int = 2_000  # per flood socket; a send past it is dropped and counted
    drain_s: float = 1.0  # after the last message, keep reading replies this long
    polite: bool = True
    polite_interval_s: float = 0.02  # between two polite bids
    polite_call_timeout_s: float = 10.0  # one AuctionClient call
    polite_grace_s: float = 30.0  # after the flood, how long an unanswered bid is retried
    settle_s: float = 20.0  # after the flood, how long to wait for a leader and equal replicas
    # Called once, in a thread of its own, when half the flood is sent (or half its time has
    # passed): a fault to inject mid-flood, such as restarting a node. Its exceptions are
    # reported in `errors`.
    midway: Callable[[], None] | None = None


@dataclass(slots=True)
class PoliteReport:
    auction: str = ""
    opened: bool = False
    accepted: list[int] = field(default_factory=list)  # amounts, in order
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (amount, reason): final
    failed: list[tuple[int, str]] = field(default_factory=list)  # never answered, or refused
    unanswered_calls: int = 0  # calls that got no answer within polite_call_timeout_s
    retried_bids: int = 0  # bids that needed more than one call
    verdicts: dict[str, int] = field(default_factory=dict)  # per attempt, by verdict (and code)
    call_latencies_ms: list[float] = field(default_factory=list)  # each answered call
    bid_latencies_ms: list[float] = field(default_factory=list)  # each bid, retries included
    errors: list[str] = field(default_factory=list)

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.bid_latencies_ms, 50)

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.bid_latencies_ms, 99)

    @property
    def max_ms(self) -> float | None:
        return max(self.bid_latencies_ms) if self.bid_latencies_ms else None


@dataclass(slots=True)
class FloodReport:
    servers: list[str]
    elapsed_s: float = 0.0
    sent: dict[str, int] = field(default_factory=dict)  # messages handed to ZeroMQ, by category
    dropped: dict[str, int] = field(default_factory=dict)  # refused at our high-water mark
    bombs: dict[str, int] = field(default_factory=dict)  # the bombs sent, by shape
    replies: dict[str, int] = field(default_factory=dict)  # what came back, by kind/code
    sockets_opened: int = 0
    sockets_replaced: int = 0
    subscribed_bytes: int = 0
    garbage_accepted: list[str] = field(default_factory=list)  # malformed writes answered ok
    garbage_accepted_count: int = 0
    errors: list[str] = field(default_factory=list)  # exceptions in the flood itself
    polite: PoliteReport = field(default_factory=PoliteReport)
    before: dict[str, dict] = field(default_factory=dict)  # each node's status before
    after: dict[str, dict] = field(default_factory=dict)  # ... and after (settled)
    leader_before: str | None = None
    term_before: int | None = None
    leader_after: str | None = None
    term_after: int | None = None
    unanswered_status: list[str] = field(default_factory=list)  # nodes silent after the flood
    settled: bool = False  # a leader agreed by every node, and equal applied indexes
    state_diffs: list[str] = field(default_factory=list)  # cluster state vs what polite did
    node_state_diffs: dict[str, list[str]] = field(default_factory=dict)  # each replica
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # status deltas

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def state_unchanged(self) -> bool:
        """Nothing changed but the polite client's auction, on the cluster and every node."""
        return (not self.state_diffs and not any(self.node_state_diffs.values())
                and self.polite.opened)

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["total_sent"] = self.total_sent
        doc["state_unchanged"] = self.state_unchanged
        polite = doc["polite"]
        polite.pop("call_latencies_ms")
        polite.pop("bid_latencies_ms")
        polite["accepted_count"] = len(self.polite.accepted)
        polite["accepted"] = _abbreviate(self.polite.accepted)
        polite["p50_ms"], polite["p99_ms"] = self.polite.p50_ms, self.polite.p99_ms
        polite["max_ms"] = self.polite.max_ms
        polite["call_p50_ms"] = percentile(self.polite.call_latencies_ms, 50)
        polite["call_p99_ms"] = percentile(self.polite.call_latencies_ms, 99)
        for status in (*doc["before"].values(), *doc["after"].values()):
            status.pop("members", None)
            status.pop("loop", None)
        return doc


def _abbreviate(values: list[int]) -> Any:
    if len(values) <= 20:
        return values
    return {"first": values[:5], "last": values[-5:], "count": len(values)}


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


# --- reading the cluster ------------------------------------------------------------------------


def statuses(servers: Sequence[str], attempt_timeout: float = 1.0) -> dict[str, dict]:
    """Each node's status; {"addr", "role": "unreachable"} for a node that did not answer."""
    out: dict[str, dict] = {}
    for server in servers:
        client = AuctionClient([server], timeout=attempt_timeout, attempt_timeout=attempt_timeout)
        try:
            out[server] = client.status()[0]
        except ClientError as exc:
            out[server] = {"addr": server, "role": "unreachable", "error": str(exc)}
        finally:
            client.close()
    return out


def agreed_leader(found: dict[str, dict]) -> str | None:
    """The leader once every node answers, in one term, naming the same leader."""
    values = list(found.values())
    leaders = [s.get("addr") for s in values if s.get("role") == "leader"]
    if len(leaders) != 1 or len({s.get("term") for s in values}) != 1:
        return None
    return leaders[0] if all(s.get("leader") == leaders[0] for s in values) else None


def read_auctions(servers: Sequence[str], timeout: float = 10.0) -> dict[str, dict]:
    """Every auction's result, by id: one linearizable read."""
    client = AuctionClient(list(servers), timeout=timeout)
    try:
        return {a["auction"]: a for a in client.auctions()}
    finally:
        client.close()


def read_replica(server: str, timeout: float = 3.0) -> dict[str, dict]:
    """One node's own replica (a stale read served by that node)."""
    client = AuctionClient([server], timeout=timeout)
    try:
        return {a["auction"]: a for a in client.auctions(stale=True)}
    finally:
        client.close()


def read_history(servers: Sequence[str], auction: str, timeout: float = 10.0) -> list[dict]:
    client = AuctionClient(list(servers), timeout=timeout)
    try:
        return client.history(auction)
    finally:
        client.close()


def peak_rss_kb(pid: int) -> int | None:
    """The peak resident set size of a process (VmHWM in /proc/PID/status), Linux only."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def compare_auctions(before: dict[str, dict], after: dict[str, dict], polite: PoliteReport,
                     now_ms: int, explain: Callable[[str], str | None] = lambda _: None,
                     ) -> list[str]:
    """What differs between `after` and `before` plus the polite client's auction."""
    diffs: list[str] = []
    for auction, old in sorted(before.items()):
        new = after.get(auction)
        if new is None:
            diffs.append(f"auction {auction!r} vanished (was {old})")
        elif new != old and not _closed_on_time(old, new, now_ms):
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            diffs.append(f"auction {auction!r} changed {changed}: was "
                         f"{ {k: old.get(k) for k in changed} }, now "
                         f"{ {k: new.get(k) for k in changed} }")
    for auction in sorted(set(after) - set(before) - {polite.auction}):
        why = explain(auction)
        new = after[auction]
        diffs.append(f"auction {auction!r} appeared ({new.get('state')}, {new.get('bids')} bids"
                     f", closes_at_ms {new.get('closes_at_ms')})"
                     + (f": created by the flood's {why}" if why else ""))
    if polite.opened:
        diffs += _polite_diffs(after.get(polite.auction), polite)
    return diffs


def _closed_on_time(old: dict, new: dict, now_ms: int) -> bool:
    """An open auction whose closing time passed was closed by the leader: not our doing."""
    closes = old.get("closes_at_ms")
    if old.get("state") != "open" or new.get("state") != "closed" or type(closes) is not int:
        return False
    if closes > now_ms:
        return False
    same = ("highest", "bids", "item", "reserve", "increment", "opens_at_ms", "closes_at_ms")
    return all(old.get(k) == new.get(k) for k in same)


def _polite_diffs(result: dict | None, polite: PoliteReport) -> list[str]:
    if result is None:
        return [f"the polite auction {polite.auction!r} is missing"]
    diffs = []
    accepted = polite.accepted
    if result.get("bids") != len(accepted):
        diffs.append(f"the polite auction has {result.get('bids')} bids, the polite client "
                     f"had {len(accepted)} accepted")
    highest = result.get("highest")
    want = {"bidder": POLITE_BIDDER, "amount": accepted[-1]} if accepted else None
    if highest != want:
        diffs.append(f"the polite auction's highest bid is {highest}, expected {want}")
    if result.get("state") != "open":
        diffs.append(f"the polite auction is {result.get('state')}, expected open")
    return diffs


def compare_history(history: list[dict], polite: PoliteReport) -> list[str]:
    got = [(h.get("bidder"), h.get("amount")) for h in history]
    want = [(POLITE_BIDDER, amount) for amount in polite.accepted]
    if got == want:
        return []
    return [f"the polite auction's history ({len(got)} bids, ending {got[-3:]}) differs from "
            f"the accepted bids ({len(want)}, ending {want[-3:]})"]


def _counters(status: dict) -> dict[str, int]:
    flat: dict[str, int] = {}
    for key, value in status.items():
        if type(value) is int and key not in ("term", "commit_index", "applied_index",
                                              "last_index", "snapshot_index"):
            flat[key] = value
        elif isinstance(value, dict):
            for sub, inner in value.items():
                if type(inner) is int:
                    flat[f"{key}.{sub}"] = inner
    return flat


def counter_deltas(before: dict, after: dict) -> dict[str, int]:
    old, new = _counters(before), _counters(after)
    return {k: new[k] - old.get(k, 0) for k in sorted(new) if new[k] != old.get(k, 0)}


# --- the polite client --------------------------------------------------------------------------


class _CountingClient(AuctionClient):
    """An AuctionClient that counts the verdict of every attempt (retryable errors too)."""

    verdicts: Counter[str]

    def _attempt(self, server: str, body: dict, timeout: float):  # type: ignore[override]
        counts = self.__dict__.setdefault("verdicts", Counter())
        try:
            verdict = super()._attempt(server, body, timeout)
        except Exception:
            counts["no_answer"] += 1
            raise
        code = getattr(verdict, "code", None)
        counts[f"{type(verdict).__name__}:{code}" if code else type(verdict).__name__] += 1
        return verdict


class PoliteClient(threading.Thread):
    """Bids 1, 2, 3, ... on its own auction until stopped; see the module docstring."""

    def __init__(self, servers: Sequence[str], config: FloodConfig, report: PoliteReport):
        super().__init__(name="polite-client", daemon=True)
        self.config = config
        self.report = report
        self.stop_event = threading.Event()
        self.ready = threading.Event()  # the auction is open (or opening failed)
        self._context = zmq.Context()
        self._client = _CountingClient(list(servers), timeout=config.polite_call_timeout_s,
                                       attempt_timeout=0.5, context=self._context)
        self._seq = 0
        self._give_up_at = math.inf
        report.auction = f"polite-{uuid.uuid4().hex[:12]}"

    def stop(self, grace_s: float) -> None:
        """Finish the bid in flight (retrying it for at most `grace_s`), then end."""
        self._give_up_at = time.monotonic() + grace_s
        self.stop_event.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 (reported, not raised in a thread)
            self.report.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.ready.set()
            self.report.verdicts = dict(getattr(self._client, "verdicts", {}))
            self._client.close()
            self._context.term()

    def _run(self) -> None:
        report = self.report
        outcome = self._write("open", auction=report.auction, duration_ms=POLITE_AUCTION_MS,
                              item="polite", reserve=1, increment=1)
        report.opened = outcome == "ok"
        self.ready.set()
        if not report.opened:
            report.errors.append(f"could not open the polite auction: {outcome}")
            return
        for amount in itertools.count(1):
            if self.stop_event.is_set():
                return
            outcome = self._write("bid", auction=report.auction, bidder=POLITE_BIDDER,
                                  amount=amount)
            if outcome == "ok":
                report.accepted.append(amount)
            elif outcome.startswith("rejected"):
                report.rejected.append((amount, outcome))
            else:
                report.failed.append((amount, outcome))
                if outcome.startswith("unanswered"):
                    return  # its fate is unknown: a next bid could not be judged against it
            self.stop_event.wait(self.config.polite_interval_s)

    def _write(self, op: str, **fields: Any) -> str:
        """One write with a new seq, retried with the same seq until answered: its outcome."""
        self._seq += 1
        seq, calls, started = self._seq, 0, time.monotonic()
        while True:
            calls += 1
            t0 = time.monotonic()
            try:
                self._client.call(op, client=self._client.client_id, seq=seq, **fields)
                outcome = "ok"
            except BidRejected as exc:
                outcome = f"rejected: {exc.reason}"
            except (BadRequest, UnknownAuctionError) as exc:
                outcome = f"refused: {type(exc).__name__}: {exc}"
            except ClusterUnavailable:  # RequestTimeout too: nobody completed it in time
                self.report.unanswered_calls += 1
                if time.monotonic() >= self._give_up_at:
                    return f"unanswered after {calls} calls"
                continue
            now = time.monotonic()
            self.report.call_latencies_ms.append((now - t0) * 1000)
            if op == "bid":
                self.report.bid_latencies_ms.append((now - started) * 1000)
                self.report.retried_bids += calls > 1
            return outcome


# --- hostile payloads ---------------------------------------------------------------------------


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@dataclass(frozen=True, slots=True)
class TypedRequest:
    """One typed-but-wrong request: `field` of `op` set to BAD_VALUES[value_index]."""

    op: str
    field: str
    value_index: int
    body: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.op} with {self.field}={_show(BAD_VALUES[self.value_index])}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:16]}...({len(text)} chars)"


def typed_requests(client_id: str) -> list[TypedRequest]:
    """Every op with each of its fields, and each envelope field, set to each bad value; the
    other fields valid. A write names an auction that does not exist, except `open`, whose
    auction id says which request it is (so an auction that appears can be explained)."""
    table: list[TypedRequest] = []
    for op in sorted(OPS):
        fields = list(_FIELDS.get(op, ())) + list(ENVELOPE_FIELDS)
        if op in WRITE_OPS:
            fields += list(WRITE_ENVELOPE_FIELDS)
        if op == "open":  # stale and stream mean nothing to a write that would succeed
            fields = [f for f in fields if f not in ("stale", "stream")]
        for name in fields:
            for index, value in enumerate(BAD_VALUES):
                if spec_allows(name, value):
                    continue
                body = _valid_body(op, f"flood-{op}-{name}-{index}", client_id)
                if name == "closes_at_ms":
                    del body["duration_ms"]  # give exactly one of the two
                body[name] = value
                table.append(TypedRequest(op, name, index, body))
    return table


def spec_allows(name: str, value: Any) -> bool:
    """Whether docs/protocol.md allows `value` for field `name` (the flood sends only values
    it forbids, so that an accepted write is the server's fault)."""
    is_int = type(value) is int
    if name == "item":
        return type(value) is str and len(value) <= 256
    if name == "client":
        return type(value) is str and 1 <= len(value) <= 64
    if name in ("seq", "reserve", "increment", "opens_at_ms", "closes_at_ms"):
        return is_int and value >= (0 if name == "seq" else 1)  # no upper bound documented
    if name in ("stale", "stream"):
        return type(value) is bool
    return False


def _valid_body(op: str, auction: str, client_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"op": op}
    if op in WRITE_OPS:
        body.update(client=client_id, seq=1)
    if op == "bid":
        body.update(auction=MISSING_AUCTION, bidder="flood", amount=1)
    elif op == "open":
        body.update(auction=auction[:64], duration_ms=60_000, item="flood", reserve=1,
                    increment=1)
    elif op in ("close", "forget"):
        body.update(auction=MISSING_AUCTION)
    elif op in ("result", "history"):
        body.update(auction=MISSING_AUCTION)
    elif op == "events":
        body.update(auction=MISSING_AUCTION, after_seq=0)
    return body


def bombs(rng: random.Random, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    """Endless msgpack bombs (name, payload), each at most `max_bytes`."""
    headers = [b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
               b"\xdf\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xdc\xff\xff",
               b"\xde\xff\xff", b"\xda\xff\xff", b"\xc5\xff\xff"]
    while True:
        size = int(math.exp(rng.uniform(math.log(64), math.log(max(65, max_bytes)))))
        which = rng.randrange(9)
        if which == 0:
            yield "nested_arrays", b"\x91" * (size - 1) + b"\xc0"
        elif which == 1:
            yield "nested_maps", b"\x81\xa1k" * (size // 3) + b"\xc0"
        elif which == 2:
            prefix = rng.choice([b"", b"\x91", b"\x82\xa2op\xa3bid\xa3rid", b"\x98\x03\x01"])
            yield "huge_length", prefix + rng.choice(headers) + rng.randbytes(rng.randrange(16))
        elif which == 3:
            keys = max(1, size // 8)
            yield "many_keys", _packb({f"k{i:x}": i & 0x7F for i in range(keys)})
        elif which == 4:
            items = max(1, size - 5)
            yield "many_items", b"\xdd" + items.to_bytes(4, "big") + b"\xc0" * items
        elif which == 5:
            yield "long_strings", _packb({"op": "bid", "rid": 1, "auction": "a" * size})
        elif which == 6:
            count = max(1, size // 8)
            yield "big_append", _packb([3, 1, "x", "y", 0, 0, [[1, 1, 0, b""]] * count, 0])
        elif which == 7:
            yield "nested_in_request", _packb({"op": "bid", "rid": 1,
                                              "amount": msgpack.ExtType(1, b"")}) + \
                b"\x91" * (size - 40)
        else:
            yield "many_requests", _packb({"op": "status", "rid": 1}) * max(1, size // 20)


# --- sockets --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Dealer:
    sock: zmq.Socket
    routing_id: bytes | None
    impersonates: str | None  # the member whose routing id it wears


@dataclass(slots=True)
class _Target:
    addr: str
    status: dict
    random: list[_Dealer] = field(default_factory=list)
    impostors: dict[str, _Dealer] = field(default_factory=dict)  # by member id worn
    subs: list[zmq.Socket] = field(default_factory=list)
    xsub: zmq.Socket | None = None

    @property
    def term(self) -> int:
        term = self.status.get("term")
        return term if type(term) is int else 0

    @property
    def last_index(self) -> int:
        index = self.status.get("last_index")
        return index if type(index) is int else 0


class Flood:
    """The flood itself (sockets, the mix, pacing, replies). run_flood() wraps it with the
    polite client and the before/after reads."""

    def __init__(self, config: FloodConfig, before: dict[str, dict], report: FloodReport):
        self.config = config
        self.report = report
        self.rng = random.Random(config.seed)
        self.context = zmq.Context()
        self.sent: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.replies: Counter[str] = Counter()
        self.bomb_kinds: Counter[str] = Counter()
        self.messages = 0  # sent or dropped: what the `frames` bound counts
        self.client_id = f"flood-{uuid.uuid4().hex[:8]}"
        self.table = typed_requests(self.client_id)
        self.table_pos = 0
        self.rids = itertools.count(1)
        self.fids = itertools.count(1)
        self.seq = itertools.count(1)
        self.writes: dict[int, str] = {}  # rid or fid -> label of a malformed write in flight
        self.bombs = bombs(self.rng, config.max_bomb_bytes)
        self.members = sorted({*config.servers,
                               *(m for s in before.values() for m in s.get("members", ())
                                 if type(m) is str)})
        self.cluster_id = next((s["cluster"] for s in before.values()
                                if type(s.get("cluster")) is str), "")
        self.targets = [_Target(addr, before.get(addr, {})) for addr in config.servers]
        chosen = [c for c in config.categories if c in WEIGHTS]
        if not config.impersonate:
            chosen = [c for c in chosen if c != "hello_hijack"]
        self.categories = chosen
        self.weights = [WEIGHTS[c] for c in chosen]
        self.hijack_pub: zmq.Socket | None = None
        self.topics: dict[zmq.Socket, deque[bytes]] = {}  # each SUB's large subscriptions
        self.hijack_endpoint: str | None = None

    # --- sockets ----------------------------------------------------------------------------

    def open(self) -> None:
        for target in self.targets:
            for _ in range(self.config.random_dealers):
                target.random.append(self._dealer(target.addr, None))
            if self.config.impersonate:
                for member in self.members:
                    target.impostors[member] = self._dealer(target.addr, member)
            if "subscription" in self.categories:
                self._open_subs(target)
        if "hello_hijack" in self.categories:
            host = self.targets[0].addr.rsplit(":", 1)[0]
            self.hijack_pub = self._socket(zmq.PUB)
            self.hijack_pub.bind(f"tcp://{host}:*")
            port = self.hijack_pub.get(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1]
            self.hijack_endpoint = f"tcp://{host}:{port}"

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.config.hwm)
        sock.setsockopt(zmq.RCVHWM, self.config.hwm)
        self.report.sockets_opened += 1
        return sock

    def _dealer(self, addr: str, impersonates: str | None) -> _Dealer:
        sock = self._socket(zmq.DEALER)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        if impersonates is not None:
            routing_id: bytes | None = impersonates.encode()
        elif self.rng.random() < 0.7:
            routing_id = bytes([self.rng.randrange(1, 256)]) + self.rng.randbytes(
                self.rng.randrange(0, 64))
        else:
            routing_id = None  # the ROUTER picks one
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.connect(f"tcp://{addr}")
        return _Dealer(sock, routing_id, impersonates)

    def _open_subs(self, target: _Target) -> None:
        pub = target.status.get("pub")
        if type(pub) is not str or not pub.startswith("tcp://"):
            self.report.errors.append(f"{target.addr}: no pub endpoint in its status")
            return
        for i in range(self.config.subs_per_node):
            sub = self._socket(zmq.SUB)
            sub.connect(pub)
            sub.setsockopt(zmq.SUBSCRIBE, b"" if i == 0 else b"feed/")
            target.subs.append(sub)  # the first one is never read: a slow consumer
            for _ in range(self.config.topics_per_sub):
                self._subscribe(sub)
        target.xsub = self._socket(zmq.XSUB)
        target.xsub.connect(pub)

    def _subscribe(self, sub: zmq.Socket) -> None:
        """One more large subscription; past topics_per_sub, the oldest is dropped first (a SUB
        keeps every topic it subscribed to in a trie, and resends them all on reconnection:
        without the bound the flood itself grew by gigabytes)."""
        most = max(2, min(self.config.max_topic_bytes, MAX_TOPIC_BYTES))
        size = int(math.exp(self.rng.uniform(0, math.log(most))))
        topic = self.rng.choice([b"feed/", b"hb", b""]) + self.rng.randbytes(size)
        topics = self.topics.setdefault(sub, deque())
        if len(topics) >= self.config.topics_per_sub:
            sub.setsockopt(zmq.UNSUBSCRIBE, topics.popleft())
        sub.setsockopt(zmq.SUBSCRIBE, topic)
        topics.append(topic)
        self.report.subscribed_bytes += len(topic)

    def _replace_one(self) -> None:
        target = self.rng.choice(self.targets)
        pool: list[tuple[str, Any]] = [("random", i) for i in range(len(target.random))]
        pool += [("impostor", m) for m in target.impostors]
        if not pool:
            return
        kind, key = self.rng.choice(pool)
        if kind == "random":
            target.random[key].sock.close(linger=0)
            target.random[key] = self._dealer(target.addr, None)
        else:
            target.impostors[key].sock.close(linger=0)
            target.impostors[key] = self._dealer(target.addr, key)
        self.report.sockets_replaced += 1

    def close(self) -> None:
        self.context.destroy(linger=0)

    # --- sending ------------------------------------------------------------------------------

    def _send(self, sock: zmq.Socket, frames: list[bytes], category: str) -> None:
        self.messages += 1
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=len(frames[-1]) < 4096)
            self.sent[category] += 1
        except zmq.Again:
            self.dropped[category] += 1
        except zmq.ZMQError as exc:
            self.dropped[category] += 1
            self._error(f"send {category}: {exc}")

    def _error(self, text: str) -> None:
        if len(self.report.errors) < 50:
            self.report.errors.append(text)

    def _any_dealer(self, target: _Target, impostor_share: float = 0.2) -> _Dealer:
        if target.impostors and (not target.random or self.rng.random() < impostor_share):
            return self.rng.choice(list(target.impostors.values()))
        return self.rng.choice(target.random)

    def step(self) -> None:
        """Send one message of a category drawn by weight."""
        category = self.rng.choices(self.categories, self.weights)[0]
        target = self.rng.choice(self.targets)
        getattr(self, f"_{category}")(target, category)

    def _random_bytes(self, target: _Target, category: str) -> None:
        kind = self.rng.choice([CLIENT_KIND, FORWARD_KIND, PEER_KIND, FORWARD_REPLY_KIND, HELLO,
                                self.rng.randbytes(self.rng.randrange(1, 17))])
        size = self.rng.choice([0, 1, 8, 64, 512, 4096, MAX_REQUEST_BYTES + 1])
        self._send(self._any_dealer(target).sock, [kind, self.rng.randbytes(size)], category)

    def _frame_count(self, target: _Target, category: str) -> None:
        count = self.rng.choice([1, 2, 3, 4, 10])
        body = _packb({"op": "status", "rid": next(self.rids)})
        if count == 2:  # the right count, with a kind that is empty or too long
            frames = [self.rng.choice([b"", b"C" * 17, b"K" * 255]), body]
        else:
            kinds = [CLIENT_KIND, PEER_KIND, FORWARD_KIND, HELLO, b""]
            frames = [self.rng.choice(kinds)] + [
                self.rng.choice([body, b"", self.rng.randbytes(32)]) for _ in range(count - 1)]
        self._send(self._any_dealer(target).sock, frames, category)

    def _unknown_kind(self, target: _Target, category: str) -> None:
        kind = self.rng.choice([HELLO_ACK, FORWARD_REPLY_KIND, HEARTBEAT_TOPIC, b"c", b"C\x00",
                                b"\x00", b"CC", b"p", b"PP", b"f", b"Z" * 16, b"hello",
                                self.rng.randbytes(self.rng.randrange(1, 17))])
        if kind in (CLIENT_KIND, FORWARD_KIND, PEER_KIND, HELLO):
            kind = b"?" + kind
        payload = self.rng.choice([_packb({"op": "status", "rid": next(self.rids)}),
                                   _packb({"fid": 1, "reply": b"x"}), b"", b"\xc1"])
        self._send(self._any_dealer(target).sock, [kind, payload], category)

    def _bomb(self, target: _Target, category: str) -> None:
        name, payload = next(self.bombs)
        kind = self.rng.choice([CLIENT_KIND, PEER_KIND, FORWARD_KIND, HELLO])
        if kind == CLIENT_KIND and len(payload) > MAX_REQUEST_BYTES:
            payload = payload[:MAX_REQUEST_BYTES]
        elif kind == HELLO:
            payload = payload[:4096]
        elif kind == FORWARD_KIND and self.rng.random() < 0.5:
            payload = _packb({"fid": next(self.fids), "req": payload[:MAX_REQUEST_BYTES]})
        self._send(self._any_dealer(target).sock, [kind, payload], category)
        self.bomb_kinds[name] += 1

    def _next_typed(self) -> TypedRequest:
        typed = self.table[self.table_pos % len(self.table)]
        self.table_pos += 1
        return typed

    def _typed_body(self, typed: TypedRequest, rid: int) -> dict[str, Any]:
        body = dict(typed.body)
        if typed.field != "rid":
            body["rid"] = rid
        if typed.op in WRITE_OPS and typed.field != "seq":
            body["seq"] = next(self.seq)
        if typed.op in WRITE_OPS:
            self._remember(rid, typed.label)
        return body

    def _remember(self, key: int, label: str) -> None:
        if len(self.writes) > 200_000:
            self.writes.clear()
        self.writes[key] = label

    def _typed_request(self, target: _Target, category: str) -> None:
        typed = self._next_typed()
        body = self._typed_body(typed, next(self.rids))
        try:
            payload = _packb(body)
        except (TypeError, ValueError, OverflowError) as exc:
            self._error(f"cannot pack {typed.label}: {exc}")
            return
        self._send(self._any_dealer(target, 0.1).sock, [CLIENT_KIND, payload], category)

    def _request_stream(self, target: _Target, category: str) -> None:
        shape = self.rng.randrange(4)
        if shape == 0:  # the most requests a frame may hold, streamed replies
            one = [_packb({"op": "status", "rid": next(self.rids), "stream": True})]
            frame = b"".join(one * MAX_REQUESTS_PER_FRAME)
        elif shape == 1:  # one request too many
            frame = _packb({"op": "status", "rid": 1}) * (MAX_REQUESTS_PER_FRAME + 1)
        else:  # typed garbage back to back, sometimes cut inside the last one
            parts, size = [], 0
            while size < self.rng.choice([1024, 16_384, MAX_REQUEST_BYTES - 1024]):
                typed = self._next_typed()
                body = self._typed_body(typed, next(self.rids))
                body.setdefault("stream", self.rng.random() < 0.5)
                part = _packb(body)
                if size + len(part) > MAX_REQUEST_BYTES:
                    break
                parts.append(part)
                size += len(part)
            frame = b"".join(parts)
            if shape == 3 and frame:
                frame = frame[:-1]
        self._send(self._any_dealer(target, 0.1).sock, [CLIENT_KIND, frame], category)

    # forged consensus messages

    def _terms(self, target: _Target) -> list[int]:
        return [MAX_INT, MAX_INT - 1, 2**62, 2**32, target.term + 1, target.term, 0]

    def _indexes(self, target: _Target) -> list[int]:
        return [MAX_INT, 2**62, target.last_index + 1, target.last_index, 1, 0]

    def forged_message(self, target: _Target, src: str) -> Any:
        rng = self.rng
        term, index = rng.choice(self._terms(target)), rng.choice(self._indexes(target))
        dst = target.addr if rng.random() < 0.9 else rng.choice([*self.members, "nobody:1"])
        which = rng.randrange(9)
        if which == 0:
            return VoteRequest(term, src, dst, index, term, rng.random() < 0.5,
                               rng.random() < 0.2)
        if which == 1:
            return VoteResponse(term, src, dst, True, rng.random() < 0.5)
        if which == 2:
            prev = min(index, MAX_INT - 8)
            entries = tuple(
                Entry(term, prev + 1 + i, rng.choice([b"", rng.randbytes(16), b"\x95\x01"]),
                      rng.choice(list(EntryKind)))
                for i in range(rng.randrange(4)))
            return Append(term, src, dst, prev, rng.choice([term, 0, target.term]), entries,
                          rng.choice([index, prev + len(entries)]))
        if which == 3:
            return AppendResponse(term, src, dst, rng.random() < 0.7, index, index, term)
        if which == 4:
            return Heartbeat(term, src, index, rng.choice([index, 0, MAX_INT]))
        if which == 5:
            return HeartbeatResponse(term, src, dst, rng.choice([index, MAX_INT]), index)
        if which == 6:
            return InstallSnapshot(term, src, dst, index, term, rng.choice([0, index]),
                                   rng.randbytes(rng.choice([0, 16, 4096])), rng.random() < 0.5)
        if which == 7:
            return SnapshotResponse(term, src, dst, index, index, rng.random() < 0.5)
        return TimeoutNow(term, src, dst)

    def _forged_consensus(self, target: _Target, category: str) -> None:
        src = self.rng.choice([*self.members, "nobody:1"])
        dealer = target.impostors.get(src) if self.rng.random() < 0.7 else None
        if dealer is None:
            dealer = self._any_dealer(target)
        self._send(dealer.sock, [PEER_KIND, encode_message(self.forged_message(target, src))],
                   category)

    def _forged_forward(self, target: _Target, category: str) -> None:
        rng = self.rng
        if rng.random() < 0.15:
            frames = [FORWARD_REPLY_KIND, _packb({"fid": rng.choice([1, -1, 2**64 - 1, "x"]),
                                                 "reply": rng.choice([b"x", b"\xc1", 5])})]
        else:
            fid = next(self.fids)
            typed = self._next_typed()
            inner_body = self._typed_body(typed, next(self.rids))
            try:
                inner = _packb(inner_body)
            except (TypeError, ValueError, OverflowError):
                inner = b"\xc1"
            if typed.op in WRITE_OPS:
                self._remember(-fid, typed.label)
            req = rng.choice([inner, inner, rng.randbytes(32), b"", b"\xc1", "text", 5, None])
            fid_value = fid if rng.random() < 0.8 else rng.choice([-1, 2**64 - 1, "1", None, 1.5])
            body: Any = {"fid": fid_value, "req": req}
            if rng.random() < 0.1:
                body = rng.choice([{"fid": fid}, {"req": inner}, [fid, inner], {}, None])
            frames = [FORWARD_KIND, _packb(body)]
        dealer = self._any_dealer(target, impostor_share=0.5)
        self._send(dealer.sock, frames, category)

    def _hello(self, target: _Target, category: str) -> None:
        rng = self.rng
        member = rng.choice(self.members)
        pub = rng.choice(["tcp://127.0.0.1:1", "", "tcp://nowhere:65535", "udp://x:1",
                          "tcp://" + "h" * 300 + ":1"])
        cluster = rng.choice([self.cluster_id + "-wrong", "wrong", "x" * 300, self.cluster_id])
        body: Any = {"id": rng.choice([member, "", "nobody:1", "x" * 300]), "pub": pub,
                     "cluster": cluster}
        if cluster == self.cluster_id and body["id"] == member:
            body["cluster"] = "wrong"  # right cluster + member id: hello_hijack's business
        if rng.random() < 0.2:
            body = rng.choice([{"id": member}, [member, pub, cluster], {"id": 1, "pub": 2},
                               {**body, "extra": "x" * 1000}, None])
        kind = HELLO if rng.random() < 0.9 else HELLO_ACK
        self._send(self._any_dealer(target, impostor_share=0.3).sock, [kind, _packb(body)],
                   category)

    def _hello_hijack(self, target: _Target, category: str) -> None:
        """Right cluster, a member's id from a DEALER wearing it: the node points its SUB for
        that member at our PUB, where we publish forged heartbeats."""
        members = [m for m in target.impostors if m != target.addr]
        if not members or self.hijack_pub is None:
            return
        member = self.rng.choice(members)
        body = {"id": member, "pub": self.hijack_endpoint, "cluster": self.cluster_id}
        self._send(target.impostors[member].sock, [HELLO, _packb(body)], category)
        for _ in range(4):
            beat = Heartbeat(self.rng.choice(self._terms(target)), member,
                             self.rng.choice(self._indexes(target)), self.rng.randrange(2**20))
            self._send(self.hijack_pub, [HEARTBEAT_TOPIC, encode_message(beat)], category)

    def _subscription(self, target: _Target, category: str) -> None:
        if target.subs and self.rng.random() < 0.7:
            sub = self.rng.choice(target.subs)
            self._subscribe(sub)
            self.sent[category] += 1
            self.messages += 1
        elif target.xsub is not None:
            # An XSUB remembers the subscriptions sent through it (to resend them on
            # reconnection), so each one is withdrawn at once: the flood must stay bounded.
            topic = self.rng.randbytes(self.rng.randrange(1, 4096))
            if self.rng.random() < 0.5:
                self._send(target.xsub, [b"\x01" + topic], category)
                self._send(target.xsub, [b"\x00" + topic], category)
            else:  # neither a subscription nor an unsubscription: the PUB must ignore it
                garbage = bytes([self.rng.randrange(2, 256)]) + self.rng.randbytes(
                    self.rng.randrange(0, 512))
                self._send(target.xsub, [self.rng.choice([garbage, b""])], category)

    # --- receiving ---------------------------------------------------------------------------

    def drain(self, budget: int = 2000) -> None:
        """Read what the nodes sent back (never blocking), at most `budget` messages."""
        for target in self.targets:
            dealers = [*target.random, *target.impostors.values()]
            for dealer in dealers:
                budget = self._drain_dealer(dealer.sock, budget)
            for sub in target.subs[1:]:  # the first SUB stays a slow consumer
                budget = self._drain_sub(sub, budget)
            if budget <= 0:
                return

    def _drain_dealer(self, sock: zmq.Socket, budget: int) -> int:
        while budget > 0:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                self._error(f"recv: {exc}")
                break
            budget -= 1
            self._on_reply(frames)
        return budget

    def _drain_sub(self, sock: zmq.Socket, budget: int) -> int:
        while budget > 0:
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                break
            budget -= 1
            self.replies["pub"] += 1
        return budget

    def _on_reply(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.replies[f"frames={len(frames)}"] += 1
            return
        kind, payload = frames
        if kind == CLIENT_KIND:
            try:
                replies = decode_replies(payload)
            except ProtocolError:
                self.replies["C:undecodable"] += 1
                return
            for reply in replies:
                self._judge(reply, reply.get("rid"), "C")
        elif kind == FORWARD_REPLY_KIND:
            try:
                body = msgpack.unpackb(payload, raw=False)
                reply = decode_reply(body["reply"])
                fid = body["fid"]
            except (ValueError, TypeError, KeyError, ProtocolError, msgpack.UnpackException):
                self.replies["FR:undecodable"] += 1
                return
            self._judge(reply, -fid if type(fid) is int else None, "FR")
        else:
            self.replies[kind.decode(errors="replace")[:16]] += 1

    def _judge(self, reply: dict, key: Any, via: str) -> None:
        code = "ok" if reply.get("ok") is True else str(reply.get("error"))
        self.replies[f"{via}:{code}"] += 1
        label = self.writes.pop(key, None) if type(key) is int else None
        if label is not None and reply.get("ok") is True:
            self.report.garbage_accepted_count += 1
            if len(self.report.garbage_accepted) < 50:
                self.report.garbage_accepted.append(f"{label} (via {via}): {reply.get('result')}")

    # --- running -------------------------------------------------------------------------------

    def run(self) -> None:
        config = self.config
        if not self.categories:
            return
        start = time.monotonic()
        deadline = start + config.seconds if config.seconds is not None else math.inf
        limit = config.frames if config.frames is not None else math.inf
        steps = 0
        midway: threading.Thread | None = None
        while self.messages < limit:
            now = time.monotonic()
            if now >= deadline:
                break
            if midway is None and config.midway is not None and (
                    self.messages >= limit / 2 or now - start >= (deadline - start) / 2):
                midway = threading.Thread(target=self._run_midway, name="flood-midway",
                                          daemon=True)
                midway.start()
            if config.rate > 0:
                ahead = start + self.messages / config.rate - now
                if ahead > 0.002:
                    self.drain()
                    time.sleep(min(ahead, 0.05))  # pacing: the rate limit
                    continue
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 (a flood bug must not end the run)
                self._error(f"{type(exc).__name__}: {exc}")
            steps += 1
            if steps % 64 == 0:
                self.drain()
            if config.churn_every and steps % config.churn_every == 0:
                self._replace_one()
        if midway is not None:
            midway.join()
        end = time.monotonic() + config.drain_s
        while time.monotonic() < end:
            self.drain()
            time.sleep(0.01)  # reading the last replies until the drain time is over
        self.report.elapsed_s = round(time.monotonic() - start, 3)

    def _run_midway(self) -> None:
        try:
            assert self.config.midway is not None
            self.config.midway()
        except Exception as exc:  # noqa: BLE001 (reported with the flood's errors)
            self.report.errors.append(f"midway: {type(exc).__name__}: {exc}")

    def finish(self) -> None:
        report = self.report
        report.sent = dict(sorted(self.sent.items()))
        report.dropped = dict(sorted(self.dropped.items()))
        report.replies = dict(sorted(self.replies.items()))
        report.bombs = dict(sorted(self.bomb_kinds.items()))

    def explain_auction(self, auction: str) -> str | None:
        for typed in self.table:
            if typed.op == "open" and typed.body.get("auction") == auction:
                return f"typed-but-wrong request: {typed.label}"
        return None


# --- the whole run ----------------------------------------------------------------------------------


def run_flood(config: FloodConfig) -> FloodReport:
    """Read the cluster, flood it with the polite client alongside, let it settle, read it
    again, and report (see FloodReport). Never raises for what the cluster does."""
    servers = list(config.servers)
    report = FloodReport(servers=servers)
    report.before = statuses(servers)
    report.leader_before = agreed_leader(report.before)
    report.term_before = _term_of(report.before, report.leader_before)
    try:
        auctions_before = read_auctions(servers)
    except ClientError as exc:
        report.errors.append(f"could not read the auctions before the flood: {exc}")
        auctions_before = None
    polite = PoliteClient(servers, config, report.polite) if config.polite else None
    if polite is not None:
        polite.start()
        polite.ready.wait(config.polite_call_timeout_s * 3)
    flood = Flood(config, report.before, report)
    try:
        flood.open()
        flood.run()
    finally:
        flood.finish()
        flood.close()
        if polite is not None:
            polite.stop(config.polite_grace_s)
            polite.join(config.polite_grace_s + config.polite_call_timeout_s + 5)
            if polite.is_alive():
                report.polite.errors.append("the polite client did not stop in time")
    _settle_and_read(report, config, auctions_before, flood.explain_auction)
    return report


def _term_of(found: dict[str, dict], leader: str | None) -> int | None:
    status = found.get(leader) if leader else None
    if status is None:
        terms = [s.get("term") for s in found.values() if type(s.get("term")) is int]
        return max(terms) if terms else None
    return status.get("term")


def _settle_and_read(report: FloodReport, config: FloodConfig,
                     auctions_before: dict[str, dict] | None,
                     explain: Callable[[str], str | None]) -> None:
    servers = report.servers
    deadline = time.monotonic() + config.settle_s
    while True:
        found = statuses(servers, attempt_timeout=1.0)
        leader = agreed_leader(found)
        applied = {(s.get("applied_index"), s.get("commit_index")) for s in found.values()}
        settled = (leader is not None and len(applied) == 1
                   and next(iter(applied))[0] == next(iter(applied))[1])
        if settled or time.monotonic() >= deadline:
            break
        time.sleep(0.1)  # polling the cluster until it settles, up to the deadline
    report.after = found
    report.settled = settled
    report.leader_after = leader
    report.term_after = _term_of(found, leader)
    report.unanswered_status = [a for a, s in found.items() if s.get("role") == "unreachable"]
    report.counters = {a: counter_deltas(report.before.get(a, {}), found[a]) for a in servers
                       if found[a].get("role") != "unreachable"}
    if auctions_before is None:
        return
    now_ms = int(time.time() * 1000)
    try:
        after = read_auctions(servers)
    except ClientError as exc:
        report.state_diffs.append(f"could not read the auctions after the flood: {exc}")
        return
    report.state_diffs = compare_auctions(auctions_before, after, report.polite, now_ms, explain)
    if report.polite.opened:
        try:
            report.state_diffs += compare_history(
                read_history(servers, report.polite.auction), report.polite)
        except ClientError as exc:
            report.state_diffs.append(f"could not read the polite auction's history: {exc}")
    for server in servers:
        try:
            replica = read_replica(server)
        except ClientError as exc:
            report.node_state_diffs[server] = [f"no stale read: {exc}"]
            continue
        report.node_state_diffs[server] = [
            f"differs from the cluster's state: {d}"
            for d in compare_auctions(after, replica, PoliteReport(), now_ms)]
