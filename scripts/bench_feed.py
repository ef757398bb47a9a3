"""The live feed under fan-out, and the cluster at 3, 5 and 7 nodes.

Feed: 1, 10 and 100 FeedWatchers (threads, spread over up to 4 worker processes) watch one
auction while a bidder places accepted bids at a steady rate; a last, highest bid by
"__end__" tells every watcher the run is over. Per watcher: events delivered, gaps left
after its own gap filling (must be 0), duplicates delivered (must be 0), events it had to
fill, and the lag from the bidder's acknowledgement to the watcher's delivery.

Cluster size: committed bids/s (closed loop, 128 in flight) and kill -9 failover of the
leader, for 3, 5 and 7 zauction nodes (scripts/bench_compare.py measures both the same way).

    python scripts/bench_feed.py --quick      # ~2 min
    python scripts/bench_feed.py              # ~5 min
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_compare as bc  # scripts/ is on sys.path when this file is run as a script
import zmq

from zauction.client.client import AuctionClient, ClientError
from zauction.client.feed import FeedWatcher
from zauction.tools import cluster as local
from zauction.tools.cluster import sigterm_as_interrupt

END_BIDDER = "__end__"
MAX_WORKERS = 4
READY_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 30.0  # after the last bid, how long watchers may take to deliver it


@dataclass(frozen=True, slots=True)
class FeedPlan:
    rate: float  # bids per second
    seconds: float
    watchers: tuple[int, ...] = (1, 10, 100)
    sizes: tuple[int, ...] = (3, 5, 7)


QUICK = FeedPlan(rate=100.0, seconds=3.0)
FULL = FeedPlan(rate=100.0, seconds=10.0)


# --- the worker process: watchers in threads -------------------------------------------------


@dataclass
class WatcherLog:
    baseline: int = -1  # the auction's event count when this watcher started
    events: list[tuple[int, int, float]] = field(default_factory=list)  # (seq, amount, time)
    filled: int = 0
    done: bool = False
    error: str | None = None


def watch(servers: list[str], auction: str, out: WatcherLog, ready: threading.Event,
          ctx: zmq.Context) -> None:
    client = AuctionClient(servers, timeout=2.0, attempt_timeout=0.5, context=ctx)
    try:
        with FeedWatcher(client, auction) as watcher:
            out.baseline = watcher.seen.get(auction, 0)
            ready.set()
            for event in watcher:
                if event.get("type") != "bid_accepted":
                    continue
                out.events.append((event["seq"], event["amount"], time.monotonic()))
                out.filled = watcher.filled
                if event.get("bidder") == END_BIDDER:
                    out.done = True
                    return
    except (ClientError, zmq.ZMQError) as exc:
        out.error = str(exc)
    finally:
        ready.set()
        client.close()


def watcher_process(servers: list[str], auction: str, count: int, deadline_s: float,
                    out: Path) -> None:
    """Start `count` watchers, say READY on stdout, and write their logs to `out` when all
    have seen the end (or at the deadline)."""
    ctx = zmq.Context.instance()
    logs = [WatcherLog() for _ in range(count)]
    readies = [threading.Event() for _ in range(count)]
    threads = [threading.Thread(target=watch, args=(servers, auction, log, ready, ctx),
                                daemon=True) for log, ready in zip(logs, readies, strict=True)]
    for thread in threads:
        thread.start()
    for ready in readies:
        ready.wait(READY_TIMEOUT_S)
    print("READY", flush=True)
    end = time.monotonic() + deadline_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    out.write_text(json.dumps([log.__dict__ for log in logs]))
    sys.stdout.flush()
    os._exit(0)  # watcher threads still blocked in a poll must not keep us alive


# --- the feed measurement --------------------------------------------------------------------


def spawn_workers(servers: list[str], auction: str, watchers: int, deadline_s: float,
                  root: Path, procs: list[tuple[subprocess.Popen, Path]]) -> None:
    """Start the watcher processes, adding each to `procs` as soon as it runs."""
    per = [watchers // MAX_WORKERS + (i < watchers % MAX_WORKERS)
           for i in range(min(watchers, MAX_WORKERS))]
    for i, count in enumerate(per):
        out = root / f"watchers-{auction}-{i}.json"
        cmd = [sys.executable, __file__, "worker", "--servers", ",".join(servers),
               "--auction", auction, "--count", str(count), "--deadline-s", str(deadline_s),
               "--out", str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=_env())
        procs.append((proc, out))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(bc.ROOT), env.get("PYTHONPATH")]))
    return env


def wait_ready(procs: list[tuple[subprocess.Popen, Path]], timeout: float) -> None:
    waiting = {p.stdout.fileno(): p for p, _ in procs if p.stdout}
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        readable, _, _ = select.select(list(waiting), [], [], max(0.0, left))
        if not readable:
            raise bc.BenchError(f"{len(waiting)} watcher process(es) not ready in {timeout:.0f}s")
        for fd in readable:
            if waiting[fd].stdout.readline().strip() != b"READY":
                raise bc.BenchError("a watcher process failed before it was ready")
            del waiting[fd]


def stop_workers(procs: list[tuple[subprocess.Popen, Path]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc, _ in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=bc.STOP_TIMEOUT_S)
        if proc.stdout:
            proc.stdout.close()


def bid_steadily(servers: list[str], auction: str, rate: float, seconds: float) -> dict[int, float]:
    """Accepted bids 1, 2, 3... due every 1/rate s, then the end bid; amount -> ack time."""
    acks: dict[int, float] = {}
    client = AuctionClient(servers, timeout=5.0, attempt_timeout=0.5)
    try:
        start, amount = time.monotonic(), 0
        while (due := start + amount / rate) < start + seconds:
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the offered rate, not waiting for a condition
            amount += 1
            client.bid(amount, f"bidder-{amount % 10}", auction)
            acks[amount] = time.monotonic()
        client.bid(amount + 1, END_BIDDER, auction)
        acks[amount + 1] = time.monotonic()
    finally:
        client.close()
    return acks


def open_auction(servers: list[str], auction: str) -> None:
    opener = AuctionClient(servers, timeout=5.0)
    try:
        opener.open_auction(auction, duration_ms=3_600_000)
    finally:
        opener.close()


def feed_point(nodes: bc.NodeSet, worker: bc.Worker, watchers: int, plan: FeedPlan,
               root: Path) -> dict:
    auction = f"feed-{watchers}"
    worker.call(open_auction, nodes.servers, auction)
    deadline_s = READY_TIMEOUT_S + plan.seconds + DRAIN_TIMEOUT_S
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        spawn_workers(nodes.servers, auction, watchers, deadline_s, root, procs)
        wait_ready(procs, READY_TIMEOUT_S)
        started = time.monotonic()
        acks = worker.call(bid_steadily, nodes.servers, auction, plan.rate, plan.seconds)
        bid_rate = (len(acks) - 1) / (time.monotonic() - started)
    except BaseException:
        stop_workers(procs, 0.0)  # interrupted or failed: no point waiting for them
        raise
    stop_workers(procs, deadline_s)
    logs = [w for _, out in procs if out.exists() for w in json.loads(out.read_text())]
    return {"watchers": watchers, "reported": len(logs), "bid_rate": bid_rate,
            **judge_feed(logs, acks)}


def judge_feed(logs: list[dict], acks: dict[int, float]) -> dict:
    """Against the bids made (seq n is the n-th accepted bid, amount n): what each watcher got."""
    end = len(acks)
    delivered, gaps, dups, wrong, filled, lags = [], 0, 0, 0, 0, []
    for log in logs:
        seqs = [seq for seq, _, _ in log["events"]]
        expected = set(range(log["baseline"] + 1, end + 1))
        delivered.append(len(seqs))
        gaps += len(expected - set(seqs))
        dups += len(seqs) - len(set(seqs))
        wrong += sum(1 for seq, amount, _ in log["events"] if seq != amount)
        filled += log["filled"]
        lags += [(t - acks[a]) * 1000 for _, a, t in log["events"] if a in acks]
    return {"expected": end, "delivered_min": min(delivered, default=0),
            "delivered_median": statistics.median(delivered) if delivered else 0,
            "delivered_max": max(delivered, default=0), "gaps": gaps, "duplicates": dups,
            "wrong": wrong, "filled": filled, "done": sum(1 for log in logs if log["done"]),
            "lag_p50_ms": _pct(lags, 50), "lag_p99_ms": _pct(lags, 99)}


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


# --- running it all ------------------------------------------------------------------------------


def run_feed(plan: FeedPlan, worker: bc.Worker, base: Path) -> list[dict]:
    nodes = bc.start_zauction(base / "feed", 3)
    try:
        bc.wait_leader(nodes, worker, 60.0)
        bc.settle(nodes, worker)
        points = []
        for watchers in plan.watchers:
            point = feed_point(nodes, worker, watchers, plan, base)
            bc.say(f"feed: {watchers} watcher(s): {json.dumps(point)}")
            points.append(point)
        return points
    finally:
        local.stop_cluster(nodes.handle)


def run_sizes(plan: FeedPlan, bench: bc.Plan, worker: bc.Worker, base: Path) -> dict[int, dict]:
    out = {}
    for size in plan.sizes:
        nodes = bc.start_zauction(base / f"size-{size}", size, name=f"{size} nodes")
        try:
            bc.wait_leader(nodes, worker, 60.0)
            name = f"{size} nodes"
            res = bc.measure_all({name: nodes}, worker, bench, {"peak", "failover"})
            out[size] = res[name]
        finally:
            local.stop_cluster(nodes.handle)
    return out


def feed_table(points: list[dict], plan: FeedPlan) -> str:
    head = (f"{'watchers':>8} {'bids':>6} {'bids/s':>7} {'per watcher min/med/max':>24} "
            f"{'gaps':>5} {'dups':>5} {'wrong':>5} {'filled':>7} {'done':>6} "
            f"{'lag p50 ms':>10} {'lag p99 ms':>10}")
    lines = [f"feed fan-out: 3 nodes, one auction, {plan.rate:g} bids/s offered for "
             f"{plan.seconds:g} s, then the end bid", head, "-" * len(head)]
    for p in points:
        per = f"{p['delivered_min']}/{p['delivered_median']:g}/{p['delivered_max']}"
        lines.append(f"{p['watchers']:>8} {p['expected']:>6} {p['bid_rate']:>7.1f} {per:>24} "
                     f"{p['gaps']:>5} {p['duplicates']:>5} {p['wrong']:>5} {p['filled']:>7} "
                     f"{p['done']:>3}/{p['reported']:<2} {p['lag_p50_ms']:>10.1f} "
                     f"{p['lag_p99_ms']:>10.1f}")
    return "\n".join(lines)


def sizes_table(sizes: dict[int, dict], bench: bc.Plan) -> str:
    head = (f"{'nodes':>5} {'committed bids/s':>17} {'in flight':>9} {'runs':>20} "
            f"{'failover med ms':>16} {'failover max ms':>16}  failovers ms")
    levels = "/".join(map(str, bench.levels))
    lines = [f"cluster size: closed loop at {levels} in flight (best level, median of "
             f"{bench.runs}), {bench.seconds:g} s per run; kill -9 of the leader under "
             f"{bench.failover_inflight} in flight", head, "-" * len(head)]
    for size, r in sizes.items():
        runs = ",".join(f"{x['ops_s']:.0f}" for x in r.get("peak_runs", []))
        each = ", ".join("none" if t is None else f"{t * 1000:.0f}" for t in r["failover_s"])
        lines.append(f"{size:>5} {r['peak']:>17,.0f} {r['peak_inflight']:>9} {runs:>20} "
                     f"{bc.failover_stat(r, statistics.median):>16,.0f} "
                     f"{bc.failover_stat(r, max):>16,.0f}  {each}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="internal: run watchers for the main process")
    w.add_argument("--servers", required=True)
    w.add_argument("--auction", required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--deadline-s", type=float, required=True)
    w.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="a few seconds per point")
    p.add_argument("--parts", default="feed,sizes", help="feed, sizes or both")
    p.add_argument("--json", type=Path, default=None, help="also write every number here")
    p.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # see bench_compare.main
    if args.cmd == "worker":
        watcher_process(args.servers.split(","), args.auction, args.count, args.deadline_s,
                        args.out)
        return 0
    plan, bench = (QUICK, bc.QUICK) if args.quick else (FULL, bc.FULL)
    base = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    out: dict[str, Any] = {}
    load = bc.Worker()  # every ZeroMQ client of ours but the watchers runs in this process
    try:
        with sigterm_as_interrupt():
            if "feed" in args.parts:
                out["feed"] = run_feed(plan, load, base)
            if "sizes" in args.parts:
                out["sizes"] = run_sizes(plan, bench, load, base)
    except KeyboardInterrupt:
        bc.say("interrupted: every process started was stopped")
        return 130
    except (bc.BenchError, ClientError) as exc:
        bc.say(f"error: {exc}")
        return 1
    finally:
        bc.stop_all([], load)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{'quick' if args.quick else 'full'} run; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    if "feed" in out:
        print(feed_table(out["feed"], plan) + "\n")
    if "sizes" in out:
        print(sizes_table(out["sizes"], bench))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
