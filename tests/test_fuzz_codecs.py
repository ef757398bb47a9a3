"""Property tests of every decoder that reads untrusted bytes: whatever arrives, each raises
only its own typed error, and what it accepts is well formed.

    brokerless.wire.decode_message       only WireError (and valid messages round-trip)
    zauction.protocol.decode_request(s)  only ProtocolError
    brokerless.transport.zeromq.parse_hello  only MalformedFrame

The message strategies are derived from the dataclasses of brokerless/messages.py (their field
annotations), so a new message type or field that this file cannot build fails loudly here.
Examples are fresh on every run (derandomize=False): CI keeps exploring. The whole file takes
about 10-15 s.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from brokerless.messages import MESSAGE_TYPES, Append
from brokerless.transport.zeromq import Hello, is_pub_endpoint, parse_hello
from brokerless.types import Entry, EntryKind
from brokerless.wire import (
    MAX_INT,
    MAX_NODE_ID_CHARS,
    TYPE_CODES,
    MalformedFrame,
    WireError,
    decode_message,
    encode_message,
    field_layout,
)
from zauction.protocol import (
    MAX_REQUEST_BYTES,
    MAX_REQUESTS_PER_FRAME,
    ClientRequest,
    ProtocolError,
    decode_request,
    decode_requests,
    request_from,
)

FUZZ = settings(max_examples=250, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL = settings(FUZZ, max_examples=100)

# --- valid messages, built from the dataclasses ------------------------------------------------

u63 = st.integers(0, MAX_INT)
# Edge values weigh more than uniform draws would give them.
u63_edgy = st.one_of(u63, st.sampled_from([0, 1, 2**31, 2**32, 2**62, MAX_INT - 1, MAX_INT]))
node_ids = st.one_of(
    st.text(min_size=1, max_size=MAX_NODE_ID_CHARS),
    st.sampled_from(["127.0.0.1:7001", "localhost:8001", "x" * MAX_NODE_ID_CHARS,
                     "\U0010ffff" * MAX_NODE_ID_CHARS]),  # 1024 bytes of UTF-8: the limit
)
entry_kinds = st.sampled_from(list(EntryKind))

# Annotation (a string: the modules use `from __future__ import annotations`) -> strategy.
_BY_ANNOTATION: dict[str, st.SearchStrategy[Any]] = {
    "int": u63_edgy,
    "NodeId": node_ids,
    "bool": st.booleans(),
    "bytes": st.binary(max_size=300),
    "EntryKind": entry_kinds,
}


def _strategy_for(annotation: str) -> st.SearchStrategy[Any]:
    if annotation == "tuple[Entry, ...]":
        return st.lists(entries, max_size=6).map(tuple)
    try:
        return _BY_ANNOTATION[annotation]
    except KeyError:
        raise AssertionError(f"no strategy for field type {annotation!r}: add one") from None


def _builds(cls: type) -> st.SearchStrategy[Any]:
    kwargs = {f.name: _strategy_for(str(f.type)) for f in dataclasses.fields(cls)}
    return st.builds(cls, **kwargs)


entries = _builds(Entry)
messages = st.one_of([_builds(cls) for cls in MESSAGE_TYPES])


def test_the_strategies_cover_every_message_type_and_field() -> None:
    assert set(TYPE_CODES) == set(MESSAGE_TYPES)
    for cls in (*MESSAGE_TYPES, Entry):
        for f in dataclasses.fields(cls):
            _strategy_for(str(f.type))  # raises for a field type this file does not know
    for cls in MESSAGE_TYPES:
        assert field_layout(cls) == tuple(f.name for f in dataclasses.fields(cls))


@FUZZ
@given(messages)
def test_every_message_round_trips_exactly(msg: Any) -> None:
    data = encode_message(msg)
    decoded = decode_message(data)
    assert decoded == msg and type(decoded) is type(msg)
    assert encode_message(decoded) == data  # one canonical encoding
    assert decode_message(data, max_bytes=len(data)) == msg  # the limit is inclusive
    with pytest.raises(MalformedFrame):
        decode_message(data, max_bytes=len(data) - 1)
    if isinstance(decoded, Append):
        assert isinstance(decoded.entries, tuple)
        for got in decoded.entries:
            assert type(got) is Entry and type(got.kind) is EntryKind


# --- arbitrary input -------------------------------------------------------------------------------

EDGE_INTS = [0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 10**15, 10**15 + 1, 2**63 - 1,
             2**63, 2**64 - 1, -(2**31) - 1, -(2**63)]
# Every integer msgpack can carry, with its edges (and the protocol's) drawn often.
MSGPACK_INT = st.one_of(st.integers(-(2**63), 2**64 - 1), st.sampled_from(EDGE_INTS))
extensions = st.one_of(  # every decoder refuses these
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999)),
)
scalars = st.one_of(
    st.none(), st.booleans(), MSGPACK_INT,
    st.floats(allow_nan=True, allow_infinity=True), st.floats(width=32),
    st.text(max_size=40), st.binary(max_size=80),
)
leaves = st.integers(0, 19).flatmap(lambda n: extensions if n == 0 else scalars)
# Mostly keys the decoders accept (str, bytes), so that maps get past msgpack.
map_keys = st.integers(0, 9).flatmap(
    lambda n: st.text(max_size=12) if n < 6 else st.binary(max_size=12) if n < 8
    else st.one_of(MSGPACK_INT, st.none(), st.booleans(), st.floats(allow_nan=False)))
objects = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=8),
        st.dictionaries(map_keys, inner, max_size=6),
        st.tuples(inner, inner),
    ),
    max_leaves=25,
)
anything = st.one_of(leaves, leaves, objects)  # a value: more often a scalar than a container


def _packb(obj: Any, use_bin_type: bool = True) -> bytes:
    return msgpack.packb(obj, use_bin_type=use_bin_type, strict_types=False)


# A field value of any type: the right type (sometimes in range), or anything at all.
field_values = st.one_of(u63_edgy, MSGPACK_INT, node_ids, st.booleans(), st.binary(max_size=20),
                         st.lists(st.tuples(MSGPACK_INT, MSGPACK_INT, st.integers(-2, 3),
                                            st.binary(max_size=8)).map(list), max_size=3),
                         anything)
# Arrays that start with a type code get past msgpack and the dispatch; those with the right
# arity and only some fields wrong reach field validation.
random_arrays = st.builds(
    lambda code, fields: [code, *fields],
    st.one_of(st.integers(-1, 11), st.sampled_from([True, False, 1.0, "3", None, 2**64 - 1])),
    st.lists(field_values, max_size=10),
)


@st.composite
def valid_arrays_with_fields_replaced(draw: st.DrawFn) -> list[Any]:
    array = msgpack.unpackb(encode_message(draw(messages)), raw=False)
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(1, len(array) - 1))
        array[position] = draw(field_values)
    if draw(st.integers(0, 4)) == 0:  # one field too many or too few
        array = array + [0] if draw(st.booleans()) else array[:-1]
    return array


near_messages = st.one_of(random_arrays, valid_arrays_with_fields_replaced())

# Hand-made hostile msgpack: nesting past any stack, lengths that claim gigabytes, extensions.
_HEADERS = [b"\xdd\xff\xff\xff\xff", b"\xdc\xff\xff", b"\xdb\xff\xff\xff\xff",
            b"\xda\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xc5\xff\xff", b"\xdf\xff\xff\xff\xff",
            b"\xde\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xc8\xff\xff\x01", b"\xc7\xff\x01",
            b"\xd4\xff", b"\xd5\x00", b"\xc1", b"\xcf", b"\xd3\xff"]
bombs = st.one_of(
    st.builds(lambda n, tail: b"\x91" * n + tail, st.integers(1, 70_000),
              st.sampled_from([b"\xc0", b"", b"\x90", b"\x80"])),
    st.builds(lambda n: b"\x81\xa1k" * n + b"\xc0", st.integers(1, 20_000)),
    st.builds(lambda n: b"\x81\x91" * n + b"\xc0", st.integers(1, 5_000)),  # arrays as keys
    st.builds(lambda prefix, head, rest: prefix + head + rest,
              st.sampled_from([b"", b"\x98\x03\x01\xa1a\xa1b\x00\x00", b"\x91", b"\x82\xa2op"]),
              st.sampled_from(_HEADERS), st.binary(max_size=32)),
    st.builds(lambda n: _packb({f"k{i}": i for i in range(n)}), st.integers(0, 9_000)),
    st.builds(lambda n: b"\xdd" + n.to_bytes(4, "big") + b"\xc0" * n, st.integers(0, 60_000)),
)
arbitrary_bytes = st.one_of(st.binary(max_size=400), bombs)
arbitrary_packed = st.one_of(
    st.builds(_packb, anything, st.booleans()),
    st.builds(_packb, near_messages, st.booleans()),
)


def decodes_or_wire_error(data: bytes) -> None:
    try:
        decoded = decode_message(data)
    except WireError:
        return
    assert isinstance(decoded, MESSAGE_TYPES)
    assert decode_message(encode_message(decoded)) == decoded


@FUZZ
@given(arbitrary_bytes)
def test_decode_message_of_arbitrary_bytes_raises_only_wire_errors(data: bytes) -> None:
    decodes_or_wire_error(data)


@FUZZ
@given(arbitrary_packed)
def test_decode_message_of_arbitrary_msgpack_raises_only_wire_errors(data: bytes) -> None:
    decodes_or_wire_error(data)


@SMALL
@given(st.one_of(anything, near_messages), st.sampled_from([bytearray, memoryview]))
def test_decode_message_accepts_any_bytes_like_the_same_way(obj: Any, kind: type) -> None:
    data = _packb(obj)
    try:
        expected: Any = decode_message(data)
    except WireError as exc:
        expected = type(exc)
    try:
        got: Any = decode_message(kind(data))
    except WireError as exc:
        got = type(exc)
    assert got == expected


@SMALL
@given(st.one_of(anything, st.integers(), st.floats(), st.text()))
def test_decode_message_of_non_bytes_raises_malformed_frame(obj: Any) -> None:
    assume(not isinstance(obj, bytes | bytearray | memoryview))
    with pytest.raises(MalformedFrame):
        decode_message(obj)


# --- mutations of valid encodings --------------------------------------------------------------

@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_message(draw(messages)))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete",
                                    "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif how == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif how == "truncate":
            del data[pos:]
        elif how == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif how == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif how == "splice":  # a piece of another valid message
            other = encode_message(draw(messages))
            start = draw(st.integers(0, len(other)))
            data[pos:pos + draw(st.integers(0, 8))] = other[start:start + draw(st.integers(1, 12))]
    return bytes(data)


@settings(FUZZ, max_examples=400)
@given(mutated())
def test_mutated_valid_messages_raise_only_wire_errors_or_decode_validly(data: bytes) -> None:
    decodes_or_wire_error(data)


# --- the client protocol -----------------------------------------------------------------------

ops = st.sampled_from(["bid", "open", "close", "result", "history", "auctions", "events",
                       "status", "", "x" * 100])
request_like = st.fixed_dictionaries(
    {}, optional={"op": st.one_of(ops, ops, anything),
                  "rid": st.one_of(st.integers(0, 2**63 - 1), st.sampled_from(EDGE_INTS),
                                   MSGPACK_INT, anything),
                  "client": st.one_of(st.text(max_size=70), anything),
                  "seq": st.one_of(MSGPACK_INT, anything), "stream": anything,
                  "amount": st.one_of(MSGPACK_INT, anything), "auction": anything},
)
near_requests = st.fixed_dictionaries(  # the envelope right, the rest anything
    {"op": ops, "rid": st.one_of(st.integers(0, 2**63 - 1), st.sampled_from(EDGE_INTS))},
    optional={"client": st.one_of(st.text(max_size=70), anything), "seq": MSGPACK_INT,
              "stale": anything, "stream": anything, "auction": anything, "after_seq": anything},
)
request_payloads = st.one_of(
    arbitrary_bytes, arbitrary_packed, st.builds(_packb, request_like, st.booleans()),
    st.builds(_packb, near_requests), st.builds(_packb, near_requests),
    st.binary(min_size=MAX_REQUEST_BYTES - 2, max_size=MAX_REQUEST_BYTES + 2),
)


def _check_request(req: ClientRequest) -> None:
    assert type(req) is ClientRequest
    assert type(req.op) is str
    assert type(req.rid) is int and 0 <= req.rid < 2**63
    assert type(req.body) is dict


def _check_protocol_error(exc: ProtocolError) -> None:
    assert type(exc.rid) is int and 0 <= exc.rid < 2**63


@FUZZ
@given(request_payloads)
def test_decode_request_raises_only_protocol_error(payload: bytes) -> None:
    try:
        req = decode_request(payload)
    except ProtocolError as exc:
        _check_protocol_error(exc)
        return
    _check_request(req)


@st.composite
def request_streams(draw: st.DrawFn) -> bytes:
    """Several requests back to back, sometimes too many, or cut inside the last one."""
    items = draw(st.lists(st.one_of(near_requests, request_like, anything), max_size=12))
    frame = b"".join(_packb(item) for item in items)
    if draw(st.booleans()):
        frame = frame[:draw(st.integers(0, len(frame)))]
    if draw(st.integers(0, 9)) == 0:  # past the count limit
        frame = _packb({"op": "status"}) * (MAX_REQUESTS_PER_FRAME + draw(st.integers(-1, 2)))
    return frame + draw(st.sampled_from([b"", b"\xc1", b"\x91", b"\xa1", b"\x00"]))


@FUZZ
@given(st.one_of(request_streams(), request_payloads))
def test_decode_requests_raises_only_protocol_error(payload: bytes) -> None:
    try:
        items = decode_requests(payload)
    except ProtocolError as exc:
        _check_protocol_error(exc)
        return
    assert 1 <= len(items) <= MAX_REQUESTS_PER_FRAME
    for item in items:
        if isinstance(item, ProtocolError):
            _check_protocol_error(item)
        else:
            _check_request(item)


@SMALL
@given(st.one_of(near_requests, anything, request_like,
                 st.builds(lambda d: {**d, "op": "bid"}, request_like),
                 st.builds(set, st.lists(st.integers(), max_size=3)), st.just(object())))
def test_request_from_of_any_python_object_raises_only_protocol_error(obj: Any) -> None:
    try:
        req = request_from(obj)
    except ProtocolError as exc:
        _check_protocol_error(exc)
        return
    _check_request(req)


# --- HELLO ------------------------------------------------------------------------------------

endpoints = st.builds("tcp://{}:{}".format,
                      st.one_of(st.from_regex(r"[A-Za-z0-9._-]{0,12}", fullmatch=True),
                                st.text(max_size=12)),
                      st.one_of(st.integers(0, 70_000), st.text(max_size=6)))
hello_values = st.one_of(
    st.text(max_size=260), anything, endpoints,
    st.sampled_from(["", "tcp://127.0.0.1:5555", "tcp://h:0", "tcp://h:65536", "tcp://h:99999",
                     "tcp://:1", "tcp://a b:1", "tcp://host:1\n", "tcp://[::1]:1",
                     "tcp://h:\u0661", "tcp://h\u00e9:1", "x" * 257, "tcp://" + "h" * 300 + ":1"]),
)
hello_like = st.one_of(
    st.fixed_dictionaries({}, optional={"id": hello_values, "pub": hello_values,
                                        "cluster": hello_values, "extra": anything}),
    st.fixed_dictionaries({"id": st.text(max_size=257), "pub": hello_values,
                           "cluster": st.text(max_size=257)},
                          optional={"extra": anything, b"id": anything}),
    st.fixed_dictionaries({"id": st.sampled_from(["", "127.0.0.1:7001"]),
                           "pub": st.one_of(st.sampled_from(["", "tcp://127.0.0.1:5555"]),
                                            endpoints),
                           "cluster": st.sampled_from(["", "prod"])},
                          optional={"extra": anything, b"id": anything}),
)
hello_payloads = st.one_of(
    st.builds(_packb, hello_like, st.booleans()), arbitrary_bytes, arbitrary_packed,
    st.binary(min_size=4090, max_size=4100),
)


@FUZZ
@given(hello_payloads)
def test_parse_hello_raises_only_malformed_frame(payload: bytes) -> None:
    try:
        hello = parse_hello(payload)
    except MalformedFrame:
        return
    assert type(hello) is Hello
    for value in (hello.id, hello.pub, hello.cluster):
        assert type(value) is str and len(value) <= 256
    assert hello.pub == "" or is_pub_endpoint(hello.pub)
    assert len(payload) <= 4096


def test_the_generators_reach_the_interesting_cases() -> None:
    """A sanity check of the strategies above, not of the codecs: a fuzz test whose
    generator never produced a valid message or request would pass vacuously."""
    valid = _packb([5, 1, "a", 2, 3])
    assert decode_message(valid) is not None
    assert decode_request(_packb({"op": "status", "rid": 1})).op == "status"
    assert parse_hello(_packb({"id": "", "pub": "", "cluster": ""})) == Hello("", "", "")
    assert math.isnan(msgpack.unpackb(_packb(float("nan"))))
