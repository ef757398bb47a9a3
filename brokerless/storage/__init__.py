"""Durable state of a consensus node: the interface every backend implements, an in-memory
backend (tests and the simulator) and the SQLite backend (`brokerless.storage.sqlite`)."""

from brokerless.storage.interface import (
    CorruptDataError,
    Durability,
    IdentityMismatchError,
    LogSummary,
    PersistedState,
    Storage,
    StorageError,
    WritePlan,
    plan_compact,
    plan_save,
)
from brokerless.storage.memory import MemoryStorage

__all__ = [
    "CorruptDataError",
    "Durability",
    "IdentityMismatchError",
    "LogSummary",
    "MemoryStorage",
    "PersistedState",
    "Storage",
    "StorageError",
    "WritePlan",
    "plan_compact",
    "plan_save",
]
