"""docs/protocol.md's examples, replayed against a real node.

The document writes each example as a marker line and a ```json block (its section "How to
read the examples" defines them): `request:`, `requests in one frame:` or `frames:` say what
to send, and `reply:`, `replies:`, `reply frames:` or `no reply` what must come back. This
test starts a one-node cluster (by PID, stopped at the end), sends each example in document
order from a fresh DEALER, raw msgpack, and checks the answer has exactly the documented
keys, types and values, placeholders such as "<int>" standing for any value of that type.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from zauction.protocol import READ_OPS
from zauction.tools import cluster as local
from zauction.tools.ports import free_ports

pytestmark = pytest.mark.processes

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
# The node the document's examples assume (its section "How to read the examples").
NODE_ARGS = ("--max-open-auctions-per-client=2",)
REPLY_WAIT_S = 5.0  # the longest any reply may take
NO_REPLY_WAIT_S = 0.5  # how long `no reply` listens
READ_RETRY_S = 5.0  # a time-dependent read is asked again until it matches, this long
SEND_MARKERS = {"request", "requests in one frame", "frames"}
EXPECT_MARKERS = {"reply", "replies", "reply frames"}
PLACEHOLDERS = {
    "<int>": lambda v: type(v) is int,
    "<str>": lambda v: type(v) is str,
    "<number>": lambda v: type(v) in (int, float),
    "<bool>": lambda v: type(v) is bool,
    "<map>": lambda v: type(v) is dict,
    "<list>": lambda v: type(v) is list,
    "<any>": lambda v: True,
}
_MARKER = re.compile(r"^([a-z ]+):$")
_FENCE = "```"


@dataclass(frozen=True, slots=True)
class Example:
    line: int  # where its send block starts in the document
    reply_line: int  # ... and its reply block (or `no reply` line)
    send_marker: str
    send: Any
    expect_marker: str  # an EXPECT_MARKERS entry, or "no reply"
    expect: Any


def json_blocks(text: str) -> Iterator[tuple[int, str | None, str]]:
    """Each ```json block: (line number, the marker before it or None, its text); and each
    `no reply` line as (line number, "no reply", "")."""
    lines = text.splitlines()
    previous: str | None = None  # the last non-blank line outside a block
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line == _FENCE + "json":
            end = lines.index(_FENCE, i + 1)
            match = _MARKER.match(previous or "")
            yield i + 1, match.group(1) if match else None, "\n".join(lines[i + 1:end])
            previous, i = None, end + 1
            continue
        if line.startswith(_FENCE):  # another language's block: skip it whole
            i = lines.index(_FENCE, i + 1) + 1
            continue
        if line == "no reply":
            yield i + 1, "no reply", ""
        if line:
            previous = line
        i += 1


def examples(text: str) -> list[Example]:
    found: list[Example] = []
    pending: tuple[int, str, Any] | None = None
    for line, marker, body in json_blocks(text):
        where = f"docs/protocol.md:{line}"
        assert marker is not None, f"{where}: a json block without a marker line before it"
        value = json.loads(body) if body else None
        if marker == "shape":
            continue
        if marker in SEND_MARKERS:
            assert pending is None, f"{where}: two requests without a reply between them"
            pending = (line, marker, value)
        else:
            assert marker in EXPECT_MARKERS or marker == "no reply", f"{where}: {marker!r}?"
            assert pending is not None, f"{where}: a reply without a request before it"
            found.append(Example(pending[0], line, pending[1], pending[2], marker, value))
            pending = None
    assert pending is None, f"docs/protocol.md:{pending[0]}: a request without a reply"
    return found


# --- comparing -------------------------------------------------------------------------------


def mismatches(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Why `actual` does not have the documented shape (empty when it has)."""
    if type(expected) is str and expected in PLACEHOLDERS:
        ok = PLACEHOLDERS[expected](actual)
        return [] if ok else [f"{path or '.'}: {actual!r} is not {expected}"]
    if type(expected) is dict:
        if type(actual) is not dict:
            return [f"{path or '.'}: expected a map, got {actual!r}"]
        if set(expected) != set(actual):
            return [f"{path or '.'}: keys {sorted(actual)} instead of {sorted(expected)}"]
        return [m for key in expected
                for m in mismatches(expected[key], actual[key], f"{path}.{key}")]
    if type(expected) is list:
        if type(actual) is not list or len(actual) != len(expected):
            return [f"{path or '.'}: expected {len(expected)} items, got {actual!r}"]
        return [m for n, (e, a) in enumerate(zip(expected, actual, strict=True))
                for m in mismatches(e, a, f"{path}[{n}]")]
    if type(expected) is not type(actual) or expected != actual:
        return [f"{path or '.'}: expected {expected!r}, got {actual!r}"]
    return []


def test_the_comparison_itself() -> None:
    assert mismatches({"a": "<int>", "b": [None, 1.5]}, {"a": 3, "b": [None, 1.5]}) == []
    assert mismatches({"a": "<int>"}, {"a": True})  # a bool is not an int
    assert mismatches({"a": 1}, {"a": 1.0})  # nor is a float
    assert mismatches({"a": 1}, {"a": 1, "b": 2})  # an undocumented key
    assert mismatches(["<str>"], ["x", "y"])


def test_the_document_has_examples_of_every_operation() -> None:
    sent = [e.send for e in examples(DOC.read_text()) if e.send_marker == "request"]
    ops = {body.get("op") for body in sent if type(body) is dict}
    assert ops >= {"bid", "open", "close", "forget", "result", "history", "auctions",
                   "events", "status"}


# --- sending ---------------------------------------------------------------------------------


def frames_of(example: Example) -> list[bytes]:
    if example.send_marker == "request":
        return [b"C", msgpack.packb(example.send)]
    if example.send_marker == "requests in one frame":
        return [b"C", b"".join(msgpack.packb(item) for item in example.send)]
    return [frame_bytes(frame) for frame in example.send]


def frame_bytes(frame: Any) -> bytes:
    if type(frame) is str:
        return frame.encode()
    if "hex" in frame:
        return bytes.fromhex(frame["hex"])
    return msgpack.packb(frame["msgpack"])


def decode_stream(payload: bytes) -> list[Any]:
    return list(msgpack.Unpacker(io.BytesIO(payload), raw=False))


def receive(sock: zmq.Socket, deadline: float) -> list[bytes] | None:
    left_ms = max(0, int((deadline - time.monotonic()) * 1000))
    return sock.recv_multipart() if sock.poll(left_ms) else None


def exchange(ctx: zmq.Context, addr: str, example: Example) -> Any:
    """Send the example; what came back, shaped like the example's expectation."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{addr}")
    try:
        sock.send_multipart(frames_of(example))
        if example.expect_marker == "no reply":
            got = receive(sock, time.monotonic() + NO_REPLY_WAIT_S)
            return None if got is None else ["unexpected reply", got]
        deadline = time.monotonic() + REPLY_WAIT_S
        if example.expect_marker == "reply frames":
            got = receive(sock, deadline)
            if got is None or len(got) != len(example.expect):
                return got
            return [decode_frame(f, e) for f, e in zip(got, example.expect, strict=True)]
        wanted = 1 if example.expect_marker == "reply" else len(example.expect)
        replies: list[Any] = []
        while len(replies) < wanted and (got := receive(sock, deadline)) is not None:
            assert len(got) == 2 and got[0] == b"C", f"not a reply: {got!r}"
            replies.extend(decode_stream(got[1]))
        if example.expect_marker == "reply":
            return replies[0] if len(replies) == 1 else replies
        return sorted(replies, key=lambda r: r.get("rid", -1) if type(r) is dict else -1)
    finally:
        sock.close(linger=0)


def decode_frame(frame: bytes, expected: Any) -> Any:
    if type(expected) is dict and "msgpack" in expected:
        return {"msgpack": msgpack.unpackb(frame, raw=False)}
    if type(expected) is dict:
        return {"hex": frame.hex()}
    return frame.decode(errors="replace")


def expected_of(example: Example) -> Any:
    if example.expect_marker == "replies":
        return sorted(example.expect, key=lambda r: r.get("rid", -1))
    return example.expect


def is_read(example: Example) -> bool:
    return (example.send_marker == "request" and type(example.send) is dict
            and example.send.get("op") in READ_OPS)


def check(ctx: zmq.Context, addr: str, example: Example) -> list[str]:
    """The example's mismatches; a read is asked again while its answer may still change."""
    retry_until = time.monotonic() + (READ_RETRY_S if is_read(example) else 0.0)
    while True:
        got = exchange(ctx, addr, example)
        problems = mismatches(expected_of(example), got)
        if not problems or time.monotonic() >= retry_until:
            return problems
        time.sleep(0.05)  # polling a state that changes with time (an auction closing)


# --- the node ----------------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Iterator[str]:
    handle = None
    for attempt in range(3):  # a port may be taken between free_ports() and the bind
        try:
            handle = local.start_cluster(tmp_path / f"attempt{attempt}", ports=free_ports(1),
                                         host="127.0.0.1", node_args=NODE_ARGS)
            local.wait_serving(handle, time.monotonic() + 10)
            break
        except local.PortInUse:  # PortTaken too: the node could not bind
            if handle is not None:
                local.stop_cluster(handle)
            handle = None
    assert handle is not None, "no free port for the node"
    try:
        yield local.wait_for_leader(handle.servers, time.monotonic() + 10, handle)
    finally:
        local.stop_cluster(handle)  # SIGTERM by PID, SIGKILL after a deadline


def wait_for_default_auction(ctx: zmq.Context, addr: str) -> None:
    probe = Example(0, 0, "request", {"op": "result", "rid": 1}, "reply",
                    {"rid": 1, "ok": True, "result": "<map>"})
    assert check(ctx, addr, probe) == [], "the leader did not open the default auction"


@pytest.mark.timeout(60)
def test_every_example_of_the_protocol_document(node: str) -> None:
    found = examples(DOC.read_text())
    assert len(found) > 40
    ctx = zmq.Context.instance()
    wait_for_default_auction(ctx, node)
    failures = []
    for example in found:
        problems = check(ctx, node, example)
        if problems:
            failures.append(f"docs/protocol.md:{example.line} (reply at line "
                            f"{example.reply_line}): " + "; ".join(problems))
    assert not failures, "\n".join(failures)
