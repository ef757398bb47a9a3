"""Saturate a local zauction cluster for a while and report what the nodes went through.

Closed loop (the benchmark driver of scripts/bench_compare.py: pipelined DEALERs, one write in
flight per client id) against a fresh 3-node cluster with fsync on. Prints committed bids/s and
latency, CPU per committed bid of the first leader and of one follower (from /proc, so the
ZeroMQ I/O threads count too), the leader changes seen in the node logs, and each node's loop
counters (slow iterations, the longest iteration, busy answers).

    python scripts/bench_saturation.py                          # 60 s at 1,024 in flight
    python scripts/bench_saturation.py --inflight 256 --seconds 10 --runs 3
    python scripts/bench_saturation.py --profile                # + py-spy of leader and follower

Linux only (/proc). With --profile, py-spy must be installed; its raw output is kept next to
the node logs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_compare as bc  # noqa: E402

from zauction.tools import cluster as local  # noqa: E402  (bench_compare put the checkout on sys.path)

LEADER_LINE = re.compile(r"term (\d+): leader, leader ")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def leader_changes(nodes: bc.NodeSet) -> int:
    """Elections won after the first, from the node logs (each winner logs one line)."""
    terms = set()
    for node in nodes.handle.nodes:
        terms.update(LEADER_LINE.findall(node.log_file.read_text(errors="replace")))
    return max(0, len(terms) - 1)


def start_profilers(pids: dict[str, int], seconds: float, root: Path) -> list[subprocess.Popen]:
    if shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    return [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(max(1, int(seconds))),
                              "-r", "200", "-f", "raw", "--nonblocking",
                              "-o", str(root / f"py-spy-{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items()]


def one_run(root: Path, args: argparse.Namespace) -> dict:
    nodes = bc.start_zauction(root, 3)
    try:
        leader = bc.settle_servers(nodes.servers)
        follower = next(a for a in nodes.servers if a != leader)
        pids = {"leader": nodes.handle.node(leader).pid,
                "follower": nodes.handle.node(follower).pid}
        spies = start_profilers(pids, args.seconds, root) if args.profile else []
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        result = bc.closed_loop(nodes.servers, leader, args.inflight, args.seconds, 1.0)
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        for spy in spies:
            spy.wait()
        committed = max(1.0, result["ops_s"] * args.seconds)
        statuses = bc.statuses(nodes.servers, timeout=2.0)
        return {
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()},
            "leader_cpu_us_per_bid": round(used["leader"] / committed * 1e6, 1),
            "follower_cpu_us_per_bid": round(used["follower"] / committed * 1e6, 1),
            "leader_changes": leader_changes(nodes),
            "nodes": {addr: {"role": st.get("role"), "term": st.get("term"),
                             "busy_replies": st.get("busy_replies"), **st.get("loop", {})}
                      for addr, st in statuses.items()},
        }
    finally:
        local.stop_cluster(nodes.handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inflight", type=int, default=1024, help="writes in flight")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time per run")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="py-spy the leader and a follower")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-saturation-"))
    runs = []
    try:
        for n in range(args.runs):
            run = one_run(base / f"run{n}", args)
            runs.append(run)
            print(f"run {n + 1}: {run['ops_s']:,.0f} committed bids/s, p50 {run['p50_ms']} ms, "
                  f"p99 {run['p99_ms']} ms, max {run['max_ms']} ms; CPU per bid: leader "
                  f"{run['leader_cpu_us_per_bid']} us, follower {run['follower_cpu_us_per_bid']} "
                  f"us; leader changes {run['leader_changes']}")
            for addr, node in run["nodes"].items():
                print(f"    {addr} {node['role']} term {node['term']}: slow iterations "
                      f"{node.get('slow_iterations')}, longest {node.get('max_iteration_ms')} ms, "
                      f"busy answers {node['busy_replies']}")
    finally:
        if args.keep or args.profile:
            print(f"data, logs{' and profiles' if args.profile else ''}: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if len(runs) > 1:
        print(f"median of {len(runs)}: {statistics.median(r['ops_s'] for r in runs):,.0f} bids/s, "
              f"leader changes {[r['leader_changes'] for r in runs]}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
