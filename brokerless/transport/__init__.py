"""How nodes reach each other: the interface, the ZeroMQ implementation, an in-memory twin."""
