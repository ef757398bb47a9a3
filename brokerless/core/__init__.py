"""The consensus core (pure, deterministic, sans-I/O)."""

from brokerless.core.raft import Core
from brokerless.core.ready import Config, NotLeader, ReadState, Ready, SoftState

__all__ = ["Config", "Core", "NotLeader", "ReadState", "Ready", "SoftState"]
