"""How nodes reach each other: the interface the runtime uses, its in-memory twin
(`memory`), and the ZeroMQ implementation (`brokerless.transport.zeromq`)."""

from brokerless.transport.interface import (
    AddressError,
    ConfigError,
    FromPeer,
    FromRouter,
    FromSub,
    Incoming,
    InvalidFrame,
    Transport,
    TransportClosed,
    TransportError,
    TransportStats,
    UnknownPeer,
    parse_address,
)
from brokerless.transport.memory import MemoryNetwork, MemoryTransport, Outgoing

__all__ = [
    "AddressError",
    "ConfigError",
    "FromPeer",
    "FromRouter",
    "FromSub",
    "Incoming",
    "InvalidFrame",
    "MemoryNetwork",
    "MemoryTransport",
    "Outgoing",
    "Transport",
    "TransportClosed",
    "TransportError",
    "TransportStats",
    "UnknownPeer",
    "parse_address",
]
