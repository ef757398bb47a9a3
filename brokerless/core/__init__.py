"""The consensus core (pure, deterministic, sans-I/O)."""

from brokerless.core.raft import Core
from brokerless.core.ready import Config, CoreStatus, NotLeader, ReadState, Ready, SoftState

__all__ = ["Config", "Core", "CoreStatus", "NotLeader", "ReadState", "Ready", "SoftState"]
