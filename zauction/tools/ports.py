"""Free TCP ports for local clusters, tests and benchmarks: the one place that looks for them.

`free_ports(count)` binds `count` sockets to port 0 at once and lets the kernel choose (the
ports are distinct and were free a moment ago); `free_ports(count, consecutive=True)` searches
for a run of consecutive free ports, for callers that take a first port (`zauction cluster up
--base-port`, `zauction demo --base-port`). Either way a port is handed out once per process,
so that clusters started one after the other never share one before their nodes have bound.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable

RUN_START, RUN_STOP = 20000, 60000  # where consecutive runs are searched
MAX_TRIES = 50  # bind-to-0 rounds before giving up (each port is handed out once)

_handed_out: set[int] = set()
_lock = threading.Lock()


class PortError(Exception):
    """A port is taken, or no free ports were found."""


def check_ports_free(host: str, ports: Iterable[int]) -> None:
    """Raise PortError naming the first port of `ports` that cannot be bound on `host`."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # ZeroMQ listens with SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise PortError(f"port {port} on {host} is not free: {exc.strerror}") from None


def free_ports(count: int, host: str = "127.0.0.1", *, consecutive: bool = False) -> list[int]:
    """`count` distinct ports of `host` that were free a moment ago and that this process has
    not handed out before; with `consecutive`, a run base, base + 1, ... base + count - 1."""
    if count < 1:
        raise PortError("ask for at least one port")
    with _lock:
        ports = _consecutive(count, host) if consecutive else _kernel_chosen(count, host)
        _handed_out.update(ports)
    return ports


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (see free_ports)."""
    return free_ports(count, host, consecutive=True)[0]


def _kernel_chosen(count: int, host: str) -> list[int]:
    chosen: list[int] = []
    for _ in range(MAX_TRIES):
        sockets = []
        try:
            for _ in range(count - len(chosen)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, 0))
            fresh = {sock.getsockname()[1] for sock in sockets} - _handed_out - set(chosen)
        finally:
            for sock in sockets:
                sock.close()
        chosen += sorted(fresh)
        if len(chosen) >= count:
            return chosen[:count]
    raise PortError(f"no {count} free ports on {host} after {MAX_TRIES} tries")


def _consecutive(count: int, host: str) -> list[int]:
    for base in range(RUN_START, RUN_STOP - count + 1, count):
        run = range(base, base + count)
        if _handed_out.intersection(run):
            continue
        try:
            check_ports_free(host, run)
        except PortError:
            continue
        return list(run)
    raise PortError(f"no {count} consecutive free ports on {host} in [{RUN_START}, {RUN_STOP})")
