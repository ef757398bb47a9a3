"""Why the node loop is a zmq.Poller loop and not zmq.asyncio: the same ROUTER echo
server both ways, measured from a DEALER client in another process.

    python scripts/bench_loop.py [--seconds 3] [--runs 3]

Prints round-trip latency at 1 request in flight and throughput at 100 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import sys
import time

import zmq
import zmq.asyncio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poller_server(port: int) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"tcp://127.0.0.1:{port}")
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    while True:
        if poller.poll(100):
            while True:  # drain, like the node loop
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                router.send_multipart(frames)


def asyncio_server(port: int) -> None:
    async def serve() -> None:
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        router.bind(f"tcp://127.0.0.1:{port}")
        while True:
            frames = await router.recv_multipart()
            await router.send_multipart(frames)

    asyncio.run(serve())


def measure(port: int, seconds: float, inflight: int) -> tuple[float, float]:
    """(median round trip in microseconds, replies per second)."""
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"warmup")
    dealer.recv()
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    for i in range(inflight):
        sent_at[i] = time.perf_counter()
        dealer.send(i.to_bytes(8, "big"))
    next_id, done, end = inflight, 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        reply = int.from_bytes(dealer.recv(), "big")
        now = time.perf_counter()
        rtts.append(now - sent_at.pop(reply))
        done += 1
        sent_at[next_id] = now
        dealer.send(next_id.to_bytes(8, "big"))
        next_id += 1
    dealer.close()
    return statistics.median(rtts) * 1e6, done / (time.perf_counter() - started)


def run(kind: str, seconds: float) -> tuple[float, float]:
    port = free_port()
    target = poller_server if kind == "poller" else asyncio_server
    proc = mp.Process(target=target, args=(port,), daemon=True)
    proc.start()
    try:
        rtt, _ = measure(port, seconds, 1)
        _, rate = measure(port, seconds, 100)
        return rtt, rate
    finally:
        proc.terminate()
        proc.join(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"command: python {' '.join(sys.argv)}  (medians of {args.runs} runs)")
    print(f"{'loop':>8} {'rtt p50 at 1 in flight (us)':>28} {'replies/s at 100 in flight':>28}")
    for kind in ("poller", "asyncio"):
        results = [run(kind, args.seconds) for _ in range(args.runs)]
        rtt = statistics.median(r[0] for r in results)
        rate = statistics.median(r[1] for r in results)
        print(f"{kind:>8} {rtt:>28.0f} {rate:>28,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
