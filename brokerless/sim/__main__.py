"""Replay a simulated run: python -m brokerless.sim --seed N --nodes 5 --steps 20000 [--trace]."""

from __future__ import annotations

import argparse
import sys
import time

from brokerless.sim import LivenessViolation, SafetyViolation, SimOptions, run_seed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m brokerless.sim", description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1, help="run this many seeds from --seed on")
    ap.add_argument("--nodes", type=int, default=3, choices=[1, 2, 3, 4, 5, 6, 7])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--no-crashes", action="store_true")
    ap.add_argument("--trace", action="store_true", help="print every election and fault")
    args = ap.parse_args(argv)
    trace = print if args.trace else None
    for seed in range(args.seed, args.seed + args.seeds):
        opts = SimOptions(
            nodes=args.nodes, seed=seed, steps=args.steps, crashes=not args.no_crashes
        )
        started = time.perf_counter()
        try:
            sim = run_seed(opts, trace)
        except (SafetyViolation, LivenessViolation) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            print(
                f"replay: python -m brokerless.sim --seed {seed} --nodes {args.nodes} "
                f"--steps {args.steps} --trace",
                file=sys.stderr,
            )
            return 1
        took = time.perf_counter() - started
        commits = max((n.applied_index for n in sim.nodes.values()), default=0)
        print(
            f"seed {seed}: ok in {took:.2f}s; {sim.stats}, log index {commits}, "
            f"messages sent {sim.net.sent}, dropped {sim.net.dropped}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
