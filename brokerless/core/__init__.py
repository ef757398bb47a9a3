"""The consensus core (pure, deterministic, sans-I/O)."""

from brokerless.core.raft import Core
from brokerless.core.ready import (
    DEFAULT_CATCHUP_ENTRIES,
    Config,
    CoreStatus,
    NotLeader,
    ReadState,
    Ready,
    SoftState,
)

__all__ = ["DEFAULT_CATCHUP_ENTRIES", "Config", "Core", "CoreStatus", "NotLeader", "ReadState", "Ready", "SoftState"]
