"""The wire codec: exact layout, round trips, and hostile input that yields only WireError."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokerless.messages import (
    MESSAGE_TYPES,
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
from brokerless.wire import (
    MAX_INT,
    TYPE_CODES,
    EncodeError,
    InvalidField,
    MalformedFrame,
    UnknownMessageType,
    WireError,
    decode_message,
    encode_message,
    field_layout,
    pack,
    unpack,
)

A, B = "127.0.0.1:5001", "127.0.0.1:5002"

EXAMPLES = [
    VoteRequest(3, A, B, 10, 2, pre=True, transfer=False),
    VoteResponse(3, B, A, granted=True, pre=False),
    Append(4, A, B, 9, 3, (Entry(4, 10, b"bid"), Entry(4, 11, b"", EntryKind.NOOP)), 8),
    Append(4, A, B, 0, 0, (), 0),
    AppendResponse(4, B, A, success=False, index=7, hint_index=5, hint_term=2),
    Heartbeat(5, A, commit=40, seq=MAX_INT),
    HeartbeatResponse(5, B, A, seq=17, last_index=40),
    InstallSnapshot(6, A, B, index=100, snap_term=5, offset=0, chunk=b"\x00" * 300, done=False),
    SnapshotResponse(6, B, A, index=100, next_offset=300, done=True),
    TimeoutNow(7, A, B),
]


def wire_array(msg: object) -> list:
    return msgpack.unpackb(encode_message(msg), raw=False)


# --- layout and round trips --------------------------------------------------------------


def test_type_codes_are_fixed_and_cover_every_message_type() -> None:
    assert TYPE_CODES == {
        VoteRequest: 1, VoteResponse: 2, Append: 3, AppendResponse: 4, Heartbeat: 5,
        HeartbeatResponse: 6, InstallSnapshot: 7, SnapshotResponse: 8, TimeoutNow: 9,
    }
    assert set(TYPE_CODES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_wire_field_order_is_the_dataclass_field_order(cls: type) -> None:
    assert field_layout(cls) == tuple(f.name for f in dataclasses.fields(cls))


def test_layout_is_type_code_then_fields_and_entries_are_term_index_kind_data() -> None:
    assert wire_array(EXAMPLES[0]) == [1, 3, A, B, 10, 2, True, False]
    assert wire_array(EXAMPLES[2]) == [3, 4, A, B, 9, 3, [[4, 10, 0, b"bid"], [4, 11, 1, b""]], 8]
    assert wire_array(EXAMPLES[5]) == [5, 5, A, 40, MAX_INT]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(msg: object) -> None:
    decoded = decode_message(encode_message(msg))
    assert decoded == msg
    assert type(decoded) is type(msg)


def test_decoded_entries_are_real_entries_with_enum_kinds() -> None:
    decoded = decode_message(encode_message(EXAMPLES[2]))
    assert isinstance(decoded, Append)
    assert [type(e) for e in decoded.entries] == [Entry, Entry]
    assert [e.kind for e in decoded.entries] == [EntryKind.COMMAND, EntryKind.NOOP]
    assert decoded.entries[1].kind is EntryKind.NOOP
    assert isinstance(decoded.entries, tuple)


u64 = st.integers(0, MAX_INT)
node = st.text(min_size=1, max_size=256)
entry = st.builds(Entry, u64, u64, st.binary(max_size=64), st.sampled_from(list(EntryKind)))
valid_messages = st.one_of(
    st.builds(VoteRequest, u64, node, node, u64, u64, st.booleans(), st.booleans()),
    st.builds(VoteResponse, u64, node, node, st.booleans(), st.booleans()),
    st.builds(Append, u64, node, node, u64, u64, st.lists(entry, max_size=5).map(tuple), u64),
    st.builds(AppendResponse, u64, node, node, st.booleans(), u64, u64, u64),
    st.builds(Heartbeat, u64, node, u64, u64),
    st.builds(HeartbeatResponse, u64, node, node, u64, u64),
    st.builds(InstallSnapshot, u64, node, node, u64, u64, u64, st.binary(), st.booleans()),
    st.builds(SnapshotResponse, u64, node, node, u64, u64, st.booleans()),
    st.builds(TimeoutNow, u64, node, node),
)


@given(valid_messages)
def test_random_valid_messages_round_trip(msg: object) -> None:
    assert decode_message(encode_message(msg)) == msg


# --- hostile input -----------------------------------------------------------------------


def raw(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    ("array", "field"),
    [
        ([1, True, A, B, 1, 1, False, False], "term"),  # bool is not an int
        ([1, -1, A, B, 1, 1, False, False], "term"),
        ([1, 1 << 63, A, B, 1, 1, False, False], "term"),
        ([1, 1.0, A, B, 1, 1, False, False], "term"),
        ([1, 1, "", B, 1, 1, False, False], "src"),
        ([1, 1, "x" * 257, B, 1, 1, False, False], "src"),
        ([1, 1, A.encode(), B, 1, 1, False, False], "src"),
        ([1, 1, A, None, 1, 1, False, False], "dst"),
        ([1, 1, A, B, 1, 1, 1, False], "pre"),  # an int is not a bool
        ([7, 1, A, B, 1, 1, 0, "chunk", True], "chunk"),
        ([3, 1, A, B, 0, 0, "entries", 0], "entries"),
        ([3, 1, A, B, 0, 0, [[1, 1, 0]], 0], "entries[0]"),
        ([3, 1, A, B, 0, 0, [[1, 1, 0, b""], 5], 0], "entries[1]"),
        ([3, 1, A, B, 0, 0, [[1, 1, 2, b""]], 0], "entries[0].kind"),
        ([3, 1, A, B, 0, 0, [[1, 1, True, b""]], 0], "entries[0].kind"),
        ([3, 1, A, B, 0, 0, [[1, 1, -1, b""]], 0], "entries[0].kind"),
        ([3, 1, A, B, 0, 0, [[1, -1, 0, b""]], 0], "entries[0].index"),
        ([3, 1, A, B, 0, 0, [[1, 1, 0, "text"]], 0], "entries[0].data"),
    ],
)
def test_a_bad_field_raises_invalid_field_naming_it(array: list, field: str) -> None:
    with pytest.raises(InvalidField) as info:
        decode_message(raw(array))
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        raw([9, 1, A, B]) + b"\x00",  # trailing bytes
        raw([9, 1, A]),  # arity too small
        raw([9, 1, A, B, 0]),  # arity too large
        raw([]),
        raw({"type": 9}),
        raw(9),
        b"\x92\x09\xd9\x05ab",  # truncated
        b"\xdd\xff\xff\xff\xff",  # claims 4G array items
        b"\x91" * 5000 + b"\x00",  # nested deeper than msgpack's stack
        b"\xc7\x00\xff",  # timestamp extension with no data
        b"\xd6\xff\x00\x00\x00\x00",  # a valid timestamp: extensions are refused
        b"\x94\x09\x01\xa2\xff\xfe\xa1b",  # invalid UTF-8 in a str
    ],
)
def test_undecodable_bytes_raise_malformed_frame(data: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_message(data)


def test_maps_and_oversized_input_are_malformed() -> None:
    with pytest.raises(MalformedFrame):
        decode_message(raw([9, 1, {"a": 1}, B]))
    with pytest.raises(MalformedFrame, match="exceeds"):
        decode_message(raw([7, 1, A, B, 0, 0, 0, b"x" * 2000, True]), max_bytes=1000)
    with pytest.raises(MalformedFrame):
        decode_message("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [0, 10, 255, -1, True, "1", None, 1.0])
def test_unknown_type_codes(code: object) -> None:
    with pytest.raises(UnknownMessageType):
        decode_message(raw([code, 1, A, B]))


def test_encode_refuses_what_is_not_a_message() -> None:
    with pytest.raises(EncodeError):
        encode_message(Entry(1, 1))  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode_message(TimeoutNow(1, A, object()))  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode_message(TimeoutNow(1 << 64, A, B))
    # The failed encodes left the shared packer clean.
    assert decode_message(encode_message(EXAMPLES[-1])) == EXAMPLES[-1]


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(),
    st.text(max_size=20), st.binary(max_size=64),
)
msgpack_objects = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(), inner),
    max_leaves=12,
)
# Arrays that start with a real type code: these get past msgpack and exercise validation.
near_messages = st.builds(
    lambda code, rest: [code, *rest], st.integers(0, 10), st.lists(msgpack_objects, max_size=9)
)


def decodes_or_raises_wire_error(data: bytes) -> None:
    try:
        decoded = decode_message(data, max_bytes=1 << 16)
    except WireError:
        return
    assert isinstance(decoded, MESSAGE_TYPES)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_yield_only_wire_errors(data: bytes) -> None:
    decodes_or_raises_wire_error(data)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(msgpack_objects, near_messages))
def test_random_msgpack_objects_yield_only_wire_errors(obj: object) -> None:
    decodes_or_raises_wire_error(raw(obj))


@settings(max_examples=300)
@given(valid_messages, st.data())
def test_valid_messages_with_one_field_replaced_yield_only_wire_errors(
    msg: object, data: st.DataObject
) -> None:
    array = wire_array(msg)
    position = data.draw(st.integers(1, len(array) - 1))
    array[position] = data.draw(msgpack_objects)
    decodes_or_raises_wire_error(raw(array))


@settings(max_examples=300)
@given(st.lists(entry, min_size=1, max_size=3), st.data())
def test_appends_with_one_entry_part_replaced_yield_only_wire_errors(
    entries: list[Entry], data: st.DataObject
) -> None:
    array = wire_array(Append(1, A, B, 0, 0, tuple(entries), 0))
    which = data.draw(st.integers(0, len(entries) - 1))
    part = data.draw(st.integers(0, 3))
    array[6][which][part] = data.draw(leaves)
    decodes_or_raises_wire_error(raw(array))


@settings(max_examples=300)
@given(valid_messages, st.data())
def test_corrupted_valid_messages_yield_only_wire_errors(msg: object, data: st.DataObject) -> None:
    encoded = bytearray(encode_message(msg))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    decodes_or_raises_wire_error(bytes(encoded))


# --- the application envelope ------------------------------------------------------------


def test_pack_unpack_round_trip() -> None:
    obj = {"id": "c1", "seq": 7, "args": [b"\x00", 1.5, None, True], "nested": {"k": "v"}}
    assert unpack(pack(obj)) == obj


def test_unpack_applies_the_limits() -> None:
    with pytest.raises(MalformedFrame, match="exceeds"):
        unpack(pack({"blob": b"x" * 100}), max_bytes=50)
    with pytest.raises(MalformedFrame):
        unpack(b"\xc1")
    with pytest.raises(MalformedFrame):
        unpack(raw({1: "int keys are refused"}))
    with pytest.raises(MalformedFrame):
        unpack(pack([1, 2]) + b"\x00")


def test_pack_refuses_unencodable_objects() -> None:
    with pytest.raises(EncodeError):
        pack({"x": object()})


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_unpack_of_random_bytes_raises_only_malformed_frame(data: bytes) -> None:
    try:
        unpack(data, max_bytes=1 << 16)
    except MalformedFrame:
        return
