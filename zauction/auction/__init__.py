"""The auction model: commands and the replicated state machine (pure: no I/O, no clock)."""
