"""brokerless: an application-agnostic replicated state machine on ZeroMQ.

Layers, from the inside out:
  types, messages  plain data shared by every layer
  core             the consensus algorithm as a pure, deterministic state machine
  storage          durable log, hard state and snapshots
  sim              a deterministic simulator of N cores with fault injection
  wire, transport  msgpack framing and the ZeroMQ sockets
  runtime          the loop that feeds events into the core and executes each Ready
"""
