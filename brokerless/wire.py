"""The wire codec: consensus messages to and from msgpack bytes.

A message is a msgpack array `[type_code, field1, field2, ...]` with the fields in the
dataclass's declaration order (the table `_SPECS` below is the protocol; docs/protocol-peers.md
describes it for other languages). An Entry is the array `[term, index, kind, data]`.

Decoding treats its input as hostile: the size is checked before msgpack sees it, msgpack runs
with per-object limits, and every field is validated (exact arity, exact Python types, ranges).
Whatever is wrong, the caller gets a `WireError` subclass and nothing else.

Encoding trusts its input (it comes from our own core, on the hot path): it does not re-validate
field values, so a message the core built with, say, a negative term encodes fine and is then
refused by the receiver. An object that is not a message, or a field msgpack cannot represent,
raises `EncodeError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgpack

from brokerless.messages import (
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from brokerless.types import MAX_INDEX, Entry, EntryKind

MAX_MESSAGE_BYTES = 16 << 20  # default bound on one encoded message (the transport's frame limit)
MAX_INT = MAX_INDEX  # every integer field is in 0..2**63-1, the range brokerless.types gives
MAX_NODE_ID_CHARS = 256
_MAX_NODE_ID_BYTES = 4 * MAX_NODE_ID_CHARS  # UTF-8 upper bound, checked by msgpack itself


class WireError(Exception):
    """Bytes (or an object) that are not a valid message. The base of every codec error."""


class MalformedFrame(WireError):
    """Not decodable at all: too large, not msgpack, trailing bytes, wrong shape or arity."""


class UnknownMessageType(WireError):
    """A well-formed array whose type code names no message we know."""


class InvalidField(WireError):
    """A known message with a field of the wrong type or out of range; `field` names it."""

    def __init__(self, message_type: str, field: str, reason: str) -> None:
        super().__init__(f"{message_type}.{field}: {reason}")
        self.message_type = message_type
        self.field = field


class EncodeError(WireError):
    """Not something we can encode: not a message, or a value msgpack cannot represent."""


# --- field validators: (value, type name, field name) -> the value to store -----------------

Validator = Callable[[Any, str, str], Any]


def _u64(value: Any, mtype: str, field: str) -> int:
    # `type(...) is int` rejects bool (a subclass of int) and int subclasses alike.
    if type(value) is not int:
        raise InvalidField(mtype, field, f"expected int, got {type(value).__name__}")
    if not 0 <= value <= MAX_INT:
        raise InvalidField(mtype, field, f"{value} out of range 0..2**63-1")
    return value


def _node(value: Any, mtype: str, field: str) -> str:
    if type(value) is not str:
        raise InvalidField(mtype, field, f"expected str, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_NODE_ID_CHARS:
        raise InvalidField(mtype, field, f"node id must have 1..{MAX_NODE_ID_CHARS} characters")
    return value


def _bool(value: Any, mtype: str, field: str) -> bool:
    if type(value) is not bool:
        raise InvalidField(mtype, field, f"expected bool, got {type(value).__name__}")
    return value


def _bytes(value: Any, mtype: str, field: str) -> bytes:
    if type(value) is not bytes:
        raise InvalidField(mtype, field, f"expected bytes, got {type(value).__name__}")
    return value


_KINDS: tuple[EntryKind, ...] = tuple(sorted(EntryKind, key=int))
assert [int(k) for k in _KINDS] == list(range(len(_KINDS))), "EntryKind codes must be 0..n-1"

# Building an Entry through its frozen-dataclass __init__ costs about 1 µs, most of a decoded
# entry's budget. Setting its slots directly halves that. This relies on Entry having exactly
# these four slots; the assertion makes a change to Entry fail loudly here, not subtly later.
assert set(Entry.__slots__) == {"term", "index", "data", "kind"}, "update _new_entry"
_set_term, _set_index = Entry.term.__set__, Entry.index.__set__  # type: ignore[attr-defined]
_set_data, _set_kind = Entry.data.__set__, Entry.kind.__set__  # type: ignore[attr-defined]


def _new_entry(term: int, index: int, data: bytes, kind: EntryKind) -> Entry:
    entry = object.__new__(Entry)
    _set_term(entry, term)
    _set_index(entry, index)
    _set_data(entry, data)
    _set_kind(entry, kind)
    return entry


def _entry_error(item: Any, mtype: str, field: str) -> InvalidField:
    """Explain why `item` is not an entry (the slow path, taken only on bad input)."""
    if type(item) is not list or len(item) != 4:
        return InvalidField(mtype, field, "an entry is the array [term, index, kind, data]")
    term, index, kind, data = item
    try:
        _u64(term, mtype, field + ".term")
        _u64(index, mtype, field + ".index")
        _bytes(data, mtype, field + ".data")
    except InvalidField as exc:
        return exc
    return InvalidField(mtype, field + ".kind", f"unknown entry kind {kind!r}")


def _entries(value: Any, mtype: str, field: str) -> tuple[Entry, ...]:
    if type(value) is not list:
        raise InvalidField(mtype, field, f"expected array, got {type(value).__name__}")
    # The hot loop of the decoder (an Append carries many entries): one combined check per
    # entry, and the detailed error is worked out only when that check fails.
    entries = []
    n_kinds = len(_KINDS)
    for item in value:
        if type(item) is list and len(item) == 4:
            term, index, kind, data = item
            if (type(term) is int and type(index) is int and type(kind) is int
                    and type(data) is bytes and 0 <= term <= MAX_INT and 0 <= index <= MAX_INT
                    and 0 <= kind < n_kinds):
                entries.append(_new_entry(term, index, data, _KINDS[kind]))
                continue
        raise _entry_error(item, mtype, f"{field}[{len(entries)}]")
    return tuple(entries)


# --- the protocol table -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    code: int
    cls: type
    fields: tuple[tuple[str, Validator], ...]


U64, NODE, BOOL, BYTES, ENTRIES = _u64, _node, _bool, _bytes, _entries

# Type codes are part of the protocol: never renumber, only append.
_SPECS: tuple[_Spec, ...] = (
    _Spec(1, VoteRequest, (("term", U64), ("src", NODE), ("dst", NODE), ("last_index", U64),
                           ("last_term", U64), ("pre", BOOL), ("transfer", BOOL))),
    _Spec(2, VoteResponse, (("term", U64), ("src", NODE), ("dst", NODE), ("granted", BOOL),
                            ("pre", BOOL))),
    _Spec(3, Append, (("term", U64), ("src", NODE), ("dst", NODE), ("prev_index", U64),
                      ("prev_term", U64), ("entries", ENTRIES), ("commit", U64))),
    _Spec(4, AppendResponse, (("term", U64), ("src", NODE), ("dst", NODE), ("success", BOOL),
                              ("index", U64), ("hint_index", U64), ("hint_term", U64))),
    _Spec(5, Heartbeat, (("term", U64), ("src", NODE), ("commit", U64), ("seq", U64))),
    _Spec(6, HeartbeatResponse, (("term", U64), ("src", NODE), ("dst", NODE), ("seq", U64),
                                 ("last_index", U64))),
    _Spec(7, InstallSnapshot, (("term", U64), ("src", NODE), ("dst", NODE), ("index", U64),
                               ("snap_term", U64), ("offset", U64), ("chunk", BYTES),
                               ("done", BOOL))),
    _Spec(8, SnapshotResponse, (("term", U64), ("src", NODE), ("dst", NODE), ("index", U64),
                                ("next_offset", U64), ("done", BOOL))),
    _Spec(9, TimeoutNow, (("term", U64), ("src", NODE), ("dst", NODE))),
)

TYPE_CODES: dict[type, int] = {spec.cls: spec.code for spec in _SPECS}
_BY_CODE: dict[int, _Spec] = {spec.code: spec for spec in _SPECS}


def field_layout(cls: type) -> tuple[str, ...]:
    """The wire order of `cls`'s fields (for docs and for tests against the dataclass)."""
    return tuple(name for name, _ in _BY_CODE[TYPE_CODES[cls]].fields)


# --- encoding ------------------------------------------------------------------------------

# A reused Packer is about 3x faster than msgpack.packb for small messages, but a Packer is not
# thread-safe, so each thread gets its own.
_local = threading.local()


def _pack(obj: Any) -> bytes:
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    return packer.pack(obj)


def _plain_encoder(spec: _Spec) -> Callable[[Any], bytes]:
    getter = attrgetter(*(name for name, _ in spec.fields))
    code = spec.code
    return lambda msg: _pack((code, *getter(msg)))


def _encode_append(msg: Append) -> bytes:
    # EntryKind is an int subclass, which msgpack packs as a plain int.
    entries = [(e.term, e.index, e.kind, e.data) for e in msg.entries]
    return _pack((3, msg.term, msg.src, msg.dst, msg.prev_index, msg.prev_term, entries,
                  msg.commit))


_ENCODERS: dict[type, Callable[[Any], bytes]] = {spec.cls: _plain_encoder(spec) for spec in _SPECS}
_ENCODERS[Append] = _encode_append


def encode_message(msg: Message) -> bytes:
    """Encode one consensus message. Raises EncodeError for anything that is not one."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise EncodeError(f"not a consensus message: {type(msg).__name__}")
    try:
        return encoder(msg)
    except (TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise EncodeError(f"cannot encode {type(msg).__name__}: {exc}") from exc


# --- decoding ------------------------------------------------------------------------------

# What msgpack itself raises on bad input: ExtraData, FormatError, StackError and OutOfData are
# ValueError subclasses (as is UnicodeDecodeError); TypeError comes from unhashable map keys.
_UNPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


def _unpack_limited(data: bytes, max_bytes: int, *, max_str: int, max_map: int) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedFrame(f"expected bytes, got {type(data).__name__}")
    size = len(data)
    if size > max_bytes:
        raise MalformedFrame(f"{size} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True,
            max_bin_len=size, max_str_len=min(size, max_str), max_array_len=size,
            max_map_len=min(size, max_map), max_ext_len=0,
        )
    except _UNPACK_ERRORS as exc:
        raise MalformedFrame(f"not valid msgpack: {type(exc).__name__}: {exc}") from exc


def unpack_stream(data: bytes, max_bytes: int, max_items: int) -> list[Any]:
    """Decode a frame holding one or more msgpack objects back to back (a msgpack stream).

    Raises MalformedFrame for bad msgpack, a truncated last object or more than `max_items`.
    One object (the common case) costs a single unpackb."""
    try:
        return [_unpack_limited(data, max_bytes, max_str=max_bytes, max_map=max_bytes)]
    except MalformedFrame as exc:
        if not isinstance(exc.__cause__, msgpack.ExtraData):
            raise
    unpacker = msgpack.Unpacker(
        raw=False, use_list=True, strict_map_key=True, max_buffer_size=len(data),
        max_bin_len=len(data), max_str_len=len(data), max_array_len=len(data),
        max_map_len=len(data), max_ext_len=0)
    unpacker.feed(data)
    items: list[Any] = []
    end = 0  # where the last complete object ended (tell() alone also counts a partial one)
    try:
        for obj in unpacker:
            items.append(obj)
            end = unpacker.tell()
            if len(items) > max_items:
                raise MalformedFrame(f"more than {max_items} objects in one frame")
    except _UNPACK_ERRORS as exc:
        raise MalformedFrame(f"not valid msgpack: {type(exc).__name__}: {exc}") from exc
    if end != len(data):
        raise MalformedFrame("the frame ends inside a msgpack object")
    return items


def decode_message(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Decode and validate one consensus message from untrusted bytes.

    Raises MalformedFrame, UnknownMessageType or InvalidField (all WireError), nothing else.
    """
    # Consensus messages hold no maps, and their only strings are node ids.
    obj = _unpack_limited(data, max_bytes, max_str=_MAX_NODE_ID_BYTES, max_map=0)
    if type(obj) is not list or not obj:
        raise MalformedFrame("a message is a non-empty array [type_code, fields...]")
    code = obj[0]
    spec = _BY_CODE.get(code) if type(code) is int else None
    if spec is None:
        raise UnknownMessageType(f"unknown message type code {code!r}")
    if len(obj) != len(spec.fields) + 1:
        raise MalformedFrame(
            f"{spec.cls.__name__} has {len(spec.fields)} fields, got {len(obj) - 1}")
    name = spec.cls.__name__
    checks = zip(spec.fields, obj[1:], strict=True)
    values = [check(value, name, field) for (field, check), value in checks]
    return spec.cls(*values)


# --- the application envelope --------------------------------------------------------------


def pack(obj: Any) -> bytes:
    """Encode an application object: dicts (str or bytes keys), lists, str, bytes, ints, floats,
    bools, None. Raises EncodeError for anything msgpack cannot represent."""
    try:
        return _pack(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode {type(obj).__name__}: {exc}") from exc


def unpack(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode untrusted application bytes with the same limits; raises MalformedFrame only.

    The result is plain msgpack data (maps have str or bytes keys): validating its shape is
    the application's job.
    """
    return _unpack_limited(data, max_bytes, max_str=max_bytes, max_map=max_bytes)
