"""Snapshots taken in a forked child: the parent keeps going and gets the bytes back."""

from __future__ import annotations

import gc
import random
import time

from brokerless.core import Config, Core
from brokerless.runtime import Runtime, Timing
from brokerless.snapshotter import Snapshotter
from brokerless.storage import MemoryStorage
from brokerless.transport import MemoryTransport


def wait_for(snapshotter: Snapshotter, deadline_s: float = 10.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        done = snapshotter.poll()
        if done is not None or not snapshotter.busy:
            return done
        time.sleep(0.005)  # polling a child process: nothing to wait on but its exit
    raise AssertionError("snapshot child did not finish in time")


def test_the_child_sees_the_state_as_of_the_fork(tmp_path):
    state = {"bids": list(range(1000))}
    snap = Snapshotter(tmp_path)
    assert snap.start(7, lambda: repr(state["bids"]).encode()) is None
    state["bids"].append(-1)  # the parent moves on; the child's copy must not change
    index, data = wait_for(snap)
    assert index == 7 and data == repr(list(range(1000))).encode()
    assert not list(tmp_path.iterdir()), "the scratch file is removed"


def test_a_failing_child_gives_nothing_and_the_next_one_works(tmp_path):
    snap = Snapshotter(tmp_path)

    def broken() -> bytes:
        raise RuntimeError("boom")

    snap.start(1, broken)
    assert wait_for(snap) is None and not snap.busy
    snap.start(2, lambda: b"ok")
    assert wait_for(snap) == (2, b"ok")


def test_the_child_does_not_collect_garbage_but_the_parent_still_does(tmp_path):
    snap = Snapshotter(tmp_path)
    assert gc.isenabled()
    snap.start(5, lambda: str(gc.isenabled()).encode())
    assert wait_for(snap) == (5, b"False") and gc.isenabled()


def test_without_fork_it_is_taken_inline(tmp_path):
    assert Snapshotter(tmp_path, fork=False).start(3, lambda: b"x") == (3, b"x")


def test_close_kills_a_running_child(tmp_path):
    snap = Snapshotter(tmp_path)

    def slow() -> bytes:
        time.sleep(30)  # the child must be killed long before this ends
        return b""

    snap.start(4, slow)
    started = time.monotonic()
    snap.close()
    assert time.monotonic() - started < 5 and not snap.busy


class CountingApp:
    def __init__(self):
        self.n = 0

    def apply(self, entry):
        self.n += 1

    def snapshot(self) -> bytes:
        return str(self.n).encode()

    def restore(self, data): ...
    def on_inbound(self, frame): ...
    def on_peer_reply(self, reply): ...
    def on_role_change(self, soft): ...
    def before_ready(self, now): return False
    def after_iteration(self): ...


def test_runtime_compacts_once_the_child_finishes_even_when_idle(tmp_path):
    config = Config("a", ("a",))
    core = Core(config, random.Random(0))
    storage = MemoryStorage()
    rt = Runtime(config, core, storage, MemoryTransport("a"), CountingApp(), Timing(),
                 snapshot_every=1, snapshotter=Snapshotter(tmp_path))
    core.campaign()
    rt.process_ready()
    rt.propose(b"x", lambda r, e: None)
    rt.process_ready()
    deadline = time.monotonic() + 10
    while core.snapshot_index == 0 and time.monotonic() < deadline:
        rt.process_ready()  # nothing new to do: only the finished child is left to pick up
        time.sleep(0.005)
    snap = storage.load().snapshot
    assert core.snapshot_index >= 1 and snap is not None
    assert int(snap.data) == snap.meta.index  # one applied entry per index, NOOP included
