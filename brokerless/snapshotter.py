"""Take application snapshots in a forked child, so a large state never stalls the loop.

Serializing a big state takes long enough (hundreds of ms per million records) that, done
in the loop, heartbeats would stop and followers would elect a new leader. A fork gives the
child a frozen copy of the state for free (copy-on-write); it serializes it to a file and
exits, while the parent goes on serving. The parent picks the bytes up when the child is done.
The child touches no socket, file or lock of the parent's: it only calls `snapshot()`.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("brokerless.snapshotter")
_MAX_FD = min(os.sysconf("SC_OPEN_MAX"), 1 << 16) if hasattr(os, "sysconf") else 1024
_SCRATCH_GLOB = ".snapshot-*.tmp"


@dataclass(frozen=True, slots=True)
class _Running:
    pid: int
    index: int
    path: Path


class Snapshotter:
    def __init__(self, scratch_dir: str | Path | None = None, fork: bool = True):
        self.scratch_dir = Path(scratch_dir or tempfile.gettempdir())
        self.fork = fork and hasattr(os, "fork")
        self._running: _Running | None = None
        if scratch_dir is not None:  # our own directory: leftovers of a crashed node go
            for stale in self.scratch_dir.glob(_SCRATCH_GLOB):
                stale.unlink(missing_ok=True)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def start(self, index: int, take: Callable[[], bytes]) -> tuple[int, bytes] | None:
        """Begin a snapshot of the state as of `index`; without fork, returns it at once."""
        if not self.fork:
            return index, take()
        path = self.scratch_dir / f".snapshot-{index}-{os.getpid()}.tmp"
        pid = os.fork()
        if pid == 0:  # the child: serialize, write, leave without running any cleanup
            code = 1
            try:
                # Drop every inherited descriptor first: the store's lock and the bound
                # sockets must die with the node, not live on in an orphan if it is killed.
                os.closerange(3, _MAX_FD)
                # A collection here would write to the header of every tracked object and so
                # copy each page of the parent's heap it touches; the child lives seconds.
                gc.disable()
                path.write_bytes(take())
                code = 0
            finally:
                os._exit(code)
        self._running = _Running(pid, index, path)
        return None

    def poll(self) -> tuple[int, bytes] | None:
        """(index, data) once the child finished; None while it runs or if it failed."""
        run = self._running
        if run is None:
            return None
        pid, status = os.waitpid(run.pid, os.WNOHANG)
        if pid == 0:
            return None
        self._running = None
        try:
            if os.waitstatus_to_exitcode(status) != 0:
                log.error("snapshot child for index %d failed (status %d)", run.index, status)
                return None
            return run.index, run.path.read_bytes()
        finally:
            run.path.unlink(missing_ok=True)

    def close(self) -> None:
        run, self._running = self._running, None
        if run is not None:
            try:
                os.kill(run.pid, 9)
                os.waitpid(run.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            run.path.unlink(missing_ok=True)
