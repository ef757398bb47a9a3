"""The randomized simulator in CI: seeded chaos on 3, 5 and 7 nodes until a time budget.

Seeds run round-robin over the cluster sizes 1 to 7 until the budget is used: 150 s by
default, `ZAUCTION_SIM_BUDGET=<seconds>` to change it, `--soak` for 20 minutes and 20000
steps per seed. Seeds start at `ZAUCTION_SIM_SEED`, by default a fresh one every run (it is
printed), so every CI run explores new schedules and any failure replays from its seed. Run with `-s` to see how many
seeds ran; the counts are also in the junit report (`record_property`). A failure names
the command that replays it with a trace.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

import pytest

from brokerless.sim import SimOptions, run_seed

SIZES = (1, 2, 3, 4, 5, 6, 7)


def first_seed() -> int:
    return int(os.environ.get("ZAUCTION_SIM_SEED", str(time.time_ns() % 1_000_000_000)))


def replay_command(seed: int, nodes: int, steps: int) -> str:
    return f"python -m brokerless.sim --seed {seed} --nodes {nodes} --steps {steps} --trace"


def run_one(seed: int, nodes: int, steps: int) -> None:
    try:
        run_seed(SimOptions(nodes=nodes, seed=seed, steps=steps))
    except Exception as exc:  # safety, liveness, or the core raising: all are failures
        pytest.fail(
            f"{type(exc).__name__}: {exc}\nreplay: {replay_command(seed, nodes, steps)}",
            pytrace=False,
        )


def test_random_seeds_stay_safe_and_live(sim_budget, record_property) -> None:
    seed = start = last = first_seed()
    print(f"\nsimulator seeds from {start} (ZAUCTION_SIM_SEED={start} replays this run)")
    ran: Counter[int] = Counter()
    started = time.monotonic()
    deadline = started + sim_budget.seconds
    while time.monotonic() < deadline:
        for nodes in SIZES:
            if time.monotonic() >= deadline:
                break
            run_one(seed, nodes, sim_budget.steps)
            ran[nodes] += 1
            last = seed
        seed += 1
    took = time.monotonic() - started
    summary = ", ".join(f"{n} nodes: {ran[n]} seeds" for n in SIZES)
    print(f"\nsimulated seeds {start}..{last} x {sim_budget.steps} steps in {took:.0f}s: {summary}")
    for nodes in SIZES:
        record_property(f"seeds_{nodes}_nodes", ran[nodes])
    record_property("first_seed", start)
    assert all(ran[n] >= 1 for n in SIZES), f"budget too small to run every size: {summary}"


def test_a_failing_seed_names_its_replay_command(monkeypatch) -> None:
    def broken(opts: SimOptions) -> None:
        raise AssertionError("two leaders in term 3")

    monkeypatch.setattr(sys.modules[__name__], "run_seed", broken)
    with pytest.raises(pytest.fail.Exception) as failed:
        run_one(42, 5, 4000)
    message = str(failed.value)
    assert "two leaders in term 3" in message
    assert "python -m brokerless.sim --seed 42 --nodes 5 --steps 4000 --trace" in message
