"""RSS of a node restarted on an existing data directory, once it has caught up.

Starts `python -m zauction node` (from `--code`, default this checkout) on DATA_DIR with the
address it was created with (read from the store), through zauction.tools.cluster; waits
until applied == commit == last index, prints VmRSS and VmHWM, and stops it by PID. Run it on
a copy of a directory kept by `bench_durability.py --root`, once with the current code and
once with an older checkout, to compare what a restart costs in memory on identical data.

    python scripts/restart_rss.py /tmp/run/main/node-<port> [--code /tmp/old-checkout]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from brokerless.storage.sqlite import describe_store  # noqa: E402
from zauction.client.client import AuctionClient  # noqa: E402
from zauction.tools import cluster as local  # noqa: E402


def proc_status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_caught_up(node: local.NodeProcess, deadline_s: float) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if node.exit_code is not None:
            raise SystemExit(f"the node exited with {node.exit_code}; its log ends with:\n"
                             f"{local.log_tail(node, 20)}")
        with AuctionClient([node.addr], attempt_timeout=0.5) as client:
            try:
                status = client.status()[0]
            except Exception:  # not listening yet: keep polling until the deadline
                status = {}
        if status.get("role") == "leader" and (
                status["applied_index"] == status["commit_index"] == status["last_index"]):
            return status
        time.sleep(0.1)  # polling a condition with a deadline
    raise SystemExit(f"not caught up within {deadline_s:.0f}s (log: {node.log_file})")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout to run the node from")
    parser.add_argument("--deadline", type=float, default=300.0)
    args = parser.parse_args(argv)
    data_dir = args.data_dir.resolve()
    addr = describe_store(data_dir)["node_id"]
    root = Path(tempfile.mkdtemp(prefix="restart-rss-"))  # the node's log and cluster.json
    cmd = local.node_command((sys.executable, "-m", "zauction"), addr, (), data_dir,
                             ("--log-level", "WARNING"))
    node = local.NodeProcess(addr, int(addr.rsplit(":", 1)[1]), 0, data_dir, root / "node.log",
                             cmd, code=args.code.resolve())
    started = time.monotonic()
    handle = local.launch(local.ClusterHandle(root, (node,)))
    try:
        status = wait_caught_up(node, args.deadline)
        took = time.monotonic() - started
        print(f"{args.code}: caught up at index {status['last_index']:,} in {took:.1f} s; "
              f"RSS {proc_status_mb(node.pid, 'VmRSS'):.0f} MB, "
              f"peak (VmHWM) {proc_status_mb(node.pid, 'VmHWM'):.0f} MB", flush=True)
    finally:
        local.stop_cluster(handle, timeout=30.0)
    shutil.rmtree(root, ignore_errors=True)  # kept when the run failed: the log says why


if __name__ == "__main__":
    main(sys.argv[1:])
