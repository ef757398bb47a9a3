"""Flood a cluster with garbage while a polite client bids; report whether it noticed.

With --servers, floods that cluster; without, starts its own local 3-node cluster (through
zauction.tools.cluster, in a temporary directory) and stops it by PID afterwards. See
zauction/tools/flood.py for what is sent. Reports: messages sent by category, node exits
(0 expected), whether the state is unchanged apart from the polite client's bids (the
cluster's `auctions` and every node's replica, before and after), each node's peak RSS
(VmHWM, local cluster or --pids), the polite client's p50/p99, the leader and term before
and after. Exit status 0 when every check passed, 1 otherwise.

    python scripts/flood.py                         # the soak: 1,000,000 messages, local cluster
    python scripts/flood.py --frames 40000 --json
    python scripts/flood.py --servers h1:7001,h2:7001,h3:7001 --seconds 60 --skip hello_hijack
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from zauction.client.client import AuctionClient, ClientError  # noqa: E402
from zauction.tools import cluster as local  # noqa: E402
from zauction.tools.flood import (  # noqa: E402
    CATEGORIES,
    FloodConfig,
    FloodReport,
    peak_rss_kb,
    run_flood,
)
from zauction.tools.ports import free_ports  # noqa: E402

LOG_TAIL_LINES = 30
DAY_MS = 24 * 3600 * 1000


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", help="host:port,... of a running cluster "
                        "(default: start a local 3-node cluster)")
    parser.add_argument("--pids", help="pid,... of the --servers nodes, in order, for peak RSS")
    parser.add_argument("--frames", type=int, default=1_000_000,
                        help="messages to send at most (default 1,000,000; 0: no bound)")
    parser.add_argument("--seconds", type=float, help="stop after this long at most")
    parser.add_argument("--rate", type=float, default=2_000.0,
                        help="messages per second at most (0: unlimited; default 2000)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--only", help=f"categories to send, of: {', '.join(CATEGORIES)}")
    parser.add_argument("--skip", help="categories not to send")
    parser.add_argument("--no-impersonate", action="store_true",
                        help="no DEALER wears a member's routing id")
    parser.add_argument("--max-bomb-bytes", type=int, default=256 * 1024)
    parser.add_argument("--no-polite", action="store_true", help="no polite client")
    parser.add_argument("--restart-midway", choices=("follower", "leader"),
                        help="local cluster only: kill -9 that node halfway through the flood "
                        "and restart it on its data (impostors may squat its routing id)")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds to wait for a leader and equal replicas afterwards")
    parser.add_argument("--workdir", type=Path, help="the local cluster's directory "
                        "(default: a temporary one, removed unless a check failed)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.frames == 0 and args.seconds is None:
        parser.error("give --frames or --seconds: the flood must be bounded")
    return args


def categories(args: argparse.Namespace) -> tuple[str, ...]:
    chosen = [c.strip() for c in args.only.split(",")] if args.only else list(CATEGORIES)
    skipped = {c.strip() for c in args.skip.split(",")} if args.skip else set()
    unknown = (set(chosen) | skipped) - set(CATEGORIES)
    if unknown:
        raise SystemExit(f"unknown categories: {', '.join(sorted(unknown))}")
    return tuple(c for c in chosen if c not in skipped)


def start_local(root: Path) -> local.ClusterHandle:
    handle = local.start_cluster(root, ports=free_ports(3), host="127.0.0.1",
                                 auction_duration_ms=DAY_MS)
    try:
        deadline = time.monotonic() + 20
        local.wait_serving(handle, deadline)
        local.wait_for_leader(handle.servers, deadline, handle, agreed=True)
        with AuctionClient(handle.servers, timeout=10) as client:
            while True:
                try:
                    client.result()  # the leader opens the default auction
                    break
                except ClientError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)  # polling until the default auction exists
    except BaseException:
        local.stop_cluster(handle)
        raise
    return handle


def restarter(handle: local.ClusterHandle, which: str, done: list[str]):
    """The FloodConfig.midway fault: kill -9 the leader or a follower, restart it."""

    def restart() -> None:
        found = {s["addr"]: s for s in AuctionClient(handle.servers, timeout=2).status()}
        leader = local.leader_of(list(found.values()))
        others = [a for a in handle.servers if a != leader]
        addr = leader if which == "leader" and leader else others[0]
        local.kill_node(handle, addr)
        local.restart_node(handle, addr)
        local.wait_serving(handle, time.monotonic() + 20, [addr])
        done.append(f"killed -9 and restarted {which} {addr}")

    return restart


def check(report: FloodReport, exits: dict[str, Any] | None, polite: bool = True) -> list[str]:
    """What went wrong, in words (empty: every check passed)."""
    problems = []
    if exits:
        problems += [f"node {a} exited during the flood with {c}" for a, c in exits.items()
                     if c is not None]
    if report.unanswered_status:
        problems.append(f"no status answer after the flood from {report.unanswered_status}")
    if report.leader_after is None:
        problems.append("no leader agreed by every node after the flood")
    if not report.settled:
        problems.append("the replicas did not settle (equal applied = commit index)")
    problems += report.state_diffs
    for addr, diffs in report.node_state_diffs.items():
        problems += [f"{addr}: {d}" for d in diffs]
    if polite and not report.polite.opened:
        problems.append("the polite client could not open its auction")
    polite_report = report.polite
    if polite_report.errors:
        problems.append(f"the polite client failed: {polite_report.errors}")
    if polite_report.failed:
        problems.append(f"polite bids not accepted: {polite_report.failed[:5]}")
    if polite_report.rejected:
        problems.append(f"polite bids rejected: {polite_report.rejected[:5]}")
    if report.garbage_accepted_count:
        problems.append(f"{report.garbage_accepted_count} malformed writes were accepted, "
                        f"e.g. {report.garbage_accepted[:3]}")
    return problems


def render(doc: dict[str, Any]) -> str:
    polite = doc["polite"]
    lines = [
        f"flood: {doc['total_sent']:,} messages in {doc['elapsed_s']:.1f}s "
        f"(dropped at our HWM: {sum(doc['dropped'].values()):,})",
        "  sent: " + ", ".join(f"{k} {v:,}" for k, v in doc["sent"].items()),
        "  bombs: " + ", ".join(f"{k} {v:,}" for k, v in doc["bombs"].items()),
        "  replies: " + ", ".join(f"{k} {v:,}" for k, v in doc["replies"].items()),
        f"  sockets opened {doc['sockets_opened']}, replaced {doc['sockets_replaced']}, "
        f"subscribed {doc['subscribed_bytes']:,} topic bytes",
        f"leader before {doc['leader_before']} (term {doc['term_before']}), after "
        f"{doc['leader_after']} (term {doc['term_after']}); settled: {doc['settled']}",
        f"polite: {polite['accepted_count']} bids accepted, {len(polite['rejected'])} rejected, "
        f"{len(polite['failed'])} failed, {polite['unanswered_calls']} unanswered calls, "
        f"{polite['retried_bids']} bids retried; p50 {polite['p50_ms']} ms, "
        f"p99 {polite['p99_ms']} ms, max {polite['max_ms']} ms",
        "  attempts: " + ", ".join(f"{k} {v:,}" for k, v in polite["verdicts"].items()),
        f"state unchanged apart from the polite bids: {doc['state_unchanged']}",
    ]
    if doc.get("midway"):
        lines.append("midway: " + "; ".join(doc["midway"]))
    for node in doc.get("nodes", []):
        lines.append(f"node {node['addr']}: exit during flood {node['exited']}, "
                     f"peak RSS {node['peak_rss_mb']} MB, stop {node.get('stop')} "
                     f"(code {node.get('exit_code')})")
    for addr, deltas in doc["counters"].items():
        lines.append(f"  {addr} counters: " + ", ".join(f"{k} +{v:,}" for k, v in
                                                         deltas.items()))
    if doc["errors"]:
        lines.append("flood errors: " + "; ".join(doc["errors"][:10]))
    if doc["problems"]:
        lines.append("PROBLEMS:")
        lines += [f"  - {p}" for p in doc["problems"]]
    for node in doc.get("nodes", []):
        if node.get("log_tail"):
            lines.append(f"==== {node['addr']} log tail ({node['log_file']})")
            lines.append(node["log_tail"])
    return "\n".join(lines)


def node_rows(handle: local.ClusterHandle | None, servers: list[str],
              pids: list[int]) -> list[dict[str, Any]]:
    """Each node's exit during the flood and peak RSS (read before the nodes are stopped)."""
    rows = []
    if handle is not None:
        for node in handle.nodes:
            rss = peak_rss_kb(node.pid) if node.exit_code is None else None
            rows.append({"addr": node.addr, "pid": node.pid, "exited": node.exit_code,
                         "peak_rss_mb": round(rss / 1024, 1) if rss else None,
                         "log_file": str(node.log_file)})
    for addr, pid in zip(servers, pids, strict=False) if handle is None else ():
        rss = peak_rss_kb(pid)
        rows.append({"addr": addr, "pid": pid, "exited": None,
                     "peak_rss_mb": round(rss / 1024, 1) if rss else None, "log_file": None})
    return rows


def stop_local(handle: local.ClusterHandle, rows: list[dict[str, Any]]) -> None:
    """Stop the local cluster by PID; record how each node stopped and its exit code."""
    for row, stop in zip(rows, local.stop_cluster(handle), strict=True):
        proc = handle.node(row["addr"]).proc
        row["stop"] = stop.outcome
        row["exit_code"] = proc.returncode if proc is not None else None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    handle, tmp = None, None
    if args.servers:
        servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    else:
        root = args.workdir or Path(tmp := tempfile.mkdtemp(prefix="zauction-flood-"))
        handle = start_local(root)
        servers = handle.servers
    if args.restart_midway and handle is None:
        raise SystemExit("--restart-midway needs the local cluster (no --servers)")
    midway: list[str] = []
    config = FloodConfig(
        servers=servers, frames=args.frames or None, seconds=args.seconds, rate=args.rate,
        seed=args.seed, categories=categories(args), impersonate=not args.no_impersonate,
        max_bomb_bytes=args.max_bomb_bytes, polite=not args.no_polite, settle_s=args.settle,
        midway=restarter(handle, args.restart_midway, midway) if args.restart_midway else None)
    rows: list[dict[str, Any]] = []
    try:
        report = run_flood(config)
        exits = {n.addr: n.exit_code for n in handle.nodes} if handle is not None else None
        rows = node_rows(handle, servers, [int(p) for p in (args.pids or "").split(",") if p])
    finally:
        if handle is not None:
            stop_local(handle, rows or [{"addr": a} for a in handle.servers])
    problems = check(report, exits, polite=config.polite)
    problems += [f"node {r['addr']} stopped with exit code {r['exit_code']}" for r in rows
                 if r.get("exit_code") not in (0, None)]
    doc = {**report.to_dict(), "nodes": rows, "midway": midway, "problems": problems}
    for row, node in zip(rows, handle.nodes if handle is not None and problems else (),
                         strict=False):
        row["log_tail"] = local.log_tail(node, LOG_TAIL_LINES)
    print(json.dumps(doc, indent=2, default=str) if args.json else render(doc))
    if tmp is not None and not problems:
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp is not None:
        print(f"(the cluster's directory is kept: {tmp})", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
